"""Weights of the standard audio-metric models (VGGish, PANNs Cnn14 16 kHz): where they are looked for, the
message when they are absent, and the one function that reads a weights file.

Nothing is downloaded. Each file is looked for, in order, in:

1. ``weights_dir`` (default ``ckpt/metrics``);
2. the place the original tool caches it: torch hub's ``<torch.hub.get_dir()>/checkpoints/`` for VGGish
   (where ``torch.hub.load("harritaylor/torchvggish", "vggish")`` stores it, as audioldm_eval calls it) and
   ``~/.cache/audioldm_eval/ckpt/`` for Cnn14 (audioldm_eval's ``Cnn14.__init__``).

A file that is absent makes its metrics *skipped* with :func:`missing_message` (which metric, why, the file
expected, the URL to fetch it from on a machine with a network). A file that is present but unusable raises
:class:`MetricWeightsError` naming it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ciap_lib.audio_io import BadFileError
from ciap_lib.safe_load import UnsafeCheckpointError, safe_load

DEFAULT_WEIGHTS_DIR = Path("ckpt") / "metrics"


class MetricWeightsError(BadFileError):
    """A metric weights file that exists but cannot be used; ``str(err)`` names the file and the problem."""


def _torch_hub_checkpoints() -> list[Path]:
    return [Path(torch.hub.get_dir()) / "checkpoints"]


def _audioldm_eval_cache() -> list[Path]:
    return [Path(os.path.expanduser("~")) / ".cache" / "audioldm_eval" / "ckpt"]


@dataclass(frozen=True)
class WeightsSpec:
    """One released weights file: its exact name, public URL, the metrics it serves, and its layout."""

    name: str                               # short id, e.g. "vggish"
    filename: str                           # the released file name, as the original tools expect it
    url: str                                # public download URL (the one the original tool uses)
    metrics: tuple[str, ...]                # metric names computed with it
    model: str                              # what it is, for messages
    state_key: str | None                   # the state dict sits under this key (PANNs: "model"); None: top level
    cache_dirs: Callable[[], list[Path]]    # where the original tool caches it

    def search_dirs(self, weights_dir: str | os.PathLike | None = DEFAULT_WEIGHTS_DIR) -> list[Path]:
        """Directories looked in, in order: ``weights_dir`` first, then the original tool's cache."""
        dirs = [Path(weights_dir)] if weights_dir is not None else []
        return dirs + [d for d in self.cache_dirs() if d not in dirs]


#: VGGish (Hershey et al. 2017), the torchvggish port audioldm_eval loads through torch hub
#: (``harritaylor/torchvggish`` hubconf ``model_urls['vggish']``). A plain state dict.
VGGISH = WeightsSpec(
    name="vggish", filename="vggish-10086976.pth",
    url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
    metrics=("fad_vggish",), model="VGGish (torchvggish port)", state_key=None,
    cache_dirs=_torch_hub_checkpoints)

#: PANNs Cnn14 trained on AudioSet at 16 kHz (Kong et al. 2020), the checkpoint audioldm_eval loads for
#: 16 kHz evaluation (``feature_extractors/panns/models.py``, ``Cnn14.__init__``). PANNs training layout:
#: ``{"iteration": int, "model": state_dict, ...}`` (``audioset_tagging_cnn/pytorch/main.py``).
CNN14_16K = WeightsSpec(
    name="panns_cnn14_16k", filename="Cnn14_16k_mAP=0.438.pth",
    url="https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth",
    metrics=("fd_panns", "kl_panns", "is_panns"), model="PANNs Cnn14 (16 kHz)", state_key="model",
    cache_dirs=_audioldm_eval_cache)


def find_weights(spec: WeightsSpec, weights_dir: str | os.PathLike | None = DEFAULT_WEIGHTS_DIR) -> Path | None:
    """The first ``<dir>/<spec.filename>`` that exists among :meth:`WeightsSpec.search_dirs`, else None."""
    for d in spec.search_dirs(weights_dir):
        p = d / spec.filename
        if p.exists():
            return p
    return None


