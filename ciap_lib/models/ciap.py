"""The CIAP model: image tower + audio tower + learnable temperature (open_clip style)."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ciap_lib.models.audio import AUDIO_ENCODERS, build_audio_encoder
from ciap_lib.models.config import ModelConfig, get_model_config
from ciap_lib.images import ImagePreprocess
from ciap_lib.models.image import ImageEncoder, check_image_config


class CIAP(nn.Module):
    """Contrastive image-audio model.

    Args:
        config: the model configuration; kept as ``self.config`` with the resolved ``image_preprocess`` and
            ``image_weights_digest`` filled in (so checkpoints store them).
        load_pretrained: load the backbone's pretrained weights (``config.image_pretrained``); False when a
            checkpoint is about to overwrite them.
    """

    def __init__(self, config: ModelConfig, load_pretrained: bool = True):
        super().__init__()
        self.image_encoder = ImageEncoder(config, load_pretrained)
        self.config = replace(config, image_preprocess=self.image_encoder.preprocess.to_dict(),
                              image_weights_digest=self.image_encoder.weights_digest)
        self.audio_encoder = build_audio_encoder(config)
        #: log-space temperature; logits = exp(logit_scale) * cos_sim
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    @property
    def audio_input_kind(self) -> str:
        """``"waveform"`` ((B,T) 16 kHz) or ``"embedding"`` ((B,clap_dim) precomputed)."""
        return self.audio_encoder.input_kind

    @property
    def preprocess(self) -> ImagePreprocess:
        """How images must be prepared for this model (``ciap_lib.images.load_image(path, model.preprocess)``)."""
        return self.image_encoder.preprocess

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) float images prepared as ``self.preprocess`` says -> (B,D) unit-norm."""
        return self.image_encoder(images)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B,T) 16 kHz waveform (or (B,clap_dim) precomputed CLAP embedding) -> (B,D) unit-norm."""
        return self.audio_encoder(audio)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``image_features`` (B,D), ``audio_features`` (B,D), ``logit_scale`` (scalar, linear space)."""
        return {"image_features": self.encode_image(image),
                "audio_features": self.encode_audio(audio),
                "logit_scale": self.logit_scale.exp()}

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp the temperature to at most ``config.max_logit_scale`` (100); call after each step."""
        self.logit_scale.clamp_(max=math.log(self.config.max_logit_scale))

    def summary(self) -> dict[str, Any]:
        """The resolved image side and parameter counts as plain values (MLflow params, notebook 02)."""
        c, enc = self.config, self.image_encoder
        params = list(self.parameters())
        return {"image_backbone": c.image_backbone, "image_pretrained": c.image_pretrained,
                "image_weights": c.image_weights, "image_weights_digest": enc.weights_digest,
                "feature_dim": enc.feature_dim, "freeze_backbone": c.freeze_backbone,
                "unfreeze_last": c.unfreeze_last, "head": c.head, "head_depth": c.head_depth,
                "head_width": c.head_width, "preprocess": enc.preprocess.to_dict(), "audio_encoder": c.audio_encoder,
                "n_params": sum(p.numel() for p in params),
                "n_trainable": sum(p.numel() for p in params if p.requires_grad),
                "n_frozen": sum(p.numel() for p in params if not p.requires_grad)}


class CachedFeatureCIAP(nn.Module):
    """A view of a :class:`CIAP` whose image side starts at cached backbone features: what training runs with a
    frozen backbone. It shares every parameter with ``model`` (the backbone is not called).

    ``forward(features (B,F), audio)`` -> ``{"image_features" (B,D), "audio_features" (B,D), "logit_scale"}``;
    ``encode_image(features (B,F))`` -> (B,D) unit-norm (the head alone).
    """

    def __init__(self, model: CIAP):
        super().__init__()
        if not model.image_encoder.frozen:
            raise ValueError("CachedFeatureCIAP needs a model with freeze_backbone=True (a trainable backbone "
                             "cannot use cached features)")
        self.model = model

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        """(B,F) cached backbone features -> (B,D) unit-norm."""
        return self.model.image_encoder.head(features)

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model.encode_audio(audio)

    def forward(self, features: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_features": self.encode_image(features), "audio_features": self.encode_audio(audio),
                "logit_scale": self.model.logit_scale.exp()}

    def clamp_logit_scale(self) -> None:
        self.model.clamp_logit_scale()


def create_model(name: str = "default", load_pretrained: bool = True, **overrides: Any) -> CIAP:
    """Build a :class:`CIAP` from a named config of ``MODEL_CONFIGS`` with keyword overrides
    (``None`` values mean "keep the named config's value")."""
    return CIAP(get_model_config(name, **overrides), load_pretrained=load_pretrained)


def check_model_config(config: ModelConfig, check_weights: bool = False) -> list[str]:
    """Problems with ``config`` (empty when it builds), each naming the key, the rejected value and what is
    allowed. ``check_weights``: pretrained weights must be on disk. Nothing is built or loaded."""
    problems = check_image_config(config, check_weights)
    if config.audio_encoder not in AUDIO_ENCODERS:
        problems.append(f"audio_encoder: {config.audio_encoder!r} is not one of {sorted(AUDIO_ENCODERS)}")
    elif config.audio_encoder == "clap" and config.embed_dim != config.clap_dim:
        problems.append(f"embed_dim: audio_encoder 'clap' needs embed_dim == clap_dim ({config.clap_dim}), "
                        f"got {config.embed_dim}")
    if config.embed_dim < 1:
        problems.append(f"embed_dim: must be positive, got {config.embed_dim}")
    return problems
