"""``python -m ciap_lib import-videos <video dir or csv> <out dir> [--timestamps ...|--frames-per-clip N]
[--window 1.0] [--workers N]``"""
from __future__ import annotations

import argparse
import os
import sys

HELP = "build an image/audio pairs dataset from videos (frames + 16 kHz mono audio windows; resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a folder of videos (searched recursively) or a CSV list with a 'video' "
                                       "column and optional 'label', 'split', 'timestamps' (s, ';'-separated), 'id'")
    parser.add_argument("out", help="output dataset folder (<out>/<split>/ when the CSV has splits, else <out>/)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--timestamps", help="seconds for every video, comma-separated, e.g. 1.5,4 "
                                           "(a CSV 'timestamps' cell wins for its video)")
    when.add_argument("--frames-per-clip", type=int, default=1,
                      help="evenly spaced pairs per video when no timestamps are given (default 1: the middle)")
    parser.add_argument("--window", type=float, default=1.0, help="audio seconds per pair (default 1.0)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="output audio rate in Hz (default 16000)")
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes (default: min(4, CPUs))")
    parser.add_argument("--retry-failed", action="store_true",
                        help="retry videos that failed in an earlier run (default: skip and list them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ciap_lib.video import import_videos

    try:
        ts = None
        if args.timestamps:
            try:
                ts = [float(x) for x in args.timestamps.replace(";", ",").split(",") if x.strip()]
            except ValueError:
                raise ValueError(f"--timestamps must be numbers separated by commas, got {args.timestamps!r}")
        summary = import_videos(args.source, args.out, timestamps=ts, frames_per_clip=args.frames_per_clip,
                                window=args.window, sample_rate=args.sample_rate, image_format=args.image_format,
                                workers=args.workers, retry_failed=args.retry_failed,
                                progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"import-videos: error: {e}", file=sys.stderr)
        return 2
    print(summary.report())
    return 0
