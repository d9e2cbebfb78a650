"""Standard metrics (fad_vggish, fd_panns, kl_panns, is_panns) as audioldm_eval defines them, end to end through
released-format weights files with random weights; formulas checked against hand-written references; absent
weights are skipped with a message naming the metric and the file; bad weights files raise naming the file."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from ciap_lib.bridge import standard_metrics
from ciap_lib.bridge.audio_metrics import (
    STANDARD_METRICS, StandardMetricModels, inception_score, kl_per_clip, prepare_clips,
)
from ciap_lib.bridge.metric_weights import CNN14_16K, VGGISH, MetricWeightsError

SR = 16000


def _noise(n: int, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, int(seconds * SR))) * 0.1).astype(np.float32)


def _tones(n: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) for i in range(n)]).astype(np.float32)


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# ---- formulas --------------------------------------------------------------------------------------------

def _kl_reference(g: torch.Tensor, r: torch.Tensor, act) -> torch.Tensor:
    """audioldm_eval's calculate_kl, written out: sum_c r (log r - log(g + 1e-6)) per pair."""
    pg, pr = act(g.double()), act(r.double())
    return (pr * (pr.log() - (pg + 1e-6).log())).sum(1)


def test_kl_per_clip_matches_audioldm_eval_formula():
    g = torch.Generator().manual_seed(0)
    gen, ref = torch.randn(5, 527, generator=g) * 3, torch.randn(5, 527, generator=g) * 3
    for name, act in (("softmax", lambda x: x.softmax(1)), ("sigmoid", torch.sigmoid)):
        got = kl_per_clip(gen, ref, name)
        assert got.shape == (5,) and torch.allclose(got, _kl_reference(gen, ref, act), rtol=1e-9, atol=1e-12)
    same = kl_per_clip(gen, gen, "softmax")
    assert same.abs().max() < 1e-3                                         # only the 1e-6 EPS remains
    assert (kl_per_clip(gen, ref, "softmax") > 0.1).all()
    # direction: KL(reference || generated), not the reverse
    assert not torch.allclose(kl_per_clip(gen, ref), kl_per_clip(ref, gen))
    assert torch.allclose(kl_per_clip(gen, ref), _kl_reference(gen, ref, lambda x: x.softmax(1)))
    with pytest.raises(ValueError, match="activation"):
        kl_per_clip(gen, ref, "relu")
    with pytest.raises(ValueError, match="one shape"):
        kl_per_clip(gen, ref[:4])


def test_inception_score_definition():
    n_classes = 527
    same = torch.randn(1, n_classes).repeat(20, 1)
    assert inception_score(same, splits=10) == (pytest.approx(1.0, abs=1e-12), pytest.approx(0.0, abs=1e-12))
    # 20 confident, distinct predictions, 1 split: IS -> 20 (the number of distinct classes)
    confident = torch.full((20, n_classes), -50.0)
    confident[torch.arange(20), torch.arange(20)] = 50.0
    assert inception_score(confident, splits=1)[0] == pytest.approx(20.0, rel=1e-6)
    # 10 splits of 2 after audioldm_eval's shuffle; each split scores exp(KL) of its own rows
    x = torch.randn(20, n_classes, generator=torch.Generator().manual_seed(3)) * 4
    mean, std = inception_score(x, splits=10, seed=2020)
    perm = np.random.RandomState(2020).permutation(20)
    p = x[perm].double().softmax(1)
    scores = [math.exp(float((p[2 * i:2 * i + 2] * (p[2 * i:2 * i + 2].log()
                                                     - p[2 * i:2 * i + 2].mean(0, keepdim=True).log())).sum(1).mean()))
              for i in range(10)]
    assert mean == pytest.approx(np.mean(scores), rel=1e-9) and std == pytest.approx(np.std(scores), rel=1e-9)
    assert 1.0 <= mean <= n_classes
    assert inception_score(x, splits=10, seed=1)[0] != pytest.approx(mean, rel=1e-9)   # the shuffle matters
    with pytest.raises(ValueError, match="at least 10 clips"):
        inception_score(x[:9], splits=10)


def test_prepare_clips_like_audioldm_eval(tmp_path):
    t = np.arange(8000) / 32000
    x = (0.2 + 0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)        # DC offset, 0.25 s at 32 kHz
    (w,) = prepare_clips([x], sample_rate=32000)
    assert w.shape == (32000,)                                              # resampled to 4000, padded to 2 s
    assert abs(float(w[:4000].mean())) < 1e-3 and torch.all(w[4000:] == 0)  # mean removed before padding
    stereo = np.stack([x, -x * 3], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 32000, subtype="FLOAT")
    (f,) = prepare_clips([path])
    assert torch.allclose(f, w, atol=1e-6)                                  # first channel, not the mix
    long = prepare_clips(np.zeros((1, 40000), np.float32))[0]
    assert long.shape == (40000,)                                           # long clips are not cut
    with pytest.raises(ValueError, match="clip 0 contains NaN"):
        prepare_clips([np.array([0.0, np.nan], np.float32)])


