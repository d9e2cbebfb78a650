"""Audio file I/O: decode with ``soundfile``, resample with ``torchaudio.functional.resample``.

``torchaudio.load``/``save`` are not used: in torchaudio 2.9 they need torchcodec and a system FFmpeg.
``soundfile`` 0.14 bundles libsndfile 1.2.2, which reads and writes WAV, FLAC, OGG (Vorbis) and MP3.

Every decoding problem is raised as :class:`BadFileError` (a ``ValueError``) whose message names the
file and the problem, so that a dataset can report or skip it.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import torch

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
    p = Path(path)
    if not p.is_file():
        raise BadFileError(p, "audio file does not exist")
    if p.stat().st_size == 0:
        raise BadFileError(p, "audio file is empty (0 bytes)")
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


def resample(waveform: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample ``waveform`` (..., T) from ``orig_sr`` to ``new_sr`` Hz (torchaudio's sinc resampler).

    Returns float32 numpy (..., T').
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {orig_sr} -> {new_sr}")
    x = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
    if orig_sr == new_sr:
        return x.numpy()
    import torchaudio.functional as AF  # local: keeps `import ciap_lib.audio_io` light

    g = np.gcd(int(orig_sr), int(new_sr))
    return AF.resample(x, int(orig_sr) // g, int(new_sr) // g).numpy()


def load_audio(path: PathLike, sample_rate: int = 16000, *, mono: bool = True) -> np.ndarray:
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


def write_wav(path: PathLike, waveform: np.ndarray | torch.Tensor, sample_rate: int = 16000,
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
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        sf.write(tmp, frames, int(sample_rate), subtype=subtype, format="WAV")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
