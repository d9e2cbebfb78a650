"""Best-checkpoint selection and early stopping: which validation metric picks ``best.pt``, which way it improves,
and the best epoch so far (recovered from a run's history on resume).

``select_metric`` None picks ``i2a_class_R@1`` when the validation split has labels, else ``i2a_R@1``. Names holding
``loss`` or ``rank`` (``val_loss``, ``i2a_median_rank``) improve downwards, all others (recalls) upwards. An epoch
is better only when strictly better, so ties keep the earlier epoch; NaN is never better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ciap_lib.retrieval.metrics import metric_names

DEFAULT_METRIC = "i2a_R@1"
DEFAULT_LABELLED_METRIC = "i2a_class_R@1"


def selectable_metrics() -> list[str]:
    """The validation metrics training computes each epoch: ``val_loss`` and the retrieval metrics."""
    return ["val_loss", *metric_names(labels=True)]


def lower_is_better(name: str) -> bool:
    """Losses and ranks improve downwards; recalls upwards."""
    return "loss" in name or "rank" in name


def needs_labels(name: str) -> bool:
    return "class_" in name


def resolve_metric(select_metric: str | None, has_labels: bool) -> str:
    """The metric to select on: ``select_metric``, or the default for a validation split with/without labels.
    ``ValueError`` for a name training does not compute, or a class metric without labels."""
    if select_metric is None:
        return DEFAULT_LABELLED_METRIC if has_labels else DEFAULT_METRIC
    if select_metric not in selectable_metrics():
        raise ValueError(f"config key 'select_metric': {select_metric!r} is not a validation metric; choose from "
                         f"{selectable_metrics()} or null")
    if needs_labels(select_metric) and not has_labels:
        raise ValueError(f"config key 'select_metric': {select_metric!r} needs labels, but the validation split "
                         f"has none; choose a metric without 'class' or null (= {DEFAULT_METRIC})")
    return select_metric


def is_better(value: float, best: float | None, name: str) -> bool:
    """Whether ``value`` strictly improves on ``best`` (None: nothing yet) for metric ``name``; NaN never does."""
    if value is None or not math.isfinite(float(value)):
        return False
    if best is None:
        return True
    return value < best if lower_is_better(name) else value > best


@dataclass
class Best:
    """The best epoch so far (1-based; None before any) by ``metric`` and its value."""

    metric: str
    epoch: int | None = None
    value: float | None = None

    def update(self, epoch: int, metrics: Mapping[str, Any]) -> bool:
        """Take epoch ``epoch`` if its metrics improve on the best; returns whether they did."""
        value = metrics.get(self.metric)
        if value is None or not is_better(float(value), self.value, self.metric):
            return False
        self.epoch, self.value = int(epoch), float(value)
        return True

    @classmethod
    def from_history(cls, metric: str, history: Sequence[Mapping[str, Any]]) -> "Best":
        """The best of a run's per-epoch metrics (each holding ``epoch``)."""
        best = cls(metric)
        for i, m in enumerate(history):
            best.update(int(m.get("epoch", i + 1)), m)
        return best

    def stale(self, epoch: int) -> int:
        """Epochs completed (up to ``epoch``) since the best one (all of them when there is none)."""
        return int(epoch) - (self.epoch or 0)

    def to_dict(self, path: Any = None) -> dict[str, Any]:
        return {"epoch": self.epoch, "metric": self.metric, "value": self.value,
                "path": None if path is None or self.epoch is None else str(path)}
