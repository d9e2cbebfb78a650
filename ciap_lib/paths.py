"""Where the workspace lives: the repository root (the folder holding ``ciap_lib/``, ``notebooks/``,
``experiments/``). Relative paths in experiment files, the default MLflow store and the notebooks' working
directory are all resolved against it."""
from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    """The repository root (the parent of the ``ciap_lib`` package folder)."""
    return Path(__file__).resolve().parent.parent