def missing_message(spec: WeightsSpec, metric: str, weights_dir: str | os.PathLike | None = DEFAULT_WEIGHTS_DIR
                    ) -> str:
    """Why ``metric`` is skipped: the file expected, where it was looked for, and how to get it."""
    where = " or ".join(str(d / spec.filename) for d in spec.search_dirs(weights_dir))
    first = spec.search_dirs(weights_dir)[0] / spec.filename
    return (f"{metric} skipped: the {spec.model} weights file {spec.filename} was not found (looked for {where}). "
            f"Download {spec.url} on a machine with a network and copy it to {first} "
            f"(or pass weights_dir=<its folder>).")


# numpy reconstruction globals, allowed so that a training checkpoint whose extra entries hold numpy arrays
# (PANNs' main.py saves its sampler state, lists of int64 arrays, beside "model") opens with weights_only=True.
def _numpy_safe_globals() -> list:
    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core
    dtype_classes = {type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                                  np.float16, np.float32, np.float64)}
    return [(multiarray.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.multiarray.scalar, "numpy.core.multiarray.scalar"),
            np.ndarray, np.dtype, *sorted(dtype_classes, key=str)]


def load_weights_file(path: str | os.PathLike) -> Any:
    """:func:`ciap_lib.safe_load.safe_load` of ``path`` (weights-only) with only numpy's array/scalar/dtype
    reconstruction allowed beside tensors. Nothing else is unpickled. Raises :class:`MetricWeightsError`
    naming ``path`` when the file is empty or not a (safe) PyTorch file."""
    p = Path(path)
    if not p.is_file():
        raise MetricWeightsError(p, "weights file does not exist")
    if p.stat().st_size == 0:
        raise MetricWeightsError(p, "weights file is empty (0 bytes)")
    try:
        return safe_load(p, allow=_numpy_safe_globals())
    except UnsafeCheckpointError as e:
        raise MetricWeightsError(p, f"refused to load: it asks for {', '.join(e.unsafe_globals)}, which a weights "
                                    "file never needs (unpickling them could run code); nothing was executed") from None
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError/EOFError/...
        raise MetricWeightsError(
            p, f"cannot be read as a PyTorch weights file with weights_only=True ({type(e).__name__}: "
               f"{_gist(e)}); it is truncated, corrupt, not a weights file, or holds objects other than "
               f"tensors") from None


def _gist(e: Exception) -> str:
    """The informative line of a torch.load error (weights-only errors name the refused global)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if any(k in ln for k in ("Unsupported global", "Unsupported operand", "Can only build")):
            return ln[:300]
    return lines[0][:300] if lines else "no message"


def read_state_dict(spec: WeightsSpec, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a ``spec`` weights file: the top level (VGGish) or ``obj[spec.state_key]`` (PANNs).
    Raises :class:`MetricWeightsError` naming the file when it holds something else."""
    obj = load_weights_file(path)
    if spec.state_key is not None:
        if not isinstance(obj, dict) or spec.state_key not in obj:
            keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
            raise MetricWeightsError(path, f"not a {spec.model} checkpoint: expected a dict with a "
                                           f"{spec.state_key!r} entry (the PANNs layout), found {keys}")
        obj = obj[spec.state_key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MetricWeightsError(path, f"not a {spec.model} state dict (expected a dict of tensors, "
                                       f"got {type(obj).__name__})")
    return obj


def load_into(model: torch.nn.Module, spec: WeightsSpec, path: str | os.PathLike) -> None:
    """Read ``path`` (:func:`read_state_dict`) and load it strictly into ``model``; a key or shape mismatch
    raises :class:`MetricWeightsError` naming the file and the first differences."""
    sd = read_state_dict(spec, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise MetricWeightsError(path, f"does not match the {spec.model} architecture: "
                                       f"missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {shapes[:3]}")
    model.load_state_dict(sd, strict=True)
