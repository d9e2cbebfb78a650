"""Atomic checkpoints: model, optimizer, scheduler, epoch, RNG states and config in one file that loads
with ``torch.load(weights_only=True)`` (:mod:`ciap_lib.safe_load`): nothing in it needs full unpickling.

Format ``ciap-checkpoint/2`` (a dict saved with ``torch.save``; only tensors and plain Python values)::

    {"format": "ciap-checkpoint/2", "model": state_dict, "model_config": dict, "config": TrainConfig dict,
     "optimizer": state_dict|None, "scheduler": state_dict|None, "epoch": int (epochs completed),
     "rng": {"python": [version, [625 ints], gauss_next],
             "numpy": {"bit_generator": "MT19937", "keys": (624,) int64 tensor, "pos": int,
                       "has_gauss": int, "cached_gaussian": float},
             "torch": (N,) uint8 tensor, "cuda": [(M,) uint8 tensor per device] (when CUDA is available)},
     "history": list[dict], "metrics": dict}

``ciap-checkpoint/1`` files hold numpy RNG state (``numpy.ndarray``, ``numpy.dtype``) that the weights-only
unpickler refuses; :func:`load_checkpoint` says how to convert them (:func:`convert_checkpoint`,
``python -m ciap_lib convert-checkpoint OLD NEW --trust``).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ciap_lib.atomic import atomic_path
from ciap_lib.config import TrainConfig
from ciap_lib.models import CIAP, ModelConfig
from ciap_lib.safe_load import UnsafeCheckpointError, safe_load

FORMAT = "ciap-checkpoint/2"
#: earlier formats :func:`convert_checkpoint` upgrades
OLD_FORMATS: tuple[str, ...] = ("ciap-checkpoint/1",)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``: readers see
    either the old file or the complete new one, never a partial write."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _python_rng(state: tuple) -> list:
    """``random.getstate()`` -> ``[version, [625 ints], gauss_next]``."""
    version, internal, gauss_next = state
    return [int(version), [int(v) for v in internal], None if gauss_next is None else float(gauss_next)]


def _numpy_rng(state: tuple) -> dict[str, Any]:
    """``np.random.get_state()`` (legacy MT19937 tuple) -> a dict holding a (624,) int64 key tensor."""
    name, keys, pos, has_gauss, cached_gaussian = state
    return {"bit_generator": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain lists/dicts (see the module doc)."""
    state: dict[str, Any] = {"python": _python_rng(random.getstate()), "numpy": _numpy_rng(np.random.get_state()),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (tensors may have been mapped to another device)."""
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].cpu().numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def plain(obj: Any, where: str = "value") -> Any:
    """``obj`` with numpy scalars turned into Python numbers and paths into strings, so that it loads with
    ``weights_only=True``; ``TypeError`` naming ``where`` for anything else that would need full unpickling."""
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__name__} cannot be stored in a checkpoint "
                    f"that loads with weights_only=True")


def save_checkpoint(path: str | os.PathLike, model: CIAP, config: TrainConfig, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    history: list[dict[str, float]] | None = None,
                    metrics: dict[str, float] | None = None,
                    label_words: dict[str, Any] | None = None) -> Path:
    """Atomically write a ``ciap-checkpoint/2`` file of ``model`` (unwrap DDP first) after ``epoch``
    completed epochs. ``label_words``: the label-word classifier's ``state_dict`` (``word_weight``), kept only so
    that ``resume`` continues it; the model does not use it."""
    obj = {"format": FORMAT, "model": model.state_dict(), "model_config": plain(model.config.to_dict(), "model_config"),
           "config": plain(config.to_dict(), "config"), "optimizer": optimizer.state_dict() if optimizer else None,
           "scheduler": scheduler.state_dict() if scheduler else None, "epoch": int(epoch),
           "rng": rng_state(), "history": plain(list(history or []), "history"),
           "metrics": plain(dict(metrics or {}), "metrics")}
    if label_words is not None:
        obj["label_words"] = label_words
    return atomic_save(obj, path)


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Atomically copy checkpoint ``src`` to ``dst`` (e.g. ``last.pt`` to ``best.pt``)."""
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def pick_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint to use from a training run: given its folder or its ``last.pt``, ``best.pt`` beside it when
    present (the epoch with the best ``select_metric``), else ``last.pt``; any other file as given. The one rule
    notebooks 03 and 04 and the pipeline's summary follow."""
    p = Path(path)
    if p.is_dir():
        folder = p
    elif p.name == "last.pt":
        folder = p.parent
    else:
        return p
    best = folder / "best.pt"
    return best if best.is_file() else folder / "last.pt"


def convert_command(path: str | os.PathLike) -> str:
    """The command that rewrites the old-format checkpoint ``path`` in the current format."""
    p = Path(path)
    return f"python -m ciap_lib convert-checkpoint {p} {p.with_name(p.stem + '.v2' + p.suffix)} --trust"


def _refusal_hint(path: Path, unsafe: list[str]) -> str:
    """What to do about a refused file: old CIAP checkpoints ask for numpy globals only; anything else is
    not what ciap_lib writes."""
    if all(g.startswith("numpy.") for g in unsafe):
        why = f"CIAP checkpoints older than {FORMAT} store their RNG state as numpy objects like these."
    else:
        why = "ciap_lib never writes such globals: this file was not written by save_checkpoint, or was altered."
    return f"{why} Only if you wrote this file yourself or trust its source, convert it once: {convert_command(path)}"


def _check_format(ck: Any, p: Path) -> dict[str, Any]:
    if isinstance(ck, dict) and ck.get("format") in OLD_FORMATS:
        raise ValueError(f"checkpoint {str(p)!r} is in the old format {ck['format']!r}; convert it to {FORMAT!r}: "
                         f"{convert_command(p)}")
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(p)!r} is not a CIAP checkpoint (expected format {FORMAT!r})")
    return ck


