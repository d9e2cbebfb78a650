"""Contrastive and regression losses, a registry of names (the model owns the logit scale, as in open_clip).

Every loss is called ``loss_fn(image_features, audio_features, logit_scale, labels=None)``: ``labels`` (B,) long class
per pair, -1 = unlabelled. Only ``infonce_labels`` uses them; the others accept and ignore them, so callers have one
call signature.

``create_loss(name, **params)`` builds one; :func:`loss_from_config` takes the parameters a loss declares in its
``__init__`` (e.g. ``cosine_weight``) from the training config.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _check(image_features: torch.Tensor, audio_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or image_features.shape != audio_features.shape:
        raise ValueError(f"image_features and audio_features must both be (B,D) with the same shape, "
                         f"got {tuple(image_features.shape)} and {tuple(audio_features.shape)}")


def _check_labels(labels: torch.Tensor, batch: int) -> None:
    integer = not (labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool)
    if labels.shape != (batch,) or not integer:
        raise ValueError(f"labels must be a ({batch},) integer tensor (class per pair, -1 = unlabelled), "
                         f"got shape {tuple(labels.shape)} and dtype {labels.dtype}")


def positive_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B,B) soft targets of multi-positive InfoNCE: row i is uniform over i's positives, ``{i}`` plus every j with
    ``labels[j] == labels[i] >= 0``. An unlabelled pair (-1) is a positive of itself alone. Symmetric."""
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    same |= torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    same = same.float()
    return same / same.sum(dim=1, keepdim=True)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the in-batch similarity matrix.

    Row i of ``image_features`` pairs with row i of ``audio_features``; every other row is a negative.

    Args (forward):
        image_features: (B,D) unit-norm.
        audio_features: (B,D) unit-norm.
        logit_scale: scalar, linear space (``model.logit_scale.exp()``).
        labels: accepted and ignored (``infonce_labels`` uses them).
    Returns:
        ``{"loss": (loss_i2a + loss_a2i) / 2, "loss_i2a", "loss_a2i"}`` (scalars).
    """

    def forward(self, image_features: torch.Tensor, audio_features: torch.Tensor,
                logit_scale: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        _check(image_features, audio_features)
        logits = logit_scale * image_features @ audio_features.t()    # (B,B) image -> audio
        target = torch.arange(logits.shape[0], device=logits.device)
        loss_i2a = F.cross_entropy(logits, target)
        loss_a2i = F.cross_entropy(logits.t(), target)
        return {"loss": (loss_i2a + loss_a2i) / 2, "loss_i2a": loss_i2a, "loss_a2i": loss_a2i}


class LabelClipLoss(nn.Module):
    """Multi-positive symmetric InfoNCE (UniCL, SupCon): the pairs of the same class in a batch are positives.

    Row i's target is uniform over its positives (:func:`positive_targets`): itself and every other pair whose
    label equals its own; an unlabelled pair (label -1) is distinct from every other. Cross-entropy with these soft
    targets image -> audio and audio -> image. With all labels distinct (or all -1, or ``labels`` None) it equals
    :class:`ClipLoss`.

    ``intra_weight`` > 0 adds SupCon within each modality (:func:`supcon_loss` on the image and on the audio
    embeddings, averaged): each side is pulled towards the other items of its class and away from the rest on its
    own, which breaks the symmetric start of cross-modal learning (an image side that cannot tell two classes apart
    gives the audio side no reason to, and the other way round). Rows without another item of their class add
    nothing, so with all labels distinct the loss still equals :class:`ClipLoss`.

    Args:
        intra_weight: weight of the within-modality SupCon term (0 = cross-modal only).

    Args (forward):
        image_features, audio_features: (B,D) unit-norm.
        logit_scale: scalar, linear space.
        labels: (B,) integer class per pair, -1 = unlabelled (gathered across ranks like the features).

    Returns:
        ``{"loss": (loss_i2a + loss_a2i) / 2 + intra_weight * loss_intra, "loss_i2a", "loss_a2i", "loss_intra",
        "positives"}``; ``positives`` is the mean number of positives per row (1 = plain InfoNCE).
    """

    #: training gathers the labels across ranks for losses that use them
    uses_labels = True

    def __init__(self, intra_weight: float = 0.0):
        super().__init__()
        if not intra_weight >= 0:
            raise ValueError(f"intra_weight must be >= 0, got {intra_weight!r}")
        self.intra_weight = float(intra_weight)

    def forward(self, image_features: torch.Tensor, audio_features: torch.Tensor,
                logit_scale: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        _check(image_features, audio_features)
        b = image_features.shape[0]
        if labels is None:
            labels = torch.full((b,), -1, dtype=torch.long)
        _check_labels(labels, b)
        labels = labels.to(image_features.device)
        logits = logit_scale * image_features @ audio_features.t()    # (B,B) image -> audio
        target = positive_targets(labels).to(logits.dtype)  # symmetric: the a2i target too
        loss_i2a = F.cross_entropy(logits, target)
        loss_a2i = F.cross_entropy(logits.t(), target)
        positives = (target > 0).sum(dim=1).to(logits.dtype).mean()
        out = {"loss": (loss_i2a + loss_a2i) / 2, "loss_i2a": loss_i2a, "loss_a2i": loss_a2i,
               "positives": positives.detach()}
        if self.intra_weight > 0:
            intra = (supcon_loss(image_features, labels, logit_scale)
                     + supcon_loss(audio_features, labels, logit_scale)) / 2
            out["loss_intra"] = intra
            out["loss"] = out["loss"] + self.intra_weight * intra
        return out


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) within one modality: for each row with at least one other row of its class,
    cross-entropy over the other rows (itself excluded) with the target uniform over those of its class; averaged
    over such rows (0 when there are none). Unlabelled rows (-1) are never positives.

    Args:
        features: (B,D) unit-norm.
        labels: (B,) integer class per row, -1 = unlabelled.
        logit_scale: scalar, linear space.
    Returns: scalar.
    """
    b = features.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=features.device)
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) & ~eye
    rows = same.any(dim=1)
    if not bool(rows.any()):
        return features.sum() * 0.0
    logits = (logit_scale * features @ features.t()).masked_fill(eye, float("-inf"))
    target = same[rows].to(logits.dtype)
    target = target / target.sum(dim=1, keepdim=True)
    logp = F.log_softmax(logits[rows], dim=1).masked_fill(eye[rows], 0.0)
    return -(target * logp).sum(dim=1).mean()


