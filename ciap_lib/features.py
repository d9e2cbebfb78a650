"""Cached features of a frozen image backbone: each image runs through the backbone once, ever.

Layout::

    <cache_dir>/<key digest[:16]>/meta.json          the key (below), written once
    <cache_dir>/<key digest[:16]>/<sha256 of the image file's bytes>.npy     (F,) float32

The key is the backbone name, the sha256 of its weights (``ImageEncoder.weights_digest``), the preprocessing
(``ImagePreprocess.to_dict()``), the precision the features were computed in and their size. Renamed or copied
images hit (the entry is keyed by content); an edited image, other weights, other preprocessing or another
precision miss: stale features are never reused. Entries are written atomically (a temporary file, then
``os.replace``), each as soon as its batch is done, so an interrupted run resumes where it stopped; a damaged entry
is recomputed. ``rank``/``world_size`` give each process of a ``torchrun`` job its own shard of the images
(``python -m ciap_lib cache-features``), so large sets are cached on several GPUs or machines sharing the folder.

This is the image side of the V2A-Mapper setup: with ``freeze_backbone`` and the CLAP audio cache
(``ciap_lib.bridge.clap``) training touches only the head. Core layer: no AudioLDM needed.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ciap_lib.atomic import atomic_path, atomic_write_text
from ciap_lib.audio_io import BadFileError
from ciap_lib.images import ImagePreprocess, load_image
from ciap_lib.distributed import shard_paths

__all__ = ["PRECISIONS", "FORMAT", "FeatureKey", "CacheReport", "feature_key", "cache_folder", "file_digest",
           "image_features"]

#: precisions features can be computed in: float32, bfloat16 autocast, or ``auto``: the faster of the two where the
#: backbone runs (:func:`ciap_lib.hardware.faster_precision`, resolved by :func:`feature_key`). bf16 is not always the
#: faster: ViT-B/32 ran 84.5 images/s in bf16 against 28.7 in float32 on an AMX Xeon, but 17.2-17.8 against
#: 30.8-33.5 on a Xeon with AVX512-BF16 and no AMX (batch 32, 2 cores)
PRECISIONS = ("auto", "fp32", "bf16")
FORMAT = "ciap-image-features/1"


@dataclass(frozen=True)
class FeatureKey:
    """What identifies a set of cached features (everything that changes them)."""

    backbone: str
    weights_digest: str
    preprocess: dict[str, Any]
    precision: str
    feature_dim: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @property
    def digest(self) -> str:
        """sha256 of the key (names the cache folder)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def feature_key(model: nn.Module, precision: str = "fp32", device: torch.device | str | None = None) -> FeatureKey:
    """The :class:`FeatureKey` of a CIAP model's image backbone computed in ``precision``. ``"auto"`` is resolved
    here, to ``"bf16"`` or ``"fp32"`` on ``device`` (default: where the backbone's weights are), so the key, the
    cache folder and what is recorded hold the precision that ran."""
    if precision not in PRECISIONS:
        raise ValueError(f"feature precision {precision!r} is not one of {list(PRECISIONS)}")
    enc = model.image_encoder
    if precision == "auto":
        from ciap_lib.hardware import faster_precision

        precision = faster_precision(device if device is not None else next(enc.backbone.parameters()).device)
    digest = enc.weights_digest
    if digest is None:  # a model rebuilt from a checkpoint that predates the digest
        from ciap_lib.models import weights_digest
        digest = enc.weights_digest = weights_digest(enc.backbone)
    return FeatureKey(model.config.image_backbone, digest, enc.preprocess.to_dict(), precision, int(enc.feature_dim))


