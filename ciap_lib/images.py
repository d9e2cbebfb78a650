"""Image files -> RGB uint8 -> normalized float tensors, as the model's :class:`ImagePreprocess` says.

Any PIL-readable file (grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated, tiny or huge) -> RGB -> resized and
cropped (timm's evaluation transform: ``crop_pct`` and ``crop_mode``) -> normalized with the backbone's mean/std
-> (3, size, size) float32. Every image path of CIAP (training, evaluation, ``embed``, the condition stage, the
retrieval fallback, the UI) calls :func:`load_image` with the preprocessing the model carries (and its
checkpoint stores). Problems raise :class:`~ciap_lib.audio_io.BadFileError` naming the file.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ciap_lib.audio_io import BadFileError, require_nonempty_file

__all__ = ["IMAGE_EXTS", "IMAGENET_MEAN", "IMAGENET_STD", "ImageInfo", "ImagePreprocess", "as_preprocess",
           "image_info", "load_image", "load_image_uint8", "normalize_image", "denormalize_image"]

PathLike = Union[str, os.PathLike]

IMAGE_EXTS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: interpolation names (timm's) -> PIL resampling filters
INTERPOLATIONS: dict[str, int] = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                                  "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}
#: timm's evaluation crop modes: ``center`` (shorter side to size/crop_pct, centre crop), ``squash`` (both sides
#: to size/crop_pct, centre crop), ``border`` (longer side to size/crop_pct, pad with the mean colour, centre crop)
CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class ImagePreprocess:
    """How images are prepared for one backbone (plain values; stored in checkpoints).

    Attributes:
        size: output side S; images become (3, S, S).
        mean, std: per-channel normalization of [0, 1] RGB values.
        interpolation: resampling filter name (``bicubic``, ``bilinear``, ...; see ``INTERPOLATIONS``).
        crop_pct: the crop keeps this fraction of the resized image: resize to ``floor(size / crop_pct)``, then crop
            ``size`` (timm's ``crop_pct``; 1.0 = no margin).
        crop_mode: ``center`` | ``squash`` | ``border`` (timm's ``crop_mode``).

    ``ImagePreprocess(size)`` is the original design: ImageNet mean/std, bicubic, shorter side to ``size``, centre
    crop. :meth:`from_timm` takes a timm data config (``timm.data.resolve_data_config``).
    """

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            problems.append(f"size must be a positive integer, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(v > 0 for v in self.std):
            problems.append(f"mean and std must hold 3 values each (std > 0), got {self.mean} and {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            problems.append(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.crop_mode not in CROP_MODES:
            problems.append(f"crop_mode {self.crop_mode!r} is not one of {list(CROP_MODES)}")
        if problems:
            raise ValueError("ImagePreprocess: " + "; ".join(problems))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))

    @property
    def scale_size(self) -> int:
        """The side images are resized to before the crop: ``floor(size / crop_pct)`` (as timm)."""
        return max(self.size, math.floor(self.size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for mean/std), for checkpoints, cache keys and MLflow."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "image preprocessing") -> "ImagePreprocess":
        """Inverse of :meth:`to_dict`; ``ValueError`` naming ``source`` and the problem."""
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or "size" not in d or set(d) - names:
            raise ValueError(f"{source}: expected a mapping with keys {sorted(names)} ('size' required), got {d!r}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_timm(cls, data_config: dict[str, Any], size: int | None = None) -> "ImagePreprocess":
        """From a timm data config (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``,
        ``crop_mode``); ``size`` overrides its input size."""
        _, h, w = data_config["input_size"]
        if size is None and h != w:
            raise ValueError(f"the backbone's input size is {h}x{w}; CIAP uses square images: set image_size")
        return cls(size=int(size if size is not None else h), mean=tuple(data_config["mean"]),
                   std=tuple(data_config["std"]), interpolation=str(data_config.get("interpolation") or "bicubic"),
                   crop_pct=float(data_config.get("crop_pct") or 1.0),
                   crop_mode=str(data_config.get("crop_mode") or "center"))


def as_preprocess(preprocess: "ImagePreprocess | int") -> ImagePreprocess:
    """``preprocess`` itself, or for a plain size S the original design's ``ImagePreprocess(S)``."""
    if isinstance(preprocess, ImagePreprocess):
        return preprocess
    if isinstance(preprocess, bool) or not isinstance(preprocess, int):
        raise TypeError(f"expected an ImagePreprocess or an image size (int), got {preprocess!r}")
    if preprocess <= 0:
        raise ValueError(f"load_image: size must be positive, got {preprocess}")
    return ImagePreprocess(preprocess)


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


def _resize_crop(im: Image.Image, pp: ImagePreprocess, huge: bool) -> Image.Image:
    """timm's evaluation transform on an RGB PIL image: resize (``crop_mode``) then centre crop/pad to S x S."""
    s, scale, resample = pp.size, pp.scale_size, INTERPOLATIONS[pp.interpolation]
    w, h = im.size
    gap = 3.0 if huge else None
    if pp.crop_mode == "squash":
        nw = nh = scale
    elif pp.crop_mode == "border":  # longest side to scale (timm's ResizeKeepRatio(longest=1))
        ratio = max(h / scale, w / scale)
        nw, nh = max(1, round(w / ratio)), max(1, round(h / ratio))
    else:  # shorter side to scale (torchvision's Resize(int): the longer side is truncated, not rounded)
        nw, nh = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    im = im.resize((nw, nh), resample, reducing_gap=gap)
    if nw < s or nh < s:  # pad with the mean colour (timm's CenterCropOrPad), then crop
        fill = tuple(round(255 * v) for v in pp.mean)
        canvas = Image.new("RGB", (max(s, nw), max(s, nh)), fill)
        canvas.paste(im, ((s - nw) // 2 if nw < s else 0, (s - nh) // 2 if nh < s else 0))
        im, (nw, nh) = canvas, canvas.size
    top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
    return im.crop((left, top, left + s, top + s))


def load_image_uint8(path_or_bytes: PathLike | bytes | memoryview, preprocess: ImagePreprocess | int) -> np.ndarray:
    """Decode an image to RGB uint8 (S, S, 3): EXIF rotation applied, resized and cropped as ``preprocess`` says
    (a plain int S: shorter side to S, centre crop). Raises :class:`BadFileError` naming the file."""
    pp = as_preprocess(preprocess)
    if isinstance(path_or_bytes, memoryview):  # e.g. ipywidgets FileUpload content
        path_or_bytes = path_or_bytes.tobytes()
    name: Any = "<bytes>" if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes)
    try:
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else name
        with Image.open(src) as im:
            huge = min(im.size) > 4 * pp.scale_size
            if im.format == "JPEG":
                im.draft("RGB", (pp.scale_size, pp.scale_size))  # decode huge JPEGs at reduced scale (>= size)
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            arr = np.array(_resize_crop(im, pp, huge), dtype=np.uint8)  # a writable copy
    except BadFileError:
        raise
    except FileNotFoundError:
        raise BadFileError(name, "image file does not exist") from None
    except UnidentifiedImageError:
        raise BadFileError(name, "not a readable image (PIL cannot identify it)") from None
    except Exception as e:
        raise BadFileError(name, f"image decoding failed ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(arr)


def normalize_image(arr: np.ndarray | torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """RGB uint8 (H, W, 3) or (B, H, W, 3) -> float32 (3, H, W) / (B, 3, H, W): ``(x / 255 - mean) / std``.

    Done in numpy, single-threaded: torch's intra-op threads in a DataLoader on a busy 2-core machine
    turned this 0.1 ms step into 10+ ms stalls.
    """
    a = arr.numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"normalize_image: expected uint8 (..., H, W, 3), got {a.dtype} {tuple(a.shape)}")
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float64))).astype(np.float32)
    offset = (-np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(np.float32)
    out = np.empty(a.shape[:-3] + (3,) + a.shape[-3:-1], dtype=np.float32)
    for c in range(3):
        oc = out[..., c, :, :]
        np.multiply(a[..., c], scale[c], out=oc, casting="unsafe")
        oc += offset[c]
    return torch.from_numpy(out)


def load_image(path_or_bytes: PathLike | bytes | memoryview, preprocess: ImagePreprocess | int) -> torch.Tensor:
    """Decode any PIL-readable image into the float32 (3, S, S) tensor ``preprocess`` describes (the one image
    path of every model input; a plain int S means ``ImagePreprocess(S)``, ImageNet-normalized)."""
    pp = as_preprocess(preprocess)
    return normalize_image(load_image_uint8(path_or_bytes, pp), pp.mean, pp.std)


def denormalize_image(t: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
                      std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """Inverse of the normalization, for display: (3,H,W) or (B,3,H,W) -> values in [0, 1]."""
    m = torch.tensor(mean, dtype=t.dtype, device=t.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=t.dtype, device=t.device).view(3, 1, 1)
    return (t * s + m).clamp(0.0, 1.0)
