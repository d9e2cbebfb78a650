"""AudioLDM checkpoint files: names, the SHA-256 sidecar, reading the state dict (clear errors naming the file)."""
from __future__ import annotations

import pytest
import torch

from ciap_lib.bridge import AudioLDMNotFoundError, load_audioldm
from ciap_lib.bridge.checkpoint_io import read_state_dict, resolve_checkpoint, sidecar_path, write_sidecar


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
