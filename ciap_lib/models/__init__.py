"""CIAP models: ``create_model(name, **overrides)`` over the named ``MODEL_CONFIGS``."""
from ciap_lib.models.audio import (AUDIO_ENCODERS, LogMelCNNAudioEncoder, MLPAudioEncoder,
                                   PrecomputedEmbeddingEncoder, build_audio_encoder, register_audio_encoder)
from ciap_lib.models.ciap import CIAP, check_model_config, create_model
from ciap_lib.models.config import MODEL_CONFIGS, ModelConfig, get_model_config
from ciap_lib.models.image import (IMAGE_BACKBONES, ImageEncoder, ImageWeightsNotFoundError, TinyCNN,
                                   imagenet_weights_file, load_imagenet_state_dict)

__all__ = ["AUDIO_ENCODERS", "CIAP", "IMAGE_BACKBONES", "ImageEncoder", "ImageWeightsNotFoundError", "LogMelCNNAudioEncoder",
           "MLPAudioEncoder", "MODEL_CONFIGS", "ModelConfig", "PrecomputedEmbeddingEncoder", "TinyCNN",
           "build_audio_encoder", "check_model_config", "create_model", "get_model_config", "imagenet_weights_file",
           "load_imagenet_state_dict", "register_audio_encoder"]
