"""Audio file I/O: decode with ``soundfile``, resample with ``torchaudio.functional.resample``.

``torchaudio.load``/``save`` are not used: in torchaudio 2.9 they need torchcodec and a system FFmpeg.
``soundfile`` 0.14 bundles libsndfile 1.2.2, which reads and writes WAV, FLAC, OGG (Vorbis) and MP3.

Every decoding problem is raised as :class:`BadFileError` (a ``ValueError``) whose message names the
file and the problem, so that a dataset can report or skip it.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import torch

from ciap_lib.atomic import atomic_path
from ciap_lib.constants import SAMPLE_RATE

PathLike = Union[str, os.PathLike]

#: Audio file extensions the datasets accept (lower case, with dot).
AUDIO_EXTS: frozenset[str] = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3"})


class BadFileError(ValueError):
    """A data file that cannot be used. ``str(err)`` names the file and the problem.

    Attributes: ``path`` (the offending file) and ``reason`` (the problem, without the path).
    """

    def __init__(self, path: PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def require_nonempty_file(path: PathLike, kind: str) -> Path:
    """``Path(path)``, or :class:`BadFileError` ("<kind> file does not exist" / "... is empty (0 bytes)")."""
    p = Path(path)
    if not p.is_file():
        raise BadFileError(p, f"{kind} file does not exist")
    if p.stat().st_size == 0:
        raise BadFileError(p, f"{kind} file is empty (0 bytes)")
    return p


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file (read without decoding the samples)."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Duration in seconds."""
        return self.frames / self.sample_rate if self.sample_rate > 0 else 0.0


def audio_info(path: PathLike) -> AudioInfo:
    """Read an audio file's header only (cheap). Raises :class:`BadFileError` on any problem.

    Checks: the file exists, is not empty, libsndfile recognises it, it has a positive sample rate,
    at least one channel and at least one frame.
    """
    p = require_nonempty_file(path, "audio")
    try:
        info = sf.info(str(p))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise BadFileError(p, f"not a readable audio file ({type(e).__name__}: {e})") from None
    if info.samplerate <= 0:
        raise BadFileError(p, f"invalid sample rate {info.samplerate}")
    if info.channels <= 0:
        raise BadFileError(p, f"invalid channel count {info.channels}")
    if info.frames <= 0:
        raise BadFileError(p, "audio file contains no samples")
    return AudioInfo(p, int(info.samplerate), int(info.channels), int(info.frames),
                     str(info.format), str(info.subtype))


@functools.lru_cache(maxsize=32)
def _resampler(orig_sr: int, new_sr: int):
    """A cached ``torchaudio.transforms.Resample`` (building the sinc kernel costs ~40 ms for 44.1k->16k;
    applying it to 1 s costs ~0.2 ms). Same defaults as ``torchaudio.functional.resample``."""
    import torchaudio  # local: keeps `import ciap_lib.audio_io` light

    return torchaudio.transforms.Resample(orig_sr, new_sr)


