"""AudioLDM checkpoint files: names and paths, the SHA-256 sidecar, and reading the state dict safely.

Registry names (``audioldm-s-full`` ...) resolve to ``<ckpt_dir>/<name>.ckpt``; the SHA-256 recorded beside
a file at download (``<file>.sha256``, ``sha256sum`` format) is checked before every read.

Reading goes through :func:`ciap_lib.safe_load.safe_load`: the weights-only unpickler with the fixed
:data:`AUDIOLDM_SAFE_GLOBALS`, never a silent fallback to full unpickling. A file that asks for anything else
is refused (:class:`~ciap_lib.safe_load.UnsafeCheckpointError`, naming the file and those globals) unless the
caller opts in with ``trusted=True`` (``load_audioldm(..., trust_checkpoint=True)``, ``--trust-checkpoint``).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import pathlib
from pathlib import Path

import torch

from ciap_lib.atomic import atomic_write_text
from ciap_lib.safe_load import UnsafeCheckpointError, safe_load

#: registry names -> default file name under ``ckpt_dir``
MODEL_NAMES: tuple[str, ...] = ("audioldm-s-full", "audioldm-s-full-v2", "audioldm-m-full", "audioldm-l-full")
DEFAULT_MODEL = "audioldm-s-full"


#: Classes besides tensors and torch's own weights-only allowlist (dict, list, tuple, set, OrderedDict, numbers,
#: strings, ``torch.Size`` ...) that an original AudioLDM checkpoint may hold beside its ``state_dict``: plain
#: containers PyTorch Lightning can write for hyper-parameters and loop/callback state. Fixed on purpose.
#: No released AudioLDM checkpoint could be inspected here, so the globals the real files ask for are unknown.
#: Lightning and omegaconf types they might hold (``pytorch_lightning.utilities.parsing.AttributeDict``,
#: ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``, ``omegaconf.dictconfig.DictConfig``,
#: ``omegaconf.base.ContainerMetadata`` ...) are not listed: neither package is installed, so they cannot be
#: imported to allow them (and loading them with ``trusted=True`` would need the package too). A file asking
#: for them is refused with their names.
AUDIOLDM_SAFE_GLOBALS: tuple[type, ...] = (
    argparse.Namespace, collections.defaultdict, pathlib.PosixPath, pathlib.PurePosixPath,
)


class AudioLDMNotFoundError(FileNotFoundError):
    """The AudioLDM checkpoint is missing, truncated or corrupt. The message says where to put it."""


TRUST_HINT = ("If you trust this file's source (e.g. the official release, SHA-256 checked), load it with the "
              "explicit opt-in: --trust-checkpoint (generate, download) or load_audioldm(..., trust_checkpoint=True).")


def download_hint(path: Path, name: str | None) -> str:
    """How to get the AudioLDM checkpoint that belongs at ``path`` (named ``name``, when it is one of MODEL_NAMES)."""
    target = name or "audioldm-s-full"
    return (f"Put the original AudioLDM checkpoint at {path} "
            f"(or pass its path with --audioldm / load_audioldm(path)). With a network, fetch it with: "
            f"python -m ciap_lib download {target} --ckpt-dir {path.parent}")


def resolve_checkpoint(name_or_path: str | os.PathLike = DEFAULT_MODEL, ckpt_dir: str | os.PathLike = "ckpt"
                       ) -> tuple[Path, str | None]:
    """``("audioldm-s-full", "ckpt")`` -> ``(ckpt/audioldm-s-full.ckpt, "audioldm-s-full")``; a path -> ``(path, None)``."""
    s = str(name_or_path)
    if s in MODEL_NAMES:
        return Path(ckpt_dir) / f"{s}.ckpt", s
    if s.endswith(".ckpt") or os.sep in s or Path(s).exists():
        return Path(s), None
    raise ValueError(f"audioldm: {s!r} is neither a checkpoint name ({', '.join(MODEL_NAMES)}) nor a path")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of a checkpoint is recorded: ``<file>.sha256`` (``sha256sum`` format)."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def write_sidecar(path: str | os.PathLike, digest: str | None = None) -> Path:
    p = Path(path)
    digest = digest or sha256_file(p)
    side = sidecar_path(p)
    return atomic_write_text(side, f"{digest}  {p.name}\n")


def read_sidecar(path: str | os.PathLike) -> str | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    text = side.read_text().split()
    return text[0].lower() if text else None


def read_state_dict(path: Path, name: str | None = None, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an original (Lightning-format) checkpoint, read with the weights-only unpickler
    (plus :data:`AUDIOLDM_SAFE_GLOBALS`), memory-mapped, after the SHA-256 sidecar (when present) matched.

    ``trusted=True``: full unpickling, which can run code from the file (logged as a warning).
    Raises :class:`AudioLDMNotFoundError` (missing, SHA-256 mismatch, unreadable, no ``state_dict``) and
    :class:`~ciap_lib.safe_load.UnsafeCheckpointError` (refused: names the file and the globals it asks for).
    """
    if not path.is_file():
        raise AudioLDMNotFoundError(f"AudioLDM checkpoint not found: {path}. " + download_hint(path, name))
    expected = read_sidecar(path)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise AudioLDMNotFoundError(
                f"AudioLDM checkpoint {path} is corrupt: its SHA-256 {actual[:16]}... does not match the "
                f"recorded {expected[:16]}... in {sidecar_path(path)}. Delete both and download again. "
                + download_hint(path, name))
    try:
        ckpt = safe_load(path, mmap=True, allow=AUDIOLDM_SAFE_GLOBALS, trusted=trusted, hint=TRUST_HINT)
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated archive, junk, a class missing on a trusted load ...
        raise AudioLDMNotFoundError(
            f"AudioLDM checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); it is probably "
            f"truncated or corrupt. " + download_hint(path, name)) from e
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise AudioLDMNotFoundError(
            f"{path} opens, but holds no 'state_dict': it is not an original AudioLDM checkpoint. "
            + download_hint(path, name))
    return sd
