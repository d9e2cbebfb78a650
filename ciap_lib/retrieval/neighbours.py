"""Top-k neighbours by dot product, block-wise (never builds the Q x N score matrix)."""
from __future__ import annotations

import torch

from ciap_lib.retrieval.inputs import ArrayLike, check_2d, rows


def topk(queries: ArrayLike, keys: ArrayLike, k: int, chunk_size: int = 4096,
         device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k keys by dot product for each query, block-wise in float32.

    Args:
        queries: (Q, D); keys: (N, D) (tensor, ndarray or memmap).
        k: number of results per query (<= N).
        chunk_size: rows of queries and of keys per block.
        device: where the blocks are scored.

    Returns:
        ``(scores (Q, k) float32, indices (Q, k) long)``, best first, on CPU. Scores equal those of a full
        matrix product; among exactly tied scores the order of indices is not specified.
    """
    q_n, d = check_2d("queries", queries)
    k_n, d2 = check_2d("keys", keys)
    if d != d2:
        raise ValueError(f"queries have D={d} but keys have D={d2}")
    if not 1 <= k <= k_n:
        raise ValueError(f"k must be in [1, {k_n}] (number of keys), got {k}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dev = torch.device(device)
    out_s = torch.empty(q_n, k, dtype=torch.float32)
    out_i = torch.empty(q_n, k, dtype=torch.long)
    for qs in range(0, q_n, chunk_size):
        qe = min(qs + chunk_size, q_n)
        q = rows(queries, qs, qe, dev)
        best_s = torch.empty(qe - qs, 0, dtype=torch.float32, device=dev)
        best_i = torch.empty(qe - qs, 0, dtype=torch.long, device=dev)
        for ks in range(0, k_n, chunk_size):
            ke = min(ks + chunk_size, k_n)
            s = q @ rows(keys, ks, ke, dev).T
            v, a = s.topk(min(k, ke - ks), dim=1)
            cand_s = torch.cat([best_s, v], 1)
            cand_i = torch.cat([best_i, a + ks], 1)
            v2, order = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
            best_s, best_i = v2, cand_i.gather(1, order)
        out_s[qs:qe], out_i[qs:qe] = best_s.cpu(), best_i.cpu()
    return out_s, out_i
