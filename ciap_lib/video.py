"""Videos -> image/audio pairs, decoded with PyAV (its wheel bundles FFmpeg).

For every video, one or more timestamps are chosen (the middle by default, ``frames_per_clip`` evenly
spaced ones, or explicit ones). For each timestamp ``t`` the pair is:

* the frame on screen at ``t`` (the last frame whose presentation time is <= ``t``), saved as JPEG/PNG;
* the audio window of ``window`` seconds centred on ``t`` (shifted to lie inside the clip near its ends),
  mixed down to mono and resampled to 16 kHz (``torchaudio``'s sinc resampler), saved as 16-bit WAV.

Times are seconds from the start of the container (``container.start_time``), on the timeline that both
streams share, so frame and audio stay aligned whatever each stream's own start offset is.

:func:`import_videos` writes the foundation layout that :class:`ciap_lib.data.PairDataset` reads:
``<out>/<split>/<pair>.jpg`` + ``<pair>.wav`` and ``<out>/<split>/pairs.csv`` (``image,audio[,label]``
plus provenance columns ``video,timestamp``), or the same directly in ``<out>`` when there are no splits.
It runs videos in parallel worker processes, writes every file atomically, records each video's outcome
in ``<out>/import_manifest.jsonl`` (append-only; the last record of a video wins) and skips on a later
run what is recorded as done (or failed) for the same file, size, mtime and settings: a second run is a
no-op, and an interrupted run resumes. Bad videos (no audio track, corrupt container, clip shorter than
the window, ...) are reported per file and never stop the import.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from ciap_lib.atomic import atomic_path, atomic_write_text
from ciap_lib.audio_io import BadFileError, resample, write_wav
from ciap_lib.constants import SAMPLE_RATE
from ciap_lib.pairs import read_csv_rows

__all__ = [
    "VIDEO_EXTS", "VideoError", "VideoInfo", "VideoItem", "ImportSummary", "probe_video", "read_frame",
    "read_audio_window", "choose_timestamps", "audio_window", "extract_pairs", "find_videos",
    "read_video_csv", "import_videos", "MANIFEST_NAME",
]

PathLike = Union[str, os.PathLike]

#: Video file extensions picked up when a folder is imported (lower case, with dot).
VIDEO_EXTS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".ogv", ".wmv", ".3gp", ".ts"})
MANIFEST_NAME = "import_manifest.jsonl"
_IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}


class VideoError(BadFileError):
    """A video that cannot give pairs. ``kind`` is one of ``"corrupt"``, ``"no_audio"``, ``"no_video"``,
    ``"too_short"``, ``"bad_timestamp"``; ``str(err)`` names the file and the problem."""

    def __init__(self, path: PathLike, reason: str, kind: str):
        super().__init__(path, reason)
        self.kind = kind


# ------------------------------------------------------------------------------------------- probing
@dataclass(frozen=True)
class VideoInfo:
    """Stream facts of a video file (from the container headers; times in seconds)."""

    path: Path
    duration: float            # seconds covered by the streams (min of video and audio where known)
    has_video: bool
    has_audio: bool
    fps: float | None
    audio_rate: int | None
    audio_channels: int | None


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoError(path, "video file does not exist", "corrupt")
    if path.stat().st_size == 0:
        raise VideoError(path, "video file is empty (0 bytes)", "corrupt")
    try:
        return av.open(str(path), mode="r")
    except Exception as e:  # av.error.InvalidDataError, FFmpegError, ...
        raise VideoError(path, f"cannot open the container ({type(e).__name__}: {e})", "corrupt") from None


def _origin(container) -> float:
    st = container.start_time
    return float(st) / 1e6 if st is not None else 0.0


def _stream_end(stream, origin: float) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else origin
    return start + float(stream.duration * stream.time_base) - origin


def _info(path: Path, container) -> VideoInfo:
    v = container.streams.video[0] if container.streams.video else None
    a = container.streams.audio[0] if container.streams.audio else None
    origin = _origin(container)
    ends = [e for e in (_stream_end(s, origin) for s in (v, a) if s is not None) if e is not None]
    if ends:
        duration = min(ends)
    elif container.duration is not None:
        duration = float(container.duration) / 1e6
    else:
        duration = float("nan")
    fps = float(v.average_rate) if v is not None and v.average_rate else None
    return VideoInfo(path, duration, v is not None, a is not None, fps,
                     int(a.rate) if a is not None and a.rate else None,
                     int(a.channels) if a is not None and a.channels else None)


def probe_video(path: PathLike) -> VideoInfo:
    """Open a video and read its stream headers. Raises :class:`VideoError` when it cannot be opened."""
    p = Path(path)
    with _open(p) as c:
        return _info(p, c)


# ------------------------------------------------------------------------------------------- decoding
def _decode_error(path: Path, what: str, e: Exception) -> VideoError:
    return VideoError(path, f"decoding {what} failed ({type(e).__name__}: {e})", "corrupt")


def _frame_at(path: Path, container, t: float, duration: float | None = None):
    """The av.VideoFrame on screen at ``t`` seconds (from the container start).

    When the stream ends (no later frame) more than two frame intervals (at least 0.25 s) before the
    ``duration`` the container declares, the file is truncated: :class:`VideoError` rather than a stale frame.
    """
    stream = container.streams.video[0]
    origin = _origin(container)
    target = origin + t
    eps = 1e-6

    def scan(seek_to: float | None):
        if seek_to is not None and stream.time_base is not None:
            container.seek(max(0, int(seek_to / float(stream.time_base))), stream=stream, backward=True)
        else:
            container.seek(0)
        best, first, later = None, None, False
        for frame in container.decode(stream):
            ft = frame.time
            if ft is None:
                continue
            if first is None:
                first = ft
            if ft <= target + eps:
                best = frame
            else:
                later = True
                break
        return best, first, later

    try:
        best, first, later = scan(target)
        if best is None or (first is not None and first > target + eps):
            best, _, later = scan(None)  # imprecise seek: decode from the beginning
    except VideoError:
        raise
    except Exception as e:
        raise _decode_error(path, f"the frame at {t:.3f} s", e) from None
    if best is None:
        raise VideoError(path, f"no video frame decodable at {t:.3f} s", "corrupt")
    if not later and duration is not None and np.isfinite(duration):
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        slack = max(2.0 / fps if fps > 0 else 0.0, 0.25)
        last = best.time - origin
        if duration - last > slack:
            raise VideoError(path, f"video frames stop at {last:.3f} s although the container declares "
                                   f"{duration:.3f} s (truncated or damaged file)", "corrupt")
    return best


def read_frame(path: PathLike, t: float):
    """The frame on screen at ``t`` seconds as an RGB ``PIL.Image``. Raises :class:`VideoError`."""
    p = Path(path)
    with _open(p) as c:
        if not c.streams.video:
            raise VideoError(p, "no video track", "no_video")
        return _frame_at(p, c, t).to_image()


def _audio_segment(path: Path, container, start: float, stop: float) -> tuple[np.ndarray, float, int]:
    """Mono float32 native-rate samples covering [start, stop) seconds (as far as the audio reaches).

    Returns ``(samples, time of samples[0], rate)``.
    """
    import av

    stream = container.streams.audio[0]
    origin = _origin(container)
    rate = int(stream.rate or stream.codec_context.sample_rate or 0)
    if rate <= 0:
        raise VideoError(path, "audio track has no sample rate", "corrupt")
    # Same rate and layout, float planar samples: only the sample format changes.
    conv = av.AudioResampler(format="fltp")

    def collect(seek_to: float | None):
        if seek_to is not None and seek_to > 0 and stream.time_base is not None:
            container.seek(int((origin + seek_to) / float(stream.time_base)), stream=stream, backward=True)
        else:
            container.seek(0)
        chunks: list[np.ndarray] = []
        t0 = None
        expected = None
        for frame in container.decode(stream):
            for f in conv.resample(frame):
                x = f.to_ndarray()  # (channels, n) float32
                ft = f.time
                if t0 is None:
                    t0 = (ft - origin) if ft is not None else 0.0
                    expected = t0
                elif ft is not None and abs((ft - origin) - expected) > 0.002:
                    # a gap (or overlap) of more than 2 ms in the timeline: fill with silence / trim
                    gap = int(round(((ft - origin) - expected) * rate))
                    if gap > 0:
                        chunks.append(np.zeros(gap, np.float32))
                        expected += gap / rate
                    elif gap < 0:
                        x = x[:, min(-gap, x.shape[1]):]
                chunks.append(x.mean(axis=0).astype(np.float32) if x.shape[0] > 1 else x[0].astype(np.float32))
                expected += x.shape[1] / rate
            if expected is not None and expected >= stop:
                break
        data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return data, (t0 if t0 is not None else 0.0)

    try:
        data, t0 = collect(start - 0.5)
        if t0 > start + 1.0 / rate:  # seek landed too late: decode from the beginning
            data, t0 = collect(None)
    except VideoError:
        raise
    except Exception as e:
        raise _decode_error(path, f"audio at {start:.3f}-{stop:.3f} s", e) from None
    if not np.isfinite(data).all():
        raise VideoError(path, "decoded audio contains NaN or infinite samples", "corrupt")
    return data, t0, rate


def audio_window(t: float, window: float, duration: float) -> tuple[float, float]:
    """The ``window``-second audio span for a frame at ``t``: centred on ``t``, shifted to fit in
    [0, duration]. Raises ``ValueError`` when the clip is shorter than the window."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if duration < window:
        raise ValueError(f"clip ({duration:.3f} s) is shorter than the {window:g} s window")
    start = min(max(t - window / 2.0, 0.0), duration - window)
    return start, start + window


