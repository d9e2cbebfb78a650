"""Where generation runs (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) and in which half precision.

* :func:`generation_device`: ``auto`` is the current CUDA device when torch sees one, else the CPU. ``cuda`` where
  there is none, or ``cuda:N`` past the last device, is a ``ValueError`` saying what is available
  (``ciap_lib.distributed.resolve_device``, which ``train --set device=...`` uses too).
* :func:`resolve_precision`: what ``precision="auto"`` (the default) means on a device: ``bf16`` on CUDA and on
  CPUs where bfloat16 is measured faster than float32 (:func:`ciap_lib.hardware.faster_precision`), else ``fp32``.
* :func:`half_dtype`: what the ``bf16`` precision computes in on a device: bfloat16 where it is native (CPUs with
  AVX512-BF16 or AMX, GPUs from Ampere on), float16 on older GPUs, float32 on CPUs without native bf16 (emulated
  bf16 ran a full-size UNet step ~8x slower than float32 on an AVX2-only CPU: :mod:`ciap_lib.hardware`).
* :func:`decode_dtype`: what decoding (VAE + vocoder) computes in: the sampling half precision on the CPU, float32 on
  CUDA (the seed contract: a bf16 decode made a clip depend on its batch).
* :func:`place`: moves the frozen model (``FrozenAudioLDM.to``) only when it is elsewhere, so its half-precision
  weight copies survive between calls.
* :func:`sampling_modules`: the UNet and first stage to run for a dtype: the frozen fp32 modules, or the bf16 / fp16
  weight copies ``FrozenAudioLDM.sampling_modules`` makes (one rule, :func:`~ciap_lib.bridge.frozen.half_weight_copy`).

Every copy is made from the frozen weights; the fingerprint check (``FrozenAudioLDM.assert_unchanged``) hashes
the frozen weights wherever they live (it copies each tensor to the CPU to hash it).
"""
from __future__ import annotations

from typing import Any

import torch

from ciap_lib.bridge.frozen import HALF_DTYPES, FrozenAudioLDM
from ciap_lib.hardware import cpu_has_bf16, faster_precision


def generation_device(device: str | torch.device) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a concrete device (``cuda`` gets its index: the current device)."""
    from ciap_lib.distributed import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` as it runs on ``device``: ``"auto"`` becomes ``"bf16"`` on CUDA (bfloat16, or float16 before
    Ampere: :func:`half_dtype`) and on a CPU whose bf16 matmul is at least
    :data:`~ciap_lib.hardware.BF16_MIN_SPEEDUP` times its float32 matmul (:func:`~ciap_lib.hardware.faster_precision`,
    measured once per process: AMX Xeons), else ``"fp32"``. On a 2-core Xeon with AVX512-BF16 but no AMX, bf16
    ran at 0.54x float32 and a 5 s clip took 11.7 s in bf16 against 6.2 s in float32 (``bench/generation.py``).
    ``"bf16"`` and ``"fp32"`` are returned as they are. The resolved value is what callers record: the two give
    different audio for the same seed."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else faster_precision(device)


def half_dtype(device: torch.device) -> torch.dtype:
    """What ``precision="bf16"`` computes in on ``device``: bfloat16 where it is native; float16 on a CUDA device
    without native bfloat16 (before Ampere); float32 (no autocast, the frozen modules) on a CPU without it."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def decode_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype | None:
    """What decoding (VAE decoder + HiFi-GAN) computes in when sampling computes in ``dtype``: ``dtype`` on the CPU
    (where the decode runs one clip at a time, :func:`ciap_lib.bridge.sampling.decode_latents`); None (float32, the
    frozen modules, TF32 convolutions by cuDNN's default) on CUDA. Measured on an H200 with the tiny model, the same
    latents decoded in a batch of 8 and alone differed by up to 3.9e-3 in bf16 (two bf16 steps of the output: cuDNN
    picks other kernels for other batch sizes) and 6.8e-6 in float32 (the whole clip, bf16 UNet included: 6.8e-5),
    against the 1e-3 of the seed contract; the float32 decode of 8 full-size 5 s clips took 0.062 s against 0.058 s
    in bf16."""
    return None if device.type == "cuda" else dtype


def same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def place(audioldm: FrozenAudioLDM, device: torch.device) -> FrozenAudioLDM:
    """``audioldm`` on ``device``: moved (``FrozenAudioLDM.to``) only if it is elsewhere."""
    if not same_device(audioldm.device, device):
        audioldm.to(device)
    return audioldm


def sampling_modules(audioldm: FrozenAudioLDM, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """``(unet, first_stage)`` to run under autocast to ``dtype`` (None or float32: the frozen modules, no
    autocast): :meth:`FrozenAudioLDM.sampling_modules`, made once per model and device."""
    if dtype is None or dtype == torch.float32:
        return audioldm.sampling_modules("fp32")
    names = {v: k for k, v in HALF_DTYPES.items()}
    if dtype not in names:
        raise ValueError(f"sampling dtype: {dtype} is not one of float32, bfloat16, float16")
    return audioldm.sampling_modules(names[dtype])


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` on ``device``'s type to ``dtype``; disabled for None / float32."""
    enabled = dtype is not None and dtype != torch.float32
    return torch.autocast(device.type, dtype=dtype if enabled else torch.bfloat16, enabled=enabled)
