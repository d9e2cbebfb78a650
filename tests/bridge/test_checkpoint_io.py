"""AudioLDM checkpoint files: names, the SHA-256 sidecar, reading the state dict (clear errors naming the file)."""
from __future__ import annotations

import argparse
import collections
import logging
import pathlib

import numpy as np
import pytest
import torch

from ciap_lib.bridge import AudioLDMNotFoundError, load_audioldm
from ciap_lib.bridge.checkpoint_io import (
    AUDIOLDM_SAFE_GLOBALS, read_state_dict, resolve_checkpoint, sidecar_path, write_sidecar,
)
from ciap_lib.safe_load import UnsafeCheckpointError
from fixtures.crafted import crafted_file


def test_missing_file_says_where_and_how(tmp_path):
    with pytest.raises(AudioLDMNotFoundError) as e:
        load_audioldm("audioldm-s-full", ckpt_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "audioldm-s-full.ckpt") in msg and "python -m ciap_lib download audioldm-s-full" in msg


def test_truncated_file_is_a_clear_error(tiny_audioldm_ckpt, tmp_path):
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(tiny_audioldm_ckpt.read_bytes()[:100_000])
    with pytest.raises(AudioLDMNotFoundError, match="truncated or corrupt"):
        load_audioldm(bad)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.ckpt"
    torch.save({"weights": {}}, p)
    with pytest.raises(AudioLDMNotFoundError, match="no 'state_dict'"):
        load_audioldm(p)


def test_sha256_sidecar_checked(tiny_audioldm_ckpt, tmp_path):
    p = tmp_path / "a.ckpt"
    p.write_bytes(tiny_audioldm_ckpt.read_bytes())
    sidecar_path(p).write_text("0" * 64 + "  a.ckpt\n")
    with pytest.raises(AudioLDMNotFoundError, match="SHA-256"):
        read_state_dict(p)
    write_sidecar(p)
    assert "state_dict" not in read_state_dict(p)  # the state dict itself, read after a matching hash
    assert len(read_state_dict(p)) > 100


def test_resolve_names(tmp_path):
    assert resolve_checkpoint("audioldm-m-full", tmp_path) == (tmp_path / "audioldm-m-full.ckpt", "audioldm-m-full")
    assert resolve_checkpoint(str(tmp_path / "x.ckpt"))[1] is None
    with pytest.raises(ValueError, match="neither"):
        resolve_checkpoint("audioldm-xl")


def test_crafted_file_is_refused_by_name_even_with_a_matching_sha256(tmp_path):
    marker = tmp_path / "pwned"
    evil = crafted_file(tmp_path / "evil.ckpt", marker)
    write_sidecar(evil)  # a recorded hash says the bytes are unchanged, not that they are safe
    with pytest.raises(UnsafeCheckpointError) as e:
        read_state_dict(evil)
    assert not marker.exists()
    msg = str(e.value)
    assert str(evil) in msg and "io.open" in msg and "--trust-checkpoint" in msg and "trust_checkpoint=True" in msg
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        load_audioldm(evil)
    assert not marker.exists()


def test_allowlisted_lightning_containers_load_without_trust(tmp_path):
    p = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.7.7",
                "state_dict": {"model.w": torch.ones(2)}, "hyper_parameters": argparse.Namespace(lr=1e-4),
                "loops": collections.defaultdict(None, {"fit_loop": {"epoch": 3}}),
                "log_dir": pathlib.PosixPath("/logs/run")}, p)
    assert torch.equal(read_state_dict(p)["model.w"], torch.ones(2))
    assert set(AUDIOLDM_SAFE_GLOBALS) == {argparse.Namespace, collections.defaultdict, pathlib.PosixPath,
                                          pathlib.PurePosixPath}


def test_other_globals_need_the_trusted_opt_in(tmp_path, caplog):
    p = tmp_path / "numpy.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(2)}, "extra": np.arange(3)}, p)
    with pytest.raises(UnsafeCheckpointError, match=r"numpy.ckpt.*numpy\."):
        read_state_dict(p)
    with caplog.at_level(logging.WARNING, logger="ciap_lib.safe_load"):
        assert torch.equal(read_state_dict(p, trusted=True)["model.w"], torch.ones(2))
    assert any("numpy.ckpt" in r.getMessage() and "arbitrary code" in r.getMessage() for r in caplog.records)
