"""hardware.cpu_has_bf16 reads the CPU's flags."""
from __future__ import annotations

import pytest

from ciap_lib.hardware import cpu_has_bf16


@pytest.mark.parametrize("flags, native", [("fpu sse avx2 fma", False), ("fpu avx512f avx512_bf16 avx2", True),
                                           ("fpu amx_tile amx_bf16 avx2", True), ("fpu avx512f avx512bw", False)])
def test_cpu_has_bf16_reads_the_flags(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(str(info)) is native


def test_no_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_bf16(str(tmp_path / "missing")) is False
