"""``python -m ciap_lib cache-features --data DIR [--config YAML] [--set key=value ...]``

Fills the caches training reads, ahead of training: the frozen backbone's image features (``ciap_lib.features``,
when ``freeze_backbone`` is true) and, for ``audio_encoder: clap``, the CLAP audio embeddings (through the bridge,
which loads the frozen AudioLDM). Under ``torchrun`` each process takes its own shard of the files
(``rank::world_size`` of the sorted paths), so a large set is cached on several GPUs or machines that share the
cache folders. Every entry is written atomically as soon as it is computed, so a rerun resumes where the last
one stopped; training then finds everything cached.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HELP = "fill the frozen-backbone image-feature cache and the CLAP audio cache ahead of training (torchrun shards it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (keys of ciap_lib.config.TrainConfig, or an experiment file); "
                                         "the same one training will use, so the cache keys match")
    parser.add_argument("--data", help="dataset root holding <train_split>/ and <val_split>/ (overrides 'data')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                        help="override a config key, e.g. --set model=clip_mapper feature_precision=bf16")
    parser.add_argument("--splits", default=None,
                        help="comma-separated split folders (default: the config's train_split and val_split)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per backbone call (default 32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ciap_lib import distributed as D
    from ciap_lib.config import load_config
    from ciap_lib.pairs import scan_pairs

    overrides = [item for group in args.overrides for item in group]
    if args.data:
        overrides.append(f"data={args.data}")
    cfg = load_config(args.config, overrides).check(check_paths=True)
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    splits = args.splits.split(",") if args.splits else [cfg.train_split, cfg.val_split]
    info = D.setup(cfg.device)
    try:
        pairs = []
        for split in splits:
            if not (Path(cfg.data) / split).is_dir():
                raise ValueError(f"split folder {str(Path(cfg.data) / split)!r} does not exist")
            pairs += scan_pairs(Path(cfg.data) / split, skip_bad=cfg.skip_bad)[0]
        summary = {"rank": info.rank, "world_size": info.world_size, "pairs": len(pairs)}
        summary["image_features"] = _image_side(cfg, [p.image for p in pairs], info, args)
        summary["clap_audio"] = _audio_side(cfg, [p.audio for p in pairs], info, args)
        D.barrier(info)
    finally:
        D.cleanup(info)
    print(json.dumps(summary, indent=2))
    return 0


def _image_side(cfg, paths, info, args) -> dict:
    """This rank's shard of the frozen backbone's features; skipped (with why) when the backbone trains."""
    from ciap_lib.features import CacheReport, feature_key, image_features
    from ciap_lib.models import create_model
    from ciap_lib.train import seed_everything

    seed_everything(cfg.seed)  # as training does: a randomly initialised backbone gets training's weights (and key)
    model = create_model(cfg.model, **cfg.model_overrides())
    if not model.image_encoder.frozen:
        print("cache-features: freeze_backbone is false, so training runs the backbone on every batch and reads no "
              "image-feature cache; image features skipped", file=sys.stderr)
        return {"skipped": "freeze_backbone is false"}
    backbone = model.image_encoder.backbone.to(info.device)
    report = CacheReport()
    from ciap_lib import distributed as D

    # every rank keys its shard as rank 0 resolved ``auto`` (measured per process: ranks must not disagree)
    key = D.broadcast_object(feature_key(model, cfg.feature_precision, info.device), info)
    image_features(backbone, key, paths, cfg.feature_cache_dir,
                   batch_size=args.batch_size, rank=info.rank, world_size=info.world_size, skip_bad=cfg.skip_bad,
                   progress=not args.no_progress, report=report)
    return {**report.to_dict(), "backbone": model.config.image_backbone, "precision": key.precision}


def _audio_side(cfg, paths, info, args) -> dict:
    """This rank's shard of the CLAP audio embeddings (``audio_encoder: clap`` only; loads the frozen AudioLDM)."""
    from ciap_lib.workflows import resolved_audio_encoder

    if resolved_audio_encoder(cfg) != "clap":
        return {"skipped": f"audio_encoder is {resolved_audio_encoder(cfg)!r}, not 'clap'"}
    from ciap_lib import distributed as D
    from ciap_lib.bridge import clap_audio_features, load_audioldm  # lazy: imports audioldm

    audioldm = load_audioldm(cfg.audioldm, device=info.device)  # this rank's device: its GPU under torchrun
    shard = D.shard_paths(paths, info.rank, info.world_size)
    report: dict = {}
    clap_audio_features(audioldm, shard, cfg.clap_cache_dir, progress=not args.no_progress, report=report,
                        skip_bad=cfg.skip_bad)
    audioldm.assert_unchanged()
    bad = report.pop("skipped", [])
    for path, why in bad:
        print(f"cache-features: skipped {path}: {why}", file=sys.stderr)
    folder = os.path.join(cfg.clap_cache_dir, audioldm.reference_fingerprint[:16])
    return {**report, "skipped": len(bad), "folder": folder}
