"""CLAP-aligned training (audio encoder ``clap``): only the image encoder trains.

The audio side is the frozen AudioLDM's own CLAP audio tower (same checkpoint that generation
uses), run once per file and cached on disk; training then costs only the image side. This is the
mode whose image embeddings land in the space AudioLDM was trained on: use it for generation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ciap_lib.bridge.clap import clap_audio_features
from ciap_lib.bridge.loading import load_audioldm


def train_clap_aligned(cfg, callbacks: Sequence = ()):
    """Load the frozen AudioLDM named by ``cfg.audioldm``, compute/cache CLAP features of the train and
    val audio, run core ``ciap_lib.train.train(cfg, callbacks, audio_features=...)`` and check the
    AudioLDM fingerprint is unchanged afterwards. Returns the core ``TrainResult``."""
    from ciap_lib.pairs import scan_pairs
    from ciap_lib.train import train

    audioldm = load_audioldm(cfg.audioldm)
    paths: list[Path] = []
    for split in (cfg.train_split, cfg.val_split):
        pairs, _skipped = scan_pairs(Path(cfg.data) / split, skip_bad=cfg.skip_bad)
        paths += [p.audio for p in pairs]
    features = clap_audio_features(audioldm, paths, cfg.clap_cache_dir, progress=True, skip_bad=cfg.skip_bad)
    result = train(cfg, callbacks, audio_features=features)
    audioldm.assert_unchanged()
    return result
