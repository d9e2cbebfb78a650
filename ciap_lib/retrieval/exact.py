"""Exact backend: a bfloat16 screen with a rigorous error bound, float32 candidates, float64 near-ties.

Each (chunk x chunk) block is scored once in bfloat16 (about twice the float32 speed on CPUs with
AVX512-BF16 / AMX) and used for both directions. A rigorous bound E on the bf16 path's error (input
rounding, float32 accumulation, bf16 output rounding) gives each query an int16 threshold below which a key
surely scores below the true pair (minus the tie tolerance). Two int16 max-reductions of the block find the
queries with any key above it; their few keys (candidates) go, with their bf16 interval, to
:meth:`~ciap_lib.retrieval.counting.Direction.entries` (float32, then float64 for the near-ties: the shared
rule). A query with many candidates in a block has its block row rescored in float32 instead
(:meth:`~ciap_lib.retrieval.counting.Direction.block`). When most queries of a block need that (true pairs
inside the bulk, e.g. an untrained model) the block is scored in float32 directly: the worst case is ~1.5
float32 passes.

Top-1 comes at little extra cost: a key that can be a query's top-1 scores at least the true pair's score
(minus the tolerance), so it is already among the candidates; only the ones whose interval reaches the
best score so far are rescored.

Memory: both matrices as float32 plus a bf16 copy (~6 bytes per value), and ~2-4 bytes * chunk_size**2.
CPU only.
"""
from __future__ import annotations

import torch

from ciap_lib.hardware import cpu_has_bf16
from ciap_lib.retrieval.bounds import full_float32_matmul, gamma, U32
from ciap_lib.retrieval.counting import Block64, Direction, directions
from ciap_lib.retrieval.inputs import ArrayLike, as_float32

U_BF16_OUT = 2.0 ** -7   # bf16 output rounding, relative (2**-8 for round-to-nearest; 2**-7 is safe)
_TINY = 2.0 ** -120      # absolute slack for bf16 results near the underflow range
HEAVY_AT = 64            # a query with more candidates than this in a block is rescored in float32 there


def _bf16_floor_bits(x: torch.Tensor) -> torch.Tensor:
    """int16 bit patterns of bfloat16 values <= x (float64, x > 0) for an integer ``>=`` test, which is
    exact for a positive threshold: negative bf16 values (and -inf) have negative int16 patterns, and
    positive ones sort like their patterns. Non-positive thresholds get -32768 (every key passes)."""
    b = x.float().bfloat16()
    bits = b.view(torch.int16).clone()
    too_big = b.double() > x
    bits = torch.where(too_big, bits - 1, bits)           # one bf16 step down (positive values)
    return torch.where(x > 0, bits, torch.full_like(bits, -32768))


