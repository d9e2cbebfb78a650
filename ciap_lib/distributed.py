"""Multi-process helpers for ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node N -m ciap_lib train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT``; :func:`setup` reads them. Without them everything runs in one process
and these helpers are no-ops.

Contrastive loss across ranks (open_clip's ``gather_features`` without ``gather_with_grad``): every rank
all-gathers the embeddings of all ranks, puts its own shard back *with* its autograd graph, and computes the
loss over the global batch. Every rank therefore computes the same global loss L, but its encoders only get
the part of dL/dθ that flows through its local shard; DDP then *averages* over the W ranks. To make the result
equal to a single process on the combined batch, the local shard's gradient is multiplied by W
(:func:`scale_grad`); parameters used outside the shards (the logit scale) already get the full dL/dθ on each
rank, so their average is exact too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node), its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard_paths(paths, rank: int, world_size: int) -> list[str]:
    """This process's share of ``paths`` when several fill one cache: the sorted unique resolved paths,
    ``rank::world_size`` (every process computes the same list, so the shares cover it once)."""
    from pathlib import Path

    return sorted({str(Path(p).resolve()) for p in paths})[rank::world_size]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when a CUDA device is available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given.

    ``ValueError`` (saying what is available) for anything else, for ``cuda`` where torch sees no CUDA device,
    and for ``cuda:N`` past the last one.
    """
    from ciap_lib.config import DEVICE_CHOICES, DEVICE_PATTERN

    text = str(device)
    if not DEVICE_PATTERN.fullmatch(text):
        raise ValueError(f"device={text!r} is not a device; use {DEVICE_CHOICES}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
            raise ValueError(f"device={text!r} but CUDA is not available ({why}); use device=cpu or device=auto")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device={text!r} but there {'is' if n == 1 else 'are'} only {n} CUDA device(s) "
                             f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
    return dev


def setup(device: str = "cpu") -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1), else a single process.

    On CUDA each rank uses ``cuda:LOCAL_RANK`` and nccl; on CPU gloo.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    device=dev, backend=backend)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group that :func:`setup` created."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``factor``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged, but its gradient is multiplied by ``factor``."""
    return _ScaleGrad.apply(x, factor)


def gather_features(image_features: torch.Tensor, audio_features: torch.Tensor,
                    info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather (b,D) local embeddings into (W*b,D) global ones, rank order, local shard keeping its graph.

    Every rank must pass the same local batch size b. With one process the inputs are returned unchanged.
    """
    return gather_rows(image_features, info), gather_rows(audio_features, info)


def gather_rows(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """All-gather (b,...) local rows into (W*b,...) global ones in rank order; the local shard keeps its graph, its
    gradient scaled by W (DDP averages over ranks, so every rank's global loss then gives the one-process
    gradient). With one process ``x`` is returned unchanged."""
    if not info.enabled:
        return x
    shards = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(shards, x.detach().contiguous())
    shards[info.rank] = scale_grad(x, float(info.world_size))
    return torch.cat(shards, dim=0)


def gather_labels(labels: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """All-gather (b,) local labels into (W*b,) global ones in the rank order of :func:`gather_features` (no
    gradient). With one process the input is returned unchanged."""
    if not info.enabled:
        return labels
    shards = [torch.empty_like(labels) for _ in range(info.world_size)]
    dist.all_gather(shards, labels.contiguous())
    return torch.cat(shards, dim=0)


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """``obj`` from rank ``src`` on every rank (no-op for one process)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class DistributedEpochSampler(torch.utils.data.Sampler):
    """``torch.utils.data.DistributedSampler`` that yields ``(index, epoch)`` tuples.

    :class:`~ciap_lib.data.PairDataset` seeds its random crops by (seed, epoch, index); carrying the epoch
    with the index keeps that reproducible inside persistent DataLoader workers. Call :meth:`set_epoch`
    before each epoch. With one process it is a plain seeded per-epoch shuffle.
    """

    def __init__(self, n: int, info: DistInfo, shuffle: bool, seed: int = 0, drop_last: bool = False):
        from torch.utils.data import DistributedSampler
        self.inner = DistributedSampler(range(n), num_replicas=info.world_size, rank=info.rank,
                                        shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        epoch = self.epoch
        for i in self.inner:
            yield (int(i), epoch)
