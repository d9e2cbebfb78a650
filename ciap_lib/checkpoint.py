"""Atomic checkpoints: model, optimizer, scheduler, epoch, RNG states and config in one file.

Format (a dict saved with ``torch.save``)::

    {"format": "ciap-checkpoint/1", "model": state_dict, "model_config": dict, "config": TrainConfig dict,
     "optimizer": state_dict|None, "scheduler": state_dict|None, "epoch": int (epochs completed),
     "rng": {"python", "numpy", "torch", "cuda"}, "history": list[dict], "metrics": dict}
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ciap_lib.atomic import atomic_path
from ciap_lib.config import TrainConfig
from ciap_lib.models import CIAP, ModelConfig

FORMAT = "ciap-checkpoint/1"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``: readers see
    either the old file or the complete new one, never a partial write."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, model: CIAP, config: TrainConfig, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    history: list[dict[str, float]] | None = None,
                    metrics: dict[str, float] | None = None) -> Path:
    """Atomically write a checkpoint of ``model`` (unwrap DDP first) after ``epoch`` completed epochs."""
    obj = {"format": FORMAT, "model": model.state_dict(), "model_config": model.config.to_dict(),
           "config": config.to_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
           "scheduler": scheduler.state_dict() if scheduler else None, "epoch": int(epoch),
           "rng": rng_state(), "history": list(history or []), "metrics": dict(metrics or {})}
    return atomic_save(obj, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint dict; ``ValueError`` naming the file when it is missing, unreadable or not ours."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} not found")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {str(p)!r} is not a readable torch file ({type(e).__name__}: {e})") from e
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(p)!r} is not a CIAP checkpoint (expected format {FORMAT!r})")
    return ck


def model_from_checkpoint(ck: dict[str, Any], source: str = "checkpoint") -> CIAP:
    """Rebuild the CIAP model stored in a loaded checkpoint dict (strict key match)."""
    model = CIAP(ModelConfig.from_dict(ck["model_config"]), load_pretrained=False)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise ValueError(f"{source}: model weights do not match its model_config: {e}") from e
    return model


def load_ciap(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[CIAP, TrainConfig]:
    """The trained model (in eval mode) and its training config from a checkpoint file."""
    ck = load_checkpoint(path, map_location)
    model = model_from_checkpoint(ck, f"checkpoint {str(path)!r}").to(map_location).eval()
    return model, TrainConfig.from_dict(ck["config"])
