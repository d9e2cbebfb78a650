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
:func:`ciap_lib.retrieval.retrieval_metrics` / :func:`~ciap_lib.retrieval.topk` (no metric logic here): the
exact method loads them when they fit in memory, the blocked one reads ``chunk_size`` rows at a time.
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
           "shard_paths", "FORMAT"]

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


def metrics_from_dir(out_dir: PathLike | EmbeddingSet, chunk_size: int = 4096, use_labels: bool = True,
                     **kw: Any) -> dict[str, float]:
    """:func:`ciap_lib.retrieval.retrieval_metrics` over an embedding folder (or an opened
    :class:`EmbeddingSet`): R@k and median rank both ways, class R@1 when the index has labels and
    ``use_labels``. ``kw`` goes to it as well (``method``, ``ties``, ``device``, ``progress``, ...)."""
    from ciap_lib.retrieval import retrieval_metrics

    es = out_dir if isinstance(out_dir, EmbeddingSet) else load_embeddings(out_dir)
    return retrieval_metrics(es.image, es.audio, es.labels if use_labels else None, chunk_size=chunk_size, **kw)


def topk_from_dir(out_dir: PathLike | EmbeddingSet, queries: np.ndarray | torch.Tensor, k: int = 10,
                  against: str = "audio", chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows of the folder's ``against`` matrix (``"audio"`` or ``"image"``) for (Q, D) ``queries``
    (e.g. ``es.image[:5]`` to search audio by image). Returns ``(scores (Q,k), indices (Q,k))``; look rows
    up in ``load_embeddings(...).index``."""
    from ciap_lib.retrieval import topk

    if against not in MODALITIES:
        raise ValueError(f"against must be 'image' or 'audio', got {against!r}")
    es = out_dir if isinstance(out_dir, EmbeddingSet) else load_embeddings(out_dir)
    return topk(queries, getattr(es, against), k, chunk_size=chunk_size)
