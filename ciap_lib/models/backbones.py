"""Image backbones: one factory over a registry of names (timm style).

Names (``image_backbone``):

* ``resnet18`` (the original design), ``resnet34``, ``resnet50``: torchvision ResNets. ``image_pretrained:
  imagenet`` loads torchvision's ImageNet weights through torchvision's own path (the torch hub cache
  ``$TORCH_HOME/hub/checkpoints/<file>``, or ``image_weights``). Preprocessing: ImageNet mean/std, bicubic,
  shorter side to ``image_size`` (default 224), centre crop.
* ``tiny_cnn``: four conv blocks for tests and smoke runs (no pretrained weights; default 32 px).
* ``small_cnn``: a VGG-style CNN (1.2 M parameters, max pooling) for training from scratch on small sets; the
  ``default`` recipe's image backbone (no pretrained weights; default 64 px).
* ``timm/<name>[.<tag>]``: any timm model (``ciap_lib.models.timm_backbone``); its preprocessing is timm's data
  config for it.

Each name maps to a *family* with ``check`` (problems, nothing loaded), ``build`` (-> :class:`Backbone`) and
``blocks`` (what ``unfreeze_last`` counts). ``register_backbone(name, family)`` adds one; a name ending in ``/`` is
a prefix (``timm/``).

Blocks, per family (``unfreeze_last: N`` trains the last N, plus the parameters that follow them):

* torchvision ResNets: residual blocks (``layer1.0`` ... ``layer4.N``: 8 in ResNet18, 16 in ResNet34/50);
* ``tiny_cnn``, ``small_cnn``: their four conv blocks;
* timm: the groups of timm's fine-grained ``group_matcher`` (what timm uses for layer-wise learning-rate decay):
  residual blocks for ResNets, transformer blocks for ViTs, ConvNeXt blocks (a stage's downsampling goes with
  its first block); the stem is never a block, and what follows the last block (final norm, CLIP projection,
  attention pool) trains with it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torchvision
from torch import nn

from ciap_lib.images import ImagePreprocess
from ciap_lib.models.config import ModelConfig
from ciap_lib.safe_load import safe_load


class ImageWeightsNotFoundError(FileNotFoundError):
    """Pretrained backbone weights were asked for, but the file is not there; the message names the model, the
    file looked for and how to get it."""


@dataclass
class Backbone:
    """A built backbone: ``net`` maps (B, 3, S, S) images to (B, ``feature_dim``) features; ``preprocess`` is
    what its images must look like."""

    net: nn.Module
    feature_dim: int
    preprocess: ImagePreprocess


class BackboneFamily(Protocol):
    """What every registered backbone family provides."""

    #: the ``image_pretrained`` values it accepts
    pretrained: tuple[str, ...]

    def check(self, name: str, config: ModelConfig, check_weights: bool) -> list[str]:
        """Problems (``"key: message"``), nothing loaded; ``check_weights``: pretrained weights must be on disk."""

    def build(self, name: str, config: ModelConfig, load_pretrained: bool) -> Backbone:
        """The backbone (pretrained weights loaded unless ``load_pretrained`` is False)."""

    def blocks(self, name: str, net: nn.Module) -> tuple[list[list[str]], list[str]]:
        """(parameter names of each block, in order; parameter names after the last block)."""


BACKBONES: dict[str, BackboneFamily] = {}


def register_backbone(name: str, family: BackboneFamily) -> BackboneFamily:
    """Register ``family`` under ``name`` (a name ending in ``/`` is a prefix, e.g. ``timm/``)."""
    BACKBONES[name] = family
    return family


def get_backbone_family(name: str) -> tuple[BackboneFamily, str]:
    """(family, the name within it) of ``image_backbone`` ``name``; ``ValueError`` naming the known ones."""
    if name in BACKBONES:
        return BACKBONES[name], name
    for prefix, family in BACKBONES.items():
        if prefix.endswith("/") and name.startswith(prefix) and len(name) > len(prefix):
            return family, name[len(prefix):]
    raise ValueError(f"unknown image_backbone {name!r}; choose from {backbone_names()}")


def backbone_names() -> list[str]:
    """The registered names; prefixes shown as ``timm/<name>``."""
    return sorted(n + "<name>" if n.endswith("/") else n for n in BACKBONES)


def weights_digest(net: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes in name order): the identity of the weights."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def param_groups_with_prefixes(net: nn.Module, prefixes: list[str]) -> list[list[str]]:
    """Parameter names of ``net`` under each of ``prefixes`` (one list per prefix, in order)."""
    names = [n for n, _ in net.named_parameters()]
    return [[n for n in names if n.startswith(p)] for p in prefixes]


# ------------------------------------------------------------------------------------------ torchvision
_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], object]] = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}


def imagenet_weights_file(backbone: str) -> Path:
    """Where torchvision's hub cache expects the ImageNet weights of ``backbone``."""
    _, weights = _TORCHVISION[backbone]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_imagenet_state_dict(backbone: str, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """ImageNet state dict of a torchvision backbone, read with the weights-only unpickler
    (:func:`ciap_lib.safe_load.safe_load`).

    Args:
        backbone: ``resnet18`` | ``resnet34`` | ``resnet50``.
        path: a local ``.pth`` file; when None, torchvision's hub cache ``$TORCH_HOME/hub/checkpoints/<file>``
            (when missing there, torchvision's own path downloads it, checks its hash and loads it weights-only).
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


class TorchvisionResNet:
    """torchvision ResNets without their classifier: (B,3,S,S) -> (B, 512 | 2048) pooled features."""

    pretrained = ("none", "imagenet")

    def check(self, name: str, config: ModelConfig, check_weights: bool) -> list[str]:
        if config.image_pretrained != "imagenet" or not check_weights:
            return []
        path = Path(config.image_weights) if config.image_weights else imagenet_weights_file(name)
        if path.is_file():
            return []
        _, weights = _TORCHVISION[name]
        return [f"image_pretrained: the ImageNet weights of {name} are not at {path}; download {weights.url} on a "
                f"machine with network access and put it there (or set image_weights=<file>, or "
                f"image_pretrained=none)"]

    def build(self, name: str, config: ModelConfig, load_pretrained: bool) -> Backbone:
        ctor, _ = _TORCHVISION[name]
        net = ctor(weights=None)
        if config.image_pretrained == "imagenet" and load_pretrained:
            net.load_state_dict(load_imagenet_state_dict(name, config.image_weights))
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return Backbone(net, dim, ImagePreprocess(config.image_size or 224))

    def blocks(self, name: str, net: nn.Module) -> tuple[list[list[str]], list[str]]:
        prefixes = [f"layer{i}.{j}." for i in range(1, 5) for j in range(len(getattr(net, f"layer{i}")))]
        return param_groups_with_prefixes(net, prefixes), []


# ------------------------------------------------------------------------------------------ tiny CNN
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


class TinyCNNFamily:
    """``tiny_cnn``: no pretrained weights; blocks = its four conv blocks."""

    pretrained = ("none",)

    def check(self, name: str, config: ModelConfig, check_weights: bool) -> list[str]:
        return []

    def build(self, name: str, config: ModelConfig, load_pretrained: bool) -> Backbone:
        net = TinyCNN(config.cnn_width)
        return Backbone(net, net.out_dim, ImagePreprocess(config.image_size or 32))

    def blocks(self, name: str, net: nn.Module) -> tuple[list[list[str]], list[str]]:
        names = [n for n, _ in net.named_parameters()]  # net.<3k>: conv, net.<3k+1>: GroupNorm of block k
        return [[n for n in names if int(n.split(".")[1]) // 3 == k] for k in range(4)], []


# ------------------------------------------------------------------------------------------ small CNN
class SmallCNN(nn.Module):
    """VGG-style CNN for training from scratch on small sets: four blocks of two 3x3 convs (BatchNorm, ReLU)
    and a 2x2 max pool, widths 32-64-128-256, then global max and mean pooling (1.2 M parameters).

    Input (B,3,H,W) -> output (B, 512).
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        blocks, cin = [], 3
        for w in widths:
            blocks.append(nn.Sequential(nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                        nn.ReLU(inplace=True), nn.Conv2d(w, w, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = 2 * cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)
        return torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1)


class SmallCNNFamily:
    """``small_cnn``: no pretrained weights (default 64 px); blocks = its four conv blocks."""

    pretrained = ("none",)

    def check(self, name: str, config: ModelConfig, check_weights: bool) -> list[str]:
        return []

    def build(self, name: str, config: ModelConfig, load_pretrained: bool) -> Backbone:
        net = SmallCNN()
        return Backbone(net, net.out_dim, ImagePreprocess(config.image_size or 64))

    def blocks(self, name: str, net: nn.Module) -> tuple[list[list[str]], list[str]]:
        return param_groups_with_prefixes(net, [f"blocks.{k}." for k in range(4)]), []


for _name in _TORCHVISION:
    register_backbone(_name, TorchvisionResNet())
register_backbone("tiny_cnn", TinyCNNFamily())
register_backbone("small_cnn", SmallCNNFamily())
