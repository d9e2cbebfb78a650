"""What this CPU computes natively.

:func:`cpu_has_bf16`: whether the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). Without it, bfloat16
is emulated and slow: on an AVX2-only AMD EPYC, torch 2.9's bf16 matmul ran at 0.84 GFLOP/s against 76 GFLOP/s in
float32, and a guided audioldm-s-full UNet step took 10 s in bf16 against 1.0-1.5 s in float32. So the bf16 paths on the CPU (the
retrieval screen, generation's ``bf16`` precision) fall back to float32 there.

Native bf16 is not always faster than float32 either (AVX512-BF16 without AMX can be slower):
:func:`cpu_prefers_bf16` measures it, once per process, with :func:`matmul_gflops`. Generation's ``auto`` precision
follows it (:func:`faster_precision`), and so does the image-feature cache's. The retrieval screen keeps
:func:`cpu_has_bf16`: on the CPU where the bf16 matmul ran at 0.54x float32, the exact method with its bf16 screen
counted 20,000 pairs in 2.8 s against 6.5 s scoring in float32 (it moves half the bytes; the matmul is not what
bounds it).
"""
from __future__ import annotations

import statistics
import time
from functools import lru_cache

import torch

#: /proc/cpuinfo flags of native bfloat16 arithmetic
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=4)
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 natively (``avx512_bf16`` or ``amx_bf16`` among the flags of
    ``cpuinfo``; False where there is no such file)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(BF16_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def matmul_gflops(n: int = 2048, seconds: float = 1.5, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.bfloat16) -> float:
    """GFLOP/s of an ``n`` x ``n`` matmul in ``dtype`` on ``device``, measured now for ``seconds`` (at least one
    product after a warm-up). On CUDA ``n`` is at least 8192; bf16 on a CPU without native bf16 runs at ``n`` = 256
    for at most 0.5 s (emulated bf16, ~1 GFLOP/s on AVX2: a 2048 matmul would take 20 s)."""
    if torch.device(device).type == "cuda":
        n = max(n, 8192)
    elif dtype == torch.bfloat16 and not cpu_has_bf16():
        n, seconds = min(n, 256), min(seconds, 0.5)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    a @ b
    sync()
    t0, k = time.perf_counter(), 0
    while True:
        a @ b
        k += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2 * n ** 3 * k / elapsed / 1e9


#: the CPU computes in bfloat16 when its bf16 matmul is at least this many times its float32 matmul; below it,
#: float32 (exactly the frozen weights, no weight copies) is as fast or faster
BF16_MIN_SPEEDUP = 1.2


@lru_cache(maxsize=1)
def cpu_bf16_speedup(rounds: int = 3, n: int = 1024, seconds: float = 0.06) -> float:
    """This CPU's bf16 matmul rate over its float32 matmul rate (``n`` x ``n``, the median of ``rounds``
    alternating measurements of ``seconds`` each; ~0.4 s, measured once per process). 0.0 without native bf16
    (:func:`cpu_has_bf16`: emulated bf16 is ~100x slower, not worth measuring).

    Native is not always faster: on a 2-core Xeon with AVX512-BF16 but no AMX (2026-12-04) bf16 ran at 0.54x float32
    (170 against 315 GFLOP/s at n = 2048), and a 5 s clip took 11.7 s in bf16 against 6.2 s in float32; an AMX
    Xeon's bf16 matmul ran at 1435-1560 GFLOP/s (2026-12-03), several times any float32 matmul measured on these
    2-core machines (310-410)."""
    if not cpu_has_bf16():
        return 0.0
    ratios = []
    for _ in range(rounds):
        fp32 = matmul_gflops(n, seconds, "cpu", torch.float32)
        ratios.append(matmul_gflops(n, seconds, "cpu", torch.bfloat16) / fp32)
    return statistics.median(ratios)


def cpu_prefers_bf16() -> bool:
    """Whether bfloat16 is the faster way to compute on this CPU: native bf16 whose matmul runs at least
    :data:`BF16_MIN_SPEEDUP` times float32's (:func:`cpu_bf16_speedup`, measured once per process)."""
    return cpu_has_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def faster_precision(device: torch.device | str) -> str:
    """``"bf16"`` or ``"fp32"``: the faster way to compute on ``device``. A CUDA device: bf16 where it is native
    (Ampere on). A CPU: bf16 where :func:`cpu_prefers_bf16` (measured once per process). What ``auto`` means for
    the image-feature cache (``ciap_lib.features``) and, on the CPU, for generation
    (``ciap_lib.bridge.devices.resolve_precision``, which keeps half precision on every CUDA device: float16 copies
    before Ampere)."""
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if cpu_prefers_bf16() else "fp32"
