"""Large embedding sets on disk: sharded ``.npy`` files, a parquet index, memory-mapped loading.

Layout of an embedding folder written by :func:`embed_to_dir`::

    <out>/meta.json                 n, dim, dtype, shard_size, num_shards, classes, source (checkpoint, data)
    <out>/index.parquet             row, image, audio, label (str or null), label_id (int, -1 = none), shard
    <out>/image/shard_00000.npy     (<= shard_size, D) float16|float32 unit-norm image embeddings
    <out>/audio/shard_00000.npy     (same rows) audio embeddings
    <out>/image.npy, audio.npy      (N, D) all shards in one file, written once every shard is there

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so a killed
run leaves only complete shards; running again skips them (``meta.json`` must describe the same job).

:func:`load_embeddings` returns the two (N, D) matrices as ``np.memmap`` arrays (copy-on-write): nothing is read
until used. :func:`metrics_from_dir` and :func:`topk_from_dir` hand them to
:func:`ciap_lib.retrieval.retrieval_metrics` / :func:`~ciap_lib.retrieval.topk`, which read ``chunk_size``
rows at a time, so memory stays bounded by the chunk size (plus O(N) counters) whatever N is.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ciap_lib.atomic import atomic_path, atomic_write_text

__all__ = ["EmbeddingSet", "embed_to_dir", "load_embeddings", "metrics_from_dir", "topk_from_dir",
           "shard_paths", "pair_ranks_exact", "retrieval_metrics_exact", "FORMAT"]

PathLike = Union[str, os.PathLike]
FORMAT = "ciap-embeddings/1"
_DTYPES = {"float16": np.float16, "float32": np.float32}
MODALITIES = ("image", "audio")


# ------------------------------------------------------------------------------------------- helpers
def _atomic_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def _atomic_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def shard_paths(out_dir: PathLike, shard: int) -> dict[str, Path]:
    """``{"image": <out>/image/shard_XXXXX.npy, "audio": ...}`` of shard number ``shard``."""
    return {m: Path(out_dir) / m / f"shard_{shard:05d}.npy" for m in MODALITIES}


def _shard_ok(paths: Mapping[str, Path], rows: int, dim: int, dtype: np.dtype) -> bool:
    for p in paths.values():
        if not p.is_file():
            return False
        try:
            a = np.load(p, mmap_mode="r")
        except Exception:
            return False
        if a.shape != (rows, dim) or a.dtype != dtype:
            return False
    return True


class _Rows(Dataset):
    """Rows [start, stop) of a dataset; accepts ``index`` or ``(index, epoch)`` like PairDataset."""

    def __init__(self, dataset: Dataset, start: int, stop: int):
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, idx):
        if isinstance(idx, (tuple, list)):
            return self.dataset[(self.start + int(idx[0]), int(idx[1]))]
        return self.dataset[self.start + int(idx)]


# ------------------------------------------------------------------------------------------- writing
def embed_to_dir(model: torch.nn.Module, dataset: Dataset, out_dir: PathLike, *, shard_size: int = 8192,
                 dtype: str = "float16", batch_size: int = 128, num_workers: int = 0,
                 source: Mapping[str, Any] | None = None, overwrite: bool = False, progress: bool = True,
                 embed_fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
                 ) -> Path:
    """Embed every pair of ``dataset`` (a :class:`~ciap_lib.data.PairDataset`) into ``out_dir`` in shards.

    Args:
        model: a CIAP model (``encode_image``/``encode_audio``, ``config.embed_dim``).
        dataset: pairs in a fixed order; its ``pairs`` / ``labels`` / ``classes`` fill the index.
        out_dir: the embedding folder (layout in the module doc).
        shard_size: rows per shard.
        dtype: ``"float16"`` (half the disk and memory; scores change by ~1e-3) or ``"float32"``.
        batch_size, num_workers: of the DataLoader used per shard.
        source: extra facts recorded in ``meta.json`` and checked on resume (e.g. checkpoint and data
            fingerprints): a folder holding another job's embeddings is refused unless ``overwrite``.
        overwrite: discard a folder that holds a different job.
        progress: tqdm bar over shards (``TQDM_DISABLE=1`` silences it).
        embed_fn: ``(model, dataset, batch_size, num_workers) -> (image (n,D), audio (n,D), labels (n,))``;
            default :func:`ciap_lib.embedding.embed_dataset`.

    Returns:
        ``out_dir`` as a Path.
    """
    from tqdm import tqdm

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if embed_fn is None:
        from ciap_lib.embedding import embed_dataset as embed_fn  # type: ignore[no-redef]
    out = Path(out_dir)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("embed_to_dir: the dataset is empty")
    dim = int(model.config.embed_dim)  # type: ignore[union-attr]
    np_dtype = np.dtype(_DTYPES[dtype])
    pairs = getattr(dataset, "pairs", None)
    labels = getattr(dataset, "labels", None)
    classes = list(getattr(dataset, "classes", []) or [])
    num_shards = (n + shard_size - 1) // shard_size
    meta = {"format": FORMAT, "n": n, "dim": dim, "dtype": dtype, "shard_size": int(shard_size),
            "num_shards": num_shards, "classes": classes, "source": dict(source or {})}
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        old_job = {k: v for k, v in old.items() if k != "complete"}
        if old_job != meta:
            if not overwrite:
                diff = sorted(k for k in set(old_job) | set(meta) if old_job.get(k) != meta.get(k))
                raise ValueError(f"{out} holds embeddings of another job (different {diff}); "
                                 "use another --out or overwrite=True / --overwrite")
            for m in MODALITIES:
                for p in list((out / m).glob("shard_*.npy")) + [out / f"{m}.npy"]:
                    p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_json({**meta, "complete": False}, meta_path)
    _write_index(out, n, shard_size, pairs, labels, classes)

    todo = [s for s in range(num_shards)
            if not _shard_ok(shard_paths(out, s), min(shard_size, n - s * shard_size), dim, np_dtype)]
    bar = tqdm(total=n, initial=n - sum(min(shard_size, n - s * shard_size) for s in todo), desc="embed",
               unit="pair", mininterval=1.0, **({} if progress else {"disable": True}))
    for s in todo:
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        img, aud, _ = embed_fn(model, _Rows(dataset, start, stop), batch_size, num_workers)
        if img.shape != (stop - start, dim) or aud.shape != (stop - start, dim):
            raise ValueError(f"embed_to_dir: shard {s} got shapes {tuple(img.shape)}, {tuple(aud.shape)}; "
                             f"expected ({stop - start}, {dim})")
        paths = shard_paths(out, s)
        _atomic_npy(img.numpy().astype(np_dtype), paths["image"])
        _atomic_npy(aud.numpy().astype(np_dtype), paths["audio"])
        bar.update(stop - start)
    bar.close()
    _consolidate(out, n, dim, np_dtype, num_shards, shard_size, rebuild=bool(todo))
    _atomic_json({**meta, "complete": True}, meta_path)
    return out


def _write_index(out: Path, n: int, shard_size: int, pairs, labels, classes: Sequence[str]) -> None:
    import pandas as pd

    lab = (labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)).astype(np.int64) \
        if labels is not None else np.full(n, -1, np.int64)
    df = pd.DataFrame({
        "row": np.arange(n, dtype=np.int64),
        "image": [str(p.image) for p in pairs] if pairs is not None else [None] * n,
        "audio": [str(p.audio) for p in pairs] if pairs is not None else [None] * n,
        "label": [classes[i] if i >= 0 else None for i in lab],
        "label_id": lab,
        "shard": np.arange(n, dtype=np.int64) // shard_size,
    })
    with atomic_path(out / "index.parquet") as tmp:
        df.to_parquet(tmp, index=False)


def _consolidate(out: Path, n: int, dim: int, dtype: np.dtype, num_shards: int, shard_size: int,
                 rebuild: bool) -> None:
    """Copy the shards, one at a time, into one (N, D) ``.npy`` per modality (memory: one shard).
    An existing one of the right shape is kept unless ``rebuild`` (some shard was written this run)."""
    for m in MODALITIES:
        dst = out / f"{m}.npy"
        if dst.is_file() and not rebuild:
            try:
                a = np.load(dst, mmap_mode="r")
                if a.shape == (n, dim) and a.dtype == dtype:
                    continue
            except Exception:
                pass
        with atomic_path(dst) as tmp:
            big = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, dim))
            for s in range(num_shards):
                big[s * shard_size:min(n, (s + 1) * shard_size)] = np.load(shard_paths(out, s)[m])
            big.flush()
            del big


# ------------------------------------------------------------------------------------------- reading
@dataclass
class EmbeddingSet:
    """An embedding folder opened for reading.

    Attributes:
        image, audio: (N, D) memory-mapped arrays (copy-on-write: writes never reach the files) (float16 or float32; row i pairs with row i).
        index: pandas DataFrame (row, image, audio, label, label_id, shard).
        meta: the ``meta.json`` dict. root: the folder.
    """

    root: Path
    image: np.ndarray
    audio: np.ndarray
    index: Any
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class ids, -1 where there is no label."""
        return self.index["label_id"].to_numpy(dtype=np.int64)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    def explorer_kwargs(self) -> dict[str, Any]:
        """Arguments for the notebooks' explorer: ``ciap_lib.ui.explorer.build_explorer(**es.explorer_kwargs())``
        (embeddings, file paths, label strings or None)."""
        labels = self.index["label"].tolist()
        has = any(x is not None for x in labels)
        return {"image_emb": self.image, "audio_emb": self.audio, "image_paths": self.index["image"].tolist(),
                "audio_paths": self.index["audio"].tolist(),
                "labels": [x if x is not None else "" for x in labels] if has else None}


