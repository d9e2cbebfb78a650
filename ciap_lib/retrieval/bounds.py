"""Rounding-error bounds of dot products, and safe float64 -> float32 rounding of thresholds."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

U32 = 2.0 ** -24   # unit roundoff of float32
U64 = 2.0 ** -53   # unit roundoff of float64


def gamma(d: int, u: float) -> float:
    """Standard bound on the relative error of a length-``d`` dot product in a precision with unit roundoff
    ``u``, whatever the summation order: ``|fl(x.y) - x.y| <= gamma(d, u) * sum_k |x_k y_k|``."""
    return d * u / (1.0 - d * u)


def f32_toward(x: torch.Tensor, up: bool) -> torch.Tensor:
    """float64 (N,) -> the nearest float32 on the safe side (>= x when ``up``, else <= x)."""
    y = x.float()
    if up:
        return torch.where(y.double() < x, torch.nextafter(y, torch.tensor(float("inf"))), y)
    return torch.where(y.double() > x, torch.nextafter(y, torch.tensor(float("-inf"))), y)


@contextmanager
def full_float32_matmul() -> Iterator[None]:
    """float32 matrix products in true float32 inside the block (no TF32 on GPUs, no bf16 passes on CPUs),
    as the float32 error bound assumes; the previous setting is restored afterwards."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