def _bf16_interval(v: torch.Tensor, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds (float64) on the exact score behind bf16 outputs v, given the pre-rounding error bound err."""
    b = v.double()
    lo = torch.where(b >= 0, b / (1 + U_BF16_OUT), b / (1 - U_BF16_OUT)) - err - _TINY
    hi = torch.where(b >= 0, b / (1 - U_BF16_OUT), b / (1 + U_BF16_OUT)) + err + _TINY
    return lo, hi


def _per_row(fn, n: int) -> torch.Tensor:
    """Row statistics, 8192 rows at a time (no N x D float64 temporaries)."""
    return torch.cat([fn(s, min(s + 8192, n)) for s in range(0, n, 8192)])


def _exclude_self(S: torch.Tensor, q_ids: torch.Tensor, k_ids: torch.Tensor) -> torch.Tensor:
    if q_ids[0] <= k_ids[-1] and k_ids[0] <= q_ids[-1]:
        S[q_ids[:, None] == k_ids[None, :]] = float("-inf")
    return S


def exact_directions(image_emb: ArrayLike, audio_emb: ArrayLike, chunk_size: int = 4096,
                     use_bf16: bool | None = None, top1: bool = False, progress: bool = False,
                     stats: dict[str, int] | None = None) -> tuple[Direction, Direction]:
    """Count both directions of N pairs ((N, D) tensors / arrays / memmaps, loaded into memory as float32).

    Args:
        use_bf16: screen blocks in bfloat16; ``None``: when the CPU has native bf16 (:func:`ciap_lib.hardware.cpu_has_bf16`; without it the bf16 screen is no faster).
            False scores every block in float32 (same counts).
        stats: if given, filled with ``blocks_bf16`` (settled by the bf16 screen; there ``rescored_queries``
            queries with many candidates were rescored in float32, the other candidates one by one:
            ``float32_scores``), ``blocks_float32`` (scored in float32) and ``float64_scores``.

    Returns:
        ``(image -> audio, audio -> image)`` :class:`~ciap_lib.retrieval.counting.Direction` objects.
    """
    from tqdm import tqdm

    I, A = as_float32(image_emb), as_float32(audio_emb)
    n, d = I.shape
    if use_bf16 is None:
        use_bf16 = cpu_has_bf16()
    i2a, a2i = directions(I, A, top1)
    if use_bf16:
        g = gamma(d, U32)
        Ib, Ab = I.bfloat16(), A.bfloat16()
        nI, nA = i2a.q_norm, a2i.q_norm
        eI = _per_row(lambda s, e: (I[s:e].double() - Ib[s:e].double()).norm(dim=1), n)
        eA = _per_row(lambda s, e: (A[s:e].double() - Ab[s:e].double()).norm(dim=1), n)
        nIb = _per_row(lambda s, e: Ib[s:e].double().norm(dim=1), n)
        nAb = _per_row(lambda s, e: Ab[s:e].double().norm(dim=1), n)
        # |exact - bf16-path score before output rounding| <= E (input rounding + float32 accumulation)
        E_row = eI * nA.max() + nIb * eA.max() + g * nIb * nAb.max()
        E_col = eA * nI.max() + nAb * eI.max() + g * nAb * nIb.max()
        # a key scoring >= tau - 2 tol (tied or above, the top-1 included) has a bf16 output >= this
        bits_row = _bf16_floor_bits((i2a.tau - 2 * i2a.tol - E_row) * (1 - U_BF16_OUT))
        bits_col = _bf16_floor_bits((a2i.tau - 2 * a2i.tol - E_col) * (1 - U_BF16_OUT))
    st = {"blocks_bf16": 0, "blocks_float32": 0, "rescored_queries": 0}
    blocks = [(qs, ks) for qs in range(0, n, chunk_size) for ks in range(0, n, chunk_size)]
    bar = tqdm(blocks, desc="ranks", unit="block", mininterval=1.0, **({} if progress else {"disable": True}))
    # one preallocated score buffer (a fresh 4096^2 block per step costs page faults: ~20% of the matmul),
    # filled in slabs of rows (a slab's output stays in cache: ~5% faster again)
    buf = torch.empty(min(chunk_size, n) ** 2, dtype=torch.bfloat16) if use_bf16 else None
    slab = 512
    with full_float32_matmul():
        for qs, ks in bar:
            qe, ke = min(qs + chunk_size, n), min(ks + chunk_size, n)
            rows, cols = torch.arange(qs, qe), torch.arange(ks, ke)
            full = True
            if use_bf16:
                Sb = buf[: (qe - qs) * (ke - ks)].view(qe - qs, ke - ks)   # (q, k) bfloat16 scores
                keys_t = Ab[ks:ke].T
                for r in range(0, qe - qs, slab):
                    torch.mm(Ib[qs + r:min(qs + r + slab, qe)], keys_t, out=Sb[r:r + slab])
                if qs == ks:
                    Sb.diagonal().fill_(float("-inf"))
                Si = Sb.view(torch.int16)
                # a query has candidates here (keys whose bf16 score reaches its threshold; all others are
                # surely below) only if the block's best key for it does: two int16 max-reductions settle most
                br, bc = bits_row[qs:qe], bits_col[ks:ke]
                hot_r = torch.nonzero(Si.amax(1) >= br).squeeze(1)
                hot_c = torch.nonzero(Si.amax(0) >= bc).squeeze(1)
                m_r = Si.index_select(0, hot_r) >= br[hot_r, None]      # (hot rows, k)
                m_c = Si.index_select(1, hot_c) >= bc[None, hot_c]      # (q, hot cols)
                n_r, n_c = m_r.sum(1), m_c.sum(0)
                heavy_r, heavy_c = hot_r[n_r > HEAVY_AT], hot_c[n_c > HEAVY_AT]
                full = len(heavy_r) > 0.3 * (qe - qs) or len(heavy_c) > 0.3 * (ke - ks)
            if full:
                st["blocks_float32"] += 1
                S32 = _exclude_self(I[qs:qe] @ A[ks:ke].T, rows, cols)
                s64 = Block64(I[qs:qe], A[ks:ke])
                i2a.block(S32, rows, cols, s64)
                a2i.block(S32.T, cols, rows, s64.swapped())
                continue
            st["blocks_bf16"] += 1
            light = n_r <= HEAVY_AT
            rr, lc = m_r[light].nonzero(as_tuple=True)
            lr = hot_r[light][rr]
            q = rows[lr]
            i2a.entries(q, cols[lc], *_bf16_interval(Sb[lr, lc], E_row[q]), I, A)
            light = n_c <= HEAVY_AT
            lr, cc = m_c[:, light].nonzero(as_tuple=True)
            lc = hot_c[light][cc]
            q = cols[lc]
            a2i.entries(q, rows[lr], *_bf16_interval(Sb[lr, lc], E_col[q]), A, I)
            st["rescored_queries"] += len(heavy_r) + len(heavy_c)
            if len(heavy_r):
                r = rows[heavy_r]
                i2a.block(_exclude_self(I[r] @ A[ks:ke].T, r, cols), r, cols, Block64(I[r], A[ks:ke]))
            if len(heavy_c):
                c = cols[heavy_c]
                a2i.block(_exclude_self(A[c] @ I[qs:qe].T, c, rows), c, rows, Block64(A[c], I[qs:qe]))
    if stats is not None:
        stats.update(st, float32_scores=i2a.float32_scores + a2i.float32_scores,
                     float64_scores=i2a.float64_scores + a2i.float64_scores)
    return i2a, a2i
