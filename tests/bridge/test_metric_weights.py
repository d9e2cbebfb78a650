"""Metric weights: looked for in weights_dir then the original tools' caches; the absent-file message names the
metric, the file and the URL; unusable files (not weights, empty, truncated, unsafe pickles, wrong layout,
wrong architecture) raise an error naming the file; PANNs' numpy sampler state is allowed."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ciap_lib.bridge import metric_weights as mw
from ciap_lib.bridge.metric_weights import (
    CNN14_16K, VGGISH, MetricWeightsError, find_weights, load_into, load_weights_file, missing_message,
    read_state_dict,
)


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """Point torch hub and ~ at empty folders so a real cache on this machine cannot be found."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_missing_message_names_metric_file_and_url(no_caches):
    wd = no_caches / "weights"
    assert find_weights(VGGISH, wd) is None and find_weights(CNN14_16K, wd) is None
    msg = missing_message(VGGISH, "fad_vggish", wd)
    assert msg.startswith("fad_vggish skipped")
    assert str(wd / "vggish-10086976.pth") in msg
    assert str(no_caches / "torch_home" / "hub" / "checkpoints" / "vggish-10086976.pth") in msg
    assert "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth" in msg
    msg = missing_message(CNN14_16K, "kl_panns", wd)
    assert msg.startswith("kl_panns skipped") and "Cnn14_16k_mAP=0.438.pth" in msg
    assert "https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth" in msg
    assert str(no_caches / "home" / ".cache" / "audioldm_eval" / "ckpt") in msg


def test_found_in_weights_dir_first_then_tool_caches(no_caches):
    hub = no_caches / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / VGGISH.filename).write_bytes(b"x")
    assert find_weights(VGGISH, no_caches / "weights") == hub / VGGISH.filename
    own = no_caches / "weights"
    own.mkdir()
    (own / VGGISH.filename).write_bytes(b"y")
    assert find_weights(VGGISH, own) == own / VGGISH.filename
    cache = no_caches / "home" / ".cache" / "audioldm_eval" / "ckpt"
    cache.mkdir(parents=True)
    (cache / CNN14_16K.filename).write_bytes(b"z")
    assert find_weights(CNN14_16K, own) == cache / CNN14_16K.filename


def test_bad_files_raise_naming_the_file(tmp_path):
    text = tmp_path / "vggish-10086976.pth"
    text.write_text("<html>404 Not Found</html>")
    with pytest.raises(MetricWeightsError, match=r"vggish-10086976\.pth: cannot be read as a PyTorch weights"):
        load_weights_file(text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(MetricWeightsError, match=r"empty\.pth: weights file is empty"):
        load_weights_file(empty)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(1000)}, good)
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MetricWeightsError, match=r"truncated\.pth: cannot be read"):
        load_weights_file(cut)
    with pytest.raises(MetricWeightsError, match=r"absent\.pth: weights file does not exist"):
        load_weights_file(tmp_path / "absent.pth")


def test_unsafe_pickle_refused_without_running_it(tmp_path, capsys):
    evil = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": {"w": torch.ones(2)}, "x": Evil()}, evil)
    capsys.readouterr()
    with pytest.raises(MetricWeightsError,
                       match=r"Cnn14_16k_mAP=0\.438\.pth: refused to load: it asks for builtins\.print"):
        load_weights_file(evil)
    assert "unpickled!" not in capsys.readouterr().out
    plain = tmp_path / "plain.pkl"                # a plain pickle (not torch's format) of a tensor dict
    plain.write_bytes(pickle.dumps({"a": np.arange(3)}, protocol=2))
    with pytest.raises(MetricWeightsError, match=r"plain\.pkl"):
        load_weights_file(plain)


def test_panns_layout_with_numpy_sampler_loads(tmp_path):
    path = tmp_path / CNN14_16K.filename
    sd = {"fc.weight": torch.randn(3, 2), "bn.num_batches_tracked": torch.tensor(7)}
    torch.save({"iteration": 640000, "model": sd,
                "sampler": {"indexes_per_class": [np.arange(5, dtype=np.int64)], "queue": [np.int64(3)],
                            "pointers_of_classes": [0]}}, path)
    got = read_state_dict(CNN14_16K, path)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    with pytest.raises(MetricWeightsError, match=r"expected a dict with a 'model' entry"):
        read_state_dict(CNN14_16K, _save(tmp_path / "flat.pth", sd))      # VGGish-style layout for PANNs
    with pytest.raises(MetricWeightsError, match=r"not a VGGish \(torchvggish port\) state dict"):
        read_state_dict(VGGISH, _save(tmp_path / "list.pth", [torch.ones(1)]))


def test_load_into_checks_architecture(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    saved = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    load_into(model, VGGISH, _save(tmp_path / "ok.pth", saved))
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    wrong = dict(saved, **{"0.weight": torch.randn(4, 2)})
    with pytest.raises(MetricWeightsError, match=r"wrong\.pth: does not match .*0\.weight: file \(4, 2\)"):
        load_into(model, VGGISH, _save(tmp_path / "wrong.pth", wrong))
    with pytest.raises(MetricWeightsError, match=r"extra\.pth: does not match .*unexpected \['z'\]"):
        load_into(model, VGGISH, _save(tmp_path / "extra.pth", dict(saved, z=torch.ones(1))))


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_default_dir_is_ckpt_metrics():
    assert mw.DEFAULT_WEIGHTS_DIR.as_posix() == "ckpt/metrics"
    assert VGGISH.search_dirs()[0].as_posix() == "ckpt/metrics"
