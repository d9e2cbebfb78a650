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
                        help="log params, per-epoch metrics and the checkpoint to MLflow (rank 0 only; "
                             "MLFLOW_TRACKING_URI picks the store, default sqlite:///<repo>/mlflow.db)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment name (with --mlflow)")
    parser.add_argument("--json", dest="json_out", help="write the final metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    from ciap_lib.config import load_config

    overrides = [item for group in args.overrides for item in group]
    if args.data:
        overrides.append(f"data={args.data}")
    if args.resume:
        overrides.append("resume=true")
    cfg = load_config(args.config, overrides).check(check_paths=True)  # bad values fail here, before any data

    from ciap_lib.workflows import fit

    rank0 = int(os.environ.get("RANK", "0")) == 0
    callbacks, run_id, tracking = [], None, None
    if args.mlflow and rank0:  # only rank 0 talks to MLflow
        from ciap_lib import tracking  # tracking layer (the only one importing mlflow)
        exp_id = tracking.setup(None, args.experiment or tracking.DEFAULT_EXPERIMENT)
        run = tracking.client().create_run(exp_id, run_name=cfg.run_name,
                                           tags={"git_commit": tracking.git_commit(), "ciap.entry": "cli.train"})
        run_id = run.info.run_id
        callbacks.append(tracking.MLflowCallback(run_id=run_id))
        print(f"MLflow run {run_id} at {tracking.default_tracking_uri()}", file=sys.stderr)
    status = "FAILED"
    try:
        result = fit(cfg, callbacks)
        status = "FINISHED"
    finally:
        if run_id is not None:
            tracking.end_run(run_id, status)
    if rank0:
        summary = {"checkpoint": str(result.checkpoint), "best": result.extra.get("best"),
                   "stopped_early": result.extra.get("stopped_early"), **result.metrics}
        if run_id is not None:
            summary["mlflow_run_id"] = run_id
        print(json.dumps(summary, indent=2))
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(summary, f, indent=2)
    return 0
