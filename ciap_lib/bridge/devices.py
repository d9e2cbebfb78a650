"""Where generation runs (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) and in which half precision.

* :func:`generation_device`: ``auto`` is the current CUDA device when torch sees one, else the CPU. ``cuda`` where
  there is none, or ``cuda:N`` past the last device, is a ``ValueError`` saying what is available
  (``ciap_lib.distributed.resolve_device``, which ``train --set device=...`` uses too).
* :func:`half_dtype`: what the ``bf16`` precision computes in on a device: bfloat16 on the CPU and on GPUs with
  native bf16 (Ampere and later), float16 on older GPUs.
* :func:`place`: moves the frozen model (``FrozenAudioLDM.to``) only when it is elsewhere, so its half-precision
  weight copies survive between calls.
* :func:`sampling_modules`: the UNet and first stage to run for a dtype: the frozen fp32 modules, the bf16 copies
  ``FrozenAudioLDM.sampling_modules("bf16")`` makes, or float16 copies made here by the same rule.

Every copy is made from the frozen weights; the fingerprint check (``FrozenAudioLDM.assert_unchanged``) hashes
the frozen weights wherever they live (it copies each tensor to the CPU to hash it).
"""
from __future__ import annotations

import copy
import weakref
from typing import Any

import torch

from ciap_lib.bridge.loading import FrozenAudioLDM

#: layers whose weights autocast casts to the half dtype on every call (so they can be cast once, ahead of time)
HALF_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.Linear)

#: float16 weight copies per model: ``{model: (device, (unet, first_stage))}``
_FP16_COPIES: "weakref.WeakKeyDictionary[FrozenAudioLDM, tuple[torch.device, tuple[Any, Any]]]" = \
    weakref.WeakKeyDictionary()


def generation_device(device: str | torch.device) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a concrete device (``cuda`` gets its index: the current device)."""
    from ciap_lib.distributed import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def half_dtype(device: torch.device) -> torch.dtype:
    """bfloat16, or float16 on a CUDA device without native bfloat16 (before Ampere)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16


def same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def place(audioldm: FrozenAudioLDM, device: torch.device) -> FrozenAudioLDM:
    """``audioldm`` on ``device``: moved (``FrozenAudioLDM.to``) only if it is elsewhere."""
    if not same_device(audioldm.device, device):
        audioldm.to(device)
    return audioldm


def half_weight_copy(module: torch.nn.Module, dtype: torch.dtype,
                     parts: tuple[torch.nn.Module, ...] | None = None) -> torch.nn.Module:
    """A copy of a frozen ``module`` whose :data:`HALF_LAYERS` inside ``parts`` (default: all) hold ``dtype``
    weights; every other parameter and buffer is shared with the original. Under ``torch.autocast(dtype)`` it
    computes what the original computes (autocast casts those weights on every call). For bfloat16 this is
    ``ciap_lib.bridge.loading.bf16_weight_copy``."""
    inside = {id(m) for part in (parts or (module,)) for m in part.modules()}
    memo: dict[int, Any] = {}
    for m in module.modules():
        cast = id(m) in inside and isinstance(m, HALF_LAYERS)
        for p in m.parameters(recurse=False):
            memo[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False) if cast else p
        for b in m.buffers(recurse=False):
            memo[id(b)] = b
    return copy.deepcopy(module, memo)


def sampling_modules(audioldm: FrozenAudioLDM, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """``(unet, first_stage)`` to run under autocast to ``dtype`` (None or float32: the frozen modules, no
    autocast). The copies are made once per model and device."""
    if dtype is None or dtype == torch.float32:
        return audioldm.sampling_modules("fp32")
    if dtype == torch.bfloat16:
        return audioldm.sampling_modules("bf16")
    if dtype != torch.float16:
        raise ValueError(f"sampling dtype: {dtype} is not one of float32, bfloat16, float16")
    device = audioldm.device
    cached = _FP16_COPIES.get(audioldm)
    if cached is None or not same_device(cached[0], device):
        vae = audioldm.vae
        cached = (device, (half_weight_copy(audioldm.unet, dtype),
                           half_weight_copy(vae, dtype, (vae.post_quant_conv, vae.decoder, vae.vocoder))))
        _FP16_COPIES[audioldm] = cached
    return cached[1]


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` on ``device``'s type to ``dtype``; disabled for None / float32."""
    enabled = dtype is not None and dtype != torch.float32
    return torch.autocast(device.type, dtype=dtype if enabled else torch.bfloat16, enabled=enabled)
