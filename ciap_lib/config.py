"""Training configuration: one flat dataclass of plain values (nanoGPT style), logged whole.

``load_config(path, overrides)`` reads YAML and applies ``key=value`` strings; an unknown key or a value of the
wrong type is a ``ValueError`` naming the key. :meth:`TrainConfig.check` validates the values themselves
(positive counts, names found in the registries ``MODEL_CONFIGS``, ``LOSSES``, ``OPTIMIZERS``, ``SCHEDULERS``,
optionally the data folder and pretrained weights on disk) before anything heavy starts.

:func:`parse_value` is the one parser of command-line values (``train --set``, ``run -p`` and the flags): it is
driven by the type the key expects, so ``run_name=007`` stays the string ``"007"`` and ``lr=1e-3`` is a float.
"""
from __future__ import annotations

import re
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

#: TrainConfig fields that override the named model config when not None.
MODEL_OVERRIDE_KEYS = ("embed_dim", "image_size", "image_backbone", "image_pretrained", "image_weights",
                       "freeze_backbone", "unfreeze_last", "head", "head_depth", "head_width", "audio_encoder")
#: TrainConfig keys that turn on per-epoch image augmentation, which cached backbone features (freeze_backbone)
#: cannot follow
IMAGE_AUGMENT_KEYS = ("augment_image",)


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
    image_size: int | None = None         # square input px; the backbone's own when the model config leaves it unset
    image_backbone: str | None = None     # 'resnet18' | 'resnet34' | 'resnet50' | 'tiny_cnn' | 'small_cnn' | 'timm/<name>[.<tag>]'
    image_pretrained: str | None = None   # 'none' | 'imagenet' (torchvision) | 'pretrained' (timm: the tag's weights)
    image_weights: str | None = None      # local weights file (torchvision .pth; timm whole-model .safetensors/.pth)
    freeze_backbone: bool | None = None   # backbone fixed; its features are cached on disk, only the head trains
    unfreeze_last: int | None = None      # freeze_backbone false: train only the backbone's last N blocks
    head: str | None = None               # a key of ciap_lib.models.heads.HEADS: 'linear' | 'mlp'
    head_depth: int | None = None         # 'mlp' head: residual blocks
    head_width: int | None = None         # 'mlp' head: hidden width
    audio_encoder: str | None = None      # 'mlp' | 'logmel_cnn' | 'logmel_cnn_tc' | 'clap'
    # frozen-backbone feature cache (ciap_lib.features; filled ahead by `python -m ciap_lib cache-features`)
    feature_cache_dir: str = "data/cache/image_features"
    feature_precision: str = "fp32"       # 'fp32' | 'bf16' (autocast) | 'auto' (the faster here) for cached backbone features
    # optimisation (original design: batch 32, Adam, lr 1e-3, StepLR every 10 epochs)
    loss: str = "infonce"                 # a key of ciap_lib.losses.LOSSES: 'infonce' | 'infonce_labels' (same-class
                                          #   pairs in a batch are positives, -1 = unlabelled) | 'cosine'
                                          #   | 'infonce+cosine'
    cosine_weight: float = 1.0            # 'infonce+cosine': weight of the cosine regression term
    intra_weight: float = 0.0             # 'infonce_labels': weight of SupCon within each modality (0 = off)
    word_weight: float = 0.0              # weight of the label-word loss on the image backbone's features (needs
                                          #   labels; ciap_lib.label_words): a linear classifier of label words
    backbone_loss: str = "all"            # what trains the image backbone: 'all' (every loss) | 'words' (the
                                          #   label-word loss alone; the contrastive loss trains the head on its
                                          #   features with their gradient stopped)
    batch_size: int = 32                  # global batch (split across ranks in distributed runs)
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"               # a key of ciap_lib.optim.OPTIMIZERS: 'adam' | 'adamw'
    lr_schedule: str = "step"             # a key of ciap_lib.optim.SCHEDULERS: 'step' | 'cosine' | 'constant'
    lr_step_size: int = 10                # 'step': epochs between lr drops
    lr_gamma: float = 0.1                 # 'step': lr factor per drop
    warmup_epochs: int = 0                # 'cosine': linear warmup epochs before the decay
    grad_clip: float | None = None
    # augmentation of the training split (ciap_lib.augment; validation never; seeded per seed, epoch and item).
    # Parts are comma-separated names, "" = off (the default): augment_audio=gain,noise
    augment_audio: str = ""               # 'gain', 'shift', 'noise' (white/pink), 'speed', 'tilt', 'reverb' (wave);
                                          # 'specaugment' (log-mel masks, logmel_cnn(_tc) only). Not with audio_encoder clap
    augment_image: str = ""               # 'crop' (RandomResizedCrop), 'affine' (small), 'jitter' (colour).
                                          # Not with freeze_backbone (cached features)
    gain_db: float = 6.0                  # 'gain': uniform in [-gain_db, gain_db] dB
    noise_snr_db_min: float = 10.0        # 'noise': SNR uniform in [noise_snr_db_min, noise_snr_db_max] dB
    noise_snr_db_max: float = 40.0
    speed_perturb: float = 0.1            # 'speed': speed factor uniform in [1 - x, 1 + x] (0.01 steps), x <= 0.5
    tilt_max: float = 0.8                 # 'tilt': spectral tilt y[n] = x[n] - a x[n-1], a uniform in [-x, x], x < 1
    reverb_rt60_max: float = 0.5          # 'reverb': decay time RT60 uniform in [0.05, x] s, 0.05 <= x <= 5
    specaug_freq_mask: int = 8            # 'specaugment': one frequency mask of up to N mel bins per clip
    specaug_time_mask: int = 20           # 'specaugment': one time mask of up to N frames per clip
    crop_scale_min: float = 0.5           # 'crop': area scale of the crop in [crop_scale_min, 1]
    affine_degrees: float = 10.0          # 'affine': rotation uniform in [-x, x] degrees
    affine_scale: float = 0.1             # 'affine': scale factor uniform in [1 - x, 1 + x]
    seed: int = 0
    device: str = "cpu"                   # 'cpu' | 'cuda' | 'cuda:N' | 'auto'
    # checkpoints and evaluation
    ckpt_dir: str = "ckpt"
    run_name: str = "ciap"                # checkpoints go to <ckpt_dir>/<run_name>/
    resume: bool = False                  # continue from <ckpt_dir>/<run_name>/last.pt when present
    eval_batch_size: int = 128
    eval_chunk_size: int = 4096
    select_metric: str | None = None      # validation metric picking <ckpt_dir>/<run_name>/best.pt: 'val_loss',
                                          #   'i2a_R@1', 'a2i_median_rank', ... (loss/rank: lower is better);
                                          #   None = 'i2a_class_R@1' when the val split has labels, else 'i2a_R@1'
    patience: int | None = None           # early stopping: stop after this many epochs without a better select_metric
    # bridge ('clap' audio encoder)
    audioldm: str = "audioldm-s-full"     # AudioLDM checkpoint name or path
    clap_cache_dir: str = "data/cache/clap"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "") -> "TrainConfig":
        """Build from a mapping, type-checking every value (``ValueError`` names the key, as ``prefix`` + key
        when a prefix such as ``"train."`` is given)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"config must be a mapping of key: value, got {type(d).__name__}")
        hints = _hints()
        kw = {}
        for key, value in d.items():
            if key not in hints:
                what = f"unknown parameter {prefix}{key}" if prefix else f"unknown config key {key!r}"
                raise ValueError(f"{what}; known keys: {', '.join(sorted(hints))}")
            kw[key] = check_type(_key(prefix, key), value, hints[key])
        return cls(**kw)

    def check(self, prefix: str = "", check_paths: bool = False, check_weights: bool | None = None) -> "TrainConfig":
        """Validate the values (the types were checked when it was built); returns ``self``.

        Raises one ``ValueError`` listing every problem, each naming the key (``prefix`` + key, e.g.
        ``train.epochs``), the rejected value and what is allowed. ``check_paths``: the data folder and its
        split folders must exist; ``check_weights`` (default: ``check_paths``): pretrained weights asked for must
        be on disk. Nothing is loaded or built.
        """
        problems = _value_problems(self, check_paths, check_paths if check_weights is None else check_weights)
        if problems:
            lines = [f"{_key(prefix, key)}: {msg}" for key, msg in problems]
            raise ValueError("\n".join(lines) if len(lines) > 1 else lines[0])
        return self

    @staticmethod
    def hints() -> dict[str, Any]:
        """``{key: type}`` of every field (what :func:`parse_value` parses command-line values as)."""
        return _hints()

    def model_overrides(self) -> dict[str, Any]:
        """The non-None model overrides, as kwargs for ``create_model``."""
        return {k: getattr(self, k) for k in MODEL_OVERRIDE_KEYS if getattr(self, k) is not None}

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.ckpt_dir) / self.run_name


#: ``backbone_loss`` values: what trains the image backbone
BACKBONE_LOSSES = ("all", "words")
#: keys that must be > 0, and keys that must be >= 0
_POSITIVE = ("batch_size", "epochs", "lr_step_size", "eval_batch_size", "eval_chunk_size")
_NON_NEGATIVE = ("num_workers", "warmup_epochs", "weight_decay", "cosine_weight", "intra_weight", "word_weight",
                 "gain_db", "specaug_freq_mask", "specaug_time_mask")
_RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")
#: what a ``device`` setting may say (training and generation): cpu, cuda, cuda:N or auto
DEVICE_PATTERN = re.compile(r"cpu|auto|cuda(:\d+)?")
DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"


def _key(prefix: str, key: str) -> str:
    return f"{prefix}{key}" if prefix else f"config key {key!r}"


def _value_problems(cfg: "TrainConfig", check_paths: bool, check_weights: bool) -> list[tuple[str, str]]:
    """``[(key, problem), ...]`` for :meth:`TrainConfig.check`."""
    from ciap_lib.augment import AUDIO_PARTS, IMAGE_PARTS, REVERB_RT60_MIN, parse_parts
    from ciap_lib.features import PRECISIONS
    from ciap_lib.losses import LOSSES
    from ciap_lib.models import AUDIO_ENCODERS, MODEL_CONFIGS, check_model_config, get_model_config
    from ciap_lib.optim import OPTIMIZERS, SCHEDULERS
    from ciap_lib.selection import selectable_metrics

    out: list[tuple[str, str]] = []
    for key in _POSITIVE:
        if getattr(cfg, key) <= 0:
            out.append((key, f"must be a positive integer, got {getattr(cfg, key)!r}"))
    for key in _NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            out.append((key, f"must be >= 0, got {getattr(cfg, key)!r}"))
    if not cfg.lr > 0 or cfg.lr != cfg.lr:
        out.append(("lr", f"must be a positive number, got {cfg.lr!r}"))
    if not 0 < cfg.lr_gamma <= 1:
        out.append(("lr_gamma", f"must be in (0, 1], got {cfg.lr_gamma!r}"))
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        out.append(("grad_clip", f"must be a positive number or null, got {cfg.grad_clip!r}"))
    parts: dict[str, list[str]] = {}
    for key, allowed in (("augment_audio", AUDIO_PARTS), ("augment_image", IMAGE_PARTS)):
        try:
            parts[key] = parse_parts(getattr(cfg, key), allowed, key)
        except ValueError as e:
            parts[key] = []
            out.append((key, str(e).partition(": ")[2]))
    if not cfg.noise_snr_db_min <= cfg.noise_snr_db_max:
        out.append(("noise_snr_db_min", f"must be <= noise_snr_db_max ({cfg.noise_snr_db_max}), "
                                        f"got {cfg.noise_snr_db_min!r}"))
    if not 0 <= cfg.speed_perturb <= 0.5:
        out.append(("speed_perturb", f"must be in [0, 0.5] (speed factors 1 - x .. 1 + x), got {cfg.speed_perturb!r}"))
    if not 0 <= cfg.tilt_max < 1:
        out.append(("tilt_max", f"must be in [0, 1), got {cfg.tilt_max!r}"))
    if not REVERB_RT60_MIN <= cfg.reverb_rt60_max <= 5:
        out.append(("reverb_rt60_max", f"must be in [{REVERB_RT60_MIN}, 5] s, got {cfg.reverb_rt60_max!r}"))
    if not 0 < cfg.crop_scale_min <= 1:
        out.append(("crop_scale_min", f"must be in (0, 1], got {cfg.crop_scale_min!r}"))
    if not 0 <= cfg.affine_degrees <= 180:
        out.append(("affine_degrees", f"must be in [0, 180], got {cfg.affine_degrees!r}"))
    if not 0 <= cfg.affine_scale < 1:
        out.append(("affine_scale", f"must be in [0, 1), got {cfg.affine_scale!r}"))
    if cfg.warmup_epochs >= cfg.epochs > 0 and cfg.lr_schedule == "cosine":
        out.append(("warmup_epochs", f"must be fewer than epochs ({cfg.epochs}), got {cfg.warmup_epochs}"))
    for key, registry, what in (("loss", LOSSES, "a loss"), ("optimizer", OPTIMIZERS, "an optimizer"),
                                ("lr_schedule", SCHEDULERS, "a learning-rate schedule")):
        if getattr(cfg, key) not in registry:
            out.append((key, f"{getattr(cfg, key)!r} is not {what}; choose from {sorted(registry)}"))
    if cfg.backbone_loss not in BACKBONE_LOSSES:
        out.append(("backbone_loss", f"{cfg.backbone_loss!r} is not one of {list(BACKBONE_LOSSES)}"))
    elif cfg.backbone_loss == "words" and not cfg.word_weight > 0:
        out.append(("backbone_loss", "'words' trains the image backbone with the label-word loss alone; set "
                                     f"word_weight > 0 (got {cfg.word_weight!r}) or backbone_loss 'all'"))
    if cfg.feature_precision not in PRECISIONS:
        out.append(("feature_precision", f"{cfg.feature_precision!r} is not one of {list(PRECISIONS)}"))
    if cfg.select_metric is not None and cfg.select_metric not in selectable_metrics():
        out.append(("select_metric", f"{cfg.select_metric!r} is not a validation metric; choose from "
                                     f"{selectable_metrics()} or null (the default)"))
    if cfg.patience is not None and cfg.patience < 1:
        out.append(("patience", f"must be a positive integer or null (no early stopping), got {cfg.patience!r}"))
    if not DEVICE_PATTERN.fullmatch(cfg.device):
        out.append(("device", f"{cfg.device!r} is not a device; use {DEVICE_CHOICES}"))
    if not _RUN_NAME.fullmatch(cfg.run_name):
        out.append(("run_name", f"{cfg.run_name!r} may only hold letters, digits, '.', '_' and '-'"))
    if cfg.model not in MODEL_CONFIGS:
        out.append(("model", f"{cfg.model!r} is not a model config; choose from {sorted(MODEL_CONFIGS)}"))
    else:
        mc = get_model_config(cfg.model, **cfg.model_overrides())
        for problem in check_model_config(mc, check_weights=check_weights):
            key, _, msg = problem.partition(": ")
            out.append((key, msg))
        if cfg.loss in ("cosine", "infonce+cosine") and mc.audio_encoder != "clap":
            out.append(("loss", f"{cfg.loss!r} regresses onto a frozen audio tower; use it with audio_encoder 'clap' "
                                f"(this model's audio encoder is {mc.audio_encoder!r})"))
        if mc.freeze_backbone and cfg.word_weight > 0:
            out.append(("word_weight", "the label-word loss trains the image backbone, and freeze_backbone=true "
                                       "keeps it fixed; set word_weight 0 or freeze_backbone false"))
        augment = [k for k in IMAGE_AUGMENT_KEYS if parts[k]]
        if mc.freeze_backbone and augment:
            out.append((augment[0], "per-epoch image augmentation cannot work with freeze_backbone=true: a frozen "
                                    "backbone's features are computed once per image and cached; turn the "
                                    "augmentation off, or set freeze_backbone=false (optionally unfreeze_last=N)"))
        if mc.audio_encoder == "clap" and parts["augment_audio"]:
            out.append(("augment_audio", f"audio augmentation ({cfg.augment_audio!r}) cannot work with audio_encoder "
                                         "'clap': it trains on CLAP features computed once per clip and cached; "
                                         "turn the augmentation off, or use audio_encoder 'logmel_cnn' or 'mlp'"))
        elif "specaugment" in parts["augment_audio"] and not hasattr(AUDIO_ENCODERS.get(mc.audio_encoder), "log_mel"):
            out.append(("augment_audio", f"'specaugment' masks a log-mel input; audio_encoder {mc.audio_encoder!r} "
                                         "has none (use audio_encoder 'logmel_cnn' or 'logmel_cnn_tc', or drop "
                                         "'specaugment')"))
    if check_paths:
        root = Path(cfg.data)
        if not root.is_dir() and root != Path(TrainConfig.data):  # the embedded set is built on first use
            out.append(("data", f"folder {cfg.data!r} does not exist"))
        elif root.is_dir():
            for key in ("train_split", "val_split"):
                if not (root / getattr(cfg, key)).is_dir():
                    out.append((key, f"split folder {str(root / getattr(cfg, key))!r} does not exist"))
    return out


def _hints() -> dict[str, Any]:
    h = typing.get_type_hints(TrainConfig)
    return {f.name: h[f.name] for f in fields(TrainConfig)}


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def check_type(name: str, value: Any, tp: Any) -> Any:
    """``value`` as the type ``tp`` expects (``bool``, ``int``, ``float`` (ints pass), ``str``, ``list``, ``Any``, or
    a union with ``None``), or a ``ValueError`` saying that ``name`` expects that type."""
    for t in _allowed(tp):
        if t is Any or (t is type(None) and value is None):
            return value
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
        if (t is list or typing.get_origin(t) is list) and isinstance(value, (list, tuple)):
            return list(value)
    raise ValueError(f"{name} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _allowed(tp: Any) -> tuple[Any, ...]:
    """The members of a union type (``int | None`` -> ``(int, NoneType)``), else ``(tp,)``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return typing.get_args(tp)
    return (tp,)


