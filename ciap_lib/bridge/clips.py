"""Clip lists for the generation metrics: (N, T) arrays, tensors, 1-D clips and audio files -> 1-D tensors.

Shared by the CLAP-space metrics (``bridge/metrics.py``) and the standard ones (``bridge/audio_metrics.py``).
"""
from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import torch

#: What the metric functions accept as a set of clips: a (N, T) array/tensor of equal-length clips, or a
#: sequence whose items are 1-D arrays/tensors or audio file paths (any lengths).
Clips = Union[np.ndarray, torch.Tensor, Sequence[Union[np.ndarray, torch.Tensor, str, os.PathLike]]]


def as_batch(waveforms: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T,) or (B, T) array/tensor -> (B, T) float32 tensor; anything else is a ``ValueError``."""
    if isinstance(waveforms, np.ndarray):
        waveforms = torch.from_numpy(np.ascontiguousarray(waveforms))
    w = waveforms.float()
    if w.dim() == 1:
        w = w.unsqueeze(0)
    if w.dim() != 2:
        raise ValueError(f"waveforms: expected (B, T) audio, got {tuple(w.shape)}")
    return w


def clip_list(clips: Clips, sample_rate: int = 16000, *, channel: str = "mean") -> list[tuple[torch.Tensor, int]]:
    """Each clip as ``(waveform (T,) float32 tensor, its sample rate)``.

    Arrays and tensors are taken to be at ``sample_rate``. Audio files are decoded at their own rate (no
    resampling here) with ``channel`` 'mean' (average of the channels) or 'first' (the first channel only).
    A bad file raises :class:`ciap_lib.audio_io.BadFileError` naming it.
    """
    from ciap_lib.audio_io import audio_info, load_audio

    if channel not in ("mean", "first"):
        raise ValueError(f"clip_list: channel must be 'mean' or 'first', got {channel!r}")
    if isinstance(clips, (np.ndarray, torch.Tensor)):
        return [(w, int(sample_rate)) for w in as_batch(clips)]
    out = []
    for i, c in enumerate(clips):
        if isinstance(c, (str, os.PathLike)):
            sr = audio_info(c).sample_rate
            x = load_audio(c, sample_rate=sr, mono=False)            # (C, T) at the file's own rate
            c = x.mean(axis=0) if channel == "mean" else x[0]
            out.append((torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)), sr))
            continue
        w = as_batch(c)
        if w.shape[0] != 1:
            raise ValueError(f"clip {i}: expected a 1-D waveform, got shape {tuple(w.shape)}")
        out.append((w[0], int(sample_rate)))
    return out


def clips_at(clips: Clips, sample_rate: int = 16000, target_rate: int = 16000, *, channel: str = "mean"
             ) -> list[torch.Tensor]:
    """:func:`clip_list`, each clip resampled to ``target_rate`` (torchaudio's sinc resampler). List of (T_i,)."""
    from ciap_lib.audio_io import resample

    return [w if sr == target_rate else torch.from_numpy(resample(w, sr, target_rate))
            for w, sr in clip_list(clips, sample_rate, channel=channel)]
