"""Image files -> RGB uint8 -> normalized float tensors.

Any PIL-readable file (grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated, tiny or huge) -> RGB, resized
(shorter side to ``size``, centre crop), ImageNet-normalized (3, size, size) float32. Problems raise
:class:`~ciap_lib.audio_io.BadFileError` naming the file.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ciap_lib.audio_io import BadFileError, require_nonempty_file

__all__ = ["IMAGE_EXTS", "IMAGENET_MEAN", "IMAGENET_STD", "ImageInfo", "image_info", "load_image",
           "load_image_uint8", "normalize_image", "denormalize_image"]

PathLike = Union[str, os.PathLike]

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
