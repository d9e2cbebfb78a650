"""Paired image/audio datasets.

Two layouts are read (``pairs.csv`` wins when present):

* ``<split>/<stem>.<image ext>`` beside ``<split>/<stem>.<audio ext>`` (sub-folders allowed; the stem is
  the path relative to the split folder without extension);
* ``<split>/pairs.csv`` with columns ``image,audio`` and an optional ``label`` (other columns are kept
  out of the way); paths are relative to the split folder (absolute paths also work).

Images: any PIL-readable file (grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated, tiny or huge) ->
RGB, resized (shorter side to ``size``, centre crop), ImageNet-normalized (3, size, size) float32.
Audio: wav/flac/ogg/mp3, any rate and channel count -> mono float32 at ``sample_rate`` and cut into
``segment_seconds`` segments: a seeded random crop in training (reproducible per epoch), the centre crop in
evaluation, zero padding at the end of short clips.

Bad files raise :class:`BadFileError` naming the file and the problem. With ``skip_bad=True`` they are
skipped and reported (``dataset.skipped``, ``dataset.report()``). Problems are found when the dataset is
built: headers are always checked, and with the default ``cache="auto"`` datasets whose decoded size fits
``cache_max_bytes`` are decoded completely at construction (which also fills the in-memory cache), so a bad
file cannot surface mid-epoch. Larger datasets are checked by header only (a file whose header is intact but
whose data is corrupt then raises a :class:`BadFileError` naming it when it is first read).

Speed (decoding must not be the training bottleneck): decoded uint8 images and 16 kHz mono clips are cached
in memory; with DataLoader workers the cache built before the workers fork is shared copy-on-write. Without a
cache, long WAV/FLAC clips are read by seeking to the crop (1 s of a 10 min file costs about as much as a 1 s
file) and resampling kernels are built once per rate pair. On a 2-core machine, prefer ``num_workers=0`` for
preloaded datasets: workers then only compete with the model for the two cores.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from ciap_lib.audio_io import (AUDIO_EXTS, AudioInfo, BadFileError, audio_info, load_audio, load_audio_segment,
                               require_nonempty_file, resampled_length, seekable)

__all__ = [
    "AUDIO_EXTS", "IMAGE_EXTS", "IMAGENET_MEAN", "IMAGENET_STD", "BadFileError", "Pair", "ImageInfo",
    "image_info", "load_image", "load_image_uint8", "normalize_image", "denormalize_image",
    "scan_pairs", "PairDataset", "EpochSampler", "make_loader", "collate_pairs", "dataset_fingerprint", "crop_segment",
]

PathLike = Union[str, os.PathLike]

#: Image file extensions the datasets accept (lower case, with dot).
IMAGE_EXTS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


# --------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class ImageInfo:
    """Header facts of an image file (read without decoding the pixels)."""

    path: Path
    width: int
    height: int
    mode: str
    format: str


def image_info(path: PathLike) -> ImageInfo:
    """Open an image lazily (header only) and check it. Raises :class:`BadFileError`.

    PNG files are also ``verify()``-ed (chunk CRCs), which catches most truncations cheaply.
    """
    p = require_nonempty_file(path, "image")
    try:
        with Image.open(p) as im:
            info = ImageInfo(p, int(im.width), int(im.height), str(im.mode), str(im.format))
            if im.format == "PNG":
                im.verify()
    except UnidentifiedImageError:
        raise BadFileError(p, "not a readable image (PIL cannot identify it)") from None
    except Exception as e:
        raise BadFileError(p, f"not a readable image ({type(e).__name__}: {e})") from None
    if info.width <= 0 or info.height <= 0:
        raise BadFileError(p, f"image has invalid size {info.width}x{info.height}")
    return info


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. High bit depths are scaled (not clipped); transparency goes onto white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0.0 and 255.0 < hi <= 65535.0):
            a = a / 257.0                       # 16-bit samples (PIL may open 16-bit PNG as "I")
        elif hi > 255.0 or lo < 0.0:            # other 32-bit int / float: the value range actually used
            a = (a - lo) / max(hi - lo, 1e-12) * 255.0
        elif im.mode == "F" and hi <= 1.0:
            a = a * 255.0
        im = Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def load_image_uint8(path_or_bytes: PathLike | bytes | memoryview, size: int) -> np.ndarray:
    """Decode an image to RGB uint8 (size, size, 3): EXIF rotation applied, shorter side resized to
    ``size`` (bicubic, antialiased), centre crop. Raises :class:`BadFileError`."""
    if size <= 0:
        raise ValueError(f"load_image: size must be positive, got {size}")
    if isinstance(path_or_bytes, memoryview):  # e.g. ipywidgets FileUpload content
        path_or_bytes = path_or_bytes.tobytes()
    name: Any = "<bytes>" if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes)
    try:
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else name
        with Image.open(src) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # decode huge JPEGs at reduced scale (>= size)
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0 if min(w, h) > 4 * size else None)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except BadFileError:
        raise
    except FileNotFoundError:
        raise BadFileError(name, "image file does not exist") from None
    except UnidentifiedImageError:
        raise BadFileError(name, "not a readable image (PIL cannot identify it)") from None
    except Exception as e:
        raise BadFileError(name, f"image decoding failed ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(arr)


_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD))).astype(np.float32)
_OFFSET = (-np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD)).astype(np.float32)


def normalize_image(arr: np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB uint8 (H, W, 3) or (B, H, W, 3) -> ImageNet-normalized float32 (3, H, W) / (B, 3, H, W).

    Done in numpy, single-threaded: torch's intra-op threads in a DataLoader on a busy 2-core machine
    turned this 0.1 ms step into 10+ ms stalls.
    """
    a = arr.numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"normalize_image: expected uint8 (..., H, W, 3), got {a.dtype} {tuple(a.shape)}")
    out = np.empty(a.shape[:-3] + (3,) + a.shape[-3:-1], dtype=np.float32)
    for c in range(3):
        oc = out[..., c, :, :]
        np.multiply(a[..., c], _SCALE[c], out=oc, casting="unsafe")
        oc += _OFFSET[c]
    return torch.from_numpy(out)


