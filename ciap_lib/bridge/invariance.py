"""Batch invariance on the CPU: a clip's audio does not depend on what else is in its batch, bitwise.

The seed contract (the same seed gives the same audio whatever the batch size) needs every kernel to compute a
clip's numbers in the same order whether it runs beside 0 or 7 other clips. On the CPU, three kinds of layer pick
how they split a reduction by the batch (found layer by layer: each layer run on the batch and on one clip of it):

* ``nn.Linear`` on 2-D input, where the batch is the matmul's M (the UNet's timestep and film embeddings and the
  ResBlocks' ``emb_layers``: 25 layers, each a (2B, <=512) input): up to 1.2e-7 apart in fp32, enough to move
  the latents by 2e-4 after 3 solver steps;
* ``nn.GroupNorm`` on channels-last input (the VAE decoder's, whose bf16 convolutions return channels-last):
  up to 0.016 apart in bf16;
* the VAE decoder's and the vocoder's convolutions in fp32: up to 2.4e-7 apart.

The UNet's convolutions, attention and GroupNorms (bf16 and fp32) gave the same numbers at every batch size tried
(attention measured as audioldm's einsums; the fused SDPA that sampling now runs, :mod:`ciap_lib.bridge.attention`,
is covered by the checks below). So :func:`rowwise_linears` computes those small Linears one row at a time (they are
tiny: < 0.1% of a step) and ``ciap_lib.bridge.sampling.decode_latents`` decodes one clip at a time on the CPU.
``tests/bridge/test_generate.py`` checks the contract bitwise (a batch of 3 against each clip alone, fp32 and bf16,
tiny model), and ``bench/generation.py`` on the full-size model (clip 0 at each ``--batch-sizes``). On CUDA the
contract is a max abs difference of 1e-3 (``tests/bridge/test_cuda.py``), without either measure.
"""
from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator

import torch

from ciap_lib.bridge.prepack import PackedLinear


def _rowwise_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's own ``forward`` (``nn.Linear`` or its prepacked form,
    :class:`~ciap_lib.bridge.prepack.PackedLinear`) on a 2-D input of several rows, one row at a time (M = 1
    whatever the batch); any other input as the layer computes it."""
    forward = type(self).forward
    if x.dim() != 2 or x.shape[0] < 2:
        return forward(self, x)
    return torch.cat([forward(self, x[i:i + 1]) for i in range(x.shape[0])])


@contextmanager
def rowwise_linears(module: torch.nn.Module, enabled: bool = True) -> Iterator[torch.nn.Module]:
    """Within the block, every ``nn.Linear`` (or :class:`~ciap_lib.bridge.prepack.PackedLinear`) in ``module``
    that gets a 2-D (N, K) input computes each row on its own, so its output rows do not depend on N (3-D inputs,
    such as attention projections over the latent's positions, are left as they are). Each layer's ``forward`` is
    replaced for the block, so the batched product is never computed, and restored on exit; no weight is touched.
    ``enabled=False``: nothing is changed."""
    patched = [m for m in module.modules()
               if enabled and isinstance(m, (torch.nn.Linear, PackedLinear)) and "forward" not in vars(m)]
    for m in patched:
        m.forward = types.MethodType(_rowwise_forward, m)
    try:
        yield module
    finally:
        for m in patched:
            del m.forward
