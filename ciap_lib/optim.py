"""Optimizers and learning-rate schedules, chosen by name from registries (like ``losses.LOSSES``).

``TrainConfig.optimizer`` names an entry of :data:`OPTIMIZERS`, ``TrainConfig.lr_schedule`` one of
:data:`SCHEDULERS`; ``TrainConfig.check`` validates both names against these registries, so a typo fails before
any data is read. Schedules are stepped once per epoch.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

#: name -> optimizer class, built as ``cls(params, lr=..., weight_decay=...)``
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,      # the original design
    "adamw": torch.optim.AdamW,
}


def create_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                     weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: {name!r} is not one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)


def _step(optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """The original design: multiply the lr by ``lr_gamma`` every ``lr_step_size`` epochs."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma)


def _constant(optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def cosine_factor(epoch: int, epochs: int, warmup_epochs: int) -> float:
    """lr multiplier of epoch ``epoch`` (0-based): linear warmup over ``warmup_epochs`` epochs (from
    1 / (warmup_epochs + 1)), then a half cosine from 1 down to 0 at the end of the last epoch."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    span = max(1, epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


def _cosine(optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: cosine_factor(epoch, cfg.epochs, cfg.warmup_epochs))


#: name -> ``factory(optimizer, cfg)``; ``cfg`` is the TrainConfig (``lr_step_size``, ``lr_gamma``, ``epochs``,
#: ``warmup_epochs``)
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, Any], torch.optim.lr_scheduler.LRScheduler]] = {
    "step": _step,          # StepLR: the original design
    "cosine": _cosine,      # linear warmup, then cosine decay to 0
    "constant": _constant,
}


def create_scheduler(name: str, optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """``SCHEDULERS[name](optimizer, cfg)``; step it once per epoch."""
    if name not in SCHEDULERS:
        raise ValueError(f"lr_schedule: {name!r} is not one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name](optimizer, cfg)
