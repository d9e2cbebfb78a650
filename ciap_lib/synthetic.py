"""The embedded default dataset: synthetic image/sound pairs that share hidden attributes.

Hidden attributes and how each side renders them:

============  ==========================================  ==============================================
attribute     image                                       sound
============  ==========================================  ==============================================
shape         circle / square / triangle / cross          timbre: sine / odd harmonics / saw / FM bell
colour        red / green / blue / yellow                 pitch: 220 / 330 / 494 / 740 Hz (±3 % jitter)
count         1, 2 or 3 objects                           pulse rate 2, 4 or 6 pulses per second
============  ==========================================  ==============================================

Renderings are jittered on both sides (object positions, sizes, rotations, colour shades, background
level and pixel noise; pitch, pulse phase and rate, loudness, background noise), so no two files are alike.
A quarter of the 48 attribute combinations (those with ``(shape + colour + count) % 4 == 0``) never occurs in
train; val draws from all 48 combinations, so about a quarter of val pairs show combinations never seen
in training (column ``held_out``), and all val pairs are new renderings.

``held_out_conditions=True`` makes a harder set, where overfitting shows: the nuisance factors of val never
occur in train (:data:`HELD_OUT_STYLES`; :func:`condition_table` lists them). What differs, train -> val:

* sound: sustained (gated) pulses -> percussive ones (instant attack, 0.1 s decay); harmonic roll-off 1/k^0.8-1.1
  -> 1/k^1.25-1.45 (darker); FM index 2.2-2.8 -> 1.8-2.1; tempo within 5 % -> 10-14 % slower or faster;
  background noise std 0.003-0.012 -> 0.03-0.05;
* image: object radius 11-15 % of the side -> 17-20 % (larger); polygons rotated within 20 degrees -> 22-35
  degrees either way; no outline -> a dark 1-2 px outline; pixel noise std 2-6 -> 8-12.

Label = the readable combination name, e.g. ``"red-circle-x2"``. Each split folder holds ``pairs.csv``
(``image,audio,label,shape,colour,count,held_out``), PNG images and 16 kHz mono WAV files. The set is
built into a temporary sibling folder and renamed into place; ``manifest.json`` (written last) records the
parameters, so a half-written or differently-parameterised set is detected and rebuilt. Output is a pure
function of the parameters (per-item seeds), so rebuilding gives identical files.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from ciap_lib.audio_io import write_wav
from ciap_lib.constants import SAMPLE_RATE

__all__ = ["Style", "DEFAULT_STYLE", "HELD_OUT_STYLES", "condition_table", "SHIFT_FACTORS", "shift_variants", "write_split", "SHAPES", "COLOURS", "COUNTS", "TIMBRES", "PITCHES_HZ", "PULSE_RATES_HZ", "combo_name",
           "is_held_out", "render_image", "render_audio", "make_synthetic_dataset", "check_params", "MANIFEST"]

PathLike = Union[str, os.PathLike]

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
COUNTS = (1, 2, 3)
TIMBRES = ("sine", "odd", "saw", "fm")
PITCHES_HZ = (220.0, 330.0, 494.0, 740.0)
PULSE_RATES_HZ = (2.0, 4.0, 6.0)
_RGB = {"red": (215, 45, 40), "green": (45, 175, 65), "blue": (45, 85, 225), "yellow": (230, 205, 40)}
MANIFEST = "manifest.json"
_VERSION = 1
_GENERATOR = "ciap_lib.synthetic"


@dataclass(frozen=True)
class Style:
    """The nuisance factors of a rendering (ranges drawn per item); none of them carries an attribute.

    Images: object radius (fraction of the side), rotation of polygons (degrees), a dark outline's width (px at the
    output size; 0 = none), pixel noise std (grey levels). Sounds: tempo factor ranges (the pulse rate is multiplied
    by one drawn from a randomly chosen range), background noise std, the pulse envelope (``"gate"``: a clipped sine,
    sustained; ``"decay"``: an instant attack with an exponential decay, percussive), the harmonic roll-off exponent
    p (partial k has amplitude 1/k^p; None = 1) and the FM bell's modulation index.
    """

    radius: tuple[float, float] = (0.12, 0.19)
    rotation_deg: tuple[tuple[float, float], ...] = ((0.0, 360.0),)
    outline_px: tuple[float, float] = (0.0, 0.0)
    pixel_noise: tuple[float, float] = (2.0, 10.0)
    tempo: tuple[tuple[float, float], ...] = ((0.95, 1.05),)
    audio_noise: tuple[float, float] = (0.005, 0.03)
    envelope: str = "gate"
    rolloff: tuple[float, float] | None = None
    fm_index: tuple[float, float] = (2.5, 2.5)


#: the default renderings (train and val alike)
DEFAULT_STYLE = Style()
#: ``held_out_conditions=True``: train and val renderings whose nuisance ranges never overlap
HELD_OUT_STYLES = {
    "train": Style(radius=(0.11, 0.15), rotation_deg=((-20.0, 20.0),), outline_px=(0.0, 0.0), pixel_noise=(2.0, 6.0),
                   tempo=((0.95, 1.05),), audio_noise=(0.003, 0.012), envelope="gate", rolloff=(0.8, 1.1),
                   fm_index=(2.2, 2.8)),
    "val": Style(radius=(0.17, 0.20), rotation_deg=((22.0, 35.0), (-35.0, -22.0)), outline_px=(1.0, 2.0),
                 pixel_noise=(8.0, 12.0),
                 tempo=((0.86, 0.9), (1.1, 1.14)), audio_noise=(0.03, 0.05), envelope="decay", rolloff=(1.25, 1.45),
                 fm_index=(1.8, 2.1)),
}


def combo_name(shape: int, colour: int, count: int) -> str:
    """Readable label of an attribute combination (indices into SHAPES, COLOURS, COUNTS)."""
    return f"{COLOURS[colour]}-{SHAPES[shape]}-x{COUNTS[count]}"


def is_held_out(shape: int, colour: int, count: int) -> bool:
    """True for the 12 of 48 combinations that never occur in the train split."""
    return (shape + colour + count) % 4 == 0


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        pts = [(x * 0.8, y * 0.8) for x, y in pts]
    elif shape == "triangle":
        pts = [(np.cos(a), np.sin(a)) for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)]
    elif shape == "cross":
        w = 0.33
        pts = [(w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w),
               (1, w), (w, w)]
    else:
        raise ValueError(f"unknown polygon shape {shape!r}")
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    """A uniform draw from ``lo_hi``; a fixed value (lo == hi) consumes no randomness."""
    lo, hi = lo_hi
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))


def _draw_ranges(rng: np.random.Generator, ranges: tuple[tuple[float, float], ...]) -> float:
    """A uniform draw from one of ``ranges`` chosen at random (no choice drawn when there is only one)."""
    return _draw(rng, ranges[int(rng.integers(len(ranges)))] if len(ranges) > 1 else ranges[0])


def render_image(shape: int, colour: int, count: int, size: int, rng: np.random.Generator,
                 style: Style = DEFAULT_STYLE) -> np.ndarray:
    """Draw ``COUNTS[count]`` jittered ``SHAPES[shape]`` objects of ``COLOURS[colour]`` on a noisy background,
    with the nuisance ranges of ``style``.

    Returns uint8 RGB (size, size, 3). Drawn at 2x and downsampled (antialiasing).
    """
    big = size * 2
    bg_level = rng.uniform(0.15, 0.85)
    tint = rng.uniform(-0.06, 0.06, size=3)
    bg = tuple(int(255 * np.clip(bg_level + t, 0, 1)) for t in tint)
    im = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(im)
    base = np.array(_RGB[COLOURS[colour]], dtype=np.float64)
    n = COUNTS[count]
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        for _attempt in range(200):
            r = rng.uniform(*style.radius) * big
            cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
            if all((cx - x) ** 2 + (cy - y) ** 2 > (r + rr + 0.02 * big) ** 2 for x, y, rr in placed):
                break
        placed.append((cx, cy, r))
        fill = tuple(int(v) for v in np.clip(base + rng.uniform(-25, 25, size=3), 0, 255))
        width = round(2 * _draw(rng, style.outline_px))
        outline = tuple(int(0.35 * v) for v in fill) if width else None
        if SHAPES[shape] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
        else:
            angle = np.deg2rad(_draw_ranges(rng, style.rotation_deg))
            draw.polygon(_polygon(SHAPES[shape], cx, cy, r, angle), fill=fill, outline=outline, width=width)
    im = im.resize((size, size), Image.BILINEAR, reducing_gap=None)
    arr = np.asarray(im, dtype=np.float32)
    arr = arr + rng.normal(0.0, rng.uniform(*style.pixel_noise), size=arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _envelope(kind: str, rate: float, phase: float, t: np.ndarray) -> np.ndarray:
    """Pulse envelope in [0, 1]: ``gate`` (clipped sine, on about half of each period) or ``decay`` (instant
    attack, exponential decay with a 0.1 s time constant, capped at the period)."""
    if kind == "gate":
        return np.clip(3.0 * np.sin(2 * np.pi * rate * t + phase), 0.0, 1.0)
    if kind == "decay":
        since = np.mod(rate * t + phase / (2 * np.pi), 1.0) / rate   # seconds since the last onset
        return np.exp(-since / 0.1)
    raise ValueError(f"unknown envelope {kind!r}; use 'gate' or 'decay'")


def render_audio(shape: int, colour: int, count: int, seconds: float, sample_rate: int,
                 rng: np.random.Generator, style: Style = DEFAULT_STYLE) -> np.ndarray:
    """Pulsed tone: timbre from ``shape``, pitch from ``colour``, pulse rate from ``count``; the envelope, the
    harmonic roll-off, the tempo jitter and the background noise follow ``style``.

    Every 1 s window contains at least two pulses, so any 1 s crop keeps all three attributes.
    Returns float32 (round(seconds * sample_rate),) in [-1, 1].
    """
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    f0 = PITCHES_HZ[colour] * (1.0 + rng.uniform(-0.03, 0.03))
    timbre = TIMBRES[shape]
    ph = rng.uniform(0, 2 * np.pi)
    p = 1.0 if style.rolloff is None else _draw(rng, style.rolloff)
    if timbre == "sine":
        tone = np.sin(2 * np.pi * f0 * t + ph)
    elif timbre == "odd":
        tone = sum(np.sin(2 * np.pi * k * f0 * t + k * ph) / k ** p for k in (1, 3, 5, 7, 9))
    elif timbre == "saw":
        tone = sum(np.sin(2 * np.pi * k * f0 * t + k * ph) / k ** p for k in range(1, 11))
    else:  # fm bell
        index = _draw(rng, style.fm_index)
        tone = np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * 1.41 * f0 * t) + ph)
    tone = tone / (np.max(np.abs(tone)) + 1e-9)
    rate = PULSE_RATES_HZ[count] * _draw_ranges(rng, style.tempo)
    env = _envelope(style.envelope, rate, rng.uniform(0, 2 * np.pi), t)
    amp = rng.uniform(0.3, 0.8)
    noise = rng.normal(0.0, rng.uniform(*style.audio_noise), size=n)
    return np.clip(amp * tone * env + noise, -1.0, 1.0).astype(np.float32)


#: the nuisance factors the held-out shift changes: (side, description, :class:`Style` field)
SHIFT_FACTORS: tuple[tuple[str, str, str], ...] = (
    ("image", "object radius (fraction of the side)", "radius"),
    ("image", "polygon rotation (degrees)", "rotation_deg"),
    ("image", "dark outline width (px)", "outline_px"),
    ("image", "pixel noise std (grey levels)", "pixel_noise"),
    ("sound", "pulse envelope", "envelope"),
    ("sound", "harmonic roll-off exponent p (1/k^p)", "rolloff"),
    ("sound", "FM bell modulation index", "fm_index"),
    ("sound", "tempo factor", "tempo"),
    ("sound", "background noise std", "audio_noise"))


def condition_table() -> list[dict[str, str]]:
    """What differs between train and val with ``held_out_conditions=True``: one row per nuisance factor,
    ``{"side", "factor", "train", "val"}``, read off :data:`HELD_OUT_STYLES`."""
    tr, va = HELD_OUT_STYLES["train"], HELD_OUT_STYLES["val"]

    def rng(v) -> str:
        if v is None:
            return "1"
        if isinstance(v[0], tuple):
            return " or ".join(rng(x) for x in v)
        return f"{v[0]:g}" if v[0] == v[1] else f"{v[0]:g} to {v[1]:g}"

    return [{"side": side, "factor": factor,
             "train": getattr(tr, key) if isinstance(getattr(tr, key), str) else rng(getattr(tr, key)),
             "val": getattr(va, key) if isinstance(getattr(va, key), str) else rng(getattr(va, key))}
            for side, factor, key in SHIFT_FACTORS]


def shift_variants() -> dict[str, Style]:
    """Val styles that take the held-out shift apart, to see what each part of it costs a model: ``"none"`` (the
    train style: no shift), one entry per :data:`SHIFT_FACTORS` key (the train style with that one factor as in
    val) and ``"all"`` (the val style: the whole shift). Render them with :func:`write_split`."""
    tr, va = HELD_OUT_STYLES["train"], HELD_OUT_STYLES["val"]
    out = {"none": tr}
    out.update({key: replace(tr, **{key: getattr(va, key)}) for _, _, key in SHIFT_FACTORS})
    out["all"] = va
    return out


def _combos(split: str) -> list[tuple[int, int, int]]:
    allc = [(s, c, k) for s in range(len(SHAPES)) for c in range(len(COLOURS)) for k in range(len(COUNTS))]
    return [x for x in allc if not is_held_out(*x)] if split == "train" else allc


def write_split(folder: PathLike, split: str, n: int, style: Style = DEFAULT_STYLE, seed: int = 0,
                image_size: int = 96, seconds: float = 1.5, sample_rate: int = SAMPLE_RATE) -> Path:
    """Render one split's ``n`` pairs under ``style`` into ``folder`` (which must not exist): ``pairs.csv``, PNGs
    and WAVs, as :func:`make_synthetic_dataset` writes ``train``/``val`` (the same labels and per-item seeds for
    the same ``split``, ``seed`` and sizes), but with no manifest and not atomically: for one-off sets such as
    the :func:`shift_variants` of val. ``split``: ``"train"`` (its 36 combinations) or ``"val"`` (all 48)."""
    if split not in ("train", "val"):
        raise ValueError(f"write_split: split must be 'train' or 'val', got {split!r}")
    bad = ([f"n: must be >= 1, got {n}"] if n < 1 else []) + check_params(n_train=1, n_val=1, image_size=image_size,
                                                                          seconds=seconds)
    if bad:
        raise ValueError("write_split: " + "; ".join(bad))
    _write_split(Path(folder), split, n, seed, image_size, seconds, sample_rate, style)
    return Path(folder)


def _write_split(folder: Path, split: str, n: int, seed: int, image_size: int, seconds: float,
                 sample_rate: int, style: Style) -> None:
    folder.mkdir(parents=True)
    combos = _combos(split)
    split_id = {"train": 0, "val": 1}[split]
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, split_id, i])
        s, c, k = combos[i % len(combos)] if i < len(combos) * (n // len(combos)) else \
            combos[int(rng.integers(len(combos)))]
        stem = f"{split}_{i:05d}"
        Image.fromarray(render_image(s, c, k, image_size, rng, style)).save(folder / f"{stem}.png", optimize=False)
        write_wav(folder / f"{stem}.wav", render_audio(s, c, k, seconds, sample_rate, rng, style), sample_rate)
        rows.append({"image": f"{stem}.png", "audio": f"{stem}.wav", "label": combo_name(s, c, k),
                     "shape": SHAPES[s], "colour": COLOURS[c], "count": COUNTS[k],
                     "held_out": int(is_held_out(s, c, k))})
    with open(folder / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _read_manifest(root: Path) -> dict | None:
    try:
        m = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("generator") == _GENERATOR else None


def check_params(n_train: int, n_val: int, image_size: int, seconds: float) -> list[str]:
    """Problems with the generator's parameters (empty when fine), each ``"<name>: <problem>"``."""
    out = []
    for name, v in (("n_train", n_train), ("n_val", n_val)):
        if v < 1:
            out.append(f"{name}: must be >= 1, got {v}")
    if image_size < 16:
        out.append(f"image_size: must be >= 16, got {image_size}")
    if not seconds >= 1.0:
        out.append(f"seconds: must be >= 1.0 (every 1 s crop keeps all attributes), got {seconds}")
    return out