def resample(waveform: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample ``waveform`` (..., T) from ``orig_sr`` to ``new_sr`` Hz (torchaudio's sinc resampler,
    kernel cached per rate pair). Returns float32 numpy (..., ceil(T * new_sr / orig_sr))."""
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {orig_sr} -> {new_sr}")
    x = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
    if orig_sr == new_sr:
        return x.numpy()
    g = math.gcd(int(orig_sr), int(new_sr))
    with torch.no_grad():
        return _resampler(int(orig_sr) // g, int(new_sr) // g)(x).numpy()


def resampled_length(frames: int, orig_sr: int, new_sr: int) -> int:
    """Number of samples :func:`load_audio` returns for ``frames`` samples at ``orig_sr``."""
    if orig_sr == new_sr:
        return int(frames)
    g = math.gcd(int(orig_sr), int(new_sr))
    o, n = orig_sr // g, new_sr // g
    return int(math.ceil(n * frames / o))


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE, *, mono: bool = True) -> np.ndarray:
    """Decode an audio file (wav/flac/ogg/mp3, any rate, any channel count) to float32.

    Args:
        path: the file.
        sample_rate: target rate in Hz; the file is resampled when its rate differs.
        mono: average the channels (default). With ``mono=False`` the result is (C, T).

    Returns:
        ``np.ndarray`` float32, shape (T,) (mono) or (C, T), values nominally in [-1, 1].

    Raises:
        BadFileError: missing, empty, unrecognised, truncated-to-nothing, or non-finite samples.
    """
    p = Path(path)
    info = audio_info(p)
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)  # (T, C)
    except Exception as e:
        raise BadFileError(p, f"audio decoding failed ({type(e).__name__}: {e})") from None
    if data.shape[0] == 0:
        raise BadFileError(p, "audio file contains no decodable samples (truncated?)")
    if not np.isfinite(data).all():
        raise BadFileError(p, "audio contains NaN or infinite samples")
    x = data.mean(axis=1) if mono else np.ascontiguousarray(data.T)
    if sr != sample_rate:
        x = resample(x, sr, sample_rate)
    del info
    return np.ascontiguousarray(x, dtype=np.float32)


#: Container formats whose seeks are sample-exact in libsndfile (checked against full decodes).
SEEKABLE_FORMATS: frozenset[str] = frozenset({"WAV", "WAVEX", "FLAC", "AIFF", "RF64", "W64", "CAF", "AU"})


def seekable(info: AudioInfo) -> bool:
    """True when :func:`load_audio_segment` can seek in this file instead of decoding all of it."""
    return info.format in SEEKABLE_FORMATS


def load_audio_segment(path: PathLike, start: int, length: int, sample_rate: int = SAMPLE_RATE,
                       info: AudioInfo | None = None) -> np.ndarray:
    """Decode only samples ``[start, start + length)`` (counted at ``sample_rate``) of a file, mono.

    Seeks in the file and resamples just the needed stretch plus a margin for the resampling filter, so a
    1 s crop of a 10 min file costs about as much as a 1 s file. The result equals
    ``load_audio(path)[start:start + length]`` exactly for files at ``sample_rate`` and up to filter
    edge effects (~1e-5) otherwise. Formats without sample-exact seeking in libsndfile 1.2.2 (MP3, and
    OGG/Vorbis, whose seeks land off by up to thousands of samples) fall back to a full decode.
    Past the end of the file the segment is zero-padded. Returns float32 (length,).
    """
    p = Path(path)
    if start < 0 or length <= 0:
        raise ValueError(f"load_audio_segment({p}): need start >= 0 and length > 0, got {start}, {length}")
    info = info or audio_info(p)
    out = np.zeros(length, dtype=np.float32)
    if not seekable(info):
        x = load_audio(p, sample_rate)[start:start + length]
        out[:len(x)] = x
        return out
    sr = info.sample_rate
    g = math.gcd(sr, int(sample_rate))
    o_step, n_step = sr // g, int(sample_rate) // g     # o_step input samples <-> n_step output samples
    margin = int(math.ceil(0.005 * sr)) + 16            # > the sinc filter's half-width
    k = max(0, (start * o_step // n_step - margin) // o_step)
    o0 = k * o_step                                     # aligned: output index of o0 is exactly k*n_step
    o1 = min(info.frames, int(math.ceil((start + length) * o_step / n_step)) + margin)
    if o0 >= info.frames or o1 <= o0:
        return out
    try:
        with sf.SoundFile(str(p)) as f:
            f.seek(o0)
            data = f.read(o1 - o0, dtype="float32", always_2d=True)
    except Exception as e:
        raise BadFileError(p, f"audio decoding failed ({type(e).__name__}: {e})") from None
    if not np.isfinite(data).all():
        raise BadFileError(p, "audio contains NaN or infinite samples")
    if data.shape[0] == 0:
        return out
    y = resample(data.mean(axis=1), sr, int(sample_rate))
    off = start - k * n_step
    y = y[off:off + length]
    out[:len(y)] = y
    return out


def write_wav(path: PathLike, waveform: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE,
              subtype: str = "PCM_16") -> Path:
    """Write a WAV file atomically (temp file in the same folder, then ``os.replace``).

    Args:
        path: destination; parent folders are created.
        waveform: (T,) mono or (C, T) multichannel, float in [-1, 1] (clipped for PCM subtypes).
        sample_rate: Hz.
        subtype: libsndfile subtype, e.g. ``"PCM_16"`` (default) or ``"FLOAT"``.

    Returns:
        The destination path.
    """
    p = Path(path)
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim == 1:
        frames = x[:, None]
    elif x.ndim == 2:
        frames = x.T
    else:
        raise ValueError(f"write_wav({p}): waveform must be (T,) or (C, T), got shape {x.shape}")
    if frames.shape[0] == 0:
        raise ValueError(f"write_wav({p}): waveform is empty")
    if not np.isfinite(frames).all():
        raise ValueError(f"write_wav({p}): waveform contains NaN or infinite values")
    if subtype.startswith("PCM"):
        frames = np.clip(frames, -1.0, 1.0)
    with atomic_path(p) as tmp:
        sf.write(tmp, frames, int(sample_rate), subtype=subtype, format="WAV")
    return p
