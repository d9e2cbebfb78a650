"""Image tower: backbone -> Linear -> LayerNorm -> L2-normalised embedding.

Backbones come from torchvision (``resnet18/34/50``) or are a tiny CNN for tests. ImageNet
weights are torchvision's own file in the torch hub cache ``$TORCH_HOME/hub/checkpoints/<file>``, read with
the weights-only unpickler (:func:`ciap_lib.safe_load.safe_load`); when the file is missing, torchvision's
real code path (``weights.get_state_dict`` -> ``torch.hub.load_state_dict_from_url``) downloads it, checks
its hash and loads it with ``weights_only=True``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ciap_lib.models.config import ModelConfig
from ciap_lib.safe_load import safe_load


class ImageWeightsNotFoundError(FileNotFoundError):
    """Pretrained backbone weights were asked for, but the file is neither there nor downloadable; the message
    names the model, the file looked for and how to get it."""


_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], object]] = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}


def imagenet_weights_file(backbone: str) -> Path:
    """Where torchvision's hub cache expects the ImageNet weights of ``backbone``."""
    _, weights = _TORCHVISION[backbone]
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_imagenet_state_dict(backbone: str, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """ImageNet state dict of a torchvision backbone.

    Args:
        backbone: ``resnet18`` | ``resnet34`` | ``resnet50``.
        path: a local ``.pth`` file; when None, torchvision's hub cache (download if missing).
    Raises:
        ImageWeightsNotFoundError: file missing and download impossible; names where to put the file.
        UnsafeCheckpointError: the file asks for globals outside the weights-only allowlist (names them).
    """
    if backbone not in _TORCHVISION:
        raise ValueError(f"image_pretrained='imagenet' needs a torchvision backbone {sorted(_TORCHVISION)}, "
                         f"got image_backbone={backbone!r}")
    _, weights = _TORCHVISION[backbone]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ImageWeightsNotFoundError(f"image_weights={str(p)!r}: file not found (expected torchvision's "
                                            f"{os.path.basename(weights.url)} from {weights.url})")
        return safe_load(p)
    cached = imagenet_weights_file(backbone)
    if cached.is_file():
        return safe_load(cached)
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # URLError, HTTPError, timeouts, ...
        raise ImageWeightsNotFoundError(
            f"ImageNet weights for {backbone} are not cached and could not be downloaded ({type(e).__name__}: {e}).\n"
            f"Download {weights.url} on a machine with network access and put it at\n  {cached}\n"
            f"(torch hub cache; set TORCH_HOME to move it), or set image_weights=<path to the .pth>, "
            f"or use image_pretrained=none.") from e


class TinyCNN(nn.Module):
    """Four conv blocks with GroupNorm (batch-independent) for tests and smoke runs.

    Input (B,3,H,W) -> output (B, 8*width).
    """

    def __init__(self, width: int = 8):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))


#: every ``image_backbone`` name: torchvision's ResNets and the tiny test CNN
IMAGE_BACKBONES: tuple[str, ...] = (*_TORCHVISION, "tiny_cnn")
PRETRAINED = ("none", "imagenet")


def check_image_config(config: ModelConfig, check_weights: bool = False) -> list[str]:
    """Problems with the image side of ``config`` (empty when fine), each naming the key, the rejected value
    and what is allowed. ``check_weights``: pretrained weights must be on disk (a file, or torchvision's hub
    cache); nothing is loaded."""
    problems = []
    name = config.image_backbone
    if name not in IMAGE_BACKBONES:
        problems.append(f"image_backbone: {name!r} is not one of {sorted(IMAGE_BACKBONES)}")
    if config.image_pretrained not in PRETRAINED:
        problems.append(f"image_pretrained: {config.image_pretrained!r} is not one of {list(PRETRAINED)}")
    elif config.image_pretrained == "imagenet" and name == "tiny_cnn":
        problems.append("image_pretrained: 'imagenet' needs a torchvision backbone; image_backbone 'tiny_cnn' has no "
                        "pretrained weights (use image_pretrained=none)")
    elif config.image_pretrained == "imagenet" and name in _TORCHVISION and check_weights:
        path = Path(config.image_weights) if config.image_weights else imagenet_weights_file(name)
        if not path.is_file():
            _, weights = _TORCHVISION[name]
            problems.append(f"image_pretrained: the ImageNet weights of {name} are not at {path}; download "
                            f"{weights.url} on a machine with network access and put it there "
                            f"(or set image_weights=<file>, or image_pretrained=none)")
    if config.image_size < 8:
        problems.append(f"image_size: must be at least 8 pixels, got {config.image_size}")
    return problems


def build_backbone(config: ModelConfig, load_pretrained: bool = True) -> tuple[nn.Module, int]:
    """Backbone without its classifier and its feature size. ``load_pretrained=False`` skips weight files
    (used when a checkpoint will overwrite the weights anyway)."""
    name = config.image_backbone
    if config.image_pretrained not in ("none", "imagenet"):
        raise ValueError(f"image_pretrained must be 'none' or 'imagenet', got {config.image_pretrained!r}")
    if name == "tiny_cnn":
        if config.image_pretrained != "none":
            raise ValueError("image_backbone='tiny_cnn' has no ImageNet weights; use image_pretrained='none'")
        net = TinyCNN(config.cnn_width)
        return net, net.out_dim
    if name not in _TORCHVISION:
        raise ValueError(f"unknown image_backbone {name!r}; choose from {sorted([*_TORCHVISION, 'tiny_cnn'])}")
    ctor, _ = _TORCHVISION[name]
    net = ctor(weights=None)
    if config.image_pretrained == "imagenet" and load_pretrained:
        net.load_state_dict(load_imagenet_state_dict(name, config.image_weights))
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


class ImageEncoder(nn.Module):
    """(B,3,H,W) ImageNet-normalised images -> (B,D) unit-norm embeddings."""

    def __init__(self, config: ModelConfig, load_pretrained: bool = True):
        super().__init__()
        self.backbone, feat_dim = build_backbone(config, load_pretrained)
        self.proj = nn.Linear(feat_dim, config.embed_dim)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.frozen = config.freeze_backbone
        if self.frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        if self.frozen:  # a frozen backbone keeps its BatchNorm running statistics
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_image expects (B,3,H,W) images, got shape {tuple(images.shape)}")
        return F.normalize(self.norm(self.proj(self.backbone(images))), dim=-1)
