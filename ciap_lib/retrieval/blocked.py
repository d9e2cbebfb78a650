"""Blocked backend: float32 score blocks on any device, inputs read ``chunk_size`` rows at a time.

Each (chunk x chunk) block ``image rows @ audio rows.T`` is computed once in float32 and counted in both
directions by :meth:`~ciap_lib.retrieval.counting.Direction.block`: a score above (below) the true pair's by
more than the float32 error bound is surely greater (below); the few inside the bound are settled in float64
(the shared rule). Memory: ~``chunk_size**2`` scores plus O(N) counters; memmaps stay on disk (the audio
matrix is read N / chunk_size times). Works on CUDA / MPS too (float64 settling happens on the CPU).
"""
from __future__ import annotations

import torch

from ciap_lib.retrieval.bounds import full_float32_matmul
from ciap_lib.retrieval.counting import Block64, Direction, directions
from ciap_lib.retrieval.inputs import ArrayLike, rows


def blocked_directions(image_emb: ArrayLike, audio_emb: ArrayLike, chunk_size: int = 4096,
                       device: str | torch.device = "cpu", top1: bool = False, progress: bool = False,
                       stats: dict[str, int] | None = None) -> tuple[Direction, Direction]:
    """Count both directions of N pairs ((N, D) tensors / arrays / memmaps, row i pairs with row i).

    Returns:
        ``(image -> audio, audio -> image)`` :class:`~ciap_lib.retrieval.counting.Direction` objects
        (greater / tied counts, top-1 when ``top1``). ``stats`` (if given) gets ``blocks_float32`` and
        ``float64_scores``.
    """
    from tqdm import tqdm

    n = int(image_emb.shape[0])
    dev = torch.device(device)
    i2a, a2i = directions(image_emb, audio_emb, top1)
    starts = range(0, n, chunk_size)
    bar = tqdm(total=len(starts) ** 2, desc="ranks", unit="block", mininterval=1.0,
               **({} if progress else {"disable": True}))
    with full_float32_matmul():
        for qs in starts:
            qe = min(qs + chunk_size, n)
            img, q_ids = rows(image_emb, qs, qe, dev), torch.arange(qs, qe)
            for ks in starts:
                ke = min(ks + chunk_size, n)
                aud, k_ids = rows(audio_emb, ks, ke, dev), torch.arange(ks, ke)
                S = img @ aud.T                                      # (c, c') image i vs audio j
                if qs == ks:
                    S.diagonal().fill_(float("-inf"))                # the true pair is not its own rival
                s64 = Block64(img, aud)
                i2a.block(S, q_ids, k_ids, s64)
                a2i.block(S.T, k_ids, q_ids, s64.swapped())
                bar.update()
    bar.close()
    if stats is not None:
        stats.update(blocks_float32=len(starts) ** 2, float64_scores=i2a.float64_scores + a2i.float64_scores)
    return i2a, a2i
