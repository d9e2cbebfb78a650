"""Atomic file writes: nothing is ever left half-written at a final path.

Every writer in ``ciap_lib`` (checkpoints, WAVs, frames, shards, manifests, caches) goes through
:func:`atomic_path`: write to a temporary file in the same folder, fsync, give it the permissions a
plain ``open`` would (mkstemp's are 0600), then ``os.replace`` it over the destination. Readers see
the old file or the complete new one; a crash leaves at most a hidden ``.<name>.*.tmp<suffix>`` file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that look at it still work);
    when the block ends without error it is moved into place, otherwise deleted.

    Example::

        with atomic_path("out/clip.wav") as tmp:
            soundfile.write(tmp, wave, 16000)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
