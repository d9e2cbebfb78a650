"""Cross-modal retrieval metrics computed in blocks, so that N x N scores are never held at once.

Row ``i`` of ``image_emb`` pairs with row ``i`` of ``audio_emb``. Scores are dot products (use unit-norm
embeddings for cosine similarity). The rank of a query's true partner is counted, block by block, as
``1 + #(other keys scoring above the true pair)`` — no sort and no N x N matrix. Peak extra memory is
about ``chunk_size**2`` scores plus O(N) counters.

Ties (another key with exactly the true pair's score) are handled by ``ties``:

* ``"pessimistic"`` (default): tied keys rank before the true one (rank = 1 + #greater + #tied). A collapsed
  model that maps everything to the same vector gets rank N, never a flattering rank 1.
* ``"optimistic"``: tied keys rank after the true one (rank = 1 + #greater).
* ``"mean"``: the average of the two (the expected rank under a random tie break; may be fractional).

Inputs may be torch tensors, numpy arrays or numpy memmaps: only ``chunk_size`` rows are read at a time.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["retrieval_metrics", "topk", "pair_ranks"]

ArrayLike = Union[torch.Tensor, np.ndarray]
_TIES = ("pessimistic", "optimistic", "mean")


def _rows(x: ArrayLike, start: int, stop: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rows [start, stop) of x as a (stop-start, D) tensor on ``device`` (reads only those rows of a memmap)."""
    if isinstance(x, torch.Tensor):
        return x[start:stop].to(device=device, dtype=dtype)
    arr = np.ascontiguousarray(x[start:stop])
    if not arr.flags.writeable:  # read-only memmap: copy just these rows
        arr = arr.copy()
    return torch.from_numpy(arr).to(device=device, dtype=dtype)


def _check_2d(name: str, x: ArrayLike) -> tuple[int, int]:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    return int(x.shape[0]), int(x.shape[1])


def pair_ranks(image_emb: ArrayLike, audio_emb: ArrayLike, chunk_size: int = 4096, ties: str = "pessimistic",
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               return_top1: bool = False):
    """Rank of each true partner in both directions, computed block-wise.

    Args:
        image_emb: (N, D) image embeddings.
        audio_emb: (N, D) audio embeddings (row i pairs with image row i).
        chunk_size: block side; peak memory ~ chunk_size**2 scores.
        ties: ``"pessimistic"`` | ``"optimistic"`` | ``"mean"`` (see module doc).
        device, dtype: where / in which precision scores are computed.
        return_top1: also return the index of the top-scoring key per query (lowest index among ties).

    Returns:
        ``(rank_i2a, rank_a2i)``: float64 tensors (N,), 1 = the true partner ranked first; plus
        ``(top1_i2a, top1_a2i)`` long (N,) when ``return_top1``.
    """
    n, d = _check_2d("image_emb", image_emb)
    n2, d2 = _check_2d("audio_emb", audio_emb)
    if (n, d) != (n2, d2):
        raise ValueError(f"image_emb {(n, d)} and audio_emb {(n2, d2)} must have the same shape")
    if n == 0:
        raise ValueError("retrieval needs at least one pair, got N = 0")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    dev = torch.device(device)
    # True-pair scores, computed per block exactly like the off-diagonal ones (same matmul path), so that
    # a pair never "beats itself" through rounding differences.
    true = torch.empty(n, dtype=dtype, device=dev)
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        block = _rows(image_emb, s, e, dev, dtype) @ _rows(audio_emb, s, e, dev, dtype).T
        true[s:e] = block.diagonal()
    need_ge, need_gt = ties in ("pessimistic", "mean"), ties in ("optimistic", "mean")
    zeros = lambda: torch.zeros(n, dtype=torch.long, device=dev)  # noqa: E731
    ge_i2a, ge_a2i, gt_i2a, gt_a2i = zeros(), zeros(), zeros(), zeros()
    if return_top1:
        best_i2a = torch.full((n,), float("-inf"), dtype=dtype, device=dev)
        arg_i2a = torch.zeros(n, dtype=torch.long, device=dev)
        best_a2i = torch.full((n,), float("-inf"), dtype=dtype, device=dev)
        arg_a2i = torch.zeros(n, dtype=torch.long, device=dev)
    for qs in range(0, n, chunk_size):
        qe = min(qs + chunk_size, n)
        q = _rows(image_emb, qs, qe, dev, dtype)                      # (c, D) images
        tq = true[qs:qe, None]
        for ks in range(0, n, chunk_size):
            ke = min(ks + chunk_size, n)
            s = q @ _rows(audio_emb, ks, ke, dev, dtype).T            # (c, c') image i vs audio j
            tk = true[None, ks:ke]
            # Counts include the true pair itself on the diagonal block; it is subtracted below.
            if need_ge:
                ge_i2a[qs:qe] += torch.count_nonzero(s >= tq, dim=1)
                ge_a2i[ks:ke] += torch.count_nonzero(s >= tk, dim=0)
            if need_gt:
                gt_i2a[qs:qe] += torch.count_nonzero(s > tq, dim=1)
                gt_a2i[ks:ke] += torch.count_nonzero(s > tk, dim=0)
            if qs == ks:
                d, t = s.diagonal(), true[qs:qe]
                if need_ge:
                    ge_i2a[qs:qe] -= (d >= t).long()
                    ge_a2i[ks:ke] -= (d >= t).long()
                if need_gt:
                    gt_i2a[qs:qe] -= (d > t).long()
                    gt_a2i[ks:ke] -= (d > t).long()
            if return_top1:
                v, a = s.max(1)                                       # first index among ties
                upd = v > best_i2a[qs:qe]
                best_i2a[qs:qe] = torch.where(upd, v, best_i2a[qs:qe])
                arg_i2a[qs:qe] = torch.where(upd, a + ks, arg_i2a[qs:qe])
                v, a = s.max(0)
                upd = v > best_a2i[ks:ke]
                best_a2i[ks:ke] = torch.where(upd, v, best_a2i[ks:ke])
                arg_a2i[ks:ke] = torch.where(upd, a + qs, arg_a2i[ks:ke])

    def rank(gt: torch.Tensor, ge: torch.Tensor) -> torch.Tensor:
        gt, ge = gt.double().cpu(), ge.double().cpu()
        if ties == "pessimistic":
            return 1.0 + ge
        if ties == "optimistic":
            return 1.0 + gt
        return 1.0 + (gt + ge) / 2.0

    ranks = (rank(gt_i2a, ge_i2a), rank(gt_a2i, ge_a2i))
    if return_top1:
        return ranks + (arg_i2a.cpu(), arg_a2i.cpu())
    return ranks


