"""Checkpoints: round trip of model, optimizer, scheduler, RNG and config with weights_only=True; old-format
and crafted files refused with the conversion hint; convert_checkpoint; atomic writes; clear errors; best.pt picked
over last.pt."""
import logging
import os
import random

import numpy as np
import pytest
import torch

from ciap_lib.checkpoint import (
    FORMAT, atomic_save, convert_checkpoint, copy_checkpoint, load_checkpoint, load_ciap, pick_checkpoint,
    save_checkpoint, set_rng_state,
)
from ciap_lib.config import load_config
from ciap_lib.models import create_model
from ciap_lib.safe_load import UnsafeCheckpointError, unsafe_globals
from fixtures.crafted import crafted_file, old_format_checkpoint


def _trained(steps: int = 1):
    """A debug model, Adam and StepLR after ``steps`` optimizer steps (non-empty optimizer state)."""
    cfg = load_config(None, ["model=debug", "audio_encoder=mlp", "epochs=3"])
    model = create_model(cfg.model, **cfg.model_overrides())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    x, a = torch.randn(4, 3, 32, 32), torch.randn(4, 16000)
    for _ in range(steps):
        out = model(x, a)
        (out["image_features"] * out["audio_features"]).sum().backward()
        opt.step()
        sched.step()
    return cfg, model, opt, sched, x, a


def _draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def test_round_trip(tmp_path):
    cfg, model, opt, sched, x, a = _trained()
    np.random.randn()  # leaves a cached Gaussian in numpy's legacy state: it must survive too
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, cfg, epoch=2, optimizer=opt, scheduler=sched,
                           history=[{"val_loss": np.float64(1.0)}], metrics={"val_loss": 1.0})
    expected = _draws()  # what the generators produce right after the checkpoint was taken
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
    assert type(ck["history"][0]["val_loss"]) is float  # numpy scalars stored as plain numbers
    set_rng_state(ck["rng"])
    assert _draws() == expected
    # the file needs nothing beyond the weights-only allowlist, checked independently of ciap_lib
    assert unsafe_globals(path) == []
    assert torch.load(path, weights_only=True)["format"] == FORMAT == "ciap-checkpoint/2"


def test_old_format_is_refused_with_the_conversion_hint(tmp_path):
    cfg, model, opt, sched, *_ = _trained()
    old = old_format_checkpoint(tmp_path / "old.pt", model, cfg, 1, opt, sched)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_ciap(old)
    msg = str(e.value)
    assert str(old) in msg and "numpy" in msg and "refused" in msg and "RNG state" in msg
    assert f"python -m ciap_lib convert-checkpoint {old} " in msg and "--trust" in msg
    # loaded some other way without numpy objects, format 1 still gets the hint
    torch.save({"format": "ciap-checkpoint/1", "model": {}}, tmp_path / "v1.pt")
    with pytest.raises(ValueError, match="v1.pt.*old format.*convert-checkpoint"):
        load_checkpoint(tmp_path / "v1.pt")


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    cfg, model, *_ = _trained(0)
    good = save_checkpoint(tmp_path / "good.pt", model, cfg, epoch=1)
    marker = tmp_path / "pwned"
    evil = crafted_file(tmp_path / "evil.pt", marker, obj=torch.load(good, weights_only=True), key="metrics")
    with pytest.raises(UnsafeCheckpointError) as e:
        load_ciap(evil)
    assert not marker.exists()
    msg = str(e.value)
    assert str(evil) in msg and "io.open" in msg and "not written by save_checkpoint" in msg
    assert f"convert-checkpoint {evil} " in msg


def test_convert_refuses_without_trust_and_reads_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = crafted_file(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match="evil.pt.*without the trusted opt-in"):
        convert_checkpoint(evil, tmp_path / "new.pt")
    assert not marker.exists() and not (tmp_path / "new.pt").exists()


def test_convert_old_format_end_to_end(tmp_path, caplog):
    cfg, model, opt, sched, x, a = _trained(2)
    old = old_format_checkpoint(tmp_path / "old.pt", model, cfg, 2, opt, sched, history=[{"val_loss": 0.5}],
                                metrics={"val_loss": np.float32(0.5)})
    expected = _draws()
    with caplog.at_level(logging.WARNING, logger="ciap_lib.safe_load"):
        new = convert_checkpoint(old, tmp_path / "new.pt", trusted=True)
    assert any(str(old) in r.getMessage() and "arbitrary code" in r.getMessage() for r in caplog.records)
    assert unsafe_globals(new) == []
    ck = load_checkpoint(new)
    assert ck["format"] == FORMAT and ck["epoch"] == 2 and ck["metrics"] == {"val_loss": 0.5}
    assert ck["history"] == [{"val_loss": 0.5}] and ck["config"] == cfg.to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(ck["model"][k], v), k
    assert ck["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    s_old, s_new = opt.state_dict()["state"], ck["optimizer"]["state"]
    assert s_old.keys() == s_new.keys() and len(s_old) > 0
    assert all(torch.equal(s_old[i][k], s_new[i][k]) for i in s_old for k in ("step", "exp_avg", "exp_avg_sq"))
    assert ck["scheduler"] == sched.state_dict()
    set_rng_state(ck["rng"])
    assert _draws() == expected
    loaded, cfg2 = load_ciap(new)
    model.eval()
    with torch.no_grad():
        assert cfg2 == cfg and torch.equal(loaded.encode_image(x), model.encode_image(x))
    # converting in place works too, and a converted file converts to itself
    assert convert_checkpoint(new, new, trusted=True) == new and load_checkpoint(new)["epoch"] == 2
    assert sorted(os.listdir(tmp_path)) == ["new.pt", "old.pt"]  # no temp files left behind


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


def test_pick_checkpoint_prefers_best_pt(tmp_path):
    cfg, model, opt, sched, *_ = _trained()
    run = tmp_path / "run"
    last = save_checkpoint(run / "last.pt", model, cfg, 2, opt, sched)
    assert pick_checkpoint(run) == last and pick_checkpoint(last) == last
    best = copy_checkpoint(last, run / "best.pt")
    assert load_checkpoint(best)["epoch"] == 2 and sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt"]
    assert pick_checkpoint(run) == best and pick_checkpoint(last) == best
    other = copy_checkpoint(last, run / "epoch2.pt")
    assert pick_checkpoint(other) == other  # a file named explicitly is used as given