# ---- end to end through the weights files ----------------------------------------------------------------

@pytest.fixture(scope="module")
def models(metric_weights):
    """Both networks loaded once from the weights files, through standard_metrics' own loading path."""
    m = StandardMetricModels(metric_weights["dir"])
    assert m.skipped == {} and m.vggish is not None and m.cnn14 is not None
    return m


@pytest.fixture(scope="module")
def results(models, metric_weights):
    """Runs sharing the module: self vs self, tones vs noise, identical generated clips, unpaired sets."""
    noise, tones = _noise(5), _tones(5)
    return {
        "self": standard_metrics(noise, noise.copy(), models=models, is_splits=2),
        "shift": standard_metrics(tones, noise, weights_dir=metric_weights["dir"], is_splits=2),  # loads its own
        "same_gen": standard_metrics(np.repeat(tones[:1], 4, 0), tones, models=models, metrics=("is_panns",),
                                     is_splits=2),
        "unpaired": standard_metrics(list(noise[:3]), list(tones[:4]), models=models,
                                     metrics=("kl_panns", "is_panns")),
    }


def test_frechet_metrics_zero_on_self_and_grow_with_shift(results):
    s, d = results["self"], results["shift"]
    assert s["skipped"] == {} and d["skipped"] == {}
    for key in ("fad_vggish", "fd_panns"):
        assert np.isfinite(d[key]) and d[key] > 0
        assert abs(s[key]) < 1e-6 * d[key], (key, s[key], d[key])


def test_kl_zero_on_identical_pairs_positive_otherwise(results):
    s, d = results["self"], results["shift"]
    assert abs(s["kl_panns"]) < 1e-3 and abs(s["kl_panns_sigmoid"]) < 1e-3
    assert d["kl_panns"] > 0
    assert len(d["per_clip"]["kl_panns"]) == 5 and len(d["per_clip"]["kl_panns_sigmoid"]) == 5
    assert d["kl_panns"] == pytest.approx(np.mean(d["per_clip"]["kl_panns"]), rel=1e-12)
    assert all(v > 0 for v in d["per_clip"]["kl_panns"])


def test_inception_score_range(results):
    d, same = results["shift"], results["same_gen"]
    assert 1.0 <= d["is_panns"] <= 527 and d["is_panns_std"] >= 0
    assert same["is_panns"] == pytest.approx(1.0, abs=1e-9)
    assert set(same) >= {"is_panns", "is_panns_std"} and "fd_panns" not in same and "kl_panns" not in same


def test_unpaired_kl_and_too_few_for_is_are_skipped_with_reasons(results):
    u = results["unpaired"]
    assert "kl_panns" not in u and "is_panns" not in u
    assert "3 generated and 4 reference" in u["skipped"]["kl_panns"]
    assert "at least 10 generated clips" in u["skipped"]["is_panns"]
    assert u["n_generated"] == 3 and u["n_reference"] == 4


def test_missing_weights_skip_naming_metric_and_file(no_caches):
    wd = no_caches / "empty"
    r = standard_metrics(_noise(3), _tones(3), weights_dir=wd)
    assert set(r["skipped"]) == set(STANDARD_METRICS)
    assert not set(STANDARD_METRICS) & set(r)
    assert r["skipped"]["fad_vggish"].startswith("fad_vggish skipped")
    assert str(wd / VGGISH.filename) in r["skipped"]["fad_vggish"] and VGGISH.url in r["skipped"]["fad_vggish"]
    for m in ("fd_panns", "kl_panns", "is_panns"):
        assert r["skipped"][m].startswith(f"{m} skipped") and str(wd / CNN14_16K.filename) in r["skipped"][m]
        assert CNN14_16K.url in r["skipped"][m]


def test_one_file_present_other_skipped(no_caches, metric_weights):
    wd = no_caches / "only_vggish"
    wd.mkdir()
    (wd / VGGISH.filename).symlink_to(metric_weights["dir"] / VGGISH.filename)
    r = standard_metrics(_noise(3), _tones(3), weights_dir=wd, metrics=("fad_vggish", "fd_panns"))
    assert r["fad_vggish"] > 0 and set(r["skipped"]) == {"fd_panns"}


def test_bad_weights_file_raises_naming_it(no_caches):
    wd = no_caches / "bad"
    wd.mkdir()
    (wd / CNN14_16K.filename).write_text("Access denied")
    with pytest.raises(MetricWeightsError, match=r"Cnn14_16k_mAP=0\.438\.pth: cannot be read"):
        standard_metrics(_noise(2), _tones(2), weights_dir=wd, metrics=("fd_panns",))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown metrics"):
        standard_metrics(_noise(2), _tones(2), metrics=("fad",))
    with pytest.raises(ValueError, match="at least 2 reference clips"):
        standard_metrics(_noise(2), _tones(1))
