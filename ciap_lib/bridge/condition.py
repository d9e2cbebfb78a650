"""The condition stage: images -> L2-normalized (B, 1, 512) embeddings for AudioLDM's film input.

This replaces CLAP as the conditioner. AudioLDM's CLAP wrapper ``forward`` is never called: it
swaps ~10% of embeddings for the unconditional one at random and re-tokenizes on every call.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

AUDIOLDM_EMBED_DIM = 512


class CIAPCondStage(nn.Module):
    """Wraps a trained CIAP model's image tower. ``forward(images (B,3,S,S) prepared as ``self.preprocess``
    says)`` -> (B, 1, 512) unit vectors. Raises ``ValueError`` if the model's embedding size is not 512."""

    def __init__(self, ciap_model: nn.Module, source: str = "CIAP model"):
        super().__init__()
        dim = int(getattr(getattr(ciap_model, "config", None), "embed_dim", AUDIOLDM_EMBED_DIM))
        if dim != AUDIOLDM_EMBED_DIM:
            raise ValueError(f"{source}: embedding size {dim} does not match AudioLDM's condition size "
                             f"{AUDIOLDM_EMBED_DIM}; train with embed_dim=512 (audio_encoder 'clap' to land in CLAP space)")
        self.model = ciap_model.eval()
        self.source = source
        audio_encoder = getattr(ciap_model.config, "audio_encoder", None)
        #: True when the image embedding was trained against AudioLDM's own CLAP audio tower.
        self.clap_aligned = audio_encoder == "clap"

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str = "cpu") -> "CIAPCondStage":
        """Load a CIAP checkpoint (``ciap_lib.checkpoint.load_ciap``) and wrap it."""
        from ciap_lib.checkpoint import load_ciap

        model, _cfg = load_ciap(path, map_location=map_location)
        return cls(model, source=f"CIAP checkpoint {str(path)!r}")

    @property
    def preprocess(self):
        """The model's ``ciap_lib.images.ImagePreprocess`` (stored in its checkpoint)."""
        return self.model.preprocess

    @property
    def image_size(self) -> int:
        return int(self.preprocess.size)

    def load_images(self, images: Sequence[str | os.PathLike | bytes]) -> torch.Tensor:
        """Image files (or bytes) -> (B, 3, S, S) prepared as the model's preprocessing says (size, mean/std,
        interpolation, crop: ``ciap_lib.images.load_image``)."""
        from ciap_lib.images import load_image

        return torch.stack([load_image(im, self.preprocess) for im in images])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"CIAPCondStage: expected images (B, 3, H, W), got {tuple(images.shape)}")
        device = next(self.model.parameters()).device
        emb = self.model.encode_image(images.to(device=device, dtype=torch.float32))
        return F.normalize(emb.float(), dim=-1).unsqueeze(1)