def read_audio_window(path: PathLike, start: float, window: float, sample_rate: int = SAMPLE_RATE,
                      container=None) -> np.ndarray:
    """Audio of [start, start + window) seconds, mono, resampled to ``sample_rate``.

    Returns float32 (round(window * sample_rate),). Raises :class:`VideoError` (``no_audio``, ``corrupt``,
    ``too_short`` when the decodable audio ends more than 20 ms before the window does).
    """
    p = Path(path)
    if container is None:
        with _open(p) as c:
            return read_audio_window(p, start, window, sample_rate, container=c)
    if not container.streams.audio:
        raise VideoError(p, "no audio track", "no_audio")
    margin = 0.05  # context for the resampling filter at both ends
    lo = max(0.0, start - margin)
    data, t0, rate = _audio_segment(p, container, lo, start + window + margin)
    n_out = int(round(window * sample_rate))
    # samples of [t0, ...) -> cut [lo, start+window+margin), resample, then cut the window exactly
    i0 = int(round((lo - t0) * rate))
    if i0 < 0:  # audio starts after `lo` (e.g. a stream that starts late): pad the front with silence
        data = np.concatenate([np.zeros(-i0, np.float32), data])
        i0 = 0
    seg = data[i0:i0 + int(round((start + window + margin - lo) * rate))]
    have = (len(seg) / rate) - (start - lo)
    if have < window - 0.02:
        raise VideoError(p, f"audio ends {max(have, 0):.3f} s into the {window:g} s window starting at "
                            f"{start:.3f} s (clip shorter than the window?)", "too_short")
    seg16 = resample(seg, rate, sample_rate) if rate != sample_rate else seg
    j0 = int(round((start - lo) * sample_rate))
    out = seg16[j0:j0 + n_out]
    if len(out) < n_out:
        out = np.concatenate([out, np.zeros(n_out - len(out), np.float32)])
    return np.ascontiguousarray(out, dtype=np.float32)


