"""The frozen-backbone feature cache: hits on the second run, misses when the weights, the preprocessing or the
precision change, resumes after an interruption, keys by content; training with a frozen backbone reads it and
trains the head alone."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ciap_lib.config import load_config
from ciap_lib.features import CacheReport, cache_folder, feature_key, image_features
from ciap_lib.images import load_image
from ciap_lib.models import CachedFeatureCIAP, create_model
from ciap_lib.synthetic import make_synthetic_dataset

VIT = "timm/ciap_tiny_vit_clip.test"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("feat") / "syn", n_train=24, n_val=8, image_size=40)


def _images(data: Path) -> list[Path]:
    return sorted((data / "train").glob("*.png"))


def _model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return create_model("debug", image_backbone=VIT, freeze_backbone=True, **kw)


def _run(model, paths, cache, precision="fp32", **kw) -> tuple[dict, CacheReport]:
    report = CacheReport()
    feats = image_features(model.image_encoder.backbone, feature_key(model, precision), paths, cache, batch_size=8,
                           report=report, **kw)
    return feats, report


def test_second_run_hits_and_features_are_the_backbones(data, tmp_path):
    model, paths = _model(), _images(data)
    first, r1 = _run(model, paths, tmp_path / "c")
    assert (r1.computed, r1.cached) == (len(paths), 0)
    second, r2 = _run(model, paths, tmp_path / "c")
    assert (r2.computed, r2.cached) == (0, len(paths))
    assert first.keys() == second.keys() == {str(p.resolve()) for p in paths}
    with torch.no_grad():
        direct = model.image_encoder.backbone(load_image(paths[3], model.preprocess)[None])[0]
    assert torch.allclose(second[str(paths[3].resolve())], direct, atol=1e-6)
    assert sorted(p.name for p in r1.folder.iterdir() if p.name.startswith(".")) == []  # no temp files left
    assert (r1.folder / "meta.json").is_file()


def test_other_weights_preprocessing_or_precision_miss(data, tmp_path):
    paths = _images(data)[:8]
    base = _model(seed=0)
    _, r = _run(base, paths, tmp_path / "c")
    assert r.computed == 8
    other_crop = {**base.preprocess.to_dict(), "crop_pct": 1.0}
    same_weights = _model(seed=0, image_preprocess=other_crop)
    assert same_weights.config.image_weights_digest == base.config.image_weights_digest
    for changed, precision in [(_model(seed=1), "fp32"),                                     # other weights
                               (same_weights, "fp32"),                                       # other preprocessing
                               (_model(seed=0), "bf16")]:                                    # other precision
        feats, r = _run(changed, paths, tmp_path / "c", precision)
        assert (r.computed, r.cached) == (8, 0) and r.folder != cache_folder(tmp_path / "c", feature_key(base))
    # the same weights and preprocessing under another name of the model object: a hit
    _, r = _run(_model(seed=0), paths, tmp_path / "c")
    assert (r.computed, r.cached) == (0, 8)
    bf16, _ = _run(_model(seed=0), paths, tmp_path / "c", "bf16")
    fp32, _ = _run(_model(seed=0), paths, tmp_path / "c", "fp32")
    k = str(paths[0].resolve())
    assert not torch.equal(bf16[k], fp32[k]) and torch.allclose(bf16[k], fp32[k], atol=0.1, rtol=0.05)


def test_weights_files_loaded_through_timm_key_the_cache(data, tmp_path):
    """Real weight files through timm's pretrained path: the same file (or a copy under another name) hits, another
    file misses."""
    from fixtures.timm_weights import save_timm_weights

    paths = _images(data)[:4]
    save_timm_weights(VIT.removeprefix("timm/"), tmp_path / "a.safetensors", seed=1)
    save_timm_weights(VIT.removeprefix("timm/"), tmp_path / "b.safetensors", seed=2)
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "a-copy.safetensors")

    def model(weights: str):
        return _model(image_pretrained="pretrained", image_weights=str(tmp_path / weights))

    assert _run(model("a.safetensors"), paths, tmp_path / "c")[1].computed == 4
    for weights, hit in (("a.safetensors", True), ("a-copy.safetensors", True), ("b.safetensors", False)):
        _, r = _run(model(weights), paths, tmp_path / "c")
        assert (r.cached, r.computed) == ((4, 0) if hit else (0, 4)), weights


def test_keyed_by_content_damaged_entries_recomputed(data, tmp_path):
    paths = _images(data)[:4]
    model = _model()
    copy = tmp_path / "renamed.png"
    shutil.copy(paths[0], copy)
    feats, r = _run(model, [*paths, copy], tmp_path / "c")
    assert r.computed == 4 and torch.equal(feats[str(copy.resolve())], feats[str(paths[0].resolve())])
    entry = next(p for p in r.folder.glob("*.npy"))
    entry.write_bytes(b"garbage")
    _, r = _run(model, paths, tmp_path / "c")
    assert (r.computed, r.cached) == (1, 3)


class _Interrupt(torch.nn.Module):
    """The backbone, interrupted (KeyboardInterrupt) at its ``at``-th call."""

    def __init__(self, backbone, at: int):
        super().__init__()
        self.backbone, self.at, self.calls = backbone, at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt("stopped")
        return self.backbone(x)


def test_an_interrupted_run_resumes_where_it_stopped(data, tmp_path):
    model, paths = _model(), _images(data)
    key = feature_key(model)
    with pytest.raises(KeyboardInterrupt):
        image_features(_Interrupt(model.image_encoder.backbone, at=2), key, paths, tmp_path / "c", batch_size=8)
    folder = cache_folder(tmp_path / "c", key)
    assert len(list(folder.glob("*.npy"))) == 8 and not list(folder.glob(".*"))  # the first batch, complete
    _, r = _run(model, paths, tmp_path / "c")
    assert (r.computed, r.cached) == (len(paths) - 8, 8)


def test_shards_split_the_work(data, tmp_path):
    model, paths = _model(), _images(data)
    parts = [_run(model, paths, tmp_path / "c", rank=r, world_size=3)[0] for r in range(3)]
    assert sum(len(p) for p in parts) == len(paths) and set().union(*parts) == {str(p.resolve()) for p in paths}


def test_frozen_backbone_training_reaches_the_head_only(data, tmp_path):
    model = _model(head="mlp", head_width=32).train()
    view = CachedFeatureCIAP(model)
    feats, _ = _run(model, _images(data)[:8], tmp_path / "c")
    x = torch.stack(list(feats.values()))
    out = view(x, 0.1 * torch.randn(8, 16000))
    (out["image_features"] @ out["audio_features"].T).trace().backward()
    backbone = [p.grad for p in model.image_encoder.backbone.parameters()]
    assert all(g is None for g in backbone) and not any(p.requires_grad for p in model.image_encoder.backbone.parameters())
    assert all(p.grad is not None for p in model.image_encoder.head.parameters())
    assert all(p.grad is not None for p in model.audio_encoder.parameters())
    with torch.no_grad():  # the view on cached features is the model on the images
        imgs = torch.stack([load_image(p, model.preprocess) for p in _images(data)[:8]])
        assert torch.allclose(model.eval().encode_image(imgs), view.encode_image(x), atol=1e-5)
    with pytest.raises(ValueError, match="freeze_backbone=True"):
        CachedFeatureCIAP(create_model("debug"))


def test_training_with_a_frozen_backbone_reads_the_cache(data, tmp_path):
    from ciap_lib.workflows import evaluate_checkpoint, fit

    cfg = load_config(None, data=str(data), model="debug", image_backbone=VIT, freeze_backbone=True, head="mlp",
                      head_width=32, epochs=1, batch_size=8, num_workers=0, ckpt_dir=str(tmp_path / "ckpt"),
                      feature_cache_dir=str(tmp_path / "cache"))
    first = fit(cfg)
    n = len(list((data / "train").glob("*.png"))) + len(list((data / "val").glob("*.png")))
    assert first.extra["image_features"]["computed"] == n and first.extra["model"]["n_trainable"] > 0
    second = fit(cfg)
    assert second.extra["image_features"] == {**first.extra["image_features"], "computed": 0, "cached": n}
    assert second.metrics["val_loss"] == pytest.approx(first.metrics["val_loss"], abs=1e-6)
    summary = first.extra["model"]
    assert summary["image_backbone"] == VIT and summary["head"] == "mlp"
    assert summary["n_frozen"] == sum(p.numel() for p in _model().image_encoder.backbone.parameters())
    # the checkpoint, evaluated end to end on images with its stored preprocessing, gives the same val loss
    assert evaluate_checkpoint(first.checkpoint)["val_loss"] == pytest.approx(first.metrics["val_loss"], abs=1e-5)


@pytest.mark.parametrize("prefers_bf16, resolved", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_keyed_as_what_it_resolves_to(data, tmp_path, monkeypatch, prefers_bf16, resolved):
    """``auto`` is resolved in the key (the faster precision where the backbone runs): its features are those of
    the resolved precision, cached under the same folder, and training records what ran."""
    from ciap_lib import hardware
    from ciap_lib.workflows import fit

    monkeypatch.setattr(hardware, "cpu_prefers_bf16", lambda: prefers_bf16)
    model, paths = _model(), _images(data)[:8]
    assert feature_key(model, "auto") == feature_key(model, resolved)
    assert feature_key(model, "auto").precision == resolved
    _, r = _run(model, paths, tmp_path / "c", resolved)
    assert r.computed == 8
    _, r = _run(model, paths, tmp_path / "c", "auto")
    assert (r.computed, r.cached) == (0, 8)                      # the resolved precision's cache: a hit
    cfg = load_config(None, data=str(data), model="debug", image_backbone=VIT, freeze_backbone=True, epochs=1,
                      batch_size=8, num_workers=0, ckpt_dir=str(tmp_path / "ckpt"), feature_precision="auto",
                      feature_cache_dir=str(tmp_path / "cache"))
    assert fit(cfg).extra["image_features"]["precision"] == resolved


def test_feature_precision_auto_on_cuda_follows_native_bf16(monkeypatch):
    from ciap_lib import hardware

    monkeypatch.setattr(hardware, "cpu_prefers_bf16", lambda: pytest.fail("measured the CPU for a CUDA device"))
    monkeypatch.setattr(torch.cuda, "device", lambda _d: __import__("contextlib").nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert hardware.faster_precision("cuda:0") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert hardware.faster_precision("cuda:0") == "fp32"          # V100, T4: bf16 would be emulated
