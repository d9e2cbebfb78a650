"""Parameter-free contrastive losses (the model owns the logit scale, as in open_clip)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check(image_features: torch.Tensor, audio_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or image_features.shape != audio_features.shape:
        raise ValueError(f"image_features and audio_features must both be (B,D) with the same shape, "
                         f"got {tuple(image_features.shape)} and {tuple(audio_features.shape)}")


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the in-batch similarity matrix.

    Row i of ``image_features`` pairs with row i of ``audio_features``; every other row is a negative.

    Args (forward):
        image_features: (B,D) unit-norm.
        audio_features: (B,D) unit-norm.
        logit_scale: scalar, linear space (``model.logit_scale.exp()``).
    Returns:
        ``{"loss": (loss_i2a + loss_a2i) / 2, "loss_i2a", "loss_a2i"}`` (scalars).
    """

    def forward(self, image_features: torch.Tensor, audio_features: torch.Tensor,
                logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
        _check(image_features, audio_features)
        logits = logit_scale * image_features @ audio_features.t()    # (B,B) image -> audio
        target = torch.arange(logits.shape[0], device=logits.device)
        loss_i2a = F.cross_entropy(logits, target)
        loss_a2i = F.cross_entropy(logits.t(), target)
        return {"loss": (loss_i2a + loss_a2i) / 2, "loss_i2a": loss_i2a, "loss_a2i": loss_a2i}


class CosineRegressionLoss(nn.Module):
    """Mean (1 - cos) between paired embeddings: regress the image embedding onto a (frozen) audio
    tower's embedding. ``logit_scale`` is accepted for a uniform call signature and ignored.

    Returns ``{"loss", "cosine"}`` where ``cosine`` is the mean paired cosine similarity.
    """

    def forward(self, image_features: torch.Tensor, audio_features: torch.Tensor,
                logit_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        _check(image_features, audio_features)
        cos = F.cosine_similarity(image_features, audio_features, dim=-1).mean()
        return {"loss": 1.0 - cos, "cosine": cos}


LOSSES: dict[str, type[nn.Module]] = {"infonce": ClipLoss, "cosine": CosineRegressionLoss}


def create_loss(name: str) -> nn.Module:
    """``"infonce"`` -> :class:`ClipLoss`, ``"cosine"`` -> :class:`CosineRegressionLoss`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name]()
