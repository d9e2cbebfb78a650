"""Dataset statistics as pandas DataFrames (for the data-exploration notebook).

Only headers are read (``soundfile.info``, ``PIL.Image.open`` without decoding the pixels), so a split of
thousands of files is summarised in seconds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import pandas as pd

from ciap_lib.audio_io import audio_info
from ciap_lib.audio_io import BadFileError
from ciap_lib.images import image_info
from ciap_lib.pairs import scan_pairs

__all__ = ["split_names", "file_stats", "split_counts", "label_counts", "bad_files", "summary", "example_pairs"]

PathLike = Union[str, os.PathLike]

_FILE_COLUMNS = ["split", "image", "audio", "label", "audio_format", "audio_subtype", "sample_rate",
                 "channels", "frames", "duration_s", "image_format", "image_mode", "width", "height"]


def split_names(root: PathLike) -> list[str]:
    """Sub-folders of ``root`` that look like splits (hold pairs.csv or any file), sorted."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"dataset root {r} does not exist")
    return sorted(p.name for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and any(q.is_file() for q in p.iterdir()))


def file_stats(root: PathLike, split: str) -> pd.DataFrame:
    """One row per usable pair of ``root/split``: audio format/subtype, sample rate, channels, frames,
    duration (s); image format, mode, width, height; label. Bad files are left out (see :func:`bad_files`).
    Paths are relative to the split folder."""
    d = Path(root) / split
    pairs, _ = scan_pairs(d, skip_bad=True, validate=True)
    rows = []
    for p in pairs:
        a, im = audio_info(p.audio), image_info(p.image)
        rows.append({"split": split, "image": _rel(p.image, d), "audio": _rel(p.audio, d), "label": p.label,
                     "audio_format": a.format, "audio_subtype": a.subtype, "sample_rate": a.sample_rate,
                     "channels": a.channels, "frames": a.frames, "duration_s": a.duration,
                     "image_format": im.format, "image_mode": im.mode, "width": im.width, "height": im.height})
    return pd.DataFrame(rows, columns=_FILE_COLUMNS)


def _rel(p: Path, d: Path) -> str:
    try:
        return p.relative_to(d).as_posix()
    except ValueError:
        return str(p)


def bad_files(root: PathLike, splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Files that a dataset with ``skip_bad=True`` would skip: columns ``split, path, reason``.

    Header-level checks only; a file whose header is fine but whose data is truncated shows up when the
    dataset decodes it (``PairDataset(..., skip_bad=True).skipped``)."""
    rows = []
    for s in (splits if splits is not None else split_names(root)):
        try:
            _, skipped = scan_pairs(Path(root) / s, skip_bad=True, validate=True)
        except BadFileError as e:  # a manifest without the required columns
            skipped = [(e.path, e.reason)]
        rows += [{"split": s, "path": str(p), "reason": reason} for p, reason in skipped]
    return pd.DataFrame(rows, columns=["split", "path", "reason"])


def split_counts(root: PathLike, splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Per split: ``pairs`` (usable), ``skipped``, ``labels`` (distinct), ``hours`` of audio, indexed by split."""
    rows = []
    for s in (splits if splits is not None else split_names(root)):
        fs = file_stats(root, s)
        rows.append({"split": s, "pairs": len(fs), "skipped": len(bad_files(root, [s])),
                     "labels": int(fs["label"].nunique()), "hours": float(fs["duration_s"].sum() / 3600.0)})
    return pd.DataFrame(rows, columns=["split", "pairs", "skipped", "labels", "hours"]).set_index("split")


def label_counts(root: PathLike, splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Pairs per label and split: index = label (``"<none>"`` for unlabelled), one column per split."""
    frames = []
    for s in (splits if splits is not None else split_names(root)):
        fs = file_stats(root, s)
        frames.append(fs["label"].fillna("<none>").value_counts().rename(s))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, axis=1).fillna(0).astype(int).sort_index()


def summary(root: PathLike, splits: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """All of the above in one dict: ``files`` (all splits), ``counts``, ``labels``, ``bad``."""
    names = list(splits) if splits is not None else split_names(root)
    files = pd.concat([file_stats(root, s) for s in names], ignore_index=True) if names else \
        pd.DataFrame(columns=_FILE_COLUMNS)
    return {"files": files, "counts": split_counts(root, names), "labels": label_counts(root, names),
            "bad": bad_files(root, names)}


def example_pairs(root: PathLike, split: str, n: int, labels: Sequence[str] | None = None) -> list:
    """Up to ``n`` pairs of ``root/split`` for display: the first pair of each of ``labels`` (in that order) when
    given, else the first pair of each label in file order (unlabelled pairs count as their own label)."""
    first: dict = {}
    for p in scan_pairs(Path(root) / split, skip_bad=True)[0]:
        first.setdefault(p.label or p.image.name, p)
    keys = [k for k in labels if k in first] if labels is not None else list(first)
    return [first[k] for k in keys[:n]]