def parse_value(text: str, tp: Any = Any, name: str = "value") -> Any:
    """A command-line value parsed as the type ``tp`` expects (``int``, ``float``, ``str``, ``bool``, ``list``,
    a union with ``None``, or ``Any``); ``ValueError`` naming ``name`` when it is not one.

    ``null`` / ``none`` / ``~`` give None where None is allowed; a ``str`` key keeps the text as typed
    (``007`` stays ``"007"``); numbers accept ``1e-3``; booleans ``true``/``false``/``yes``/``no``/``1``/``0``;
    lists a YAML list (``[a, b]``) or one item. ``Any``: a YAML scalar or list, ``1e-3`` as a float.
    """
    raw = text.strip()
    allowed = _allowed(tp)
    if raw.lower() in ("null", "none", "~") and (type(None) in allowed or tp is Any):
        return None
    concrete = [t for t in allowed if t is not type(None)]
    if str in concrete:
        return text
    for t in concrete:
        try:
            if t is bool:
                low = raw.lower()
                if low in ("true", "yes", "on", "1"):
                    return True
                if low in ("false", "no", "off", "0"):
                    return False
            elif t is int:
                v = yaml.safe_load(raw)
                if isinstance(v, int) and not isinstance(v, bool):
                    return v
            elif t is float:
                return float(raw)
            elif t is list or typing.get_origin(t) is list:
                v = yaml.safe_load(raw) if raw else []
                return list(v) if isinstance(v, (list, tuple)) else [v]
            elif t is Any:
                return _yaml_scalar(raw)
        except (ValueError, yaml.YAMLError):
            continue
    raise ValueError(f"{name}: expects {_type_name(tp)}, got {text!r}")


def _yaml_scalar(raw: str) -> Any:
    try:
        v = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse {raw!r} ({e})") from e
    if isinstance(v, str):
        try:
            return float(v)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            pass
    return v


def parse_override(item: str) -> tuple[str, Any]:
    """``"key=value"`` for a TrainConfig key -> (key, typed value) (:func:`parse_value` with the key's type)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    hints = _hints()
    if key not in hints:
        raise ValueError(f"unknown config key {key!r} in override {item!r}; known keys: {', '.join(sorted(hints))}")
    return key, parse_value(raw, hints[key], f"config key {key!r}")


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
