"""Generation metrics in CLAP space, using only the AudioLDM checkpoint's own CLAP audio tower.

* CLAP score (``clap_score``): cosine between a clip's condition embedding and the CLAP audio embedding of
  the clip.
* CLAP Fréchet distance (``clap_fd``): the shared :func:`ciap_lib.bridge.frechet.frechet_distance` on the
  frozen CLAP audio tower's embeddings. These are CLAP-space figures: NOT comparable with published (VGGish)
  FAD numbers; those are ``fad_vggish`` / ``fd_panns`` in :mod:`ciap_lib.bridge.audio_metrics`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ciap_lib.bridge.clips import Clips, as_batch, clips_at
from ciap_lib.bridge.frechet import frechet_distance
from ciap_lib.bridge.frozen import FrozenAudioLDM


def clap_score(audioldm: FrozenAudioLDM, waveforms: np.ndarray | torch.Tensor, cond_embeds: torch.Tensor
               ) -> torch.Tensor:
    """Per-clip cosine (B,) between ``cond_embeds`` (B,1,512)/(B,512) and the clips' CLAP audio embeddings.
    ``waveforms``: (B, T) 16 kHz. Meaningful for CLAP-aligned CIAP models (audio_encoder 'clap'), whose
    embeddings live in CLAP space."""
    w = as_batch(waveforms)
    if cond_embeds.shape[0] != w.shape[0]:
        raise ValueError(f"clap_score: {w.shape[0]} clips but {cond_embeds.shape[0]} condition embeddings")
    return clap_score_of_embeddings(audioldm.clap_audio_embed(w).cpu(), cond_embeds)


def clap_score_of_embeddings(audio_embeds: torch.Tensor, cond_embeds: torch.Tensor) -> torch.Tensor:
    """:func:`clap_score` from CLAP audio embeddings already computed: cosine (B,) between row i of
    ``audio_embeds`` (B, 512) and row i of ``cond_embeds`` (B,1,512)/(B,512)."""
    a = F.normalize(audio_embeds.detach().float().reshape(audio_embeds.shape[0], -1), dim=-1)
    c = F.normalize(cond_embeds.detach().float().reshape(cond_embeds.shape[0], -1).to(a.device), dim=-1)
    if c.shape != a.shape:
        raise ValueError(f"clap_score: audio embeddings {tuple(a.shape)} vs condition embeddings {tuple(c.shape)}")
    return (a * c).sum(-1)


def clap_audio_embeddings(audioldm: FrozenAudioLDM, clips: Clips, batch_size: int = 8) -> torch.Tensor:
    """(N, 512) unit CLAP audio embeddings (the frozen tower of ``audioldm``) of ``clips``, on the CPU.

    ``clips``: a (N, T) array of 16 kHz clips, or a list of 1-D 16 kHz clips / audio file paths (any lengths;
    files are resampled to 16 kHz, channels averaged). Consecutive clips of equal length are embedded
    ``batch_size`` at a time (the tower treats each clip on its own: batching changes results only by float
    round-off).
    """
    items = clips_at(clips, 16000, 16000)
    out, i = [], 0
    while i < len(items):
        j = i + 1
        while j < len(items) and j - i < batch_size and items[j].shape == items[i].shape:
            j += 1
        with torch.inference_mode():
            out.append(audioldm.clap_audio_embed(torch.stack(items[i:j])).cpu())
        i = j
    return torch.cat(out) if out else torch.zeros(0, audioldm.embed_dim)


class ClapAudioTower(nn.Module):
    """The frozen CLAP audio tower as an ``nn.Module``: (T,) or (B, T) 16 kHz -> (B, 512)."""

    def __init__(self, audioldm: FrozenAudioLDM):
        super().__init__()
        self._audioldm = audioldm  # plain attribute: the tower's weights stay owned by the FrozenAudioLDM

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self._audioldm.clap_audio_embed(as_batch(waveform))


def clap_frechet_distance(audioldm: FrozenAudioLDM, generated: Clips, reference: Clips) -> float:
    """``clap_fd``: Fréchet distance between CLAP-space embeddings (512-d, one per clip) of ``generated``
    and ``reference`` clips.

    Each argument: a (N, T) array of equal-length 16 kHz clips, or a list of 1-D 16 kHz clips / audio file
    paths (any lengths; files are resampled to 16 kHz, channels averaged). Needs at least 2 clips per side.
    CLAP-space figure, not VGGish FAD.
    """
    embeds = []
    for clips, side in ((generated, "generated"), (reference, "reference")):
        e = clap_audio_embeddings(audioldm, clips)
        if e.shape[0] < 2:
            raise ValueError(f"clap_frechet_distance: need at least 2 {side} clips, got {e.shape[0]}")
        embeds.append(e)
    return frechet_distance(embeds[0], embeds[1])
