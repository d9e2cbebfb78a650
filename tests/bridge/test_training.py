"""CLAP-aligned training: only the image encoder trains, AudioLDM stays bit-identical."""
from __future__ import annotations

from ciap_lib.bridge import load_audioldm, train_clap_aligned
from ciap_lib.config import TrainConfig


def test_train_clap_aligned_keeps_audioldm_frozen(tiny_audioldm_ckpt, ciap_workspace, tmp_path):
    before = load_audioldm(tiny_audioldm_ckpt).reference_fingerprint
    cfg = TrainConfig.from_dict({
        "model": "debug", "audio_encoder": "clap", "data": str(ciap_workspace["data"]), "epochs": 1,
        "batch_size": 4, "audioldm": str(tiny_audioldm_ckpt), "clap_cache_dir": str(tmp_path / "clap"),
        "ckpt_dir": str(tmp_path / "ckpt"),
    })
    result = train_clap_aligned(cfg)  # asserts the fingerprint itself after training
    assert result.checkpoint.is_file() and len(result.history) == 1
    assert load_audioldm(tiny_audioldm_ckpt).fingerprint() == before
    assert list((tmp_path / "clap").rglob("*.npy"))  # features were cached for the run
