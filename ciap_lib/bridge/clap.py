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


def cache_folder(audioldm: FrozenAudioLDM, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / audioldm.reference_fingerprint[:16]


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, fsync=False) as tmp:
        np.save(tmp, arr)


def clap_audio_features(audioldm: FrozenAudioLDM, audio_paths: Iterable[str | os.PathLike],
                        cache_dir: str | os.PathLike = "data/cache/clap", batch_size: int = 8,
                        progress: bool = False, report: dict | None = None) -> dict[str, torch.Tensor]:
    """``{str(resolved path): (512,) unit CLAP audio embedding}`` for every file.

    Embeddings found in the cache are read, not recomputed. ``report``, if given, receives
    ``{"computed": n, "cached": m}``.
    """
    from ciap_lib.audio_io import load_audio

    paths = [Path(p).resolve() for p in audio_paths]
    folder = cache_folder(audioldm, cache_dir)
    out: dict[str, torch.Tensor] = {}
    todo: dict[int, list[tuple[str, Path, np.ndarray]]] = defaultdict(list)
    digests: dict[str, str] = {}
    n_cached = 0
    for p in paths:
        key = str(p)
        if key in out or key in digests:
            continue
        digest = sha256_file(p)
        digests[key] = digest
        cached = folder / f"{digest}.npy"
        if cached.is_file():
            try:
                out[key] = torch.from_numpy(np.load(cached)).float()
                n_cached += 1
                continue
            except (OSError, ValueError):  # a damaged cache entry is recomputed
                pass
        wave = load_audio(p, sample_rate=audioldm.sample_rate)
        todo[len(wave)].append((key, cached, wave))
    n_todo = sum(len(v) for v in todo.values())
    bar = tqdm(total=n_todo, desc="CLAP audio features", mininterval=1.0, disable=(not progress) or bool(os.environ.get("TQDM_DISABLE")))
    for items in todo.values():  # same length -> one batch
        for j in range(0, len(items), batch_size):
            part = items[j:j + batch_size]
            emb = audioldm.clap_audio_embed(torch.from_numpy(np.stack([w for _, _, w in part])))
            for (key, cached, _), e in zip(part, emb):
                e = e.detach().cpu().float()
                _save_atomic(cached, e.numpy())
                out[key] = e
            bar.update(len(part))
    bar.close()
    if report is not None:
        report.update(computed=n_todo, cached=n_cached)
    return {str(p): out[str(p)] for p in paths}

