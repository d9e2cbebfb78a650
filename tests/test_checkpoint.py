"""Checkpoints: round trip of model, optimizer, scheduler, RNG and config; atomic writes; clear errors."""
import os

import pytest
import torch

from ciap_lib.checkpoint import atomic_save, load_checkpoint, load_ciap, save_checkpoint
from ciap_lib.config import load_config
from ciap_lib.models import create_model


def test_round_trip(tmp_path):
    cfg = load_config(None, ["model=debug", "audio_encoder=mlp", "epochs=3"])
    model = create_model(cfg.model, **cfg.model_overrides())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    x, a = torch.randn(4, 3, 32, 32), torch.randn(4, 16000)
    out = model(x, a)
    (out["image_features"] * out["audio_features"]).sum().backward()
    opt.step()
    sched.step()
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, cfg, epoch=2, optimizer=opt, scheduler=sched,
                           history=[{"val_loss": 1.0}], metrics={"val_loss": 1.0})
    loaded, cfg2 = load_ciap(path)
    assert cfg2 == cfg and loaded.config == model.config and not loaded.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), model.encode_image(x))
        assert torch.equal(loaded.encode_audio(a), model.encode_audio(a))
    ck = load_checkpoint(path)
    assert ck["epoch"] == 2 and ck["history"] == [{"val_loss": 1.0}]
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(ck["optimizer"])
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and len(s1) > 0
    k = next(iter(s1))
    assert torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"])
    assert ck["scheduler"]["last_epoch"] == 1
    assert {"python", "numpy", "torch"} <= set(ck["rng"])


class _Explodes:
    """Pickling fails halfway through a save."""

    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"version": 1, "blob": torch.zeros(1000)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"version": 2, "blob": torch.ones(1000), "bad": _Explodes()}, path)
    assert torch.load(path)["version"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_atomic_save_replaces_in_place(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"v": 1}, path)
    inode_dir = os.listdir(tmp_path)
    atomic_save({"v": 2}, path)
    assert torch.load(path) == {"v": 2} and os.listdir(tmp_path) == inode_dir


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="nothere.pt.*not found"):
        load_ciap(tmp_path / "nothere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt.*not a readable"):
        load_ciap(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*not a CIAP checkpoint"):
        load_ciap(tmp_path / "other.pt")
