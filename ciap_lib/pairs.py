"""Pair discovery: which image goes with which audio file in a split folder.

Two layouts are read (``pairs.csv`` wins when present):

* ``<split>/<stem>.<image ext>`` beside ``<split>/<stem>.<audio ext>`` (sub-folders allowed; the stem is
  the path relative to the split folder without extension);
* ``<split>/pairs.csv`` with columns ``image,audio`` and an optional ``label`` (other columns are kept
  out of the way); paths are relative to the split folder (absolute paths also work).

Bad or unpaired files raise :class:`BadFilesError` listing every one of them (with ``skip_bad=True`` they are
skipped and returned with their reasons instead).
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ciap_lib.audio_io import AUDIO_EXTS, AudioInfo, BadFileError, audio_info
from ciap_lib.images import IMAGE_EXTS, image_info

__all__ = ["Pair", "BadFilesError", "read_csv_rows", "scan_pairs", "scan_split", "dataset_fingerprint", "safe_stem"]

PathLike = Union[str, os.PathLike]


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


class BadFilesError(BadFileError):
    """Every bad or unpaired file of a split at once (a :class:`BadFileError` whose ``path`` / ``reason`` are the
    first problem's). ``problems``: ``[(path, reason), ...]``; ``str(err)`` lists them all and says how to skip."""

    def __init__(self, split_dir: PathLike, problems: list[tuple[Path, str]]):
        self.split_dir = Path(split_dir)
        self.problems = [(Path(p), r) for p, r in problems]
        lines = [f"{len(self.problems)} bad file(s) in {self.split_dir}:"]
        lines += [f"  {p}: {r}" for p, r in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        lines.append("Skip them and use the other pairs with skip_bad=True (command line: --set skip_bad=true).")
        ValueError.__init__(self, "\n".join(lines))
        self.path, self.reason = self.problems[0]


def _read_csv(split_dir: Path, csv_path: Path, problems: list[tuple[Path, str]]) -> list[Pair]:
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
            problems.append((csv_path, problem))
            continue
        pairs.append(Pair(ip, ap, row.get("label") or None))
    return pairs


def _scan_folder(split_dir: Path, problems: list[tuple[Path, str]]) -> list[Pair]:
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
            problems.append((where, problem))
            continue
        pairs.append(Pair(ims[0], auds[0], None))
    return pairs


def _check(pair: Pair) -> BadFileError | AudioInfo:
    """The pair's audio header facts, or the first problem of its image or audio file."""
    try:
        image_info(pair.image)
        return audio_info(pair.audio)
    except BadFileError as e:
        return e


def scan_split(split_dir: PathLike, skip_bad: bool = False, validate: bool = True,
               ) -> tuple[list[Pair], list[tuple[Path, str]], list[AudioInfo | None]]:
    """:func:`scan_pairs` plus the audio header facts of each returned pair (None when not ``validate``)."""
    d = Path(split_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"split folder {d} does not exist")
    problems: list[tuple[Path, str]] = []
    csv_path = d / "pairs.csv"
    pairs = _read_csv(d, csv_path, problems) if csv_path.is_file() else _scan_folder(d, problems)
    infos: list[AudioInfo | None] = [None] * len(pairs)
    if validate and pairs:
        workers = min(8, (os.cpu_count() or 1) * 2) if len(pairs) > 64 else 1
        if workers > 1:
            with ThreadPoolExecutor(workers) as ex:
                results = list(ex.map(_check, pairs))
        else:
            results = [_check(p) for p in pairs]
        good, infos = [], []
        for p, r in zip(pairs, results):
            if isinstance(r, BadFileError):
                problems.append((r.path, r.reason))
            else:
                good.append(p)
                infos.append(r)
        pairs = good
    if problems and not skip_bad:
        raise BadFilesError(d, problems)
    return pairs, problems, infos


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
        BadFilesError: every bad or unpaired file of the split at once (when ``skip_bad`` is False).
        BadFileError: a manifest without the required columns, or one that cannot be read (always).
    """
    pairs, skipped, _ = scan_split(split_dir, skip_bad, validate)
    return pairs, skipped


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



def safe_stem(name: str | os.PathLike) -> str:
    """A file-name-safe stem of ``name`` (e.g. for the WAV generated from an image)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem).strip("._") or "image"
