"""Command line: ``python -m ciap_lib <command> [options]``.

Each command lives in its own module under ``ciap_lib.cli`` exposing ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported lazily so
that ``python -m ciap_lib train --help`` never pays for importing AudioLDM.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: command name -> module under ciap_lib.cli
COMMANDS: dict[str, str] = {
    "train": "train",
    "evaluate": "evaluate",
    "evaluate-generation": "evaluate_generation",
    "download": "download",
    "generate": "generate",
    "run": "run",
    "import-videos": "import_videos",
    "embed": "embed",
    "convert-checkpoint": "convert_checkpoint",
    "cache-features": "cache_features",
}


#: what bad input raises (a parameter, a missing or unreadable file): printed as one line, exit status 2
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def _load(command: str):
    return importlib.import_module(f"ciap_lib.cli.{COMMANDS[command]}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported (all of them when None)."""
    parser = argparse.ArgumentParser(prog="python -m ciap_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if command is not None and name != command:
            sub.add_parser(name, add_help=False)
            continue
        module = _load(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command is None:
        # No (or unknown) command: full help needs every module's one-line help.
        parser = build_parser()
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0 if argv else 2
        parser.parse_args(argv)  # prints the usage error and exits 2
        return 2
    args = build_parser(command).parse_args(argv)
    try:
        return int(_load(command).run(args) or 0)
    except USER_ERRORS as e:  # bad input: one clear message (it names the file or parameter), no traceback
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
