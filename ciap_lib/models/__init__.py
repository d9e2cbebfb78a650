"""CIAP models: ``create_model(name, **overrides)`` over the named ``MODEL_CONFIGS``; image backbones and heads
are registries (``ciap_lib.models.backbones.BACKBONES``, ``ciap_lib.models.heads.HEADS``)."""
from ciap_lib.models.audio import (AUDIO_ENCODERS, LogMelCNNAudioEncoder, MLPAudioEncoder,
                                   PrecomputedEmbeddingEncoder, build_audio_encoder, register_audio_encoder)
from ciap_lib.models.ciap import CIAP, CachedFeatureCIAP, check_model_config, create_model
from ciap_lib.models.config import MODEL_CONFIGS, ModelConfig, get_model_config
from ciap_lib.models.heads import HEADS, create_head
from ciap_lib.models.image import (BACKBONES, IMAGE_BACKBONES, ImageEncoder, ImageWeightsNotFoundError, TinyCNN,
                                   build_backbone, check_image_config, imagenet_weights_file,
                                   load_imagenet_state_dict)
from ciap_lib.models.backbones import register_backbone, weights_digest

__all__ = ["AUDIO_ENCODERS", "BACKBONES", "CIAP", "CachedFeatureCIAP", "HEADS", "IMAGE_BACKBONES", "ImageEncoder",
           "ImageWeightsNotFoundError", "LogMelCNNAudioEncoder", "MLPAudioEncoder", "MODEL_CONFIGS", "ModelConfig",
           "PrecomputedEmbeddingEncoder", "TinyCNN", "build_audio_encoder", "build_backbone", "check_image_config",
           "check_model_config", "create_head", "create_model", "get_model_config", "imagenet_weights_file",
           "load_imagenet_state_dict", "register_audio_encoder", "register_backbone", "weights_digest"]