def cache_folder(cache_dir: str | os.PathLike, key: FeatureKey) -> Path:
    """``<cache_dir>/<key digest[:16]>``."""
    return Path(cache_dir) / key.digest[:16]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (remembered per path, size and mtime within this process)."""
    p = Path(path)
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        with open(p, "rb") as f:
            _DIGESTS[memo] = hashlib.file_digest(f, "sha256").hexdigest()
    return _DIGESTS[memo]


@dataclass
class CacheReport:
    """What :func:`image_features` did: entries ``computed`` now, found ``cached``, files ``skipped`` (bad)."""

    computed: int = 0
    cached: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    folder: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"computed": self.computed, "cached": self.cached, "skipped": len(self.skipped),
                "folder": str(self.folder) if self.folder else None}


def _read_entry(path: Path, dim: int) -> torch.Tensor | None:
    try:
        a = np.load(path)
    except (OSError, ValueError, EOFError):
        return None
    if a.shape != (dim,) or a.dtype != np.float32 or not np.isfinite(a).all():
        return None
    return torch.from_numpy(a)


def _write_meta(folder: Path, key: FeatureKey) -> None:
    meta = folder / "meta.json"
    if not meta.is_file():
        atomic_write_text(meta, json.dumps(key.to_dict(), indent=2, sort_keys=True))


def image_features(backbone: nn.Module, key: FeatureKey, paths: Iterable[str | os.PathLike],
                   cache_dir: str | os.PathLike, *, batch_size: int = 32, rank: int = 0, world_size: int = 1,
                   skip_bad: bool = False, progress: bool = False, decode_threads: int = 2,
                   report: CacheReport | None = None) -> dict[str, torch.Tensor]:
    """``{str(resolved path): (F,) float32 features}`` of this process's shard of ``paths``, from the cache, the
    missing ones computed by ``backbone`` (eval mode, no gradients, ``key.precision``) and cached.

    Args:
        backbone: (B, 3, S, S) -> (B, F), on the device to compute on; images are prepared as ``key.preprocess``.
        key: :func:`feature_key` of the model the backbone belongs to.
        paths: image files (duplicates and identical contents are computed once).
        cache_dir: the cache root (layout in the module doc).
        batch_size: images per backbone call.
        rank, world_size: this process takes the sorted unique paths ``rank::world_size``.
        skip_bad: unreadable images are skipped (listed in ``report.skipped``) instead of raising
            :class:`~ciap_lib.audio_io.BadFileError`.
        progress: a tqdm bar over the images to compute.
        decode_threads: threads decoding the next batch while the backbone runs.
        report: filled with the counts.
    """
    from tqdm import tqdm

    if not 0 <= rank < world_size:
        raise ValueError(f"image_features: rank {rank} is not in [0, {world_size})")
    report = report if report is not None else CacheReport()
    folder = report.folder = cache_folder(cache_dir, key)
    folder.mkdir(parents=True, exist_ok=True)
    _write_meta(folder, key)
    preprocess = ImagePreprocess.from_dict(key.preprocess)
    shard = shard_paths(paths, rank, world_size)
    out: dict[str, torch.Tensor] = {}
    todo: dict[str, list[str]] = {}  # content digest -> paths
    for p in shard:
        try:
            digest = file_digest(p)
        except OSError as e:
            if not skip_bad:
                raise BadFileError(p, f"image file cannot be read ({type(e).__name__}: {e})") from None
            report.skipped.append((Path(p), f"cannot be read ({type(e).__name__})"))
            continue
        if digest in todo:
            todo[digest].append(p)
            continue
        cached = _read_entry(folder / f"{digest}.npy", key.feature_dim)
        if cached is not None:
            out[p] = cached
            report.cached += 1
        else:
            todo[digest] = [p]
    items = list(todo.items())
    bar = tqdm(total=len(items), desc="image features", unit="img", mininterval=1.0,
               disable=(not progress) or bool(os.environ.get("TQDM_DISABLE")))

    def decode(batch: Sequence[tuple[str, list[str]]]) -> list[torch.Tensor | BadFileError]:
        def one(item: tuple[str, list[str]]) -> torch.Tensor | BadFileError:
            try:
                return load_image(item[1][0], preprocess)
            except BadFileError as e:
                return e
        return list(pool.map(one, batch))

    device = next(iter(backbone.parameters()), torch.empty(0)).device
    was_training = backbone.training
    backbone.eval()
    try:
        with ThreadPoolExecutor(max(1, decode_threads)) as pool:
            batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
            pending: Future | None = pool.submit(decode, batches[0]) if batches else None
            for j, batch in enumerate(batches):
                decoded = pending.result()
                pending = pool.submit(decode, batches[j + 1]) if j + 1 < len(batches) else None
                good = [(item, t) for item, t in zip(batch, decoded) if not isinstance(t, BadFileError)]
                for item, t in zip(batch, decoded):
                    if isinstance(t, BadFileError):
                        if not skip_bad:
                            raise t
                        report.skipped += [(Path(p), t.reason) for p in item[1]]
                if good:
                    feats = _run(backbone, torch.stack([t for _, t in good]), device, key)
                    for ((digest, ps), _), f in zip(good, feats):
                        with atomic_path(folder / f"{digest}.npy", fsync=False) as tmp:
                            np.save(tmp, f.numpy())
                        for p in ps:
                            out[p] = f
                    report.computed += len(good)
                bar.update(len(batch))
    finally:
        backbone.train(was_training)
        bar.close()
    return out


@torch.inference_mode()
def _run(backbone: nn.Module, images: torch.Tensor, device: torch.device, key: FeatureKey) -> list[torch.Tensor]:
    """(B,3,S,S) -> B float32 (F,) CPU tensors, checked against the key's feature size."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=key.precision == "bf16"):
        feats = backbone(images.to(device))
    feats = feats.float().cpu()
    if feats.shape != (images.shape[0], key.feature_dim):
        raise ValueError(f"image_features: the backbone gave features of shape {tuple(feats.shape)}, expected "
                         f"({images.shape[0]}, {key.feature_dim})")
    return list(feats.contiguous())
