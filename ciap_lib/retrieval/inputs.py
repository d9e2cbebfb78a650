"""Input checks and row access shared by the retrieval backends (tensors, arrays and memmaps alike)."""
from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]
TIES = ("pessimistic", "optimistic", "mean")


def check_2d(name: str, x: ArrayLike) -> tuple[int, int]:
    """``(N, D)`` of a 2-D tensor or numpy array (memmaps included); TypeError / ValueError otherwise."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    return int(x.shape[0]), int(x.shape[1])


def check_pair(image_emb: ArrayLike, audio_emb: ArrayLike, chunk_size: int, ties: str) -> tuple[int, int]:
    """``(N, D)`` of two equally shaped (N, D) inputs with N > 0; also checks ``chunk_size`` and ``ties``."""
    n, d = check_2d("image_emb", image_emb)
    if check_2d("audio_emb", audio_emb) != (n, d):
        raise ValueError(f"image_emb {(n, d)} and audio_emb {tuple(audio_emb.shape)} must have the same shape")
    if n == 0:
        raise ValueError("retrieval needs at least one pair, got N = 0")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    return n, d


def check_labels(labels: ArrayLike | None, n: int) -> torch.Tensor | None:
    """(N,) long labels on CPU, or None when absent or all < 0 ("no label")."""
    if labels is None:
        return None
    lab = torch.as_tensor(labels if isinstance(labels, torch.Tensor) else np.asarray(labels)).long().cpu()
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(lab.shape)}")
    return None if bool((lab < 0).all()) else lab


def rows(x: ArrayLike, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows [start, stop) of x as a float32 (stop-start, D) tensor on ``device`` (reads only those rows of a
    memmap)."""
    if isinstance(x, torch.Tensor):
        return x[start:stop].to(device=device, dtype=torch.float32)
    arr = np.ascontiguousarray(x[start:stop])
    if not arr.flags.writeable:  # read-only memmap: copy just these rows
        arr = arr.copy()
    return torch.from_numpy(arr).to(device=device, dtype=torch.float32)


def as_float32(x: ArrayLike) -> torch.Tensor:
    """All of x as a contiguous (N, D) float32 CPU tensor (no copy when it already is one)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).contiguous()
    arr = np.asarray(x)
    if arr.dtype != np.float32 or not arr.flags.writeable:  # e.g. a read-only or float16 memmap: one copy
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr))


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable`` on Linux; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62
