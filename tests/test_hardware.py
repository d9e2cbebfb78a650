"""hardware: cpu_has_bf16 reads the CPU's flags; cpu_bf16_speedup / cpu_prefers_bf16 measure bf16 against float32."""
from __future__ import annotations

import math

import pytest
import torch

from ciap_lib import hardware as H
from ciap_lib.hardware import cpu_has_bf16


@pytest.mark.parametrize("flags, native", [("fpu sse avx2 fma", False), ("fpu avx512f avx512_bf16 avx2", True),
                                           ("fpu amx_tile amx_bf16 avx2", True), ("fpu avx512f avx512bw", False)])
def test_cpu_has_bf16_reads_the_flags(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(str(info)) is native


def test_no_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_bf16(str(tmp_path / "missing")) is False


def test_matmul_gflops_measures_this_machine():
    rate = H.matmul_gflops(128, 0.02, "cpu", torch.float32)
    assert math.isfinite(rate) and rate > 0.01


@pytest.fixture
def fresh_speedup():
    H.cpu_bf16_speedup.cache_clear()
    yield
    H.cpu_bf16_speedup.cache_clear()


def test_bf16_speedup_is_the_median_ratio_measured_once_per_process(monkeypatch, fresh_speedup):
    rates = {torch.float32: iter([100.0, 100.0, 100.0]), torch.bfloat16: iter([50.0, 60.0, 400.0])}
    calls = []

    def fake_rate(n, seconds, device, dtype):
        calls.append(dtype)
        return next(rates[dtype])

    monkeypatch.setattr(H, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(H, "matmul_gflops", fake_rate)
    assert H.cpu_bf16_speedup() == pytest.approx(0.6)                         # median of 0.5, 0.6, 4.0
    assert calls == [torch.float32, torch.bfloat16] * 3                       # alternating: drift hits both
    assert H.cpu_bf16_speedup() == pytest.approx(0.6) and len(calls) == 6     # cached: not measured again
    assert H.cpu_prefers_bf16() is False                                      # 0.6x: float32 is faster here


def test_bf16_is_preferred_only_where_native_and_faster(monkeypatch):
    monkeypatch.setattr(H, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(H, "cpu_bf16_speedup", lambda: 0.54)                  # AVX512-BF16 without AMX (measured)
    assert H.cpu_prefers_bf16() is False
    monkeypatch.setattr(H, "cpu_bf16_speedup", lambda: H.BF16_MIN_SPEEDUP)
    assert H.cpu_prefers_bf16() is True
    monkeypatch.setattr(H, "cpu_has_bf16", lambda: False)                     # emulated: never, whatever a ratio says
    assert H.cpu_prefers_bf16() is False


def test_without_native_bf16_nothing_is_measured(monkeypatch, fresh_speedup):
    monkeypatch.setattr(H, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(H, "matmul_gflops", lambda *a, **k: pytest.fail("measured emulated bf16"))
    assert H.cpu_bf16_speedup() == 0.0


def test_bf16_speedup_measures_real_matmuls(fresh_speedup):
    """Unmocked, on this machine: a positive ratio where bf16 is native (0.0 where it is not)."""
    s = H.cpu_bf16_speedup(rounds=1, n=128, seconds=0.02)
    assert (s > 0) if cpu_has_bf16() else s == 0.0
