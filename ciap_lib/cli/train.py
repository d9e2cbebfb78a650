"""``python -m ciap_lib train --config <yaml> [--data <dir>] [--set key=value ...]``

Also under ``torchrun --nproc_per_node N -m ciap_lib train ...`` (DistributedDataParallel).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HELP = "train CIAP from a YAML config (with --data and --set key=value overrides)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (keys of ciap_lib.config.TrainConfig); "
                                         "defaults are used when omitted")
    parser.add_argument("--data", help="dataset root holding <train_split>/ and <val_split>/ (overrides 'data')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        nargs="+", help="override a config key, e.g. --set epochs=5 image_size=64 "
                                        "audio_encoder=mlp (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from <ckpt_dir>/<run_name>/last.pt")
    parser.add_argument("--mlflow", action="store_true",
                        help="log the run to MLflow (rank 0 only; MLFLOW_TRACKING_URI picks the server)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment name (with --mlflow)")
    parser.add_argument("--json", dest="json_out", help="write the final metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    from ciap_lib.config import load_config

    overrides = [item for group in args.overrides for item in group]
    if args.data:
        overrides.append(f"data={args.data}")
    if args.resume:
        overrides.append("resume=true")
    try:
        cfg = load_config(args.config, overrides)
    except ValueError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2

    from ciap_lib.workflows import fit

    callbacks = []
    if args.mlflow and int(os.environ.get("RANK", "0")) == 0:
        from ciap_lib.tracking import MLflowCallback  # tracking layer; only rank 0 logs
        callbacks.append(MLflowCallback(experiment_name=args.experiment) if args.experiment else MLflowCallback())
    try:
        result = fit(cfg, callbacks)
    except (ValueError, FileNotFoundError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"checkpoint": str(result.checkpoint), **result.metrics}, indent=2))
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"checkpoint": str(result.checkpoint), **result.metrics}, f, indent=2)
    return 0
