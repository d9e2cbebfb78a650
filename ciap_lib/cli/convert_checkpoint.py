"""``python -m ciap_lib convert-checkpoint OLD NEW --trust``"""
from __future__ import annotations

import argparse
import sys

HELP = ("rewrite an old-format CIAP checkpoint (ciap-checkpoint/1) in the current format, which loads with "
        "weights_only=True; reading the old file unpickles it fully, so it needs --trust")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", help="old-format checkpoint .pt")
    parser.add_argument("new", help="where to write the converted checkpoint (may be OLD itself)")
    parser.add_argument("--trust", action="store_true",
                        help="you wrote OLD yourself or trust its source: unpickling it can run code from the file")


def run(args: argparse.Namespace) -> int:
    from ciap_lib.checkpoint import convert_checkpoint

    # with --trust, ciap_lib.safe_load logs a warning (shown on stderr) before the old file is unpickled
    try:
        path = convert_checkpoint(args.old, args.new, trusted=args.trust)
    except ValueError as e:
        print(f"convert-checkpoint: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
