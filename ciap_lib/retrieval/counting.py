"""The one counting rule of both backends: which keys beat or tie a query's true partner, which key is its
top-1, decided in float64 wherever float32 (or bfloat16) cannot tell.

A *direction* is queries (rows of one matrix) against keys (rows of the other); query q pairs with key q.

* Score: s(q, j) = dot product of the float32 inputs. In float64 (``s64``) it is within
  ``e_q = gamma(D, 2**-53) |q| max_j |k_j|`` of the exact value (float32 products are exact in float64).
* Ties: tolerance ``tol_q = 2 e_q``. Key j is *greater* than the partner when s64(q, j) > tau_q + tol_q,
  *tied* when |s64(q, j) - tau_q| <= tol_q, else below (tau_q = s64(q, q), the true pair). Exact duplicates
  tie whatever the summation order; scores differing by more than tol_q (~1e-13 for unit vectors, D = 512;
  float32 resolves only ~6e-8) are ordered.
* Top-1: the lowest index among the keys tied (same tolerance) with the best-scoring one, the partner
  included. (Only chains of keys each within tol_q of the next could resolve differently per block order.)

Backends hand in cheap scores with an error interval; only entries whose interval reaches the tie zone
(ranks) or the best score so far (top-1) are rescored:

* :meth:`Direction.block`: a float32 score block (error <= ``F_q = gamma(D, 2**-24) |q| max|k|``), any device;
* :meth:`Direction.entries`: scattered (query, key) entries with an interval each (e.g. from a bf16 screen),
  refined in float32, then in float64.
"""
from __future__ import annotations

from typing import Callable

import torch

from ciap_lib.retrieval.bounds import U32, U64, f32_toward, gamma
from ciap_lib.retrieval.inputs import ArrayLike, rows

Scores64 = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_BATCH = 8192