def load_embeddings(out_dir: PathLike) -> EmbeddingSet:
    """Open an embedding folder written by :func:`embed_to_dir` (memory-mapped; nothing is read yet)."""
    import pandas as pd

    d = Path(out_dir)
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{d} is not an embedding folder (no meta.json); write one with "
                                "`python -m ciap_lib embed`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r} (expected {FORMAT!r})")
    if not meta.get("complete"):
        raise ValueError(f"{d}: the embedding run did not finish ({meta_path} says complete=false); "
                         "run the same `embed` command again to resume it")
    arrays = {}
    for m in MODALITIES:
        a = np.load(d / f"{m}.npy", mmap_mode="c")  # copy-on-write: the files are never modified
        if a.shape != (meta["n"], meta["dim"]):
            raise ValueError(f"{d / (m + '.npy')}: shape {a.shape} does not match meta.json "
                             f"({meta['n']}, {meta['dim']})")
        arrays[m] = a
    index = pd.read_parquet(d / "index.parquet")
    if len(index) != meta["n"]:
        raise ValueError(f"{d / 'index.parquet'}: {len(index)} rows, meta.json says {meta['n']}")
    return EmbeddingSet(d, arrays["image"], arrays["audio"], index, meta)


def metrics_from_dir(out_dir: PathLike | EmbeddingSet, chunk_size: int = 2048, use_labels: bool = True,
                     fast: bool | None = None, **kw: Any) -> dict[str, float]:
    """Retrieval metrics over an embedding folder.

    ``fast=False``: :func:`ciap_lib.retrieval.retrieval_metrics` (class R@1 too when labelled); memory about
    ``chunk_size**2`` float32 scores plus O(N) counters, the matrices stay on disk.
    ``fast=True``: :func:`retrieval_metrics_exact` (R@k and median rank only, same values with pessimistic
    ties; ~3x faster when most true pairs score above the bulk; holds ~6 bytes per value in memory).
    ``None`` (default): the fast one unless class R@1 is wanted (labels present and ``use_labels``).
    """
    from ciap_lib.retrieval import retrieval_metrics

    es = out_dir if isinstance(out_dir, EmbeddingSet) else load_embeddings(out_dir)
    labels = es.labels if use_labels and (es.labels >= 0).any() else None
    if fast is None:
        fast = labels is None
    if fast:
        return retrieval_metrics_exact(es.image, es.audio, chunk_size=max(chunk_size, 1024), **kw)
    return retrieval_metrics(es.image, es.audio, labels, chunk_size=chunk_size, **kw)


