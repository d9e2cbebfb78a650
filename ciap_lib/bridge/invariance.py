"""Batch invariance on the CPU: a clip's audio does not depend on what else is in its batch, bitwise.

The seed contract (the same seed gives the same audio whatever the batch size) needs every kernel to compute a
clip's numbers in the same order whether it runs beside 0 or 7 other clips. On the CPU, three kinds of layer pick
how they split a reduction by the batch (found layer by layer: each layer run on the batch and on one clip of it):

* ``nn.Linear``, where the batch is part of the matmul's M, so MKL's blocking of the product follows the batch:
  - on 2-D input (the UNet's timestep and film embeddings and the ResBlocks' ``emb_layers``: 25 layers, each a
    (2B, <=512) input): up to 1.2e-7 apart in fp32, enough to move the latents by 2e-4 after 3 solver steps;
  - on 3-D input (B, tokens, K): the full-size UNet's feed-forward output Linears at the 16 x 2 latent (K = 2560,
    32 tokens) gave clip 0 7.5e-9 from the same clip alone at batch 8 and 16 in fp32 (not at batch 4), and the
    clip 5.6e-9 apart after 6 solver steps. The same Linear alone, with 8 tokens, differs at every batch size
    even on one thread;
* ``nn.GroupNorm`` on channels-last input (the VAE decoder's, whose bf16 convolutions return channels-last):
  up to 0.016 apart in bf16;
* the VAE decoder's and the vocoder's convolutions in fp32: up to 2.4e-7 apart.

The UNet's convolutions, attention and GroupNorms (bf16 and fp32) gave the same numbers at every batch size tried
(batch 4, 8 and 16; attention as the fused SDPA that sampling runs, :mod:`ciap_lib.bridge.attention`). So
:func:`per_clip_linears` computes every Linear one clip at a time (its input's first dimension: a row of a 2-D input,
a clip's tokens of a 3-D one), and ``ciap_lib.bridge.sampling.decode_latents`` decodes one clip at a time on the CPU.
``tests/bridge/test_generate.py`` checks the contract bitwise (a batch of 3 against each clip alone, fp32 and bf16,
tiny model), and ``bench/generation.py`` on the full-size model (clip 0 at each ``--batch-sizes``). On CUDA the
contract is a max abs difference of 1e-3 (``tests/bridge/test_cuda.py``), without either measure.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

import torch

from ciap_lib.bridge.prepack import PackedLinear


def _per_clip_forward(self: torch.nn.Module, rows: int, x: torch.Tensor) -> torch.Tensor:
    """The layer's own ``forward`` (``nn.Linear`` or its prepacked form,
    :class:`~ciap_lib.bridge.prepack.PackedLinear`) on x (N, K) or (N, tokens, K), ``rows`` rows of the first
    dimension (one clip's) at a time, so the product's M is ``rows`` or ``rows`` x tokens whatever N is."""
    forward = type(self).forward
    if x.dim() < 2 or x.shape[0] <= rows:
        return forward(self, x)
    if x.shape[0] % rows:
        raise ValueError(f"{type(self).__name__}: {x.shape[0]} rows are not clips of {rows} rows each")
    return torch.cat([forward(self, x[i:i + rows]) for i in range(0, x.shape[0], rows)])


@contextmanager
def per_clip_linears(module: torch.nn.Module, rows_per_clip: int = 1,
                     enabled: bool = True) -> Iterator[torch.nn.Module]:
    """Within the block, every ``nn.Linear`` (or :class:`~ciap_lib.bridge.prepack.PackedLinear`) in ``module``
    computes each clip of its input (N, K) or (N, tokens, K) on its own, so a clip's output does not depend on N.
    A clip is ``rows_per_clip`` consecutive rows: 2 for guided sampling, whose UNet batch holds each clip's
    unconditional and conditional rows side by side (``ciap_lib.bridge.sampling.predict_noise``), so a batch of
    one clip is computed as it is.
    Each layer's ``forward`` is replaced for the block, so the batched product is never computed, and restored on
    exit; no weight is touched. ``enabled=False``: nothing is changed."""
    patched = [m for m in module.modules()
               if enabled and isinstance(m, (torch.nn.Linear, PackedLinear)) and "forward" not in vars(m)]
    for m in patched:
        m.forward = functools.partial(_per_clip_forward, m, rows_per_clip)
    try:
        yield module
    finally:
        for m in patched:
            del m.forward
