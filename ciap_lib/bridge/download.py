"""Download an original AudioLDM checkpoint from the URL the ``audioldm`` package itself uses.

The bytes go to ``<final>.part``; only when the download is complete (size matches the server's
Content-Length, and the file opens as a checkpoint with a ``state_dict`` through the same safe reader as
every load, :func:`~ciap_lib.bridge.checkpoint_io.read_state_dict`) is it moved into place, with its
SHA-256 recorded beside it (``<final>.sha256``, checked at every load). A partial, corrupt or refused
download (one asking for globals outside the weights-only allowlist, unless ``trust_checkpoint=True``)
never lands at the final path.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ciap_lib.bridge.checkpoint_io import (
    MODEL_NAMES, AudioLDMNotFoundError, read_state_dict, sidecar_path, write_sidecar,
)
from ciap_lib.safe_load import UnsafeCheckpointError


class DownloadError(RuntimeError):
    """The download failed or produced an incomplete/corrupt file (nothing was put in place)."""


def checkpoint_url(name: str) -> str:
    """The URL audioldm 0.1.1 downloads ``name`` from (``audioldm.utils.get_metadata``)."""
    from ciap_lib.bridge.architecture import import_audioldm

    import_audioldm()
    from audioldm.utils import get_metadata

    meta = get_metadata()
    if name not in meta or name not in MODEL_NAMES:
        raise ValueError(f"download: unknown checkpoint {name!r}; one of {', '.join(MODEL_NAMES)}")
    return meta[name]["url"]


def _check_opens(part: Path, name: str, url: str, trusted: bool) -> None:
    """``DownloadError`` unless ``part`` opens as an AudioLDM checkpoint with a ``state_dict``."""
    try:
        read_state_dict(part, name, trusted=trusted)
    except UnsafeCheckpointError as e:
        raise DownloadError(
            f"download of {name} from {url} was refused: it asks for {', '.join(e.unsafe_globals)}, outside the "
            f"weights-only allowlist (unpickling such globals can run arbitrary code); nothing was put in place. "
            f"If you trust the source, download again with --trust-checkpoint (download_checkpoint(..., "
            f"trust_checkpoint=True)) and load it with --trust-checkpoint / load_audioldm(..., "
            f"trust_checkpoint=True).") from None
    except AudioLDMNotFoundError as e:
        raise DownloadError(f"download of {name} from {url} does not open as an AudioLDM checkpoint") from e


def download_checkpoint(name: str, ckpt_dir: str | os.PathLike = "ckpt", url: str | None = None,
                        force: bool = False, progress: bool = True, timeout: float = 60.0,
                        trust_checkpoint: bool = False) -> Path:
    """Fetch ``name`` into ``<ckpt_dir>/<name>.ckpt`` (+ ``.sha256``). ``url`` overrides audioldm's URL.
    ``trust_checkpoint=True`` lets the check that the file opens unpickle it fully (logged as a warning).
    Returns the final path; raises :class:`DownloadError` without touching the final path on failure."""
    if url is None:
        url = checkpoint_url(name)
    final = Path(ckpt_dir) / f"{name}.ckpt"
    if final.is_file() and not force:
        if not sidecar_path(final).is_file():
            write_sidecar(final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    h = hashlib.sha256()
    got = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
            total = resp.headers.get("Content-Length")
            total = int(total) if total is not None else None
            disable = (not progress) or bool(os.environ.get("TQDM_DISABLE"))
            with tqdm(total=total, unit="B", unit_scale=True, desc=final.name, mininterval=1.0, disable=disable) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise DownloadError(f"download of {name} incomplete: {got} of {total} bytes from {url}")
        _check_opens(part, name, url, trust_checkpoint)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    except Exception as e:  # noqa: BLE001 - network errors, IncompleteRead, disk full ...
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {name} from {url} failed: {type(e).__name__}: {e}") from e
    os.replace(part, final)
    write_sidecar(final, h.hexdigest())
    return final
