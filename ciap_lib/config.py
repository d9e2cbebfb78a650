"""Training configuration: one flat dataclass of plain values (nanoGPT style), logged whole.

``load_config(path, overrides)`` reads YAML and applies ``key=value`` strings; an unknown key
or a value of the wrong type is a ``ValueError`` naming the key.
"""
from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

#: TrainConfig fields that override the named model config when not None.
MODEL_OVERRIDE_KEYS = ("embed_dim", "image_size", "image_backbone", "image_pretrained", "image_weights",
                       "freeze_backbone", "audio_encoder")


@dataclass
class TrainConfig:
    """Everything one training run needs. Model overrides set to None take the named model config's value."""

    # data
    data: str = "data/synthetic"          # dataset root holding <split>/ folders
    train_split: str = "train"
    val_split: str = "val"
    skip_bad: bool = False                # skip (and report) unreadable / unpaired files instead of failing
    num_workers: int = 2
    # model: a named config of ciap_lib.models.MODEL_CONFIGS plus overrides
    model: str = "default"
    embed_dim: int | None = None
    image_size: int | None = None
    image_backbone: str | None = None
    image_pretrained: str | None = None   # 'none' | 'imagenet'
    image_weights: str | None = None      # local .pth with the backbone's ImageNet weights
    freeze_backbone: bool | None = None
    audio_encoder: str | None = None      # 'mlp' | 'logmel_cnn' | 'clap'
    # optimisation (original design: batch 32, Adam, lr 1e-3, StepLR every 10 epochs)
    loss: str = "infonce"                 # 'infonce' | 'cosine'
    batch_size: int = 32                  # global batch (split across ranks in distributed runs)
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"               # 'adam' | 'adamw'
    lr_step_size: int = 10
    lr_gamma: float = 0.1
    grad_clip: float | None = None
    seed: int = 0
    device: str = "cpu"                   # 'cpu' | 'cuda' | 'cuda:N' | 'auto'
    # checkpoints and evaluation
    ckpt_dir: str = "ckpt"
    run_name: str = "ciap"                # checkpoints go to <ckpt_dir>/<run_name>/
    resume: bool = False                  # continue from <ckpt_dir>/<run_name>/last.pt when present
    eval_batch_size: int = 128
    eval_chunk_size: int = 4096
    # bridge ('clap' audio encoder)
    audioldm: str = "audioldm-s-full"     # AudioLDM checkpoint name or path
    clap_cache_dir: str = "data/cache/clap"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping, type-checking every value (``ValueError`` names the key)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"config must be a mapping of key: value, got {type(d).__name__}")
        hints = _hints()
        kw = {}
        for key, value in d.items():
            if key not in hints:
                raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(sorted(hints))}")
            kw[key] = _check_type(key, value, hints[key])
        return cls(**kw)

    def model_overrides(self) -> dict[str, Any]:
        """The non-None model overrides, as kwargs for ``create_model``."""
        return {k: getattr(self, k) for k in MODEL_OVERRIDE_KEYS if getattr(self, k) is not None}

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.ckpt_dir) / self.run_name


def _hints() -> dict[str, Any]:
    h = typing.get_type_hints(TrainConfig)
    return {f.name: h[f.name] for f in fields(TrainConfig)}


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return "null" if tp is type(None) else tp.__name__


def _check_type(key: str, value: Any, tp: Any) -> Any:
    allowed = typing.get_args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union \
        else (tp,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    raise ValueError(f"config key {key!r} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def parse_override(item: str) -> tuple[str, Any]:
    """``"key=value"`` -> (key, typed value). Values are parsed as YAML scalars, except that
    string keys keep the raw text (so ``run_name=123`` stays a string)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    hints = _hints()
    if key not in hints:
        raise ValueError(f"unknown config key {key!r} in override {item!r}; known keys: {', '.join(sorted(hints))}")
    tp = hints[key]
    allowed = typing.get_args(tp) or (tp,)
    if raw.strip().lower() in ("null", "none", "~") and type(None) in allowed:
        return key, None
    if str in allowed:
        return key, raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"config key {key!r}: cannot parse value {raw!r} ({e})") from e
    return key, _check_type(key, value, tp)


def train_section(loaded: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig keys of a loaded YAML mapping: the mapping itself (a plain training config), or,
    for an experiment file of the notebook pipeline (``experiments/*.yaml``), its ``train:`` section
    with ``data.root`` as the dataset, so ``train --config experiments/default.yaml`` trains the same
    model as the pipeline does."""
    if not isinstance(loaded.get("train"), dict):
        return loaded
    section = dict(loaded["train"])
    data = loaded.get("data")
    if isinstance(data, dict) and "root" in data:
        section.setdefault("data", data["root"])
    return section


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), **kw: Any) -> TrainConfig:
    """TrainConfig from a YAML file (or defaults when ``path`` is None), then ``overrides``
    (``"key=value"`` strings), then keyword arguments, in that order."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file {str(p)!r} not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {str(p)!r} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {str(p)!r} must hold a mapping of key: value")
        loaded = train_section(loaded)
        try:
            TrainConfig.from_dict(loaded)
        except ValueError as e:
            raise ValueError(f"config file {str(p)!r}: {e}") from e
        d.update(loaded)
    for item in overrides:
        key, value = parse_override(item)
        d[key] = value
    d.update(kw)
    return TrainConfig.from_dict(d)


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (readable back by ``load_config``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return p