def dot64(a: torch.Tensor, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """float64 dot products of rows ``a[i]`` and ``b[j]`` ((E,) long indices into (n, D) / (m, D) float32
    matrices on any device) -> (E,) float64 on CPU; gathers ``8192`` pairs at a time."""
    out = torch.empty(len(i), dtype=torch.float64)
    for s in range(0, len(i), _BATCH):
        ii, jj = i[s:s + _BATCH].to(a.device), j[s:s + _BATCH].to(b.device)
        out[s:s + _BATCH] = (a.index_select(0, ii).to("cpu", torch.float64)
                             * b.index_select(0, jj).to("cpu", torch.float64)).sum(1)
    return out


class Block64:
    """float64 scores of entries (i, j) of a block ``a @ b.T`` ((n, D), (m, D) float32, any device), shared
    by both directions: pair by pair when few, else one float64 product of the whole block (e.g. collapsed
    embeddings, where every entry is a near-tie)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a, self.b, self.full = a, b, None

    def __call__(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        if self.full is None and len(i) > 0.02 * self.a.shape[0] * self.b.shape[0]:
            self.full = self.a.to("cpu", torch.float64) @ self.b.to("cpu", torch.float64).T
        if self.full is not None:
            return self.full[i, j]
        return dot64(self.a, self.b, i, j)

    def swapped(self) -> Scores64:
        """The same scores indexed (j, i): for the other direction of the block."""
        return lambda j, i: self(i, j)


def _ones(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x)


class Direction:
    """Counts (greater, tied per query) and top-1 state of one direction for N queries.

    Args:
        tau: (N,) float64 true-pair scores s64(q, q).
        q_norm: (N,) float64 query norms; k_norm_max: the largest key norm.
        dim: D, the embedding width (enters the error bounds).
        top1: also find each query's top-1 key.
    """

    def __init__(self, tau: torch.Tensor, q_norm: torch.Tensor, k_norm_max: float, dim: int, top1: bool):
        n = tau.shape[0]
        self.tau, self.q_norm = tau, q_norm
        self.tol = 2.0 * gamma(dim, U64) * q_norm * k_norm_max               # (N,) tie tolerance
        self.err32 = gamma(dim, U32) * q_norm * k_norm_max                   # (N,) float32 score error
        # float32 scores above hi32 are surely greater, below lo32 surely below; between: float64
        self.hi32 = f32_toward(tau + self.err32 + 2 * self.tol, up=True)
        self.lo32 = f32_toward(tau - self.err32 - 2 * self.tol, up=False)
        self.greater = torch.zeros(n, dtype=torch.long)
        self.tied = torch.zeros(n, dtype=torch.long)
        self.top1 = top1
        self.best = torch.arange(n)            # top-1 so far: the partner, with its score ...
        self.best_s = tau.clone()
        self.top = tau.clone()                 # ... and the best float64 score seen
        self.float32_scores = 0
        self.float64_scores = 0

    # ----------------------------------------------------------------------------------- the rule
    def settle(self, q: torch.Tensor, s64: torch.Tensor) -> None:
        """Count entries of queries q (E,) with float64 scores s64 (E,) as greater / tied / below."""
        t, tol = self.tau[q], self.tol[q]
        g = s64 > t + tol
        e = ~g & (s64 >= t - tol)
        self.greater.index_add_(0, q[g], _ones(q[g]))
        self.tied.index_add_(0, q[e], _ones(q[e]))

    def screen(self, q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Entries whose exact score lies in [lo, hi] (float64 (E,)): count the surely greater ones and
        return the mask of those that reach the tie zone (to settle in float64)."""
        t, m = self.tau[q], 2 * self.tol[q]
        sure = lo > t + m
        self.greater.index_add_(0, q[sure], _ones(q[sure]))
        return ~sure & (hi >= t - m)

    def may_be_top1(self, q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Mask of the entries (exact score in [lo, hi]) that can still be their query's top-1 or tie with it."""
        uq, inv = torch.unique(q, return_inverse=True)
        best_lo = self.top[uq].scatter_reduce(0, inv, lo, "amax")
        return hi >= best_lo[inv] - 2 * self.tol[q]

    def merge_top1(self, q: torch.Tensor, k: torch.Tensor, s64: torch.Tensor) -> None:
        """Merge candidate keys k of queries q (E,) with float64 scores s64 into the top-1 state: the best
        score so far, and the lowest index among the keys within tol of it."""
        if len(q) == 0:
            return
        n = self.tau.shape[0]
        uq, inv = torch.unique(q, return_inverse=True)
        blk = torch.full((len(uq),), float("-inf"), dtype=torch.float64).scatter_reduce(0, inv, s64, "amax")
        top = torch.maximum(self.top[uq], blk)
        floor = top - self.tol[uq]
        ok = s64 >= floor[inv]
        new = torch.full_like(uq, n).scatter_reduce(0, inv[ok], k[ok], "amin")
        new_s = torch.zeros(len(uq), dtype=torch.float64)
        hit = ok & (k == new[inv])
        new_s[inv[hit]] = s64[hit]
        old = torch.where(self.best_s[uq] >= floor, self.best[uq], torch.full_like(uq, n))
        take = new < old
        self.best[uq] = torch.where(take, new, self.best[uq])
        self.best_s[uq] = torch.where(take, new_s, self.best_s[uq])
        self.top[uq] = top

    # ----------------------------------------------------------------------------------- inputs
    def block(self, S: torch.Tensor, q_ids: torch.Tensor, k_ids: torch.Tensor, scores64: Scores64) -> None:
        """Add a float32 score block: S (q, k) = queries ``q_ids`` x keys ``k_ids`` (CPU long), on any device,
        self pairs set to -inf. ``scores64(i, j)`` gives float64 scores of entries (local indices)."""
        dev = S.device
        hi, lo = self.hi32[q_ids].to(dev)[:, None], self.lo32[q_ids].to(dev)[:, None]
        n_gt = torch.count_nonzero(S > hi, dim=1)
        hot = torch.count_nonzero(S >= lo, dim=1) > n_gt           # rows with entries in the error band
        self.greater.index_add_(0, q_ids, n_gt.cpu())
        if self.top1:   # entries that may reach the best score: >= max(best so far, block max - F) - F - 2 tol
            v = S.amax(dim=1).cpu()
            f = self.err32[q_ids]
            t = f32_toward(torch.maximum(self.top[q_ids], v.double() - f) - f - 2 * self.tol[q_ids], up=False)
            hot |= (v >= t).to(dev)
            t = t.to(dev)[:, None]
        r = torch.nonzero(hot).squeeze(1)
        if len(r) == 0:
            return
        sub = S.index_select(0, r)
        band = (sub >= lo[r]) & (sub <= hi[r])
        want = band | (sub >= t[r]) if self.top1 else band
        rr, cc = want.nonzero(as_tuple=True)
        local = r[rr].cpu()
        s64 = scores64(local, cc.cpu())
        self.float64_scores += len(s64)
        q = q_ids[local]
        in_band = band[rr, cc].cpu()
        self.settle(q[in_band], s64[in_band])
        if self.top1:
            is_top = (sub[rr, cc] >= t[r[rr], 0]).cpu()
            self.merge_top1(q[is_top], k_ids[cc.cpu()][is_top], s64[is_top])

    def entries(self, q: torch.Tensor, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                queries: torch.Tensor, keys: torch.Tensor) -> None:
        """Add scattered entries (query q, key k; (E,) long) whose exact score lies in [lo, hi] (float64).
        Undecided ones are scored in float32 from ``queries`` / ``keys`` ((N, D) float32 CPU), and those
        still undecided in float64."""
        und = self.screen(q, lo, hi)
        need = und | self.may_be_top1(q, lo, hi) if self.top1 else und
        q, k, und = q[need], k[need], und[need]
        self.float32_scores += len(q)
        for s in range(0, len(q), _BATCH):
            qb, kb, ub = q[s:s + _BATCH], k[s:s + _BATCH], und[s:s + _BATCH]
            s32 = (queries.index_select(0, qb) * keys.index_select(0, kb)).sum(1).double()
            f = self.err32[qb]
            rank = torch.zeros_like(ub)
            if bool(ub.any()):
                rank[ub] = self.screen(qb[ub], s32[ub] - f[ub], s32[ub] + f[ub])
            top = self.may_be_top1(qb, s32 - f, s32 + f) if self.top1 else torch.zeros_like(ub)
            sel = rank | top
            if not bool(sel.any()):
                continue
            qs, ks = qb[sel], kb[sel]
            s64 = dot64(queries, keys, qs, ks)
            self.float64_scores += len(s64)
            self.settle(qs[rank[sel]], s64[rank[sel]])
            if self.top1:
                self.merge_top1(qs[top[sel]], ks[top[sel]], s64[top[sel]])

    def ranks(self, ties: str) -> torch.Tensor:
        """(N,) float64 ranks: 1 + greater (+ tied: all for ``pessimistic``, half for ``mean``)."""
        g, e = self.greater.double(), self.tied.double()
        if ties == "pessimistic":
            return 1.0 + g + e
        if ties == "optimistic":
            return 1.0 + g
        return 1.0 + g + e / 2.0


def directions(image_emb: ArrayLike, audio_emb: ArrayLike, top1: bool, chunk_size: int = _BATCH,
               ) -> tuple[Direction, Direction]:
    """``(image -> audio, audio -> image)`` for N pairs ((N, D) tensors / arrays / memmaps), from one float64
    pass over the rows (true scores and norms; ``chunk_size`` rows at a time)."""
    n, d = int(image_emb.shape[0]), int(image_emb.shape[1])
    tau, n_img, n_aud = [], [], []
    for s in range(0, n, chunk_size):
        a = rows(image_emb, s, min(n, s + chunk_size)).double()
        b = rows(audio_emb, s, min(n, s + chunk_size)).double()
        tau.append((a * b).sum(1))
        n_img.append(a.norm(dim=1))
        n_aud.append(b.norm(dim=1))
    t, ni, na = torch.cat(tau), torch.cat(n_img), torch.cat(n_aud)
    return (Direction(t, ni, float(na.max()), d, top1), Direction(t, na, float(ni.max()), d, top1))
