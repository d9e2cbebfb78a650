"""AudioLDM checkpoint files: names and paths, the SHA-256 sidecar, and reading the state dict safely.

Registry names (``audioldm-s-full`` ...) resolve to ``<ckpt_dir>/<name>.ckpt``; the SHA-256 recorded beside
a file at download (``<file>.sha256``, ``sha256sum`` format) is checked before every read.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from ciap_lib.atomic import atomic_write_text

log = logging.getLogger(__name__)

#: registry names -> default file name under ``ckpt_dir``
MODEL_NAMES: tuple[str, ...] = ("audioldm-s-full", "audioldm-s-full-v2", "audioldm-m-full", "audioldm-l-full")
DEFAULT_MODEL = "audioldm-s-full"


class AudioLDMNotFoundError(FileNotFoundError):
    """The AudioLDM checkpoint is missing, truncated or corrupt. The message says where to put it."""


def _download_hint(path: Path, name: str | None) -> str:
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


def read_state_dict(path: Path, name: str | None = None) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an original (Lightning-format) checkpoint; clear error if unreadable."""
    if not path.is_file():
        raise AudioLDMNotFoundError(f"AudioLDM checkpoint not found: {path}. " + _download_hint(path, name))
    expected = read_sidecar(path)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise AudioLDMNotFoundError(
                f"AudioLDM checkpoint {path} is corrupt: its SHA-256 {actual[:16]}... does not match the "
                f"recorded {expected[:16]}... in {sidecar_path(path)}. Delete both and download again. "
                + _download_hint(path, name))
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as first:  # noqa: BLE001 - Lightning pickles other objects beside the weights
            if "weights_only" not in str(first) and "Unsupported global" not in str(first):
                raise
            log.warning("%s holds non-tensor objects; loading it with weights_only=False", path)
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise AudioLDMNotFoundError(
            f"AudioLDM checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); it is probably "
            f"truncated or corrupt. " + _download_hint(path, name)) from e
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise AudioLDMNotFoundError(
            f"{path} opens, but holds no 'state_dict': it is not an original AudioLDM checkpoint. "
            + _download_hint(path, name))
    return sd