def make_synthetic_dataset(root: PathLike = "data/synthetic", n_train: int = 384, n_val: int = 96,
                           seed: int = 0, image_size: int = 96, seconds: float = 1.5,
                           sample_rate: int = SAMPLE_RATE, held_out_conditions: bool = False,
                           overwrite: bool = False) -> Path:
    """Write the synthetic dataset to ``root/{train,val}`` (unless an identical one is already there).

    Args:
        root: dataset root (relative paths are relative to the working directory).
        n_train, n_val: number of pairs per split. Train cycles through its 36 combinations in order
            (balanced), then draws the remainder at random; val likewise over all 48.
        seed: base seed; the output is a deterministic function of all parameters.
        image_size: PNG side in pixels.
        seconds: clip duration (>= 1.0 so that every 1 s crop keeps the attributes).
        sample_rate: WAV sample rate.
        held_out_conditions: render val under conditions that never occur in train (:data:`HELD_OUT_STYLES`):
            val sounds get a percussive envelope instead of a sustained one, darker harmonics, another FM
            index, tempos 10-14 % off (train: within 5 %) and 3-5x the background noise; val images get larger
            objects, 22-35 degree rotations (train: within 20), dark outlines and about 2x the pixel noise.
            Off: both splits use :data:`DEFAULT_STYLE`.
        overwrite: rebuild even when a matching set exists; also allows replacing a folder that is not
            a synthetic set.

    Returns:
        ``root`` as a Path.
    """
    bad = check_params(n_train=n_train, n_val=n_val, image_size=image_size, seconds=seconds)
    if bad:
        raise ValueError("make_synthetic_dataset: " + "; ".join(bad))
    root = Path(root)
    params = {"generator": _GENERATOR, "version": _VERSION, "n_train": int(n_train), "n_val": int(n_val),
              "seed": int(seed), "image_size": int(image_size), "seconds": float(seconds),
              "sample_rate": int(sample_rate), "held_out_conditions": bool(held_out_conditions)}
    existing = _read_manifest(root) if root.exists() else None
    if existing is not None and not overwrite:
        same = {k: existing.get(k) for k in params} == params
        if same and all((root / s / "pairs.csv").is_file() for s in ("train", "val")):
            return root
    if root.exists() and existing is None and not overwrite:
        leftovers = {p.name for p in root.iterdir()} - {"train", "val"}
        if leftovers:
            raise ValueError(f"make_synthetic_dataset: {root} exists and is not a synthetic dataset "
                             f"(no {MANIFEST}; holds {sorted(leftovers)[:5]}); pass overwrite=True or "
                             "choose another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        for split, n in (("train", n_train), ("val", n_val)):
            style = HELD_OUT_STYLES[split] if held_out_conditions else DEFAULT_STYLE
            _write_split(tmp / split, split, n, seed, image_size, seconds, sample_rate, style)
        (tmp / MANIFEST).write_text(json.dumps({**params, "files": 2 * (n_train + n_val) + 2}, indent=1))
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / root.name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first: keep theirs when it matches
            m = _read_manifest(root)
            if m is None or {k: m.get(k) for k in params} != params:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
