"""Loading original-format AudioLDM checkpoints: offline, strict, frozen, clear errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ciap_lib.bridge import AudioLDMCheckpointError, AudioLDMNotFoundError, load_audioldm
from ciap_lib.bridge.loading import (
    KNOWN_STALE_KEYS, empty_text_tokens, read_state_dict, resolve_checkpoint, sidecar_path, write_sidecar,
)


def test_tiny_checkpoint_is_original_format_with_stale_key(tiny_audioldm_ckpt):
    raw = torch.load(tiny_audioldm_ckpt, map_location="cpu", weights_only=True)
    assert set(raw) >= {"state_dict"}
    sd = raw["state_dict"]
    assert KNOWN_STALE_KEYS[0] in sd                     # what transformers 5 no longer has
    assert any(k.startswith("model_ema.") for k in sd)   # EMA buffers like the released files


def test_loaded_model_is_frozen_and_fingerprinted(tiny_audioldm):
    a = tiny_audioldm
    assert all(not p.requires_grad for p in a.ldm.parameters())
    assert not any(m.training for m in a.ldm.modules())
    a.ldm.train()  # cannot switch it back on
    assert not any(m.training for m in a.ldm.modules())
    assert not hasattr(a, "parameters")  # nothing to hand to an optimizer
    assert a.fingerprint() == a.reference_fingerprint
    a.assert_unchanged()


def test_uncond_embedding_is_clap_text_of_empty_string(tiny_audioldm):
    a = tiny_audioldm
    assert a.uncond_embedding.shape == (1, 1, 512)
    assert torch.allclose(a.uncond_embedding.norm(), torch.tensor(1.0), atol=1e-5)
    toks = empty_text_tokens()
    assert toks["input_ids"][0, :3].tolist() == [0, 2, 1] and toks["input_ids"].shape == (1, 512)
    with torch.no_grad():
        again = a.clap.get_text_embedding(empty_text_tokens())
    assert torch.allclose(again.reshape(1, 1, 512), a.uncond_embedding, atol=1e-6)
    cache = a.path.with_name(a.path.name + ".uncond.pt")
    assert cache.is_file()


def test_load_needs_no_network(tiny_audioldm_ckpt):
    """A fresh process with DNS and connect refused imports audioldm and loads the checkpoint
    (audioldm itself asks the hub for roberta-base's tokenizer at import time)."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network access attempted')\n"
        "socket.getaddrinfo = refuse; socket.socket.connect = refuse; socket.create_connection = refuse\n"
        "from ciap_lib.bridge import load_audioldm\n"
        f"a = load_audioldm({str(tiny_audioldm_ckpt)!r})\n"
        "print('LOADED', tuple(a.uncond_embedding.shape))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "0"})
    assert "LOADED (1, 1, 512)" in r.stdout, r.stderr[-3000:]
    assert "huggingface" not in r.stderr


def test_unexpected_key_fails_loudly(tiny_audioldm_ckpt, tmp_path):
    sd = read_state_dict(tiny_audioldm_ckpt)
    sd = dict(sd)
    sd["model.diffusion_model.not_a_real_key"] = torch.zeros(3)
    bad = tmp_path / "extra.ckpt"
    torch.save({"state_dict": sd}, bad)
    with pytest.raises(AudioLDMCheckpointError, match="not_a_real_key"):
        load_audioldm(bad)


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


def test_not_a_checkpoint_and_wrong_layout(tmp_path):
    p = tmp_path / "x.ckpt"
    torch.save({"weights": {}}, p)
    with pytest.raises(AudioLDMNotFoundError, match="no 'state_dict'"):
        load_audioldm(p)
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, p)
    with pytest.raises(AudioLDMCheckpointError, match="missing"):
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
