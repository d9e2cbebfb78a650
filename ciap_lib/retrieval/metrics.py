"""The retrieval API: :func:`pair_ranks` and :func:`retrieval_metrics`, over either backend."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ciap_lib.retrieval.blocked import blocked_directions
from ciap_lib.retrieval.exact import exact_directions
from ciap_lib.retrieval.inputs import ArrayLike, available_memory, check_labels, check_pair

METHODS = ("auto", "exact", "blocked")


def choose_method(image_emb: ArrayLike, audio_emb: ArrayLike, device: str | torch.device = "cpu") -> str:
    """What ``method="auto"`` picks: ``"exact"`` (bf16 screen, fastest) on the CPU when both float32
    matrices and their bf16 copies (~12 bytes per pair and dimension) fit in half the available memory;
    ``"blocked"`` for other devices and for memmaps larger than that (it reads them chunk by chunk)."""
    if torch.device(device).type != "cpu":
        return "blocked"
    if isinstance(image_emb, np.memmap) or isinstance(audio_emb, np.memmap):
        n, d = image_emb.shape
        if 12 * n * d > available_memory() // 2:
            return "blocked"
    return "exact"


def pair_ranks(image_emb: ArrayLike, audio_emb: ArrayLike, chunk_size: int = 4096, ties: str = "pessimistic",
               device: str | torch.device = "cpu", return_top1: bool = False, *, method: str = "auto",
               use_bf16: bool | None = None, progress: bool = False, stats: dict[str, int] | None = None,
               ) -> tuple[torch.Tensor, ...]:
    """Rank of each true partner in both directions, and optionally each query's top-1 key.

    Args:
        image_emb: (N, D) image embeddings; audio_emb: (N, D), row i pairs with image row i (tensors,
            arrays or memmaps; float16 inputs are used as their exact float32 values).
        chunk_size: block side (memory ~ chunk_size**2 scores).
        ties: ``"pessimistic"`` | ``"optimistic"`` | ``"mean"`` (see the package doc).
        device: where the blocked backend scores its blocks (the exact one runs on the CPU).
        return_top1: also return each query's top-1 key (lowest index among tied best scores).
        method: ``"auto"`` | ``"exact"`` | ``"blocked"`` (:func:`choose_method` for auto); both give
            the same ranks and top-1.
        use_bf16: exact backend only: bf16 screen or not (None: when the CPU has native bf16).
        progress: tqdm bar over blocks.
        stats: if given, filled with the backend's counts (blocks, rescored entries).

    Returns:
        ``(rank_i2a, rank_a2i)`` float64 (N,), 1 = the true partner ranked first; plus ``(top1_i2a,
        top1_a2i)`` long (N,) when ``return_top1``. All on the CPU.
    """
    check_pair(image_emb, audio_emb, chunk_size, ties)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = choose_method(image_emb, audio_emb, device)
    if method == "exact":
        if torch.device(device).type != "cpu":
            raise ValueError(f"method='exact' runs on the CPU; use method='blocked' for device={device!r}")
        i2a, a2i = exact_directions(image_emb, audio_emb, chunk_size, use_bf16, return_top1, progress, stats)
    else:
        if use_bf16:
            raise ValueError("use_bf16 applies to method='exact' only")
        i2a, a2i = blocked_directions(image_emb, audio_emb, chunk_size, device, return_top1, progress, stats)
    ranks = (i2a.ranks(ties), a2i.ranks(ties))
    return ranks + (i2a.best, a2i.best) if return_top1 else ranks


DEFAULT_KS = (1, 5, 10)


def metric_names(ks: Sequence[int] = DEFAULT_KS, labels: bool = True) -> list[str]:
    """The keys :func:`retrieval_metrics` returns for ``ks`` (class R@1 only when ``labels``), in its order."""
    names = [f"{d}_{m}" for d in ("i2a", "a2i") for m in [f"R@{k}" for k in ks] + ["median_rank"]]
    return names + (["i2a_class_R@1", "a2i_class_R@1"] if labels else [])


def retrieval_metrics(image_emb: ArrayLike, audio_emb: ArrayLike, labels: ArrayLike | None = None,
                      ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 4096, ties: str = "pessimistic",
                      device: str | torch.device = "cpu", *, method: str = "auto", use_bf16: bool | None = None,
                      progress: bool = False) -> dict[str, float]:
    """Recall@k and median rank in both directions, and class-level R@1 when labels are given.

    Args:
        image_emb: (N, D); audio_emb: (N, D), row i pairs with row i (tensor, ndarray or memmap).
        labels: optional (N,) integer class per pair; entries < 0 mean "no label". Class R@1 counts a hit
            when the top-1 retrieved item (lowest index among tied best scores) has the query's label; it
            is computed over the queries that have a label.
        ks: recall cut-offs.
        chunk_size, ties, device, method, use_bf16, progress: as in :func:`pair_ranks`.

    Returns:
        ``{"i2a_R@1", "i2a_R@5", "i2a_R@10", "i2a_median_rank", "a2i_...", "i2a_class_R@1",
        "a2i_class_R@1" (with labels)}`` as plain floats; recalls are fractions in [0, 1].
    """
    n = check_pair(image_emb, audio_emb, chunk_size, ties)[0]
    lab = check_labels(labels, n)
    out = pair_ranks(image_emb, audio_emb, chunk_size, ties, device, return_top1=lab is not None,
                     method=method, use_bf16=use_bf16, progress=progress)
    metrics: dict[str, float] = {}
    for name, r in (("i2a", out[0]), ("a2i", out[1])):
        for k in ks:
            metrics[f"{name}_R@{k}"] = float((r <= k).double().mean())
        metrics[f"{name}_median_rank"] = float(r.median()) if n % 2 else float(r.quantile(0.5))
    if lab is not None:
        has = lab >= 0
        for name, top1 in (("i2a", out[2]), ("a2i", out[3])):
            metrics[f"{name}_class_R@1"] = float((lab[top1] == lab)[has].double().mean())
    return metrics
