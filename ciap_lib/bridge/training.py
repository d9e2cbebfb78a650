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
    AudioLDM fingerprint is unchanged afterwards. Returns the core ``TrainResult``.

    Under torchrun each process first computes its own shard of the missing features (``rank::world_size`` of the
    sorted paths, as ``cache-features`` does), then every process reads them all from the cache: each clip is
    embedded once, not once per process."""
    import sys

    from ciap_lib import distributed as D
    from ciap_lib.pairs import scan_pairs
    from ciap_lib.train import train

    audioldm = load_audioldm(cfg.audioldm)
    paths: list[Path] = []
    for split in (cfg.train_split, cfg.val_split):
        pairs, _skipped = scan_pairs(Path(cfg.data) / split, skip_bad=cfg.skip_bad)
        paths += [p.audio for p in pairs]
    info = D.setup(cfg.device)  # train() finds the process group already set up
    if info.enabled:
        shard = D.shard_paths(paths, info.rank, info.world_size)
        report: dict = {}
        clap_audio_features(audioldm, shard, cfg.clap_cache_dir, progress=info.is_main, report=report,
                            skip_bad=cfg.skip_bad)
        print(f"CLAP audio features, rank {info.rank} of {info.world_size}: {report['computed']} computed, "
              f"{report['cached']} cached", file=sys.stderr, flush=True)
        D.barrier(info)
    features = clap_audio_features(audioldm, paths, cfg.clap_cache_dir, progress=info.is_main,
                                   skip_bad=cfg.skip_bad)
    result = train(cfg, callbacks, audio_features=features)
    audioldm.assert_unchanged()
    return result
