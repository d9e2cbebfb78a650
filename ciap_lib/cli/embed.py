"""``python -m ciap_lib embed --checkpoint <pt> --data <dir> --out <dir> [--dtype float16|float32]
[--shard-size N]``"""
from __future__ import annotations

import argparse
import json
import sys

HELP = "embed a dataset with a checkpoint into .npy shards + a parquet index (resumable; memory-mapped reads)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint .pt written by train")
    parser.add_argument("--data", required=True, help="dataset root holding <split>/, or a split folder")
    parser.add_argument("--split", default="val", help="split folder under --data (default: val)")
    parser.add_argument("--out", required=True, help="output folder (shards, index.parquet, meta.json)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--shard-size", type=int, default=8192, help="rows per shard (default 8192)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable/unpaired files")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder that holds another job's embeddings")
    parser.add_argument("--metrics", action="store_true",
                        help="afterwards, print retrieval metrics computed over the written files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ciap_lib.audio_io import BadFileError
    from ciap_lib.embed import embed_to_dir, metrics_from_dir
    from ciap_lib.pairs import dataset_fingerprint
    from ciap_lib.workflows import load_eval_split

    try:
        ev = load_eval_split(args.checkpoint, args.data, args.split, skip_bad=args.skip_bad, cache="lazy",
                             device=args.device)
        model, ds = ev.model, ev.dataset
        split_dir = ds.split_dir
        ck = Path(args.checkpoint)
        st = ck.stat()
        source = {"checkpoint": str(ck.resolve()), "checkpoint_size": st.st_size,
                  "checkpoint_mtime_ns": st.st_mtime_ns, "data": str(split_dir.resolve()),
                  "data_fingerprint": dataset_fingerprint(split_dir), "skipped": len(ds.skipped)}
        out = embed_to_dir(model, ds, args.out, shard_size=args.shard_size, dtype=args.dtype,
                           batch_size=args.batch_size, num_workers=args.num_workers, source=source,
                           overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, BadFileError) as e:
        print(f"embed: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(ds)} pairs ({len(ds.skipped)} skipped) to {out}")
    if ds.skipped:
        print(ds.report())
    if args.metrics:
        print(json.dumps(metrics_from_dir(out), indent=2))
    return 0
