"""The one way ``ciap_lib`` reads ``torch.save`` files: the weights-only unpickler, always.

``torch.load(..., weights_only=True)`` rebuilds tensors and plain Python containers (dict, list, tuple,
set, str, int, float, bool, None, ``OrderedDict``, ``torch.Size`` ...) and refuses every other global a
pickle asks for. Full unpickling can run arbitrary code while the file is read (a ``__reduce__``
returning ``(os.system, ("...",))``), before any check of its contents, so it is never the default.

* ``allow``: a small, fixed list of extra classes a caller trusts to be rebuilt (passed to
  ``torch.serialization.safe_globals`` for this one load).
* Refused file: :class:`UnsafeCheckpointError` naming the file, the globals it asks for (read
  statically by ``torch.serialization.get_unsafe_globals_in_checkpoint``, nothing is executed) and the
  caller's ``hint`` on what to do.
* ``trusted=True``: the explicit opt-in to full unpickling, for files whose source the user vouches
  for. It logs a warning each time.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Iterable

import torch

log = logging.getLogger(__name__)

DEFAULT_HINT = ("Only if you trust the file's source, load it with the explicit trusted opt-in "
                "(ciap_lib.safe_load.safe_load(..., trusted=True)).")


class UnsafeCheckpointError(ValueError):
    """A file asks for globals outside the weights-only allowlist; it was not unpickled.

    Attributes: ``path`` (the file) and ``unsafe_globals`` (``module.name`` strings it asks for).
    """

    def __init__(self, path: Path, unsafe_globals: list[str], hint: str = DEFAULT_HINT):
        self.path = Path(path)
        self.unsafe_globals = list(unsafe_globals)
        super().__init__(
            f"{self.path}: refused to load: it asks for {', '.join(self.unsafe_globals)}, outside the weights-only "
            f"allowlist (unpickling such globals can run arbitrary code). {hint}")


def unsafe_globals(path: str | os.PathLike, allow: Iterable[Any] = ()) -> list[str]:
    """The globals (``module.name``) a ``torch.save`` zip file asks for beyond torch's weights-only
    allowlist and ``allow``, sorted; found by disassembling its pickle, nothing is executed.
    ``ValueError`` when the file is not a ``torch.save`` zip archive."""
    with torch.serialization.safe_globals(list(allow)):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(os.fspath(path)))


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


def _reason(message: str) -> str:
    """The weights-only unpickler's own complaint, without torch's advice to turn weights-only loading off."""
    lines = [ln.strip() for ln in message.split("Check the documentation")[0].splitlines() if ln.strip()]
    return lines[-1].removeprefix("WeightsUnpickler error:").strip() if len(lines) > 1 else "not a torch.save file"


def _refused_globals(path: Path, allow: list[Any], error: Exception) -> list[str]:
    try:
        return unsafe_globals(path, allow)
    except Exception:  # noqa: BLE001 - not a zip archive (legacy torch.save format, junk): use torch's message
        return sorted(set(_GLOBAL_IN_MESSAGE.findall(str(error))))


def safe_load(path: str | os.PathLike, *, map_location: Any = "cpu", allow: Iterable[Any] = (),
              mmap: bool = False, trusted: bool = False, hint: str = DEFAULT_HINT) -> Any:
    """``torch.load`` of ``path`` with ``weights_only=True`` (plus the classes in ``allow``).

    Args:
        path: a file written by ``torch.save``.
        map_location, mmap: as for ``torch.load`` (``mmap`` needs the zip format).
        allow: extra classes/functions to allow, e.g. ``(argparse.Namespace,)``; fixed by the caller.
        trusted: full unpickling (weights-only off): can run code from the file. Logs a warning.
        hint: appended to the refusal message: what the user can do.
    Raises:
        UnsafeCheckpointError: the file asks for globals outside the allowlist (nothing was executed).
        pickle.UnpicklingError: the weights-only unpickler rejected the file for another reason
            (junk, an unsupported opcode); the message names the file.
        OSError, RuntimeError: unreadable or corrupt archive, as ``torch.load`` raises them.
    """
    p = Path(path)
    allow = list(allow)
    if trusted:
        log.warning("%s: loading with full unpickling (trusted opt-in): this can run arbitrary code from the "
                    "file; only do it for files from a source you trust", p)
    try:
        with torch.serialization.safe_globals(allow):
            return torch.load(p, map_location=map_location, mmap=mmap, weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if trusted or "Weights only load failed" not in str(e):
            raise
        refused = _refused_globals(p, allow, e)
        if refused:
            raise UnsafeCheckpointError(p, refused, hint) from None
        raise pickle.UnpicklingError(f"{p}: the weights-only unpickler rejected it: {_reason(str(e))}") from None
