"""CLAP audio embeddings of dataset files from the frozen AudioLDM's own CLAP audio tower, cached on disk.

Cache layout: ``<cache_dir>/<checkpoint fingerprint[:16]>/<sha256 of the file's bytes>.npy`` (512 float32,
unit norm). Keyed by content and checkpoint, so renamed/copied files hit, edited files and other
checkpoints miss. Each clip is embedded whole (CLAP's window is 10 s; longer clips: their first 10 s).
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from ciap_lib.atomic import atomic_path
from ciap_lib.bridge.checkpoint_io import sha256_file
from ciap_lib.bridge.frozen import FrozenAudioLDM


#: decoded clips waiting for a batch, in units of ``batch_size`` (clips of many different lengths flush them early)
MAX_PENDING = 8


def cache_folder(audioldm: FrozenAudioLDM, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / audioldm.reference_fingerprint[:16]


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, fsync=False) as tmp:
        np.save(tmp, arr)


def clap_audio_features(audioldm: FrozenAudioLDM, audio_paths: Iterable[str | os.PathLike],
                        cache_dir: str | os.PathLike = "data/cache/clap", batch_size: int = 8,
                        progress: bool = False, report: dict | None = None,
                        skip_bad: bool = False) -> dict[str, torch.Tensor]:
    """``{str(resolved path): (512,) unit CLAP audio embedding}`` for every file.

    Embeddings found in the cache are read, not recomputed. The others are computed as the files are read, in
    batches of clips of the same length (clips longer than CLAP's 10 s window count as that window, which is all
    CLAP sees of them), each batch written to the cache before the next is read: at most
    :data:`MAX_PENDING` ``* batch_size`` decoded clips are held at a time, so a VGGSound-sized set (about 200k
    clips) streams through instead of being decoded into memory first.

    ``skip_bad``: a file that cannot be read (``BadFileError``) is left out, and listed in ``report["skipped"]``
    as ``(path, problem)``, instead of stopping the run. ``report``, if given, receives
    ``{"computed": n, "cached": m}`` (and ``"skipped"`` with ``skip_bad``).
    """
    from ciap_lib.audio_io import BadFileError, load_audio

    paths = [Path(p).resolve() for p in audio_paths]
    folder = cache_folder(audioldm, cache_dir)
    out: dict[str, torch.Tensor] = {}
    pending: dict[int, list[tuple[str, Path, np.ndarray]]] = defaultdict(list)  # clip length -> decoded clips
    seen: set[str] = set()
    skipped: list[tuple[str, str]] = []
    n_cached = n_computed = 0
    bar = tqdm(desc="CLAP audio features", unit="clip", mininterval=1.0,
               disable=(not progress) or bool(os.environ.get("TQDM_DISABLE")))

    def embed(items: list[tuple[str, Path, np.ndarray]]) -> None:
        nonlocal n_computed
        emb = audioldm.clap_audio_embed(torch.from_numpy(np.stack([w for _, _, w in items])))
        for (key, cached, _), e in zip(items, emb):
            e = e.detach().cpu().float()
            _save_atomic(cached, e.numpy())
            out[key] = e
        n_computed += len(items)
        bar.update(len(items))

    for p in paths:
        key = str(p)
        if key in seen:
            continue
        seen.add(key)
        try:
            cached = folder / f"{sha256_file(p)}.npy"
        except OSError as e:
            if not skip_bad:
                raise BadFileError(p, f"cannot be read ({e.strerror or e})") from None
            skipped.append((key, f"cannot be read ({e.strerror or e})"))
            continue
        if cached.is_file():
            try:
                out[key] = torch.from_numpy(np.load(cached)).float()
                n_cached += 1
                bar.update(1)
                continue
            except (OSError, ValueError):  # a damaged cache entry is recomputed
                pass
        try:
            wave = load_audio(p, sample_rate=audioldm.sample_rate)
        except BadFileError as e:
            if not skip_bad:
                raise
            skipped.append((key, e.reason))
            continue
        wave = wave[:audioldm.clap_window_samples]  # what CLAP sees: long clips of any length batch together
        group = pending[len(wave)]
        group.append((key, cached, wave))
        if len(group) == batch_size:  # a full batch of one length
            embed(pending.pop(len(wave)))
        elif sum(len(g) for g in pending.values()) >= MAX_PENDING * batch_size:  # many lengths: flush them all
            for length in list(pending):
                embed(pending.pop(length))
    for length in list(pending):
        embed(pending.pop(length))
    bar.close()
    if report is not None:
        report.update(computed=n_computed, cached=n_cached, **({"skipped": skipped} if skip_bad else {}))
    return {str(p): out[str(p)] for p in paths if str(p) in out}