def load_image(path_or_bytes: PathLike | bytes | memoryview, size: int) -> torch.Tensor:
    """Decode any PIL-readable image into an ImageNet-normalized float32 tensor (3, size, size)."""
    return normalize_image(load_image_uint8(path_or_bytes, size))


def denormalize_image(t: torch.Tensor) -> torch.Tensor:
    """Inverse of the ImageNet normalization, for display: (3,H,W) or (B,3,H,W) -> values in [0, 1]."""
    mean, std = _MEAN.to(t.device), _STD.to(t.device)
    return (t * std + mean).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """One image/audio pair of a split."""

    image: Path
    audio: Path
    label: str | None = None


def read_csv_rows(csv_path: Path, what: str = "manifest") -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a CSV (BOM-tolerant; keys and values stripped). An unreadable file is a
    :class:`BadFileError` naming it and calling it ``what``."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BadFileError(csv_path, f"cannot read the {what} ({type(e).__name__}: {e})") from None
    return fields, [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def _read_csv(split_dir: Path, csv_path: Path, skip_bad: bool,
              skipped: list[tuple[Path, str]]) -> list[Pair]:
    fields, rows = read_csv_rows(csv_path, "manifest")
    missing = [c for c in ("image", "audio") if c not in fields]
    if missing:
        raise BadFileError(csv_path, f"manifest lacks column(s) {missing}; it has {fields} "
                                     "(required: image,audio; optional: label)")
    pairs: list[Pair] = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        img, aud = row.get("image", ""), row.get("audio", "")
        problem = None
        if not img or not aud:
            problem = f"line {n}: empty image or audio path"
        if problem is None:
            ip, ap = split_dir / img, split_dir / aud
            if not ip.is_file():
                problem = f"line {n}: image file {ip} does not exist"
            elif not ap.is_file():
                problem = f"line {n}: audio file {ap} does not exist"
        if problem is not None:
            if not skip_bad:
                raise BadFileError(csv_path, problem)
            skipped.append((csv_path, problem))
            continue
        label = row.get("label") or None
        pairs.append(Pair(ip, ap, label))
    return pairs


def _scan_folder(split_dir: Path, skip_bad: bool, skipped: list[tuple[Path, str]]) -> list[Pair]:
    images: dict[str, list[Path]] = {}
    audios: dict[str, list[Path]] = {}
    for p in sorted(split_dir.rglob("*")):
        rel = p.relative_to(split_dir)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        ext = p.suffix.lower()
        stem = str(rel.with_suffix(""))
        if ext in IMAGE_EXTS:
            images.setdefault(stem, []).append(p)
        elif ext in AUDIO_EXTS:
            audios.setdefault(stem, []).append(p)
    pairs: list[Pair] = []
    for stem in sorted(set(images) | set(audios)):
        ims, auds = images.get(stem, []), audios.get(stem, [])
        problem, where = None, (ims or auds)[0]
        if not auds:
            problem = f"image without an audio partner (no {stem}.<{'|'.join(sorted(AUDIO_EXTS))}>)"
        elif not ims:
            problem = f"audio without an image partner (no {stem}.<image ext>)"
        elif len(ims) > 1 or len(auds) > 1:
            problem = f"ambiguous pair: several files share the stem {stem!r}: " + \
                ", ".join(q.name for q in ims + auds)
        if problem is not None:
            if not skip_bad:
                raise BadFileError(where, problem)
            skipped.append((where, problem))
            continue
        pairs.append(Pair(ims[0], auds[0], None))
    return pairs


def _check_pair(pair: Pair) -> tuple[ImageInfo, AudioInfo]:
    return image_info(pair.image), audio_info(pair.audio)


def _scan(split_dir: PathLike, skip_bad: bool, validate: bool,
          ) -> tuple[list[Pair], list[tuple[Path, str]], list[AudioInfo | None]]:
    d = Path(split_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"split folder {d} does not exist")
    skipped: list[tuple[Path, str]] = []
    csv_path = d / "pairs.csv"
    pairs = (_read_csv(d, csv_path, skip_bad, skipped) if csv_path.is_file()
             else _scan_folder(d, skip_bad, skipped))
    if not validate or not pairs:
        return pairs, skipped, [None] * len(pairs)

    def check(p: Pair) -> BadFileError | AudioInfo:
        try:
            return _check_pair(p)[1]
        except BadFileError as e:
            return e

    workers = min(8, (os.cpu_count() or 1) * 2) if len(pairs) > 64 else 1
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            results = list(ex.map(check, pairs))
    else:
        results = [check(p) for p in pairs]
    good, infos = [], []
    for p, r in zip(pairs, results):
        if isinstance(r, BadFileError):
            if not skip_bad:
                raise r
            skipped.append((r.path, r.reason))
        else:
            good.append(p)
            infos.append(r)
    return good, skipped, infos


def scan_pairs(split_dir: PathLike, skip_bad: bool = False, validate: bool = True,
               ) -> tuple[list[Pair], list[tuple[Path, str]]]:
    """List the pairs of one split folder (``pairs.csv`` wins over the folder layout).

    Args:
        split_dir: the split folder.
        skip_bad: skip (and report) bad or unpaired files instead of raising.
        validate: also check each image/audio header (cheap; no full decode; threads for > 64 pairs).

    Returns:
        ``(pairs, skipped)`` where ``skipped`` is a list of ``(path, reason)``.

    Raises:
        FileNotFoundError: the split folder does not exist.
        BadFileError: the first bad file (when ``skip_bad`` is False), or a manifest without the required
            columns (always).
    """
    pairs, skipped, _ = _scan(split_dir, skip_bad, validate)
    return pairs, skipped


def crop_segment(wave: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """Cut ``length`` samples from ``wave`` (T,): a random crop when ``rng`` is given, else the centre
    crop; clips shorter than ``length`` are zero-padded at the end. Returns float32 (length,)."""
    t = wave.shape[0]
    if t >= length:
        start = int(rng.integers(0, t - length + 1)) if rng is not None else (t - length) // 2
        return np.ascontiguousarray(wave[start:start + length], dtype=np.float32)
    out = np.zeros(length, dtype=np.float32)
    out[:t] = wave
    return out


def _file_key(p: Path) -> str:
    st = p.stat()
    return f"{p.name}:{st.st_size}:{st.st_mtime_ns}"


def dataset_fingerprint(root_or_split: PathLike) -> str:
    """SHA-256 (hex, 16 chars) over relative file names, sizes and mtimes below a folder."""
    root = Path(root_or_split)
    if not root.exists():
        raise FileNotFoundError(f"dataset_fingerprint: {root} does not exist")
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(q for q in root.rglob("*") if q.is_file())
    for q in files:
        st = q.stat()
        rel = q.name if root.is_file() else q.relative_to(root).as_posix()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- dataset
class PairDataset(Dataset):
    """Paired image/audio dataset of one split.

    Args:
        root: dataset root holding ``<split>/`` folders (or a split folder itself when ``split`` is None).
        split: split folder name, e.g. ``"train"``.
        image_size: output image side S.
        train: random audio crops (seeded by ``seed``, epoch and index) when True; centre crops when False.
        sample_rate: audio rate in Hz (16000 for AudioLDM/CLAP).
        segment_seconds: audio segment length (T = round(sample_rate * segment_seconds)).
        skip_bad: skip and report bad/unpaired files instead of raising :class:`BadFileError`.
        audio_features: optional precomputed audio features (e.g. CLAP, (512,)) keyed by
            ``str(pair.audio.resolve())``; then ``item["audio"]`` is that feature and audio is not decoded.
        seed: base seed of the random crops.
        cache: ``"auto"`` (default: ``"preload"`` when :meth:`estimated_bytes` <= ``cache_max_bytes``, else
            ``"lazy"``); ``"preload"`` (decode every pair now, with threads; also a full validation);
            ``"lazy"`` (each process keeps the images it decoded and the clips that are short (<= 4 s) or
            not seekable (ogg, mp3), up to ``cache_max_bytes``; long wav/flac are read by seeking); ``"none"``.
        cache_max_bytes: memory budget of the cache per process.

    Items: ``{"image": float32 (3,S,S), "audio": float32 (T,) or feature (F,), "label": long (-1 if none),
    "index": long}``. An index may also be an ``(index, epoch)`` tuple (what :class:`EpochSampler` yields),
    which makes random crops reproducible per epoch even in persistent worker processes.
    """

    def __init__(self, root: PathLike, split: str | None, image_size: int, train: bool,
                 sample_rate: int = 16000, segment_seconds: float = 1.0, skip_bad: bool = False,
                 audio_features: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
                 cache: str = "auto", cache_max_bytes: int = 2 * 1024 ** 3):
        if image_size <= 0:
            raise ValueError(f"PairDataset: image_size must be positive, got {image_size}")
        if sample_rate <= 0 or segment_seconds <= 0:
            raise ValueError(f"PairDataset: sample_rate ({sample_rate}) and segment_seconds "
                             f"({segment_seconds}) must be positive")
        if cache not in ("auto", "preload", "lazy", "none"):
            raise ValueError(f"PairDataset: cache must be auto|preload|lazy|none, got {cache!r}")
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split if split else self.root
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"PairDataset: split folder {self.split_dir} does not exist "
                                    f"(root={self.root}, split={split!r})")
        self.image_size = int(image_size)
        self.train = bool(train)
        self.sample_rate = int(sample_rate)
        self.segment_seconds = float(segment_seconds)
        self.segment_samples = int(round(sample_rate * segment_seconds))
        self.skip_bad = bool(skip_bad)
        self.seed = int(seed)
        self.epoch = 0
        self.cache_max_bytes = int(cache_max_bytes)
        pairs, skipped, infos = _scan(self.split_dir, skip_bad=skip_bad, validate=True)
        self.skipped: list[tuple[Path, str]] = list(skipped)
        self._ainfo: dict[Path, AudioInfo] = {p.audio: inf for p, inf in zip(pairs, infos) if inf is not None}
        self.audio_features: dict[str, torch.Tensor] | None = None
        if audio_features is not None:
            feats: dict[str, torch.Tensor] = {}
            keep = []
            for p in pairs:
                key = str(p.audio.resolve())
                if key not in audio_features:
                    reason = "no precomputed audio feature for this file (audio_features key missing)"
                    if not skip_bad:
                        raise BadFileError(p.audio, reason)
                    self.skipped.append((p.audio, reason))
                    continue
                feats[key] = torch.as_tensor(audio_features[key]).float()
                keep.append(p)
            pairs, self.audio_features = keep, feats
        self.pairs: list[Pair] = pairs
        self.classes: list[str] = sorted({p.label for p in pairs if p.label is not None})
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self._labels = torch.tensor([self._class_index[p.label] if p.label is not None else -1
                                     for p in pairs], dtype=torch.long)
        self._images: dict[int, np.ndarray] = {}
        self._audio: dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        self.cache_mode = cache
        if cache == "auto":
            self.cache_mode = "preload" if self.estimated_bytes() <= cache_max_bytes else "lazy"
        if self.cache_mode == "preload":
            self._preload()
        if not self.pairs:
            raise ValueError(f"PairDataset: no usable pairs in {self.split_dir}"
                             + (f" ({len(self.skipped)} skipped)\n{self.report()}" if self.skipped else ""))

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def labels(self) -> torch.Tensor:
        """(N,) long class index per pair, -1 where there is no label."""
        return self._labels

    def report(self) -> str:
        """Human-readable summary: usable pairs, skipped files with reasons."""
        lines = [f"{self.split_dir}: {len(self.pairs)} pairs, {len(self.skipped)} skipped"]
        lines += [f"  skipped {p}: {reason}" for p, reason in self.skipped]
        return "\n".join(lines)

    def estimated_bytes(self) -> int:
        """Estimated memory of a full decoded cache (uint8 images + float32 mono audio at the target rate)."""
        total = self.image_size * self.image_size * 3 * len(self.pairs)
        if self.audio_features is None:
            total += sum(4 * resampled_length(self._info(p).frames, self._info(p).sample_rate, self.sample_rate)
                         for p in self.pairs)
        return total

    def _info(self, p: Pair) -> AudioInfo:
        info = self._ainfo.get(p.audio)
        if info is None:
            info = self._ainfo[p.audio] = audio_info(p.audio)
        return info

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for random crops of integer indices (see :class:`EpochSampler` for workers)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ decoding and caching
    def _decode(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image uint8 (S,S,3) and the whole clip float32 (T,) (from the cache when there)."""
        p = self.pairs[i]
        img = self._images.get(i)
        if img is None:
            img = load_image_uint8(p.image, self.image_size)
        wav = None
        if self.audio_features is None:
            wav = self._audio.get(i)
            if wav is None:
                wav = load_audio(p.audio, self.sample_rate)
        return img, wav

    def _segment(self, index: int, epoch: int) -> np.ndarray:
        """The (segment_samples,) crop of pair ``index``: from the cached clip, or decoded by seeking.

        The crop position depends only on (seed, epoch, index) and the clip length, so every cache mode
        yields the same crop (bit-identical for files at the target rate).
        """
        p = self.pairs[index]
        wav = self._audio.get(index)
        info = self._info(p)
        total = wav.shape[0] if wav is not None else resampled_length(info.frames, info.sample_rate,
                                                                      self.sample_rate)
        rng = self._rng(index, epoch) if self.train else None
        length = self.segment_samples
        if total <= length:
            start = 0
        elif rng is not None:
            start = int(rng.integers(0, total - length + 1))
        else:
            start = (total - length) // 2
        if wav is None:
            short = info.duration <= max(4.0, 2 * self.segment_seconds)
            if self.cache_mode == "lazy" and (short or not seekable(info)):
                wav = load_audio(p.audio, self.sample_rate)
                self._store_audio(index, wav)
            else:
                return load_audio_segment(p.audio, start, length, self.sample_rate, info=info)
        out = np.zeros(length, dtype=np.float32)
        seg = wav[start:start + length]
        out[:seg.shape[0]] = seg
        return out

    def _store(self, i: int, img: np.ndarray, wav: np.ndarray | None) -> None:
        if i not in self._images and self._cached_bytes + img.nbytes <= self.cache_max_bytes:
            self._images[i] = img
            self._cached_bytes += img.nbytes
        if wav is not None:
            self._store_audio(i, wav)

    def _store_audio(self, i: int, wav: np.ndarray) -> None:
        if i not in self._audio and self._cached_bytes + wav.nbytes <= self.cache_max_bytes:
            self._audio[i] = wav
            self._cached_bytes += wav.nbytes

    def _preload(self) -> None:
        """Decode every pair now (threads); bad files are raised or skipped here, never mid-epoch."""
        def work(i: int):
            try:
                return self._decode(i)
            except BadFileError as e:
                return e
        n = len(self.pairs)
        workers = min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as ex:
            results = list(ex.map(work, range(n)))
        keep_pairs: list[Pair] = []
        decoded = []
        for p, r in zip(self.pairs, results):
            if isinstance(r, BadFileError):
                if not self.skip_bad:
                    raise r
                self.skipped.append((r.path, r.reason))
                continue
            keep_pairs.append(p)
            decoded.append(r)
        if len(keep_pairs) != n:  # indices shift: rebuild labels after skipping
            self.pairs = keep_pairs
            self.classes = sorted({p.label for p in keep_pairs if p.label is not None})
            self._class_index = {c: i for i, c in enumerate(self.classes)}
            self._labels = torch.tensor([self._class_index[p.label] if p.label is not None else -1
                                         for p in keep_pairs], dtype=torch.long)
        for i, (img, wav) in enumerate(decoded):
            self._store(i, img, wav)

    def _rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, index])

    def __getitem__(self, idx: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        if isinstance(idx, (tuple, list)):
            index, epoch = int(idx[0]), int(idx[1])
        else:
            index, epoch = int(idx), self.epoch
        if index < 0:
            index += len(self.pairs)
        if not 0 <= index < len(self.pairs):
            raise IndexError(f"PairDataset index {index} out of range [0, {len(self.pairs)})")
        img = self._images.get(index)
        if img is None:
            img = load_image_uint8(self.pairs[index].image, self.image_size)
            if self.cache_mode in ("lazy", "preload"):
                self._store(index, img, None)
        if self.audio_features is not None:
            audio = self.audio_features[str(self.pairs[index].audio.resolve())]
        else:
            audio = torch.from_numpy(self._segment(index, epoch))
        return {"image": normalize_image(img), "audio": audio,
                "label": self._labels[index], "index": torch.tensor(index, dtype=torch.long)}


# --------------------------------------------------------------------------------------------- loading
class EpochSampler(Sampler):
    """Yields ``(index, epoch)`` tuples: a seeded permutation per epoch (or ``0..N-1`` when not shuffling).

    The epoch advances by one at each ``iter()`` unless :meth:`set_epoch` was called for it (call
    ``set_epoch(e)`` before each epoch to make resumed runs line up). Because the epoch travels with the
    index, random crops are reproducible per epoch also in persistent DataLoader workers.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.epoch = 0
        self._pinned = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._pinned = int(epoch), True

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        if self.shuffle:
            order = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, 7]).permutation(self.n)
        else:
            order = np.arange(self.n)
        self._pinned = False
        self.epoch = epoch + 1
        for i in order.tolist():
            yield (i, epoch)


