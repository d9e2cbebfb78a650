"""PANNs Cnn14 16 kHz for fd_panns/kl_panns/is_panns: imported without panns_inference's import-time wget, a
PANNs-layout checkpoint (random weights, numpy sampler state) loads through the real path, the outputs are
audioldm_eval's "2048" embedding and pre-sigmoid logits, and batching equal-length clips changes nothing."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from ciap_lib.bridge.metric_weights import CNN14_16K, MetricWeightsError
from ciap_lib.bridge.panns import PANNS_CLASSES, PANNS_EMBED_DIM, build_cnn14_16k, cnn14_class, panns_features


@pytest.fixture(scope="module")
def cnn14(metric_weights):
    return build_cnn14_16k(metric_weights["dir"] / CNN14_16K.filename)


def test_import_runs_no_wget_and_prints_nothing(tmp_path, monkeypatch, capfd):
    """A fresh import of panns_inference.models through cnn14_class(): importing the panns_inference package
    would run config.py, whose os.system("wget ...") is made to fail loudly here."""
    def no_shell(cmd):
        raise AssertionError(f"os.system called: {cmd}")

    for name in [n for n in sys.modules if n == "panns_inference" or n.startswith("panns_inference.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(os, "system", no_shell)
    monkeypatch.setenv("HOME", str(tmp_path))
    capfd.readouterr()
    cls = cnn14_class()
    assert cls.__module__ == "panns_inference.models" and cls.__name__ == "Cnn14"
    assert "panns_inference.config" not in sys.modules and "panns_inference.inference" not in sys.modules
    assert "panns_inference" not in sys.modules                       # no half-initialised package left
    assert capfd.readouterr() == ("", "")
    assert not (tmp_path / "panns_data").exists()


def test_loaded_weights_equal_saved(cnn14, metric_weights):
    got = cnn14.cnn14.state_dict()
    saved = metric_weights["cnn14"]
    assert set(got) == set(saved)
    assert all(torch.equal(got[k], saved[k]) for k in saved)
    assert got["logmel_extractor.melW"].shape == (257, 64)            # the 16 kHz front end (n_fft 512)
    assert not cnn14.training and not any(p.requires_grad for p in cnn14.parameters())


def test_outputs_are_embedding_and_presigmoid_logits(cnn14):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 32000, generator=g) * 0.1
    with torch.inference_mode():
        emb, logits = cnn14(w)
        out = cnn14.cnn14(w, None)
    assert emb.shape == (2, PANNS_EMBED_DIM) and logits.shape == (2, PANNS_CLASSES)
    assert (emb >= 0).all()                                            # relu(fc1(x))
    assert torch.allclose(torch.sigmoid(logits), out["clipwise_output"], atol=1e-6)
    cnn14.train()
    try:
        with pytest.raises(RuntimeError, match="eval mode only"):
            cnn14(w)
    finally:
        cnn14.eval()


def test_batching_equal_lengths_only(cnn14):
    g = torch.Generator().manual_seed(1)
    clips = [torch.randn(n, generator=g) * 0.1 for n in (32000, 40000, 32000)]
    e1, l1 = panns_features(cnn14, clips, batch_size=1)
    e3, l3 = panns_features(cnn14, clips, batch_size=3)
    tol = 1e-6 * float(l1.abs().max())                                 # float32 round-off of batched convs
    assert torch.allclose(e1, e3, atol=1e-6) and torch.allclose(l1, l3, atol=tol)
    with torch.inference_mode():
        alone = cnn14(clips[1][None])[0]
    assert torch.allclose(e3[1], alone[0], atol=1e-6)                 # the 40000-sample clip was not padded
    with torch.inference_mode():
        padded = cnn14(torch.nn.functional.pad(clips[0], (0, 8000))[None])[0]
    assert not torch.allclose(e1[0], padded[0], atol=1e-6)            # padding would have changed it


def test_bad_file_named(tmp_path):
    flat = tmp_path / CNN14_16K.filename
    torch.save({"conv_block1.conv1.weight": torch.ones(1)}, flat)       # no "model" entry
    with pytest.raises(MetricWeightsError, match=r"Cnn14_16k_mAP=0\.438\.pth: not a PANNs Cnn14"):
        build_cnn14_16k(flat)
