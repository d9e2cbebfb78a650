"""``python -m ciap_lib evaluate --checkpoint <pt> --data <dir> [--json out.json]``"""
from __future__ import annotations

import argparse
import json
import sys

HELP = "evaluate a checkpoint: validation loss and retrieval metrics (R@1/5/10, median rank)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint .pt written by train")
    parser.add_argument("--data", help="dataset root holding <split>/, or a split folder "
                                       "(default: the data the checkpoint was trained on)")
    parser.add_argument("--split", default="val", help="split folder under --data (default: val)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable/unpaired files")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    from ciap_lib.audio_io import BadFileError
    from ciap_lib.workflows import evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, batch_size=args.batch_size,
                                      num_workers=args.num_workers, skip_bad=args.skip_bad, device=args.device)
    except (ValueError, FileNotFoundError, BadFileError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(metrics, f, indent=2)
    return 0
