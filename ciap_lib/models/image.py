"""Image tower: backbone (``ciap_lib.models.backbones``) -> head (``ciap_lib.models.heads``) -> unit vector.

The tower carries what its inputs must look like (``preprocess``, an :class:`~ciap_lib.images.ImagePreprocess`)
and the identity of its backbone weights (``weights_digest``); both are stored in the model config, hence in
checkpoints, so every image path after training prepares images exactly as training did.

Which backbone parameters train: all of them (default); none (``freeze_backbone``: training then reads cached
features, ``ciap_lib.features``); or the last ``unfreeze_last`` blocks (what a block is per backbone family:
``ciap_lib.models.backbones``). Modules whose parameters are all frozen stay in eval mode while training (their
BatchNorm statistics do not move).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

# registered backbone families: torchvision + tiny_cnn (backbones), timm/ (timm_backbone), tiny timm test models
from ciap_lib.images import ImagePreprocess
from ciap_lib.models import tiny_timm  # noqa: F401  (registers the tiny timm models)
from ciap_lib.models.backbones import (BACKBONES, Backbone, ImageWeightsNotFoundError, TinyCNN, backbone_names,
                                       get_backbone_family, imagenet_weights_file, load_imagenet_state_dict,
                                       weights_digest)
from ciap_lib.models.config import ModelConfig
from ciap_lib.models.heads import check_head_config, create_head
from ciap_lib.models.timm_backbone import TimmFamily  # noqa: F401  (registers timm/)

__all__ = ["BACKBONES", "Backbone", "IMAGE_BACKBONES", "ImageEncoder", "ImageWeightsNotFoundError", "TinyCNN",
           "build_backbone", "check_image_config", "imagenet_weights_file", "load_imagenet_state_dict"]

#: the plain (non-prefix) backbone names; any ``timm/<name>`` is accepted too
IMAGE_BACKBONES: tuple[str, ...] = tuple(n for n in BACKBONES if not n.endswith("/"))


def build_backbone(config: ModelConfig, load_pretrained: bool = True) -> Backbone:
    """The backbone ``config.image_backbone`` names (weights loaded unless ``load_pretrained`` is False, used
    when a checkpoint will overwrite them)."""
    # rebuilding a checkpoint's model (load_pretrained False): its weights come from the checkpoint, not the file
    problems = [p for p in check_image_config(config, weights_file_used=load_pretrained) if not p.startswith("head")]
    if problems:
        raise ValueError("; ".join(problems))
    family, arch = get_backbone_family(config.image_backbone)
    return family.build(arch, config, load_pretrained)


def check_image_config(config: ModelConfig, check_weights: bool = False, weights_file_used: bool = True) -> list[str]:
    """Problems with the image side of ``config`` (empty when fine), each naming the key, the rejected value
    and what is allowed. ``check_weights``: pretrained weights must be on disk (nothing is loaded).
    ``weights_file_used``: False when the weights come from elsewhere (a checkpoint being rebuilt), so an
    ``image_weights`` that ``image_pretrained: none`` would ignore is no problem."""
    problems = []
    name = config.image_backbone
    try:
        family, arch = get_backbone_family(name)
    except ValueError:
        problems.append(f"image_backbone: {name!r} is not one of {backbone_names()}")
    else:
        if config.image_pretrained not in family.pretrained:
            problems.append(f"image_pretrained: {config.image_pretrained!r} does not apply to image_backbone "
                            f"{name!r}; use one of {list(family.pretrained)}")
        else:
            problems += family.check(arch, config, check_weights)
        if weights_file_used and config.image_weights and config.image_pretrained in (None, "none"):
            load = [v for v in family.pretrained if v != "none"]
            problems.append(f"image_weights: {config.image_weights!r} would not be loaded: image_pretrained is 'none' "
                            "(a random init); " + (f"set image_pretrained={load[0]} to load the file, or drop "
                                                   "image_weights" if load else
                                                   f"image_backbone {name!r} takes no weights file"))
    if config.image_size is not None and config.image_size < 8:
        problems.append(f"image_size: must be at least 8 pixels, got {config.image_size}")
    if config.image_preprocess is not None:
        try:
            pp = ImagePreprocess.from_dict(config.image_preprocess)
        except ValueError as e:
            problems.append(f"image_preprocess: {e}")
        else:
            if config.image_size is not None and pp.size != config.image_size:
                problems.append(f"image_preprocess: its size {pp.size} differs from image_size {config.image_size}")
    if config.unfreeze_last is not None:
        if config.unfreeze_last < 1:
            problems.append(f"unfreeze_last: must be a positive number of blocks or null, got {config.unfreeze_last}")
        elif config.freeze_backbone:
            problems.append("unfreeze_last: freeze_backbone is true (nothing of the backbone trains); set "
                            "freeze_backbone=false to train its last blocks")
    return problems + check_head_config(config)


class ImageEncoder(nn.Module):
    """(B, 3, S, S) images prepared as ``self.preprocess`` says -> (B, F) backbone features -> head ->
    (B, embed_dim) unit-norm embeddings.

    Attributes:
        backbone: (B, 3, S, S) -> (B, feature_dim).
        head: (B, feature_dim) -> (B, embed_dim), L2-normalized (``config.head``).
        preprocess: the stored preprocessing (``config.image_preprocess``) or, for a new model, the backbone's.
        weights_digest: sha256 of the backbone weights as built (``config.image_weights_digest`` when rebuilt from
            a checkpoint).
        frozen: ``config.freeze_backbone``.
    """

    def __init__(self, config: ModelConfig, load_pretrained: bool = True):
        super().__init__()
        built = build_backbone(config, load_pretrained)
        self.backbone = built.net
        self.feature_dim = built.feature_dim
        self.head = create_head(config.head, built.feature_dim, config)
        self.preprocess = (ImagePreprocess.from_dict(config.image_preprocess, "model config image_preprocess")
                           if config.image_preprocess is not None else built.preprocess)
        self.weights_digest: str | None = weights_digest(self.backbone) if load_pretrained \
            else config.image_weights_digest
        self.frozen = config.freeze_backbone
        if self.frozen:
            self.backbone.requires_grad_(False)
        elif config.unfreeze_last is not None:
            self._train_last_blocks(config)
        if config.head == "linear":
            self._register_load_state_dict_pre_hook(_legacy_linear_head_keys)

    def _train_last_blocks(self, config: ModelConfig) -> None:
        family, arch = get_backbone_family(config.image_backbone)
        blocks, tail = family.blocks(arch, self.backbone)
        n = config.unfreeze_last
        if n > len(blocks):
            raise ValueError(f"unfreeze_last: {n} is more than the {len(blocks)} blocks of image_backbone "
                             f"{config.image_backbone!r}")
        trainable = {p for block in blocks[-n:] for p in block} | set(tail)
        for pname, p in self.backbone.named_parameters():
            p.requires_grad_(pname in trainable)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        if mode:  # modules whose parameters are all frozen keep eval mode (BatchNorm statistics, dropout)
            for m in self.backbone.modules():
                params = list(m.parameters())
                if params and not any(p.requires_grad for p in params):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_image expects (B,3,H,W) images, got shape {tuple(images.shape)}")
        return self.head(self.backbone(images))

    def parameter_counts(self) -> dict[str, int]:
        """``{"backbone", "head", "trainable", "frozen"}`` parameter counts of the tower."""
        params = list(self.parameters())
        return {"backbone": sum(p.numel() for p in self.backbone.parameters()),
                "head": sum(p.numel() for p in self.head.parameters()),
                "trainable": sum(p.numel() for p in params if p.requires_grad),
                "frozen": sum(p.numel() for p in params if not p.requires_grad)}


def _legacy_linear_head_keys(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints written before heads were a registry hold ``proj.*`` / ``norm.*`` beside the backbone: they are
    the ``linear`` head's ``head.proj.*`` / ``head.norm.*``."""
    for old in [k for k in state_dict if k.startswith((prefix + "proj.", prefix + "norm."))]:
        state_dict[prefix + "head." + old[len(prefix):]] = state_dict.pop(old)