def topk_from_dir(out_dir: PathLike | EmbeddingSet, queries: np.ndarray | torch.Tensor, k: int = 10,
                  against: str = "audio", chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows of the folder's ``against`` matrix (``"audio"`` or ``"image"``) for (Q, D) ``queries``
    (e.g. ``es.image[:5]`` to search audio by image). Returns ``(scores (Q,k), indices (Q,k))``; look rows
    up in ``load_embeddings(...).index``."""
    from ciap_lib.retrieval import topk

    if against not in MODALITIES:
        raise ValueError(f"against must be 'image' or 'audio', got {against!r}")
    es = out_dir if isinstance(out_dir, EmbeddingSet) else load_embeddings(out_dir)
    q = queries if isinstance(queries, torch.Tensor) else torch.from_numpy(np.asarray(queries, np.float32))
    return topk(q.float(), getattr(es, against), k, chunk_size=chunk_size)


# ------------------------------------------------------------------------------------------- fast exact ranks
_U_BF16_OUT = 2.0 ** -7      # bf16 output rounding, relative (2**-8 for round-to-nearest; 2**-7 is safe)


def _gamma(d: int) -> float:
    """Standard bound on the relative error of a float32 dot product of length d (any summation order)."""
    u = 2.0 ** -24
    return d * u / (1.0 - d * u)


def _f32(x: torch.Tensor, up: bool) -> torch.Tensor:
    """float64 -> the nearest float32 on the safe side (>= x when ``up``, else <= x)."""
    y = x.float()
    if up:
        return torch.where(y.double() < x, torch.nextafter(y, torch.tensor(float("inf"))), y)
    return torch.where(y.double() > x, torch.nextafter(y, torch.tensor(float("-inf"))), y)


def _bf16_floor_bits(x: torch.Tensor) -> torch.Tensor:
    """int16 bit patterns of bfloat16 values <= x (float64, x > 0) for an integer ``>=`` test, which is
    exact for a positive threshold: negative bf16 values (and -inf) have negative int16 patterns, and
    positive ones sort like their patterns. Non-positive thresholds get -32768 (every key passes)."""
    b = x.float().bfloat16()
    bits = b.view(torch.int16).clone()
    too_big = b.double() > x
    bits = torch.where(too_big, bits - 1, bits)           # one bf16 step down (positive values)
    return torch.where(x > 0, bits, torch.full_like(bits, -32768))


def pair_ranks_exact(image_emb: Any, audio_emb: Any, chunk_size: int = 4096, use_bf16: bool = True,
                     progress: bool = False, stats: dict[str, int] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ranks of the true partners in both directions (pessimistic ties), faster than a float32 pass.

    ``rank = 1 + #{other keys j : score_j >= score_true}`` with the scores of the float32 inputs computed
    in float64 where it matters (keys within ~1e-13 of the true score count as ties) --
    :func:`ciap_lib.retrieval.pair_ranks` with ``ties="pessimistic"``, without its float32 rounding flips. How: each (chunk x chunk) block is scored once in
    bfloat16 (about twice the float32 speed on CPUs with AVX512-BF16) and used for both directions. A
    rigorous error bound (input rounding, float32 accumulation, bf16 output rounding) gives each query a
    threshold below which a key is surely below the true score. Two int16 max-reductions of the block find
    the queries with any key above it; their few keys (candidates) are scored one by one in float32, and
    the ones within the float32 error bound of the true score in float64. A query with many candidates in
    a block has its block row rescored in float32 instead. When most queries of a block need that (true
    pairs scoring inside the bulk, e.g. an untrained model) the block is scored in float32 directly: the
    worst case is ~1.5 float32 passes.

    Args:
        image_emb, audio_emb: (N, D) tensors / arrays / memmaps (row i pairs with row i); held in memory
            as float32 plus a bfloat16 copy (~6 bytes per value).
        chunk_size: block side (extra memory ~ 2-4 bytes * chunk_size**2).
        use_bf16: False scores every block in float32 (same counting).
        progress: tqdm bar over blocks.
        stats: if given, filled with counts: ``blocks_bf16`` (settled by the bf16 screen; there
            ``rescored_queries`` queries with many candidates were rescored in float32, the other candidates
            one by one: ``float32_scores``), ``blocks_float32`` (scored in float32), ``float64_scores``.

    Returns:
        ``(rank_i2a, rank_a2i)`` float64 tensors (N,).
    """
    from tqdm import tqdm

    def as32(x: Any) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        return t.detach().to("cpu", torch.float32).contiguous()

    I, A = as32(image_emb), as32(audio_emb)
    if I.ndim != 2 or I.shape != A.shape:
        raise ValueError(f"image_emb {tuple(I.shape)} and audio_emb {tuple(A.shape)} must be equal (N, D)")
    n, d = I.shape
    if n == 0 or chunk_size <= 0:
        raise ValueError(f"need N > 0 and chunk_size > 0, got N={n}, chunk_size={chunk_size}")
    g = _gamma(d)
    G = 2 * d * 2.0 ** -53 / (1 - d * 2.0 ** -53)             # float64 dot-product error (two sums)

    def per_row(fn) -> torch.Tensor:   # row statistics in float64, 8192 rows at a time (no N x D temporaries)
        return torch.cat([fn(s, min(s + 8192, n)) for s in range(0, n, 8192)])

    tau = per_row(lambda s, e: torch.from_numpy(np.einsum(   # true scores in float64 (same formula as below)
        "ij,ij->i", I[s:e].numpy().astype(np.float64), A[s:e].numpy().astype(np.float64))))
    nI = per_row(lambda s, e: I[s:e].double().norm(dim=1))
    nA = per_row(lambda s, e: A[s:e].double().norm(dim=1))
    # float32 scores are within F of the exact ones: S32 > hi32 is surely above, S32 < lo32 surely below
    F_row, F_col = g * nI * nA.max(), g * nA * nI.max()
    hi_row, lo_row = _f32(tau + F_row, up=True), _f32(tau - F_row, up=False)
    hi_col, lo_col = _f32(tau + F_col, up=True), _f32(tau - F_col, up=False)
    if use_bf16:
        Ib, Ab = I.bfloat16(), A.bfloat16()
        eI = per_row(lambda s, e: (I[s:e].double() - Ib[s:e].double()).norm(dim=1))
        eA = per_row(lambda s, e: (A[s:e].double() - Ab[s:e].double()).norm(dim=1))
        nIb = per_row(lambda s, e: Ib[s:e].double().norm(dim=1))
        nAb = per_row(lambda s, e: Ab[s:e].double().norm(dim=1))
        # |exact - bf16-path score before output rounding| <= E (input rounding + float32 accumulation)
        E_row = eI * nA.max() + nIb * eA.max() + g * nIb * nAb.max()
        E_col = eA * nI.max() + nAb * eI.max() + g * nAb * nIb.max()
        # a key scoring >= tau has a bf16 output >= (tau - E) * (1 - u) (for tau - E > 0) ...
        bits_row = _bf16_floor_bits((tau - E_row) * (1 - _U_BF16_OUT))
        bits_col = _bf16_floor_bits((tau - E_col) * (1 - _U_BF16_OUT))

        def sure_above(h: torch.Tensor) -> torch.Tensor:
            # ... and a bf16 output > H (1 + u) (H >= 0; H (1 - u) for H < 0) means score > H - E = tau
            return torch.where(h >= 0, h * (1 + _U_BF16_OUT), h * (1 - _U_BF16_OUT))

        hi_bf_row, hi_bf_col = sure_above(tau + E_row), sure_above(tau + E_col)
    cnt_i2a = torch.zeros(n, dtype=torch.long)
    cnt_a2i = torch.zeros(n, dtype=torch.long)
    st = {"blocks_bf16": 0, "blocks_float32": 0, "rescored_queries": 0, "float32_scores": 0, "float64_scores": 0}

    def resolve(S32: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, axis: int) -> None:
        """Add #(exact score >= true score) per query from a float32 block S32 (rows x cols); queries are
        rows (axis 1, image -> audio) or columns (axis 0, audio -> image). Self pairs must be -inf."""
        if axis == 1:
            hi, lo = hi_row[rows][:, None], lo_row[rows][:, None]
        else:
            hi, lo = hi_col[cols][None, :], lo_col[cols][None, :]
        cnt = torch.from_numpy(np.count_nonzero((S32 > hi).numpy(), axis=axis).astype(np.int64))
        band = (S32 >= lo) & (S32 <= hi)
        n_band = int(band.sum())
        if n_band:
            r, c = band.nonzero(as_tuple=True)
            st["float64_scores"] += n_band
            gr, gc = rows[r], cols[c]
            q = r if axis == 1 else c
            if n_band <= 0.02 * band.numel():
                s64 = (I[gr].double() * A[gc].double()).sum(1)
            else:  # many near-ties (e.g. collapsed embeddings): one float64 product for the block
                s64 = (I[rows].double() @ A[cols].double().T)[r, c]
            t = tau[gr if axis == 1 else gc]
            # float64 sums of float32 products: scores within G of the true one count as ties
            hit = s64 >= t - G * (nI[gr] * nA[gc])
            cnt.index_add_(0, q[hit], torch.ones_like(q[hit]))
        (cnt_i2a if axis == 1 else cnt_a2i).index_add_(0, rows if axis == 1 else cols, cnt)

    def exclude_self(S: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        if rows[0] <= cols[-1] and cols[0] <= rows[-1]:
            S[rows[:, None] == cols[None, :]] = float("-inf")
        return S

    def exact_entries(gr: torch.Tensor, gc: torch.Tensor, vals: torch.Tensor, axis: int) -> None:
        """Add, per query, the candidate entries (image gr, audio gc; bf16 scores vals) whose exact score is
        >= the true one: surely so when the bf16 score is high enough; else the pair is scored in float32,
        and only scores inside the float32 error band around the true one are decided in float64."""
        q = gr if axis == 1 else gc
        cnt = cnt_i2a if axis == 1 else cnt_a2i
        hi, lo = (hi_row, lo_row) if axis == 1 else (hi_col, lo_col)
        sure = vals.double() > (hi_bf_row if axis == 1 else hi_bf_col)[q]
        cnt.index_add_(0, q[sure], torch.ones_like(q[sure]))
        gr, gc, q = gr[~sure], gc[~sure], q[~sure]
        st["float32_scores"] += len(gr)
        for s in range(0, len(gr), 8192):
            r, c, qq = gr[s:s + 8192], gc[s:s + 8192], q[s:s + 8192]
            Ir, Ac = I.index_select(0, r), A.index_select(0, c)
            s32 = (Ir * Ac).sum(1)               # float32, within the bound F of the exact score
            above = s32 > hi[qq]
            cnt.index_add_(0, qq[above], torch.ones_like(qq[above]))
            band = ~above & (s32 >= lo[qq])
            if not bool(band.any()):
                continue
            r, c, qq = r[band], c[band], qq[band]
            st["float64_scores"] += len(r)
            s64 = torch.from_numpy(np.einsum("ij,ij->i", Ir[band].numpy().astype(np.float64),
                                             Ac[band].numpy().astype(np.float64)))
            hit = s64 >= tau[qq] - G * (nI[r] * nA[c])
            cnt.index_add_(0, qq[hit], torch.ones_like(qq[hit]))

    heavy_at = 64   # a query with more candidates than this in a block is rescored in float32 there
    blocks = [(qs, ks) for qs in range(0, n, chunk_size) for ks in range(0, n, chunk_size)]
    bar = tqdm(blocks, desc="ranks", unit="block", mininterval=1.0, **({} if progress else {"disable": True}))
    # one preallocated score buffer (a fresh 4096^2 block per step costs page faults: ~20% of the matmul),
    # filled in slabs of rows (a slab's output stays in cache: ~5% faster again)
    buf = torch.empty(min(chunk_size, n) ** 2, dtype=torch.bfloat16) if use_bf16 else None
    slab = 512
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
            # a query has candidates here (keys whose bf16 score reaches its threshold; all others are surely
            # below) only if the block's best key for it does: two int16 max-reductions settle most queries
            br, bc = bits_row[qs:qe], bits_col[ks:ke]
            hot_r = torch.nonzero(Si.amax(1) >= br).squeeze(1)
            hot_c = torch.nonzero(Si.amax(0) >= bc).squeeze(1)
            m_r = Si.index_select(0, hot_r) >= br[hot_r, None]      # (hot rows, k)
            m_c = Si.index_select(1, hot_c) >= bc[None, hot_c]      # (q, hot cols)
            n_r, n_c = m_r.sum(1), m_c.sum(0)
            heavy_r, heavy_c = hot_r[n_r > heavy_at], hot_c[n_c > heavy_at]
            full = len(heavy_r) > 0.3 * (qe - qs) or len(heavy_c) > 0.3 * (ke - ks)
        if full:
            st["blocks_float32"] += 1
            S32 = exclude_self(I[qs:qe] @ A[ks:ke].T, rows, cols)
            resolve(S32, rows, cols, 1)
            resolve(S32, rows, cols, 0)
            continue
        st["blocks_bf16"] += 1
        light = n_r <= heavy_at
        rr, lc = m_r[light].nonzero(as_tuple=True)
        lr = hot_r[light][rr]
        exact_entries(rows[lr], cols[lc], Sb[lr, lc], axis=1)
        light = n_c <= heavy_at
        lr, cc = m_c[:, light].nonzero(as_tuple=True)
        lc = hot_c[light][cc]
        exact_entries(rows[lr], cols[lc], Sb[lr, lc], axis=0)
        st["rescored_queries"] += len(heavy_r) + len(heavy_c)
        if len(heavy_r):
            r = rows[heavy_r]
            resolve(exclude_self(I[r] @ A[ks:ke].T, r, cols), r, cols, 1)
        if len(heavy_c):
            c = cols[heavy_c]
            resolve(exclude_self(I[qs:qe] @ A[c].T, rows, c), rows, c, 0)
    if stats is not None:
        stats.update(st)
    return 1.0 + cnt_i2a.double(), 1.0 + cnt_a2i.double()


def retrieval_metrics_exact(image_emb: Any, audio_emb: Any, ks: Sequence[int] = (1, 5, 10),
                            chunk_size: int = 4096, use_bf16: bool = True, progress: bool = False,
                            ) -> dict[str, float]:
    """Recall@k and median rank in both directions from :func:`pair_ranks_exact` (same keys and
    definitions as :func:`ciap_lib.retrieval.retrieval_metrics` with pessimistic ties, no labels)."""
    r_i2a, r_a2i = pair_ranks_exact(image_emb, audio_emb, chunk_size, use_bf16, progress)
    n = r_i2a.shape[0]
    out: dict[str, float] = {}
    for name, r in (("i2a", r_i2a), ("a2i", r_a2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = float((r <= k).double().mean())
        out[f"{name}_median_rank"] = float(r.median()) if n % 2 else float(r.quantile(0.5))
    return out