def _read(p: Path, map_location: Any, trusted: bool = False) -> Any:
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} not found")
    try:
        return safe_load(p, map_location=map_location, trusted=trusted)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(p, e.unsafe_globals, _refusal_hint(p, e.unsafe_globals)) from None
    except Exception as e:  # noqa: BLE001 - junk, truncated archive, a class missing on trusted loads ...
        raise ValueError(f"checkpoint {str(p)!r} is not a readable torch file ({type(e).__name__}: {e})") from e


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a ``ciap-checkpoint/2`` dict with ``weights_only=True``. ``ValueError`` naming the file when it is
    missing, unreadable or not ours; :class:`~ciap_lib.safe_load.UnsafeCheckpointError` (a ``ValueError``)
    naming the globals it asks for, and the conversion command, when the weights-only unpickler refuses it
    (e.g. a ``ciap-checkpoint/1`` file)."""
    p = Path(path)
    return _check_format(_read(p, map_location), p)


def upgrade_checkpoint(ck: dict[str, Any]) -> dict[str, Any]:
    """A ``ciap-checkpoint/1`` (or current) dict in the current format: the same weights, optimizer and
    scheduler states, configs, history and metrics; RNG states as tensors and lists."""
    if ck.get("format") == FORMAT:
        return ck
    rng = ck["rng"]
    new_rng: dict[str, Any] = {"python": _python_rng(rng["python"]), "numpy": _numpy_rng(rng["numpy"]),
                               "torch": rng["torch"]}
    if "cuda" in rng:
        new_rng["cuda"] = list(rng["cuda"])
    return {"format": FORMAT, "model": ck["model"], "model_config": plain(ck["model_config"], "model_config"),
            "config": plain(ck["config"], "config"), "optimizer": ck.get("optimizer"),
            "scheduler": ck.get("scheduler"), "epoch": int(ck["epoch"]), "rng": new_rng,
            "history": plain(list(ck.get("history") or []), "history"),
            "metrics": plain(dict(ck.get("metrics") or {}), "metrics")}


def convert_checkpoint(old: str | os.PathLike, new: str | os.PathLike, trusted: bool = False) -> Path:
    """Rewrite the old-format CIAP checkpoint ``old`` as a ``ciap-checkpoint/2`` file at ``new``.

    Reading ``old`` needs full unpickling, which can run code from the file: ``trusted=True`` is the
    explicit opt-in (logged as a warning); without it nothing is read. The new file is written atomically
    and put in place only after it loaded back with ``weights_only=True``. ``new`` may equal ``old``.
    """
    o, n = Path(old), Path(new)
    if not trusted:
        raise ValueError(f"convert-checkpoint: refusing to read {str(o)!r} without the trusted opt-in "
                         f"(--trust / trusted=True): converting unpickles the old file fully, which can run "
                         f"code from it. Only convert files you wrote yourself or whose source you trust.")
    ck = _read(o, "cpu", trusted=True)
    if not isinstance(ck, dict) or ck.get("format") not in (FORMAT, *OLD_FORMATS):
        raise ValueError(f"checkpoint {str(o)!r} is not a CIAP checkpoint (expected format {FORMAT!r} or "
                         f"{', '.join(map(repr, OLD_FORMATS))})")
    try:
        converted = upgrade_checkpoint(ck)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(o)!r}: cannot convert it ({type(e).__name__}: {e})") from e
    with atomic_path(n) as tmp:
        torch.save(converted, tmp)
        try:  # loads with weights_only=True, or the new file is not put in place
            _check_format(safe_load(tmp), n)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"convert-checkpoint: the converted {str(n)!r} does not load safely ({e}); "
                             f"nothing was written") from e
    return n


def model_from_checkpoint(ck: dict[str, Any], source: str = "checkpoint") -> CIAP:
    """Rebuild the CIAP model stored in a loaded checkpoint dict (strict key match)."""
    model = CIAP(ModelConfig.from_dict(ck["model_config"]), load_pretrained=False)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise ValueError(f"{source}: model weights do not match its model_config: {e}") from e
    return model


def load_ciap(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[CIAP, TrainConfig]:
    """The trained model (in eval mode) and its training config from a checkpoint file."""
    ck = load_checkpoint(path, map_location)
    model = model_from_checkpoint(ck, f"checkpoint {str(path)!r}").to(map_location).eval()
    return model, TrainConfig.from_dict(ck["config"])
