"""The UNet call of a sampling step, replayed from a CUDA graph.

On a GPU a guided step of audioldm-s-full is bound by kernel launches, not by the GPU: about a thousand launches per
step took 0.029 s at batch 1 and 0.030 s at batch 8 on an H200, and 0.06 s on the same kind of GPU under a slower
host, against a few ms of GPU work (``bench/results/h200-2026-12-04/``). So on CUDA
:func:`ciap_lib.bridge.sampling.predict_noise` captures the UNet call once per input shape and dtype
(``torch.cuda.CUDAGraph``) and then replays it: the same kernels on the same shapes, without their per-launch CPU cost.
The solver's own arithmetic (diffusers' scheduler step) and the decode stay eager.

Capture needs a call without host synchronisation. audioldm's ``timestep_embedding`` builds its frequencies on the
CPU and copies them to the GPU on every call; within a captured call :func:`cached_timestep_frequencies` swaps in
:func:`timestep_embedding`, which takes the same float32 frequencies, computed on the CPU as audioldm computes
them, from a per-device cache (so the embedding is bitwise audioldm's).

Graphs are kept per model, UNet module and dtype (:func:`graphed_call`), at most :data:`MAX_GRAPHS` input shapes each, least
recently used dropped first: each graph keeps its own activation memory. ``FrozenAudioLDM.cuda_graphs = False``
(``bench/generation.py --no-cuda-graphs``) runs every call eagerly.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

#: input shapes kept per UNet and dtype (a sampling run uses one; ``bench/generation.py`` cycles through a few)
MAX_GRAPHS = 4
#: eager calls before a capture (on a side stream, as torch's CUDA-graph notes ask: lazy initialisation and kernel
#: choice happen there, outside the graph)
WARMUP_CALLS = 2

UNetCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_FREQS: dict[tuple[int, float, torch.device], torch.Tensor] = {}


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000,
                       repeat_only: bool = False) -> torch.Tensor:
    """audioldm's ``timestep_embedding`` ((N,) timesteps -> (N, dim) sinusoidal embedding), with the frequencies
    taken from a cache on ``timesteps``' device instead of being copied there on every call. The frequencies are
    computed on the CPU exactly as audioldm computes them, so the result is bitwise audioldm's."""
    if repeat_only:
        from audioldm.latent_diffusion.util import timestep_embedding as original

        return original(timesteps, dim, max_period, repeat_only)
    half = dim // 2
    key = (half, float(max_period), timesteps.device)
    freqs = _FREQS.get(key)
    if freqs is None:
        freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
        freqs = _FREQS[key] = freqs.to(device=timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


@contextmanager
def cached_timestep_frequencies() -> Iterator[None]:
    """Within the block, audioldm's UNet embeds its timesteps with :func:`timestep_embedding`; restored on exit."""
    import audioldm.latent_diffusion.openaimodel as openaimodel

    original = openaimodel.timestep_embedding
    openaimodel.timestep_embedding = timestep_embedding
    try:
        yield
    finally:
        openaimodel.timestep_embedding = original


class GraphedCall:
    """``call(x, t, c) -> eps`` on CUDA tensors, captured once per (shapes, dtypes, device) and replayed.

    ``call`` must run the same kernels every time for the same shapes (no host synchronisation, no data-dependent
    control flow): the UNet call of :func:`ciap_lib.bridge.sampling.predict_noise` under
    :func:`cached_timestep_frequencies`. ``captures`` counts the captures made (dropped shapes are captured again).
    """

    def __init__(self, call: UNetCall, max_graphs: int = MAX_GRAPHS):
        self.call = call
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = \
            OrderedDict()
        self.captures = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in (x, t, c))
        with torch.inference_mode():
            if key in self.graphs:
                self.graphs.move_to_end(key)
            else:
                self.graphs[key] = self._capture(x, t, c)
                while len(self.graphs) > self.max_graphs:
                    self.graphs.popitem(last=False)
            graph, static_in, static_out = self.graphs[key]
            for buf, a in zip(static_in, (x, t, c)):
                buf.copy_(a)
            graph.replay()
            return static_out.clone()

    def _capture(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor):
        static_in = tuple(a.clone() for a in (x, t, c))
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.call(*static_in)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.call(*static_in)
        self.captures += 1
        return graph, static_in, static_out


def graphed_call(cache: dict, unet: torch.nn.Module, dtype: torch.dtype | None, call: UNetCall) -> GraphedCall:
    """The :class:`GraphedCall` kept in ``cache`` (the model's: ``FrozenAudioLDM.graphs``, emptied when it moves)
    for ``unet`` (the frozen module or its half-precision copy) and ``dtype``, made with ``call`` on first use (later
    calls reuse it: ``call`` must compute the same function every time)."""
    key = (id(unet), dtype)
    if key not in cache:
        cache[key] = GraphedCall(call)
    return cache[key]
