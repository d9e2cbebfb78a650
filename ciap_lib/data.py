"""The paired image/audio dataset and its loader.

Pairs come from :func:`ciap_lib.pairs.scan_pairs`, images are decoded by :mod:`ciap_lib.images`, audio by
:mod:`ciap_lib.audio_io`. Audio: wav/flac/ogg/mp3, any rate and channel count -> mono float32 at
``sample_rate`` and cut into ``segment_seconds`` segments: a seeded random crop in training (reproducible per
epoch), the centre crop in evaluation, zero padding at the end of short clips.

Augmentation (:mod:`ciap_lib.augment`; training split only, never in evaluation): an ``audio_augment`` on the
waveform segment and an ``image_augment`` on the decoded uint8 image, both driven by numpy Generators derived from
(seed, epoch, index) like the random crop (separate streams, so switching augmentation on leaves the crop positions
as they were; with ``speed`` on, a longer or shorter stretch is read from there). An augmented item is therefore the same with any number of workers and after a resume. Cached features
(precomputed audio features, cached image features) cannot be augmented per epoch: asking for both is an error.

Bad files raise :class:`~ciap_lib.audio_io.BadFileError` naming the file and the problem (all of a split's bad
files at once: :class:`~ciap_lib.pairs.BadFilesError`). With ``skip_bad=True`` they are skipped and reported
(``dataset.skipped``, ``dataset.report()``). Problems are found when the dataset is built: headers are always
checked, and with the default ``cache="auto"`` datasets whose decoded size fits ``cache_max_bytes`` are decoded
completely at construction (which also fills the in-memory cache), so a bad file cannot surface mid-epoch.
Larger datasets are checked by header only (a file whose header is intact but whose data is corrupt then
raises a :class:`BadFileError` naming it when it is first read).

Speed (decoding must not be the training bottleneck): decoded uint8 images and 16 kHz mono clips are cached
in memory; with DataLoader workers the cache built before the workers fork is shared copy-on-write. Without a
cache, long WAV/FLAC clips are read by seeking to the crop (1 s of a 10 min file costs about as much as a 1 s
file) and resampling kernels are built once per rate pair. On a 2-core machine, prefer ``num_workers=0`` for
preloaded datasets: workers then only compete with the model for the two cores.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ciap_lib.audio_io import (AudioInfo, BadFileError, audio_info, load_audio, load_audio_segment,
                               resampled_length, seekable)
from ciap_lib.constants import SAMPLE_RATE
from ciap_lib.images import ImagePreprocess, as_preprocess, load_image_uint8, normalize_image
from ciap_lib.pairs import BadFilesError, Pair, scan_split

if TYPE_CHECKING:
    from ciap_lib.augment import AudioAugment, ImageAugment

__all__ = ["PairDataset", "EpochSampler", "make_loader", "collate_pairs", "crop_segment"]

PathLike = Union[str, os.PathLike]


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



# --------------------------------------------------------------------------------------------- dataset
class PairDataset(Dataset):
    """Paired image/audio dataset of one split.

    Args:
        root: dataset root holding ``<split>/`` folders (or a split folder itself when ``split`` is None).
        split: split folder name, e.g. ``"train"``.
        image_size: the model's :class:`~ciap_lib.images.ImagePreprocess` (``model.preprocess``: size S, mean/std,
            interpolation, crop), or a plain side S for the original design's (ImageNet mean/std, centre crop).
        train: random audio crops (seeded by ``seed``, epoch and index) when True; centre crops when False.
        sample_rate: audio rate in Hz (16000 for AudioLDM/CLAP).
        segment_seconds: audio segment length (T = round(sample_rate * segment_seconds)).
        skip_bad: skip and report bad/unpaired files instead of raising :class:`BadFileError`.
        audio_features: optional precomputed audio features (e.g. CLAP, (512,)) keyed by
            ``str(pair.audio.resolve())``; then ``item["audio"]`` is that feature and audio is not decoded.
        image_features: optional cached backbone features ((F,), ``ciap_lib.features``) keyed by
            ``str(pair.image.resolve())``; then ``item["image"]`` is that feature and images are not decoded.
        seed: base seed of the random crops.
        cache: ``"auto"`` (default: ``"preload"`` when :meth:`estimated_bytes` <= ``cache_max_bytes``, else
            ``"lazy"``); ``"preload"`` (decode every pair now, with threads; also a full validation);
            ``"lazy"`` (each process keeps the images it decoded and the clips that are short (<= 4 s) or
            not seekable (ogg, mp3), up to ``cache_max_bytes``; long wav/flac are read by seeking); ``"none"``.
        cache_max_bytes: memory budget of the cache per process.
        audio_augment: waveform augmentation (:class:`~ciap_lib.augment.AudioAugment`) of training items; not
            allowed with ``audio_features``. Ignored when ``train`` is False: evaluation is never augmented.
        image_augment: image augmentation (:class:`~ciap_lib.augment.ImageAugment`) of training items, applied to
            the uint8 image before normalisation; not allowed with ``image_features``. Ignored when ``train`` is
            False.

    Items: ``{"image": float32 (3,S,S) or feature (F,), "audio": float32 (T,) or feature (F,), "label": long (-1 if none),
    "index": long}`` (augmented in training when ``audio_augment`` / ``image_augment`` are given). An index may also be an ``(index, epoch)`` tuple (what :class:`EpochSampler` yields),
    which makes random crops reproducible per epoch even in persistent worker processes.
    """

    def __init__(self, root: PathLike, split: str | None, image_size: ImagePreprocess | int, train: bool,
                 sample_rate: int = SAMPLE_RATE, segment_seconds: float = 1.0, skip_bad: bool = False,
                 audio_features: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
                 cache: str = "auto", cache_max_bytes: int = 2 * 1024 ** 3,
                 image_features: Mapping[str, torch.Tensor] | None = None,
                 audio_augment: "AudioAugment | None" = None, image_augment: "ImageAugment | None" = None):
        if not isinstance(image_size, ImagePreprocess) and (isinstance(image_size, bool) or image_size <= 0):
            raise ValueError(f"PairDataset: image_size must be positive, got {image_size}")
        if sample_rate <= 0 or segment_seconds <= 0:
            raise ValueError(f"PairDataset: sample_rate ({sample_rate}) and segment_seconds "
                             f"({segment_seconds}) must be positive")
        if cache not in ("auto", "preload", "lazy", "none"):
            raise ValueError(f"PairDataset: cache must be auto|preload|lazy|none, got {cache!r}")
        if audio_augment and audio_features is not None:
            raise ValueError("PairDataset: audio augmentation cannot work with precomputed audio features (e.g. "
                             "cached CLAP features): they are computed once per clip; drop one of them")
        if image_augment and image_features is not None:
            raise ValueError("PairDataset: image augmentation cannot work with cached image features (frozen "
                             "backbone): they are computed once per image; drop one of them")
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split if split else self.root
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"PairDataset: split folder {self.split_dir} does not exist "
                                    f"(root={self.root}, split={split!r})")
        self.preprocess = as_preprocess(image_size)
        self.image_size = self.preprocess.size
        self.train = bool(train)
        self.sample_rate = int(sample_rate)
        self.segment_seconds = float(segment_seconds)
        self.segment_samples = int(round(sample_rate * segment_seconds))
        self.skip_bad = bool(skip_bad)
        self.seed = int(seed)
        self.epoch = 0
        self.audio_augment = audio_augment if self.train and audio_augment else None
        self.image_augment = image_augment if self.train and image_augment else None
        self.cache_max_bytes = int(cache_max_bytes)
        pairs, skipped, infos = scan_split(self.split_dir, skip_bad=skip_bad, validate=True)
        self.skipped: list[tuple[Path, str]] = list(skipped)
        self._ainfo: dict[Path, AudioInfo] = {p.audio: inf for p, inf in zip(pairs, infos) if inf is not None}
        self.audio_features: dict[str, torch.Tensor] | None = None
        if audio_features is not None:
            feats: dict[str, torch.Tensor] = {}
            keep = []
            missing = []
            for p in pairs:
                key = str(p.audio.resolve())
                if key not in audio_features:
                    missing.append((p.audio, "no precomputed audio feature for this file (audio_features key missing)"))
                    continue
                feats[key] = torch.as_tensor(audio_features[key]).float()
                keep.append(p)
            if missing and not skip_bad:
                raise BadFilesError(self.split_dir, missing)
            self.skipped += missing
            pairs, self.audio_features = keep, feats
        self.image_features: dict[str, torch.Tensor] | None = None
        if image_features is not None:
            have = {str(p.image.resolve()) for p in pairs} & set(image_features)
            missing = [(p.image, "no cached image feature for this file (image_features key missing)")
                       for p in pairs if str(p.image.resolve()) not in have]
            if missing and not skip_bad:
                raise BadFilesError(self.split_dir, missing)
            self.skipped += missing
            pairs = [p for p in pairs if str(p.image.resolve()) in have]
            self.image_features = {k: torch.as_tensor(image_features[k]).float() for k in have}
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
        total = 0 if self.image_features is not None else self.image_size * self.image_size * 3 * len(self.pairs)
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
    def _decode(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Image uint8 (S,S,3) (None with cached image features) and the whole clip float32 (T,) (from the cache
        when there)."""
        p = self.pairs[i]
        img = self._images.get(i)
        if img is None and self.image_features is None:
            img = load_image_uint8(p.image, self.preprocess)
        wav = None
        if self.audio_features is None:
            wav = self._audio.get(i)
            if wav is None:
                wav = load_audio(p.audio, self.sample_rate)
        return img, wav

    def _segment(self, index: int, epoch: int, length: int | None = None) -> np.ndarray:
        """The (length,) crop (default ``segment_samples``) of pair ``index``: from the cached clip, or decoded
        by seeking.

        The crop position depends only on (seed, epoch, index) and the clip length, so every cache mode
        yields the same crop (bit-identical for files at the target rate).
        """
        p = self.pairs[index]
        wav = self._audio.get(index)
        info = self._info(p)
        total = wav.shape[0] if wav is not None else resampled_length(info.frames, info.sample_rate,
                                                                      self.sample_rate)
        rng = self._rng(index, epoch) if self.train else None
        length = self.segment_samples if length is None else int(length)
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

    def _store(self, i: int, img: np.ndarray | None, wav: np.ndarray | None) -> None:
        if img is not None and i not in self._images and self._cached_bytes + img.nbytes <= self.cache_max_bytes:
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
        decoded, bad = [], []
        for p, r in zip(self.pairs, results):
            if isinstance(r, BadFileError):
                bad.append((r.path, r.reason))
                continue
            keep_pairs.append(p)
            decoded.append(r)
        if bad and not self.skip_bad:
            raise BadFilesError(self.split_dir, bad)
        self.skipped += bad
        if len(keep_pairs) != n:  # indices shift: rebuild labels after skipping
            self.pairs = keep_pairs
            self.classes = sorted({p.label for p in keep_pairs if p.label is not None})
            self._class_index = {c: i for i, c in enumerate(self.classes)}
            self._labels = torch.tensor([self._class_index[p.label] if p.label is not None else -1
                                         for p in keep_pairs], dtype=torch.long)
        for i, (img, wav) in enumerate(decoded):
            self._store(i, img, wav)

    def _rng(self, index: int, epoch: int, stream: int = 0) -> np.random.Generator:
        """The Generator of (seed, epoch, index): stream 0 draws the crop, 1 the audio augmentation, 2 the image
        augmentation."""
        key = [self.seed & 0xFFFFFFFF, epoch, index]
        return np.random.default_rng(key + [stream] if stream else key)

    def __getitem__(self, idx: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        if isinstance(idx, (tuple, list)):
            index, epoch = int(idx[0]), int(idx[1])
        else:
            index, epoch = int(idx), self.epoch
        if index < 0:
            index += len(self.pairs)
        if not 0 <= index < len(self.pairs):
            raise IndexError(f"PairDataset index {index} out of range [0, {len(self.pairs)})")
        if self.image_features is not None:
            image = self.image_features[str(self.pairs[index].image.resolve())]
        else:
            img = self._images.get(index)
            if img is None:
                img = load_image_uint8(self.pairs[index].image, self.preprocess)
                if self.cache_mode in ("lazy", "preload"):
                    self._store(index, img, None)
            if self.image_augment is not None:
                img = self.image_augment.augment(img, self._rng(index, epoch, 2))
            image = normalize_image(img, self.preprocess.mean, self.preprocess.std)
        if self.audio_features is not None:
            audio = self.audio_features[str(self.pairs[index].audio.resolve())]
        elif self.audio_augment is not None:
            aug, length = self.audio_augment, self.segment_samples
            params = aug.sample(self._rng(index, epoch, 1), length)
            seg = self._segment(index, epoch, aug.source_length(length, params))
            audio = torch.from_numpy(aug.apply(seg, params, length))
        else:
            audio = torch.from_numpy(self._segment(index, epoch))
        return {"image": image, "audio": audio,
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
