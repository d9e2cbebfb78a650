"""Bridge to the frozen AudioLDM: the only layer importing ``audioldm`` and ``diffusers``."""
from ciap_lib.bridge.loading import (
    DEFAULT_MODEL, MODEL_NAMES, AudioLDMCheckpointError, AudioLDMNotFoundError, FrozenAudioLDM, load_audioldm,
)
from ciap_lib.bridge.tiny import build_tiny_audioldm_checkpoint

__all__ = [
    "DEFAULT_MODEL", "MODEL_NAMES", "AudioLDMCheckpointError", "AudioLDMNotFoundError", "FrozenAudioLDM",
    "load_audioldm", "build_tiny_audioldm_checkpoint",
]
