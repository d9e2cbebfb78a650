"""oneDNN weight prepacking of the CPU bf16 sampling copies: :func:`prepack_cpu`.

``F.conv2d``, ``F.conv1d``, ``F.conv_transpose1d`` and ``F.linear`` on a plain (dense) bf16 weight make oneDNN reorder
the weight into its blocked layout on every call. On a small activation that reorder is most of the work: a guided
audioldm-s-full UNet step runs its 640-channel 3x3 convolutions on a 16 x 2 latent (batch 2), where the reorder moves
7.4 MB to do 0.47 GFLOP. ``F.conv1d`` in bf16 also copies its input into oneDNN's layout and its output back (40% of
the HiFi-GAN vocoder's time). Reordering once, ahead of time, is what ``torch.compile``'s freezing pass does
(``mkldnn_fusion.py``); here it is done without compiling, with the same ops: ``mkldnn_reorder_conv2d_weight`` +
``mkldnn._convolution_pointwise``, ``mkldnn._reorder_convolution_transpose_weight`` +
``mkldnn._convolution_transpose_pointwise`` and ``mkldnn._reorder_linear_weight`` + ``mkldnn._linear_pointwise``.
1-D convolutions run as (1, k) 2-D ones on a channels_last view, so consecutive vocoder layers pass activations on
without copies.

Measured on a 2-core AMX Xeon (bf16, 2026-12-03): the 640-channel 3x3 convolution x3.3, 384-channel x2.0, Linear
layers x1.3-1.7, the vocoder's transposed convolutions x2.7-4.4; a 5 s clip x1.5 (``bench/generation.py
--no-prepack`` for the A/B). There the packed convolutions gave bitwise the result of the functional ops on the
same bf16 weights, and the packed Linear differed from ``F.linear`` in the last bit at K = 2560 only (another oneDNN
kernel); each gives the same numbers for every batch size, so the seed contract (the same seed gives the same audio
at any batch size, bitwise on the CPU) holds: on that CPU it held only with prepacking.

Only the weight copies that :meth:`~ciap_lib.bridge.frozen.FrozenAudioLDM.sampling_modules` makes are packed, never
the frozen modules: their fingerprint is untouched.
"""
from __future__ import annotations

import torch
from torch import nn

from ciap_lib.hardware import cpu_has_bf16

__all__ = ["PackedConv2d", "PackedConv1d", "PackedConvTranspose1d", "PackedLinear", "prepack_cpu", "can_prepack",
           "packable"]


def can_prepack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`prepack_cpu` applies: bf16 on a CPU that computes bf16 natively, with oneDNN in torch."""
    return (device.type == "cpu" and dtype == torch.bfloat16 and cpu_has_bf16()
            and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _zero_padded(conv: nn.Module) -> bool:
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def packable(module: nn.Module) -> bool:
    """Whether :func:`prepack_cpu` replaces ``module``: exactly ``nn.Conv2d``, ``nn.Conv1d`` or
    ``nn.ConvTranspose1d`` with numeric zero padding, or exactly ``nn.Linear``."""
    if type(module) in (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d):
        return _zero_padded(module)
    return type(module) is nn.Linear


class PackedConv2d(nn.Module):
    """A frozen ``nn.Conv2d`` (zero padding) with its weight reordered once for oneDNN.

    Input (B, C_in, H, W) of any float dtype, cast to the packed dtype; output (B, C_out, H', W') in that dtype, in
    the channels_last layout (as ``F.conv2d`` under autocast gives it)."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype = torch.bfloat16,
                 input_size: tuple[int, int, int, int] | None = None):
        super().__init__()
        if not _zero_padded(conv):
            raise ValueError(f"PackedConv2d: padding {conv.padding!r} / {conv.padding_mode!r} is not numeric zeros")
        self._pack(conv.weight, conv.bias, dtype, conv.padding, conv.stride, conv.dilation, conv.groups,
                   input_size or (2, conv.in_channels, 16, 16))

    def _pack(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, padding, stride, dilation,
              groups: int, input_size) -> None:
        """Hold ``weight`` (C_out, C_in / groups, kh, kw) cast to ``dtype`` and reordered, with its conv settings."""
        self.dtype = dtype
        self.out_channels, self.in_channels = weight.shape[0], weight.shape[1] * groups
        self.kernel_size = tuple(weight.shape[2:])
        self.padding, self.stride, self.dilation, self.groups = list(padding), list(stride), list(dilation), groups
        # an opaque oneDNN tensor: an attribute, not a parameter or buffer (state_dict cannot hold it)
        self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.detach().to(dtype).contiguous().to_mkldnn(), self.padding, self.stride, self.dilation, groups,
            list(input_size))
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x.to(self.dtype), self.packed, self.bias, self.padding,
                                                      self.stride, self.dilation, self.groups, "none", [], "")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dtype={self.dtype}")


