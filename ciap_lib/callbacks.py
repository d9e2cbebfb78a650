"""The training hook: what MLflow logging, live plots and early stopping plug into (only rank 0 calls it)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ciap_lib.config import TrainConfig
    from ciap_lib.models import CIAP
    from ciap_lib.train import TrainResult


class Callback:
    """Training hook; every method is a no-op by default. Only rank 0 calls callbacks."""

    def on_train_start(self, cfg: TrainConfig, model: CIAP) -> None:
        """Before the first (or resumed) epoch; ``model`` is the unwrapped CIAP."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint: Path) -> None:
        """After epoch ``epoch`` (1-based count of completed epochs) was validated and checkpointed."""

    def on_train_end(self, result: "TrainResult") -> None:
        """After the last epoch."""
