"""Image heads: backbone features (B, F) -> (B, embed_dim) L2-normalized embeddings. A registry of names.

* ``linear``: Linear -> LayerNorm (the original design).
* ``normed_linear``: the features L2-normalized (times sqrt(F)) first, then ``linear``: the head sees the direction
  of the backbone's features, not their size, which changes with the image (larger objects, more edges).
* ``mlp``: a V2A-Mapper-style residual MLP (regression mapper): Linear(F -> width), ``depth`` pre-norm residual
  blocks ``x + W2 GELU(W1 LayerNorm(x))`` (width -> width -> width), LayerNorm, Linear(width -> embed_dim).

``create_head(name, in_dim, config)`` builds one; ``HEADS`` maps names to classes taking ``(in_dim, config)``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ciap_lib.models.config import ModelConfig


class LinearHead(nn.Module):
    """(B, F) -> Linear -> LayerNorm -> L2 normalize -> (B, embed_dim)."""

    def __init__(self, in_dim: int, config: ModelConfig):
        super().__init__()
        self.proj = nn.Linear(in_dim, config.embed_dim)
        self.norm = nn.LayerNorm(config.embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.norm(self.proj(features)), dim=-1)


class NormedLinearHead(LinearHead):
    """(B, F) -> L2 normalize * sqrt(F) -> Linear -> LayerNorm -> L2 normalize -> (B, embed_dim)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(features, dim=-1) * features.shape[-1] ** 0.5)


class ResidualBlock(nn.Module):
    """(B, W) -> x + Linear(GELU(Linear(LayerNorm(x)))) -> (B, W)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class MLPHead(nn.Module):
    """(B, F) -> Linear(F, width) -> ``head_depth`` residual blocks -> LayerNorm -> Linear(width, embed_dim)
    -> L2 normalize -> (B, embed_dim). Width and depth come from ``config.head_width`` / ``config.head_depth``."""

    def __init__(self, in_dim: int, config: ModelConfig):
        super().__init__()
        width = config.head_width
        self.inp = nn.Linear(in_dim, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(config.head_depth)])
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, config.embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.out(self.norm(self.blocks(self.inp(features)))), dim=-1)


#: ``head`` name -> class taking ``(in_dim, config)``
HEADS: dict[str, Callable[[int, ModelConfig], nn.Module]] = {"linear": LinearHead, "normed_linear": NormedLinearHead,
                                                             "mlp": MLPHead}


def create_head(name: str, in_dim: int, config: ModelConfig) -> nn.Module:
    """The head ``name`` of ``HEADS`` from ``in_dim`` backbone features to ``config.embed_dim``."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose from {sorted(HEADS)}")
    return HEADS[name](in_dim, config)


def check_head_config(config: ModelConfig) -> list[str]:
    """Problems with the head keys of ``config`` (empty when fine), each naming the key."""
    problems = []
    if config.head not in HEADS:
        problems.append(f"head: {config.head!r} is not one of {sorted(HEADS)}")
    if config.head_depth < 0:
        problems.append(f"head_depth: must be >= 0, got {config.head_depth}")
    if config.head_width < 1:
        problems.append(f"head_width: must be positive, got {config.head_width}")
    return problems
