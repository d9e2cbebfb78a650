"""Generation metrics in CLAP space, using only the AudioLDM checkpoint's own CLAP audio tower.

* CLAP score: cosine between a clip's condition embedding and the CLAP audio embedding of the clip.
* CLAP Fréchet distance: torcheval's ``FrechetAudioDistance`` with the frozen CLAP audio tower as the
  embedding model. These are CLAP-space figures: NOT comparable with published (VGGish) FAD numbers.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ciap_lib.bridge.frozen import FrozenAudioLDM


def _as_batch(waveforms) -> torch.Tensor:
    if isinstance(waveforms, np.ndarray):
        waveforms = torch.from_numpy(np.ascontiguousarray(waveforms))
    w = waveforms.float()
    if w.dim() == 1:
        w = w.unsqueeze(0)
    if w.dim() != 2:
        raise ValueError(f"waveforms: expected (B, T) 16 kHz audio, got {tuple(w.shape)}")
    return w


def clap_score(audioldm: FrozenAudioLDM, waveforms: np.ndarray | torch.Tensor, cond_embeds: torch.Tensor
               ) -> torch.Tensor:
    """Per-clip cosine (B,) between ``cond_embeds`` (B,1,512)/(B,512) and the clips' CLAP audio embeddings.
    Meaningful for CLAP-aligned CIAP models (audio_encoder 'clap'), whose embeddings live in CLAP space."""
    w = _as_batch(waveforms)
    c = F.normalize(cond_embeds.detach().float().reshape(cond_embeds.shape[0], -1), dim=-1)
    if c.shape[0] != w.shape[0]:
        raise ValueError(f"clap_score: {w.shape[0]} clips but {c.shape[0]} condition embeddings")
    return (audioldm.clap_audio_embed(w).cpu() * c).sum(-1)


class ClapAudioTower(nn.Module):
    """The frozen CLAP audio tower as an ``nn.Module``: (T,) or (B, T) 16 kHz -> (B, 512) (for torcheval)."""

    def __init__(self, audioldm: FrozenAudioLDM):
        super().__init__()
        self._audioldm = audioldm  # plain attribute: the tower's weights stay owned by the FrozenAudioLDM

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self._audioldm.clap_audio_embed(_as_batch(waveform))


def clap_frechet_distance(audioldm: FrozenAudioLDM, generated: np.ndarray | torch.Tensor | Sequence,
                          reference: np.ndarray | torch.Tensor | Sequence) -> float:
    """Fréchet distance between CLAP-space embeddings of ``generated`` and ``reference`` clips.

    Each argument: a (N, T) array of equal-length 16 kHz clips, or a list of 1-D clips / audio file
    paths (any lengths). Needs at least 2 clips per side. CLAP-space figure, not VGGish FAD.
    """
    from torcheval.metrics import FrechetAudioDistance

    fad = FrechetAudioDistance(preproc=lambda x: x, model=ClapAudioTower(audioldm), embedding_dim=512)
    none = torch.empty(0, 1)
    for clips, side in ((generated, "generated"), (reference, "reference")):
        items = _clips(clips)
        if len(items) < 2:
            raise ValueError(f"clap_frechet_distance: need at least 2 {side} clips, got {len(items)}")
        for w in items:  # one clip per update: lengths may differ
            if side == "generated":
                fad.update(w.unsqueeze(0), none)
            else:
                fad.update(none, w.unsqueeze(0))
    return float(fad.compute())


def _clips(clips) -> list[torch.Tensor]:
    """(N, T) array/tensor, or a sequence of 1-D clips or audio file paths -> list of 1-D float tensors."""
    from ciap_lib.audio_io import load_audio

    if isinstance(clips, (np.ndarray, torch.Tensor)):
        return list(_as_batch(clips))
    out = []
    for c in clips:
        if isinstance(c, (str, os.PathLike)):
            c = load_audio(c, sample_rate=16000)
        out.append(_as_batch(c)[0])
    return out
