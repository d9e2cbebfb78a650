"""Devices for generation, checked on the CPU: what ``auto``/``cuda`` resolve to, the half dtype per device, the
float16 weight copies, and the clear error when CUDA is asked for and absent (before any UNet call).
The GPU itself is exercised by tests/bridge/test_cuda.py (marked ``cuda``)."""
from __future__ import annotations

import pytest
import torch

from ciap_lib.bridge import check_inputs, generate
from ciap_lib.bridge import devices as D


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """What torch reports on a machine with two CUDA devices (nothing is run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_is_cpu_without_cuda_and_cuda_is_a_clear_error(no_cuda):
    assert D.generation_device("auto") == torch.device("cpu")
    assert D.generation_device("cpu") == torch.device("cpu")
    for asked in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=rf"device='{asked}' but CUDA is not available .*device=cpu or device=auto"):
            D.generation_device(asked)
    with pytest.raises(ValueError, match="'gpu' is not a device; use cpu, cuda, cuda:N or auto"):
        D.generation_device("gpu")


def test_auto_and_cuda_pick_a_gpu_when_there_is_one(two_gpus):
    assert D.generation_device("auto") == torch.device("cuda", 0)
    assert D.generation_device("cuda") == torch.device("cuda", 0)
    assert D.generation_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device='cuda:2' but there are only 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        D.generation_device("cuda:2")


def test_train_resolves_devices_the_same_way(no_cuda):
    from ciap_lib.config import TrainConfig
    from ciap_lib.distributed import setup

    assert setup("auto").device == torch.device("cpu")            # train --set device=auto
    TrainConfig(device="auto").check()
    with pytest.raises(ValueError, match="CUDA is not available"):
        setup("cuda")


def test_half_dtype_is_bf16_or_fp16_where_bf16_is_not_native(monkeypatch):
    monkeypatch.setattr(D, "cpu_has_bf16", lambda: True)
    assert D.half_dtype(torch.device("cpu")) == torch.bfloat16                # AVX512-BF16 / AMX
    monkeypatch.setattr(D, "cpu_has_bf16", lambda: False)
    assert D.half_dtype(torch.device("cpu")) == torch.float32                 # AVX2 only: emulated bf16 is slow
    monkeypatch.setattr(torch.cuda, "device", lambda _d: __import__("contextlib").nullcontext())
    seen = []

    def supported(including_emulation=True, answer=True):
        seen.append(including_emulation)
        return answer

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert D.half_dtype(torch.device("cuda", 0)) == torch.bfloat16            # Ampere and later (H100, H200)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert D.half_dtype(torch.device("cuda", 0)) == torch.float16             # V100, T4: no native bf16
    assert seen == [False]                                                    # emulated bf16 does not count


def test_decoding_runs_in_float32_on_cuda_and_in_the_sampling_dtype_on_the_cpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert D.decode_dtype(cpu, torch.bfloat16) == torch.bfloat16 and D.decode_dtype(cpu, torch.float16) == torch.float16
    assert D.decode_dtype(cpu, None) is None
    assert D.decode_dtype(gpu, torch.bfloat16) is None and D.decode_dtype(gpu, None) is None   # the seed contract


def test_fp16_copies_compute_what_fp16_autocast_computes_on_the_frozen_modules(tiny_audioldm, unit_embeds):
    a = tiny_audioldm
    unet, vae = D.sampling_modules(a, torch.float16)
    assert D.sampling_modules(a, torch.float16)[0] is unet                    # made once
    assert D.sampling_modules(a, torch.bfloat16) == a.sampling_modules("bf16")
    assert D.sampling_modules(a, None) == (a.unet, a.vae)
    assert unet.diffusion_model.input_blocks[0][0].weight.dtype == torch.float16
    assert unet.diffusion_model.out[0].weight is a.unet.diffusion_model.out[0].weight   # norms shared, fp32
    x, c, ts = torch.randn(2, 8, 16, 16), unit_embeds(2), torch.full((2,), 500)
    with torch.inference_mode(), D.autocast(torch.device("cpu"), torch.float16):
        assert torch.equal(unet(x, ts, c_film=[c]), a.ldm.apply_model(x, ts, c))
        mel = a.ldm.decode_first_stage(x)
        assert torch.equal(vae.decode(1.0 / a.ldm.scale_factor * x), mel)
    assert not any(p.requires_grad for p in unet.parameters())
    a.assert_unchanged()


def test_place_moves_only_when_elsewhere(tiny_audioldm, monkeypatch):
    moved = []
    monkeypatch.setattr(tiny_audioldm, "to", lambda d: moved.append(d))
    assert D.place(tiny_audioldm, torch.device("cpu")) is tiny_audioldm
    assert moved == []                                  # already there: the bf16 copies are kept
    D.place(tiny_audioldm, torch.device("cuda", 0))
    assert moved == [torch.device("cuda", 0)]


def test_generate_on_absent_cuda_fails_before_any_unet_call(tiny_audioldm, unit_embeds, no_cuda):
    calls = []
    unet, _ = tiny_audioldm.sampling_modules("bf16")
    handle = unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
            generate(tiny_audioldm, image_embeds=unit_embeds(1), duration=2.5, steps=1, device="cuda")
        with pytest.raises(ValueError, match="device: 'tpu' is not a device"):
            check_inputs(image_embeds=unit_embeds(1), device="tpu")
    finally:
        handle.remove()
    assert calls == [] and tiny_audioldm.device == torch.device("cpu")


def test_generate_on_cpu_by_name_and_auto_is_the_same_clip(tiny_audioldm, unit_embeds, no_cuda):
    kw = dict(image_embeds=unit_embeds(1, seed=4), duration=2.5, steps=1, precision="fp32", verify_frozen=False)
    import numpy as np

    a = generate(tiny_audioldm, **kw)
    np.testing.assert_array_equal(generate(tiny_audioldm, device="cpu", **kw), a)
    np.testing.assert_array_equal(generate(tiny_audioldm, device="auto", **kw), a)


def test_auto_precision_is_bf16_on_cuda_and_the_faster_one_on_the_cpu(monkeypatch):
    def not_measured():
        raise AssertionError("measured bf16 against float32 where it did not need to")

    from ciap_lib import hardware

    monkeypatch.setattr(hardware, "cpu_prefers_bf16", not_measured)
    assert D.resolve_precision("auto", torch.device("cuda", 0)) == "bf16"      # float16 before Ampere: half_dtype
    for asked in ("bf16", "fp32"):                                             # asked for: as it is, anywhere
        assert D.resolve_precision(asked, torch.device("cpu")) == asked
        assert D.resolve_precision(asked, torch.device("cuda", 0)) == asked
    monkeypatch.setattr(hardware, "cpu_prefers_bf16", lambda: True)           # AMX Xeons
    assert D.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(hardware, "cpu_prefers_bf16", lambda: False)          # AVX2, or AVX512-BF16 slower than fp32
    assert D.resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_auto_is_a_precision_everywhere_and_the_default():
    from ciap_lib.bridge import GenerationParams

    assert GenerationParams().precision == "auto"
    for p in ("auto", "bf16", "fp32"):
        GenerationParams(precision=p).check()
    with pytest.raises(ValueError, match=r"precision: 'fp16' is not one of \['auto', 'bf16', 'fp32'\]"):
        check_inputs(precision="fp16", image_embeds=torch.zeros(1, 512))
