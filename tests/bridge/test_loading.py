"""Loading original-format AudioLDM checkpoints: offline, strict, frozen, clear errors."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from ciap_lib.bridge import AudioLDMCheckpointError, load_audioldm
from ciap_lib.bridge.architecture import KNOWN_STALE_KEYS
from ciap_lib.bridge.checkpoint_io import read_state_dict
from ciap_lib.safe_load import UnsafeCheckpointError


def test_tiny_checkpoint_is_original_format_with_stale_key(tiny_audioldm_ckpt):
    raw = torch.load(tiny_audioldm_ckpt, map_location="cpu", weights_only=True)
    assert set(raw) >= {"state_dict"}
    sd = raw["state_dict"]
    assert KNOWN_STALE_KEYS[0] in sd                     # what transformers 5 no longer has
    assert any(k.startswith("model_ema.") for k in sd)   # EMA buffers like the released files


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


def test_refused_checkpoint_loads_only_with_trust_checkpoint(tiny_audioldm_ckpt_numpy, tiny_audioldm, caplog):
    """No silent fallback to full unpickling: refused by name, then loaded through the explicit, logged opt-in."""
    with pytest.raises(UnsafeCheckpointError) as e:
        load_audioldm(tiny_audioldm_ckpt_numpy)
    assert str(tiny_audioldm_ckpt_numpy) in str(e.value) and "numpy." in str(e.value)
    with caplog.at_level(logging.WARNING, logger="ciap_lib.safe_load"):
        a = load_audioldm(tiny_audioldm_ckpt_numpy, trust_checkpoint=True, cache_uncond=False)
    assert any(str(tiny_audioldm_ckpt_numpy) in r.getMessage() and "arbitrary code" in r.getMessage()
               for r in caplog.records)
    assert a.reference_fingerprint == tiny_audioldm.reference_fingerprint  # the same weights
