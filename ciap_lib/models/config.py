"""Model configuration: one flat dataclass plus the named configs of ``create_model``."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ciap_lib.constants import SAMPLE_RATE


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`~ciap_lib.models.CIAP` (stored in checkpoints).

    Attributes:
        embed_dim: size of the shared embedding (512 to condition AudioLDM).
        image_backbone: a backbone name (``ciap_lib.models.backbones``): ``resnet18`` (original design),
            ``resnet34``, ``resnet50`` (torchvision), ``tiny_cnn`` (tests), ``small_cnn`` (from scratch), or any
            timm model as ``timm/<name>[.<tag>]`` (e.g. ``timm/vit_base_patch32_clip_224.openai``).
        image_pretrained: ``"none"`` (random init); ``"imagenet"`` (torchvision's weights, torchvision ResNets);
            ``"pretrained"`` (the weights the timm tag names, timm backbones).
        image_weights: optional local weights file (torchvision: the ImageNet state dict ``.pth``; timm: the
            whole model's ``.safetensors``/``.pth`` as timm saves it); when unset the torch hub cache (torchvision,
            timm URLs) or the Hugging Face cache (timm) is used.
        freeze_backbone: keep the backbone fixed (no grads, BatchNorm in eval mode); training then caches its
            features on disk and trains only the head.
        unfreeze_last: with ``freeze_backbone`` false, train only the last N blocks of the backbone (None: all of
            it). Blocks: ``ciap_lib.models.backbones`` (residual blocks, transformer blocks, ...).
        image_size: square input size in pixels; None = the backbone's own (timm's data config; 224 for the
            torchvision ResNets, 32 for ``tiny_cnn``, 64 for ``small_cnn``).
        image_preprocess: the resolved preprocessing (``ciap_lib.images.ImagePreprocess.to_dict()``), filled in
            when the model is built and stored in checkpoints; None = resolve it from the backbone.
        image_weights_digest: sha256 of the backbone weights as built (before training), filled in when the model
            is built; keys the feature cache and is logged to MLflow.
        head: key of ``ciap_lib.models.heads.HEADS``: ``linear`` (Linear + LayerNorm) or ``mlp`` (residual MLP).
        head_depth / head_width: residual blocks and hidden width of the ``mlp`` head.
        audio_encoder: key of ``AUDIO_ENCODERS`` (``mlp``, ``logmel_cnn``, ``logmel_cnn_tc``, ``clap``).
        sample_rate / segment_seconds: the audio window the encoders see (16 kHz, 1 s).
        mlp_hidden: hidden width of the ``mlp`` audio encoder (1024 in the original design).
        n_mels, n_fft, hop_length: log-mel front end of ``logmel_cnn`` / ``logmel_cnn_tc``.
        cnn_width: channel width of the first conv block (doubles per block) for the small CNNs.
        clap_dim: size of precomputed CLAP audio embeddings (``clap`` encoder input).
        init_logit_scale: initial value of the log-space logit scale (log(1/0.07)).
        max_logit_scale: the logit scale is clamped to at most this (in linear space) after each step.
    """

    embed_dim: int = 512
    image_backbone: str = "resnet18"
    image_pretrained: str = "none"
    image_weights: str | None = None
    freeze_backbone: bool = False
    unfreeze_last: int | None = None
    image_size: int | None = None
    image_preprocess: dict | None = None
    image_weights_digest: str | None = None
    head: str = "linear"
    head_depth: int = 2
    head_width: int = 512
    audio_encoder: str = "logmel_cnn"
    sample_rate: int = SAMPLE_RATE
    segment_seconds: float = 1.0
    mlp_hidden: int = 1024
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 160
    cnn_width: int = 32
    clap_dim: int = 512
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0

    @property
    def num_samples(self) -> int:
        """Waveform length T (samples) of one audio segment."""
        return int(round(self.sample_rate * self.segment_seconds))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"ModelConfig: unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**d)


#: Named model configs (kwargs of :class:`ModelConfig`); ``create_model(name, **overrides)``.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # Tiny and fast: shared by tests, smoke runs and benchmarks. Batch-independent (GroupNorm),
    # so distributed training matches a single process exactly.
    "debug": dict(image_backbone="tiny_cnn", image_size=32, audio_encoder="logmel_cnn",
                  n_mels=32, n_fft=512, hop_length=320, cnn_width=8),
    # CPU-sized default for the demo: ResNet18 at 64 px, log-mel CNN audio encoder.
    "default": dict(image_backbone="resnet18", image_size=64, audio_encoder="logmel_cnn",
                    n_mels=64, cnn_width=16),
    # The original design: 224 px, ResNet18 with ImageNet weights, raw-waveform MLP 16000->1024->512.
    "seed": dict(image_backbone="resnet18", image_size=224, image_pretrained="imagenet",
                 audio_encoder="mlp"),
    # Image tower trained against frozen, precomputed CLAP audio embeddings (AudioLDM's space).
    "clap_aligned": dict(image_backbone="resnet18", image_size=64, audio_encoder="clap"),
    # The V2A-Mapper setup: CLIP ViT-B/32's own 512-d image embedding (frozen, cached) -> a trainable residual
    # MLP mapper -> CLAP space (AudioLDM's frozen CLAP audio tower). Preprocessing: CLIP's own (224 px).
    "clip_mapper": dict(image_backbone="timm/vit_base_patch32_clip_224.openai", image_pretrained="pretrained",
                        freeze_backbone=True, head="mlp", audio_encoder="clap"),
}


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """The named config with ``overrides`` applied (``None`` values are ignored)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose from {sorted(MODEL_CONFIGS)}")
    kw = dict(MODEL_CONFIGS[name])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig.from_dict(kw)
