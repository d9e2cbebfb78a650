"""oneDNN weight prepacking of the CPU bf16 sampling copies (ciap_lib.bridge.prepack).

Every packed layer is checked against torch's own functional op on the same weights: in float32 on any CPU, and in
bfloat16 where oneDNN computes it (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``; elsewhere the bf16 cases
report a skip, and generation does not pack there). The packed and the functional op may pick different oneDNN
kernels, so they are held to the last bit of the dtype (on the AMX Xeon where this was written the convolutions came
out bitwise equal, and a Linear with K = 2560 differed in 5-8 of 40,960 outputs); what must be bitwise is each packed
layer against itself at another batch size (the seed contract)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ciap_lib.bridge import frozen, generate
from ciap_lib.bridge.prepack import (PackedConv1d, PackedConv2d, PackedConvTranspose1d, PackedLinear, can_prepack,
                                     packable, prepack_cpu)

BF16_OK = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
DTYPES = [torch.float32,
          pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not BF16_OK, reason="oneDNN has no bf16 on this CPU"))]


def _w(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype)


def assert_last_bit(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """``got`` equals ``want`` up to a rounding or two in ``dtype``: same dtype, shape, and values."""
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * 0.05)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=1),
                                dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, padding=2, dilation=2)])
def test_packed_conv2d_is_f_conv2d_and_bitwise_at_any_batch(dtype, kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, **kw)
    x = torch.randn(4, 8, 10, 6)
    packed = PackedConv2d(conv, dtype)
    with torch.inference_mode():
        want = F.conv2d(x.to(dtype), _w(conv.weight, dtype), _w(conv.bias, dtype), conv.stride, conv.padding,
                        conv.dilation)
        got = packed(x)
        assert_last_bit(got, want, dtype)
        assert torch.equal(packed(x[:1]), got[:1])              # the seed contract: batch size changes nothing
        assert torch.equal(packed(x.contiguous(memory_format=torch.channels_last)), got)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_conv1d_and_transpose_are_the_functional_ops(dtype):
    torch.manual_seed(1)
    conv = nn.Conv1d(8, 12, 5, padding=4, dilation=2)
    up = nn.ConvTranspose1d(12, 6, 16, stride=8, padding=4)
    x = torch.randn(3, 8, 37)
    with torch.inference_mode():
        h = PackedConv1d(conv, dtype)(x)
        assert h.shape == (3, 12, 37)
        assert_last_bit(h, F.conv1d(x.to(dtype), _w(conv.weight, dtype), _w(conv.bias, dtype), padding=4,
                                    dilation=2), dtype)
        y = PackedConvTranspose1d(up, dtype)(F.leaky_relu(h, 0.1))     # a channels_last view in, as in the vocoder
        want = F.conv_transpose1d(F.leaky_relu(h, 0.1).contiguous(), _w(up.weight, dtype), _w(up.bias, dtype),
                                  stride=8, padding=4)
        assert y.shape == (3, 6, 37 * 8)
        assert_last_bit(y, want, dtype)
        assert torch.equal(PackedConvTranspose1d(up, dtype)(h[1:2]), PackedConvTranspose1d(up, dtype)(h)[1:2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_linear_matches_f_linear_on_2d_and_3d_input(dtype):
    torch.manual_seed(2)
    lin = nn.Linear(24, 40)
    packed = PackedLinear(lin, dtype)
    x = torch.randn(3, 5, 24)
    with torch.inference_mode():
        want = F.linear(x.to(dtype), _w(lin.weight, dtype), _w(lin.bias, dtype))
        got = packed(x)
        assert_last_bit(got, want, dtype)
        assert torch.equal(packed(x[:1]), got[:1])
        assert torch.equal(packed(x.reshape(15, 24)), got.reshape(15, 40))


def test_only_plain_zero_padded_layers_inside_parts_are_replaced():
    class Sub(nn.Conv2d):
        pass

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                        nn.Conv2d(4, 4, 3, padding="same"), Sub(4, 4, 1), nn.GroupNorm(2, 4),
                        nn.Sequential(nn.Conv1d(4, 4, 3), nn.Linear(4, 4)))
    assert [packable(m) for m in net] == [True, False, False, False, False, False]
    assert prepack_cpu(net, torch.float32, parts=(net[5],)) == 2             # only inside parts
    assert isinstance(net[5][0], PackedConv1d) and isinstance(net[5][1], PackedLinear)
    assert type(net[0]) is nn.Conv2d
    assert prepack_cpu(net, torch.float32) == 1 and isinstance(net[0], PackedConv2d)
    assert type(net[1]) is nn.Conv2d and type(net[2]) is nn.Conv2d and type(net[3]) is Sub
    assert "packed" not in str(net.state_dict().keys())                        # opaque tensors stay out of it


def test_can_prepack_is_bf16_on_a_native_bf16_cpu_only(monkeypatch):
    from ciap_lib.bridge import prepack

    assert not can_prepack(torch.device("cpu"), torch.float32)
    assert not can_prepack(torch.device("cpu"), torch.float16)
    assert not can_prepack(torch.device("cuda", 0), torch.bfloat16)
    monkeypatch.setattr(prepack, "cpu_has_bf16", lambda: False)
    assert not can_prepack(torch.device("cpu"), torch.bfloat16)
    monkeypatch.setattr(prepack, "cpu_has_bf16", lambda: True)
    assert can_prepack(torch.device("cpu"), torch.bfloat16) == BF16_OK


@pytest.mark.skipif(not BF16_OK, reason="oneDNN has no bf16 on this CPU: generation does not pack here")
def test_packed_copies_sample_what_the_unpacked_copies_sample(tiny_audioldm_ckpt, unit_embeds, native_bf16,
                                                              monkeypatch):
    """The tiny AudioLDM's bf16 copies, packed and not: the same UNet output, mel, waveform and clip up to bf16
    rounding (bitwise on the AMX Xeon where this was written, as on the full-size model there); the packed copies
    hold no dense conv/linear layer in the parts they run; a packed clip is bitwise the same at batch 1 and 3; the
    frozen modules are untouched."""
    import numpy as np

    from ciap_lib.bridge import load_audioldm

    from ciap_lib.bridge import prepack

    monkeypatch.setattr(prepack, "cpu_has_bf16", lambda: True)    # oneDNN has bf16 here (BF16_OK)
    a = load_audioldm(tiny_audioldm_ckpt, cache_uncond=False)
    fingerprint = a.fingerprint()
    outputs = {}
    for pack in (False, True):
        a.prepack, a._half = pack, {}
        unet, vae = a.sampling_modules("bf16")
        dense = [m for part in (unet, *frozen.decode_parts(vae)) for m in part.modules() if packable(m)]
        assert (dense == []) == pack
        x, c, ts = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(3)), unit_embeds(2), \
            torch.full((2,), 500)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            eps = unet(x, ts, c_film=[c])
            mel = vae.decode(x)
            wav = vae.vocoder(mel.squeeze(1).permute(0, 2, 1))
        kw = dict(duration=2.5, steps=2, precision="bf16", seed=7)
        clips = generate(a, image_embeds=unit_embeds(3), batch_size=3, **kw)
        outputs[pack] = (eps, mel, wav, torch.from_numpy(clips))
    for unpacked, packed in zip(outputs[False], outputs[True]):
        rel = ((packed.float() - unpacked.float()).norm() / unpacked.float().norm()).item()
        assert rel < 1e-2, rel
    np.testing.assert_array_equal(generate(a, image_embeds=unit_embeds(3)[:1], batch_size=1, **kw),
                                  outputs[True][3][:1].numpy())
    assert a.fingerprint() == fingerprint
    assert all(type(m) is not PackedConv2d for m in a.ldm.modules())


def test_per_clip_linears_also_split_packed_linears(monkeypatch):
    """The seed contract's clip-at-a-time Linears (ciap_lib.bridge.invariance) hold for the packed copies too."""
    from ciap_lib.bridge.invariance import per_clip_linears

    torch.manual_seed(3)
    net = nn.Sequential(PackedLinear(nn.Linear(16, 8), torch.float32), nn.SiLU())
    shapes, real = [], PackedLinear.forward
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: shapes.append(tuple(x.shape)) or real(self, x))
    x, x3 = torch.randn(5, 16), torch.randn(4, 3, 16)
    with torch.no_grad(), per_clip_linears(net):
        rows, clips = net(x), net(x3)
    assert shapes == [(1, 16)] * 5 + [(1, 3, 16)] * 4 and "forward" not in vars(net[0])
    with torch.no_grad():
        assert torch.allclose(rows, net(x), atol=1e-6) and torch.allclose(clips, net(x3), atol=1e-6)