def retrieval_metrics(image_emb: ArrayLike, audio_emb: ArrayLike, labels: ArrayLike | None = None,
                      ks: Sequence[int] = (1, 5, 10), chunk_size: int = 4096, ties: str = "pessimistic",
                      device: str | torch.device = "cpu") -> dict[str, float]:
    """Recall@k and median rank in both directions, and class-level R@1 when labels are given.

    Args:
        image_emb: (N, D); audio_emb: (N, D), row i pairs with row i (tensor, ndarray or memmap).
        labels: optional (N,) integer class per pair; entries < 0 mean "no label". Class R@1 counts a hit
            when the top-1 retrieved item (lowest index among exactly tied scores) has the query's label;
            it is computed over the queries that have a label.
        ks: recall cut-offs.
        chunk_size: block side (peak memory ~ chunk_size**2 scores).
        ties: tie handling of the ranks (see module doc).

    Returns:
        ``{"i2a_R@1", "i2a_R@5", "i2a_R@10", "i2a_median_rank", "a2i_...", "i2a_class_R@1",
        "a2i_class_R@1" (with labels)}`` as plain floats; recalls are fractions in [0, 1].
    """
    n = _check_2d("image_emb", image_emb)[0]
    lab = None
    if labels is not None:
        lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long().cpu()
        if lab.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(lab.shape)}")
        if (lab < 0).all():
            lab = None
    out = pair_ranks(image_emb, audio_emb, chunk_size=chunk_size, ties=ties, device=device,
                     return_top1=lab is not None)
    metrics: dict[str, float] = {}
    for name, r in (("i2a", out[0]), ("a2i", out[1])):
        for k in ks:
            metrics[f"{name}_R@{k}"] = float((r <= k).double().mean())
        metrics[f"{name}_median_rank"] = float(r.median()) if n % 2 else float(r.quantile(0.5))
    if lab is not None:
        has = lab >= 0
        for name, top1 in (("i2a", out[2]), ("a2i", out[3])):
            hit = lab[top1] == lab
            metrics[f"{name}_class_R@1"] = float(hit[has].double().mean())
    return metrics


def topk(queries: ArrayLike, keys: ArrayLike, k: int, chunk_size: int = 4096,
         device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k keys by dot product for each query, block-wise (never builds Q x N).

    Args:
        queries: (Q, D); keys: (N, D) (tensor, ndarray or memmap).
        k: number of results per query (<= N).
        chunk_size: rows of queries and of keys per block.

    Returns:
        ``(scores (Q, k) float, indices (Q, k) long)``, best first, on CPU. Scores equal those of a full
        matrix product; among exactly tied scores the order of indices is not specified.
    """
    q_n, d = _check_2d("queries", queries)
    k_n, d2 = _check_2d("keys", keys)
    if d != d2:
        raise ValueError(f"queries have D={d} but keys have D={d2}")
    if not 1 <= k <= k_n:
        raise ValueError(f"k must be in [1, {k_n}] (number of keys), got {k}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dev = torch.device(device)
    out_s = torch.empty(q_n, k, dtype=dtype)
    out_i = torch.empty(q_n, k, dtype=torch.long)
    for qs in range(0, q_n, chunk_size):
        qe = min(qs + chunk_size, q_n)
        q = _rows(queries, qs, qe, dev, dtype)
        best_s = torch.empty(qe - qs, 0, dtype=dtype, device=dev)
        best_i = torch.empty(qe - qs, 0, dtype=torch.long, device=dev)
        for ks in range(0, k_n, chunk_size):
            ke = min(ks + chunk_size, k_n)
            s = q @ _rows(keys, ks, ke, dev, dtype).T
            kk = min(k, ke - ks)
            v, a = s.topk(kk, dim=1)
            cand_s = torch.cat([best_s, v], 1)
            cand_i = torch.cat([best_i, a + ks], 1)
            v2, order = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
            best_s, best_i = v2, cand_i.gather(1, order)
        out_s[qs:qe], out_i[qs:qe] = best_s.cpu(), best_i.cpu()
    return out_s, out_i
