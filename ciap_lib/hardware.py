"""What this CPU computes natively.

:func:`cpu_has_bf16`: whether the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). Without it, bfloat16
is emulated and slow: on an AVX2-only AMD EPYC, torch 2.9's bf16 matmul ran at 0.84 GFLOP/s against 76 GFLOP/s in
float32, and a guided audioldm-s-full UNet step took 10 s in bf16 against 1.0-1.5 s in float32. So the bf16 paths on the CPU (the
retrieval screen, generation's ``bf16`` precision) fall back to float32 there.
"""
from __future__ import annotations

from functools import lru_cache

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