def collate_pairs(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of items into a batch dict with numpy (single-threaded), e.g. image (B,3,S,S).

    Same result as ``torch.utils.data.default_collate`` for our items; used in the main process, where
    torch's threaded ``stack`` stalled for tens of ms on a busy 2-core machine.
    """
    from torch.utils.data import default_collate

    out: dict[str, Any] = {}
    for key in batch[0]:
        vals = [item[key] for item in batch]
        if all(isinstance(v, torch.Tensor) and v.device.type == "cpu" and not v.requires_grad for v in vals):
            out[key] = torch.from_numpy(np.stack([v.numpy() for v in vals]))
        else:
            out[key] = default_collate(vals)
    return out


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0,
                sampler: Sampler | None = None, drop_last: bool = False,
                persistent_workers: bool | None = None) -> DataLoader:
    """A DataLoader over ``dataset``.

    Without ``sampler`` an :class:`EpochSampler` (``loader.sampler``; has ``set_epoch``) orders the data,
    seeded by ``seed``. A custom ``sampler`` may yield ``(index, epoch)`` tuples too (as
    ``ciap_lib.distributed.DistributedEpochSampler`` does) or plain indices (then call ``dataset.set_epoch``;
    that does not reach persistent workers). Workers keep their decoded-data cache between epochs
    (``persistent_workers`` defaults to True when ``num_workers > 0``) and use one torch thread each.
    Without workers, batches are stacked by :func:`collate_pairs` (numpy, single-threaded).
    """
    if batch_size <= 0:
        raise ValueError(f"make_loader: batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"make_loader: num_workers must be >= 0, got {num_workers}")
    if sampler is None:
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, persistent_workers=persistent_workers and num_workers > 0,
                      worker_init_fn=_worker_init if num_workers > 0 else None, generator=g,
                      collate_fn=collate_pairs if num_workers == 0 else None,
                      pin_memory=False)