class PackedConv1d(PackedConv2d):
    """A frozen ``nn.Conv1d`` (zero padding) run as a (1, k) :class:`PackedConv2d` on (B, C, 1, L).

    Input (B, C_in, L); output (B, C_out, L') in the packed dtype, a view of the 2-D result in its channels_last
    layout: the next packed convolution takes it without a copy (``F.conv1d`` on bf16 copies its input into that
    layout and its output back, 40% of the vocoder's time on a 2-core AMX Xeon)."""

    def __init__(self, conv: nn.Conv1d, dtype: torch.dtype = torch.bfloat16):
        nn.Module.__init__(self)
        if not _zero_padded(conv):
            raise ValueError(f"PackedConv1d: padding {conv.padding!r} / {conv.padding_mode!r} is not numeric zeros")
        self._pack(conv.weight.unsqueeze(2), conv.bias, dtype, (0, conv.padding[0]), (1, conv.stride[0]),
                   (1, conv.dilation[0]), conv.groups, (1, conv.in_channels, 1, 1024))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.unsqueeze(2)).squeeze(2)


class PackedConvTranspose1d(nn.Module):
    """A frozen ``nn.ConvTranspose1d`` (zero padding) run as a (1, k) transposed 2-D convolution with its weight
    reordered once for oneDNN. Input (B, C_in, L); output (B, C_out, L') in the packed dtype (a channels_last
    view, like :class:`PackedConv1d`'s)."""

    def __init__(self, conv: nn.ConvTranspose1d, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.dtype = dtype
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.padding, self.output_padding = [0, conv.padding[0]], [0, conv.output_padding[0]]
        self.stride, self.dilation, self.groups = [1, conv.stride[0]], [1, conv.dilation[0]], conv.groups
        self.packed = torch.ops.mkldnn._reorder_convolution_transpose_weight(
            conv.weight.detach().to(dtype).unsqueeze(2).contiguous(), self.padding, self.output_padding,
            self.stride, self.dilation, self.groups, [1, conv.in_channels, 1, 1024])
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x.to(self.dtype).unsqueeze(2), self.packed, self.bias, self.padding, self.output_padding, self.stride,
            self.dilation, self.groups, "none", [], "").squeeze(2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride[1]}, dtype={self.dtype}")


class PackedLinear(nn.Module):
    """A frozen ``nn.Linear`` with its weight reordered once for oneDNN. Input (..., in_features), cast to the
    packed dtype; output (..., out_features) in that dtype."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16, batch_hint: int = 64):
        super().__init__()
        w = linear.weight.detach().to(dtype)
        self.dtype = dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch_hint)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}"


def prepack_cpu(module: nn.Module, dtype: torch.dtype = torch.bfloat16,
                parts: tuple[nn.Module, ...] | None = None) -> int:
    """Replace, in place, every :func:`packable` layer inside ``parts`` (default: all of ``module``) with its
    packed form (:class:`PackedConv2d`, :class:`PackedConv1d`, :class:`PackedConvTranspose1d`,
    :class:`PackedLinear`) holding its weight cast to ``dtype`` and reordered. For weight
    copies only: the copy should share those layers' float32 weights with the frozen module rather than hold a
    cast of them (``half_weight_copy(..., skip=packable)``), so that each layer's weight exists in ``dtype`` only
    transiently, while it is packed. Returns how many layers were replaced."""
    inside = {id(m) for part in (parts or (module,)) for m in part.modules()}
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if id(child) not in inside or not packable(child):
                continue
            packed = {nn.Conv2d: PackedConv2d, nn.Conv1d: PackedConv1d, nn.ConvTranspose1d: PackedConvTranspose1d,
                      nn.Linear: PackedLinear}[type(child)]
            setattr(parent, name, packed(child, dtype))
            replaced += 1
    return replaced