def choose_timestamps(duration: float, frames_per_clip: int = 1, window: float = 1.0) -> list[float]:
    """``frames_per_clip`` evenly spaced timestamps: the centres of equal parts of the clip (the middle
    for 1), moved inward so that each one's audio window fits inside the clip."""
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
    ts = [(i + 0.5) * duration / frames_per_clip for i in range(frames_per_clip)]
    lo, hi = window / 2.0, duration - window / 2.0
    return [round(min(max(t, lo), hi), 3) for t in ts]


# ------------------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class VideoItem:
    """One input video: where it is, its id (used in output file names), label, split, timestamps."""

    path: Path
    id: str
    label: str | None = None
    split: str | None = None
    timestamps: tuple[float, ...] | None = None   # None: decided by frames_per_clip


def _safe_id(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._")
    return s or "video"


def _unique(items: list[VideoItem], source: Path) -> list[VideoItem]:
    seen: dict[tuple[str | None, str], Path] = {}
    for it in items:
        key = (it.split, it.id)
        if key in seen and seen[key] != it.path:
            raise ValueError(f"{source}: videos {seen[key]} and {it.path} both get the output id {it.id!r}; "
                             "rename one or give an 'id' column in the CSV")
        seen[key] = it.path
    return items


def find_videos(folder: PathLike) -> list[VideoItem]:
    """Every video file below ``folder`` (recursive, hidden entries skipped), sorted; ids are the relative
    paths without extension with ``/`` turned into ``__``."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"video folder {d} does not exist")
    items = []
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() in VIDEO_EXTS:
            items.append(VideoItem(p, _safe_id("__".join(rel.with_suffix("").parts))))
    return _unique(items, d)


def _parse_times(text: str, where: str) -> tuple[float, ...]:
    try:
        ts = tuple(float(x) for x in re.split(r"[;,\s]+", text.strip()) if x)
    except ValueError:
        raise ValueError(f"{where}: timestamps must be numbers in seconds separated by ';', got {text!r}") from None
    if any(not np.isfinite(t) or t < 0 for t in ts):
        raise ValueError(f"{where}: timestamps must be finite and >= 0, got {text!r}")
    return ts


def read_video_csv(csv_path: PathLike) -> list[VideoItem]:
    """Read a video list. Columns: ``video`` (or ``path``; relative to the CSV's folder or absolute),
    optional ``label``, ``split``, ``timestamps`` (seconds, ``;``-separated) and ``id``."""
    src = Path(csv_path)
    fields, rows = read_csv_rows(src, "video list")
    col = "video" if "video" in fields else "path" if "path" in fields else None
    if col is None:
        raise ValueError(f"{src}: the video list needs a 'video' (or 'path') column; it has {fields}")
    items = []
    for n, row in enumerate(rows, start=2):
        if not row.get(col):
            raise ValueError(f"{src}: line {n}: empty {col!r}")
        p = Path(row[col])
        p = p if p.is_absolute() else src.parent / p
        try:
            rel = p.resolve().relative_to(src.parent.resolve()).with_suffix("")
            default_id = "__".join(rel.parts)
        except ValueError:
            default_id = p.stem
        split = row.get("split") or None
        if split is not None and (split in (".", "..") or "/" in split or "\\" in split):
            raise ValueError(f"{src}: line {n}: split {split!r} must be a plain folder name")
        ts = _parse_times(row["timestamps"], f"{src}: line {n}") if row.get("timestamps") else None
        items.append(VideoItem(p, _safe_id(row.get("id") or default_id), row.get("label") or None, split,
                               ts or None))
    return _unique(items, src)


# ------------------------------------------------------------------------------------------- one video
def _atomic_image(image, path: Path, fmt: str) -> None:
    kw = {"quality": 95} if fmt == "JPEG" else {}
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **kw)


def _pair_stem(video_id: str, t: float) -> str:
    return f"{video_id}_t{int(round(t * 1000)):07d}"


def extract_pairs(item: VideoItem, out_split_dir: PathLike, window: float = 1.0, frames_per_clip: int = 1,
                  sample_rate: int = SAMPLE_RATE, image_format: str = "jpg") -> list[dict[str, Any]]:
    """Write the pairs of one video into ``out_split_dir``; returns one row per pair
    (``image``, ``audio`` relative to the split folder, ``label``, ``video``, ``timestamp``).

    Raises :class:`VideoError` for a bad video (nothing of it is listed then; files already written for
    it are harmless, they are overwritten on a retry and not referenced by ``pairs.csv``).
    """
    if image_format not in _IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_IMAGE_FORMATS)}, got {image_format!r}")
    p = item.path
    out = Path(out_split_dir)
    with _open(p) as c:
        info = _info(p, c)
        if not info.has_video:
            raise VideoError(p, "no video track", "no_video")
        if not info.has_audio:
            raise VideoError(p, "no audio track", "no_audio")
        duration = info.duration
        if not np.isfinite(duration) or duration <= 0:
            raise VideoError(p, "the container does not tell its duration", "corrupt")
        if duration < window:
            raise VideoError(p, f"clip is {duration:.3f} s long, shorter than the {window:g} s window",
                             "too_short")
        if item.timestamps:
            bad = [t for t in item.timestamps if t > duration]
            if bad:
                raise VideoError(p, f"timestamp(s) {bad} s lie beyond the clip's end ({duration:.3f} s)",
                                 "bad_timestamp")
            times = sorted(set(round(t, 3) for t in item.timestamps))
        else:
            times = sorted(set(choose_timestamps(duration, frames_per_clip, window)))
        # decode everything first, write afterwards: a failure leaves no half-listed video
        decoded = []
        for t in times:
            frame = _frame_at(p, c, t, duration).to_image()
            start, _ = audio_window(t, window, duration)
            try:
                wav = read_audio_window(p, start, window, sample_rate, container=c)
            except VideoError as e:
                if e.kind != "too_short":
                    raise
                # the clip is long enough on paper (checked above): the audio data stops early
                raise VideoError(p, f"audio stops early: {e.reason}; the container declares {duration:.3f} s "
                                    "(truncated or damaged file)", "corrupt") from None
            decoded.append((t, frame, wav))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for t, frame, wav in decoded:
        stem = _pair_stem(item.id, t)
        img_name, wav_name = f"{stem}.{image_format}", f"{stem}.wav"
        _atomic_image(frame, out / img_name, _IMAGE_FORMATS[image_format])
        write_wav(out / wav_name, wav, sample_rate)
        rows.append({"image": img_name, "audio": wav_name, "label": item.label,
                     "video": str(p), "timestamp": t})
    return rows


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _work(item: VideoItem, out_split_dir: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Process-pool task: never raises for a bad video, returns a manifest record instead."""
    t0 = time.perf_counter()
    try:
        rows = extract_pairs(item, out_split_dir, **opts)
        return {"status": "done", "pairs": rows, "seconds": round(time.perf_counter() - t0, 3)}
    except VideoError as e:
        return {"status": "failed", "kind": e.kind, "error": str(e)}
    except Exception as e:  # anything unexpected inside FFmpeg/PIL is still this file's problem
        return {"status": "failed", "kind": "error", "error": f"{item.path}: {type(e).__name__}: {e}"}


# ------------------------------------------------------------------------------------------- import
@dataclass
class ImportSummary:
    """Counts of one :func:`import_videos` run (``failed`` lists ``(video, reason)``)."""

    videos: int = 0
    done: int = 0
    skipped_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped_failed: list[tuple[str, str]] = field(default_factory=list)
    failed_kinds: dict[str, int] = field(default_factory=dict)
    pairs: int = 0
    splits: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        lines = [f"videos: {self.videos} | imported now: {self.done} | already done: {self.skipped_done} | "
                 f"failed now: {len(self.failed)} | failed before (skipped): {len(self.skipped_failed)} | "
                 f"pairs listed: {self.pairs} | {self.seconds:.1f} s"]
        if self.failed_kinds:
            lines.append("failures by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(self.failed_kinds.items())))
        lines += [f"  FAILED {r}" for _, r in self.failed]          # reasons name their file
        lines += [f"  failed before (not retried; use retry_failed) {r}" for _, r in self.skipped_failed]
        return "\n".join(lines)


def _fingerprint(item: VideoItem, opts: dict[str, Any]) -> str:
    st = item.path.stat() if item.path.is_file() else None
    blob = json.dumps({"path": str(item.path.resolve()), "size": st.st_size if st else None,
                       "mtime_ns": st.st_mtime_ns if st else None, "label": item.label, "split": item.split,
                       "timestamps": item.timestamps, **opts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed run: ignore it
            records[rec["key"]] = rec
    return records


def _write_pairs_csv(split_dir: Path, rows: list[dict[str, Any]]) -> None:
    with_label = any(r.get("label") for r in rows)
    cols = ["image", "audio"] + (["label"] if with_label else []) + ["video", "timestamp"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: r["image"]):
        w.writerow({**r, "label": r.get("label") or ""})
    atomic_write_text(split_dir / "pairs.csv", buf.getvalue())


def import_videos(source: PathLike | Sequence[VideoItem], out_dir: PathLike, *,
                  timestamps: Sequence[float] | None = None, frames_per_clip: int = 1, window: float = 1.0,
                  sample_rate: int = SAMPLE_RATE, image_format: str = "jpg", workers: int = 1,
                  retry_failed: bool = False, progress: bool = True) -> ImportSummary:
    """Build a pairs dataset from videos (see the module doc for the layout and the resume rules).

    Args:
        source: a folder of videos (recursive), a CSV video list (see :func:`read_video_csv`) or items.
        out_dir: dataset output folder; split sub-folders when the CSV has a ``split`` column.
        timestamps: seconds used for every video without its own ``timestamps`` (default: the middle, or
            ``frames_per_clip`` evenly spaced ones).
        frames_per_clip: how many evenly spaced pairs per video when no timestamps are given.
        window: audio seconds per pair. sample_rate: output audio rate (Hz).
        image_format: ``"jpg"`` or ``"png"``.
        workers: worker processes (1: in this process).
        retry_failed: also retry videos recorded as failed (by default they are skipped and re-listed).
        progress: tqdm progress bar (also silenced by ``TQDM_DISABLE=1``).

    Returns:
        :class:`ImportSummary`.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
    if image_format not in _IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_IMAGE_FORMATS)}, got {image_format!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if isinstance(source, (str, os.PathLike)):
        src = Path(source)
        if src.is_dir():
            items = find_videos(src)
        elif src.is_file():
            items = read_video_csv(src)
        else:
            raise FileNotFoundError(f"import_videos: {src} is neither a folder of videos nor a CSV list")
    else:
        items = list(source)
    if timestamps is not None:
        ts = tuple(float(t) for t in timestamps)
        if not ts or any(not np.isfinite(t) or t < 0 for t in ts):
            raise ValueError(f"timestamps must be non-empty, finite and >= 0, got {list(timestamps)}")
        items = [it if it.timestamps else VideoItem(it.path, it.id, it.label, it.split, ts) for it in items]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = {"window": float(window), "frames_per_clip": int(frames_per_clip), "sample_rate": int(sample_rate),
            "image_format": image_format}
    manifest_path = out / MANIFEST_NAME
    records = _read_manifest(manifest_path)
    summary = ImportSummary(videos=len(items))

    def split_dir(it: VideoItem) -> Path:
        return out / it.split if it.split else out

    todo: list[tuple[VideoItem, str]] = []
    for it in items:
        fp = _fingerprint(it, opts)
        rec = records.get(it.id if not it.split else f"{it.split}/{it.id}")
        if rec is not None and rec.get("fingerprint") == fp:
            if rec["status"] == "done" and all((split_dir(it) / r[k]).is_file()
                                               for r in rec["pairs"] for k in ("image", "audio")):
                summary.skipped_done += 1
                continue
            if rec["status"] == "failed" and rec.get("kind") != "crash" and not retry_failed:
                summary.skipped_failed.append((str(it.path), rec["error"]))
                continue
        todo.append((it, fp))

    def record(it: VideoItem, fp: str, res: dict[str, Any], mf) -> None:
        key = it.id if not it.split else f"{it.split}/{it.id}"
        rec = {"key": key, "video": str(it.path), "split": it.split, "fingerprint": fp, **res}
        records[key] = rec
        mf.write(json.dumps(rec) + "\n")
        mf.flush()
        os.fsync(mf.fileno())
        if res["status"] == "done":
            summary.done += 1
        else:
            summary.failed.append((str(it.path), res["error"]))
            summary.failed_kinds[res["kind"]] = summary.failed_kinds.get(res["kind"], 0) + 1

    bar = tqdm(total=len(todo), desc="import-videos", unit="video", mininterval=1.0,
               **({} if progress and todo else {"disable": True}))
    with open(manifest_path, "a+", encoding="utf-8") as mf:
        if mf.tell() > 0:  # a killed run may have left a torn last line: start on a fresh one
            mf.seek(mf.tell() - 1)
            if mf.read(1) != "\n":
                mf.write("\n")
        if workers == 1 or len(todo) <= 1:
            for it, fp in todo:
                record(it, fp, _work(it, str(split_dir(it)), opts), mf)
                bar.update(1)
        else:
            ctx = mp.get_context("spawn")  # never fork a process that may hold OpenMP/torch threads
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as ex:
                futures = {ex.submit(_work, it, str(split_dir(it)), opts): (it, fp) for it, fp in todo}
                for fut in as_completed(futures):
                    it, fp = futures[fut]
                    try:
                        res = fut.result()
                    except BrokenProcessPool as e:
                        res = {"status": "failed", "kind": "crash",
                               "error": f"{it.path}: a worker process died ({e}); rerun to retry"}
                    record(it, fp, res, mf)
                    bar.update(1)
    bar.close()

    # pairs.csv of every split of the inputs, from the done records (this run and earlier ones)
    # (only videos of the current input are listed: a video dropped from the input leaves pairs.csv)
    by_split: dict[str | None, list[dict[str, Any]]] = {}
    for it in items:
        rows = by_split.setdefault(it.split, [])
        rec = records.get(it.id if not it.split else f"{it.split}/{it.id}")
        if rec is not None and rec["status"] == "done":
            rows.extend(rec["pairs"])
    for split, rows in by_split.items():
        d = out / split if split else out
        if rows or (d / "pairs.csv").exists():
            _write_pairs_csv(d, rows)
        summary.pairs += len(rows)
    summary.splits = sorted(s or "." for s in by_split)
    summary.seconds = time.perf_counter() - t_start
    return summary