class CosineRegressionLoss(nn.Module):
    """Mean (1 - cos) between paired embeddings: regress the image embedding onto a (frozen) audio
    tower's embedding. ``logit_scale`` is accepted for a uniform call signature and ignored.

    Returns ``{"loss", "cosine"}`` where ``cosine`` is the mean paired cosine similarity.
    """

    #: the model's ``logit_scale`` gets no gradient from this loss (DDP must be told: an unused parameter)
    uses_logit_scale = False

    def forward(self, image_features: torch.Tensor, audio_features: torch.Tensor,
                logit_scale: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        _check(image_features, audio_features)
        cos = F.cosine_similarity(image_features, audio_features, dim=-1).mean()
        return {"loss": 1.0 - cos, "cosine": cos}


class InfoNCECosineLoss(nn.Module):
    """InfoNCE plus ``cosine_weight`` times the cosine regression loss: contrast the image embedding against the
    batch and pull it onto its paired (frozen, e.g. CLAP) audio embedding, the V2A-Mapper target.

    Args:
        cosine_weight: weight of ``1 - cos`` (0 = plain InfoNCE).
    Returns (forward): ``{"loss": infonce + cosine_weight * (1 - cos), "loss_infonce", "loss_cosine", "cosine"}``.
    """

    def __init__(self, cosine_weight: float = 1.0):
        super().__init__()
        if not cosine_weight >= 0:
            raise ValueError(f"cosine_weight must be >= 0, got {cosine_weight!r}")
        self.cosine_weight = float(cosine_weight)
        self.infonce = ClipLoss()
        self.cosine = CosineRegressionLoss()

    def forward(self, image_features: torch.Tensor, audio_features: torch.Tensor,
                logit_scale: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        nce = self.infonce(image_features, audio_features, logit_scale)["loss"]
        cos = self.cosine(image_features, audio_features)
        return {"loss": nce + self.cosine_weight * cos["loss"], "loss_infonce": nce, "loss_cosine": cos["loss"],
                "cosine": cos["cosine"]}


LOSSES: dict[str, type[nn.Module]] = {"infonce": ClipLoss, "infonce_labels": LabelClipLoss,
                                      "cosine": CosineRegressionLoss, "infonce+cosine": InfoNCECosineLoss}


def loss_param_names(name: str) -> list[str]:
    """The parameters loss ``name`` takes (its ``__init__`` arguments), e.g. ``["cosine_weight"]``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    params = inspect.signature(LOSSES[name]).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def create_loss(name: str, **params: Any) -> nn.Module:
    """The loss ``name`` of ``LOSSES`` built with ``params`` (only those it takes; others are an error)."""
    unknown = sorted(set(params) - set(loss_param_names(name)))
    if unknown:
        raise ValueError(f"loss {name!r} takes {loss_param_names(name) or 'no parameters'}, not {unknown}")
    return LOSSES[name](**params)


def loss_params(name: str, config: Any) -> dict[str, Any]:
    """The parameters of loss ``name`` read from ``config`` (attributes of the same names, when it has them)."""
    return {p: getattr(config, p) for p in loss_param_names(name) if hasattr(config, p)}


def loss_from_config(config: Any) -> nn.Module:
    """``create_loss(config.loss, **loss_params(config.loss, config))``: e.g. ``cosine_weight`` from a
    ``TrainConfig``."""
    return create_loss(config.loss, **loss_params(config.loss, config))
