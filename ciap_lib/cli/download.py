"""``python -m ciap_lib download audioldm-s-full [--ckpt-dir ckpt]``"""
from __future__ import annotations

import argparse
import sys

HELP = "download an original AudioLDM checkpoint into ckpt/ (atomic, SHA-256 recorded beside it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ciap_lib.bridge.checkpoint_io import DEFAULT_MODEL, MODEL_NAMES

    parser.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=MODEL_NAMES)
    parser.add_argument("--ckpt-dir", default="ckpt", help="destination folder (default: ckpt)")
    parser.add_argument("--url", help="download from this URL instead of audioldm's (a mirror)")
    parser.add_argument("--force", action="store_true", help="download again even if the file exists")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="let the check that the file opens unpickle it fully even if it asks for globals outside "
                             "the weights-only allowlist (this can run code from the file: only for a trusted source)")


def run(args: argparse.Namespace) -> int:
    from ciap_lib.bridge.download import DownloadError, download_checkpoint

    try:
        path = download_checkpoint(args.name, args.ckpt_dir, url=args.url, force=args.force,
                                   trust_checkpoint=args.trust_checkpoint)
    except (DownloadError, ValueError) as e:
        print(f"download: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
