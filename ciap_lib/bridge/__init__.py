"""Bridge to the frozen AudioLDM: the only layer importing ``audioldm`` and ``diffusers``, and the home of the
generation metrics (CLAP-space ``clap_score``/``clap_fd`` in ``metrics``; the standard ``fad_vggish``,
``fd_panns``, ``kl_panns``, ``is_panns`` in ``audio_metrics``).

Importing this package is cheap; ``audioldm``/``diffusers`` are imported when a model is built or sampled.
"""
from ciap_lib.bridge.audio_metrics import STANDARD_METRICS, standard_metrics
from ciap_lib.bridge.clap import clap_audio_features
from ciap_lib.bridge.clap_text import TokenizerNotFoundError, clap_text_embedding
from ciap_lib.bridge.condition import CIAPCondStage
from ciap_lib.bridge.devices import generation_device
from ciap_lib.bridge.generate import check_inputs, generate, write_wavs
from ciap_lib.bridge.architecture import AudioLDMCheckpointError
from ciap_lib.bridge.checkpoint_io import DEFAULT_MODEL, MODEL_NAMES, AudioLDMNotFoundError
from ciap_lib.bridge.frozen import FrozenAudioLDM
from ciap_lib.bridge.loading import load_audioldm
from ciap_lib.bridge.guidance import MixTerm, parse_mix
from ciap_lib.bridge.metric_weights import MetricWeightsError
from ciap_lib.bridge.metrics import clap_frechet_distance, clap_score
from ciap_lib.bridge.params import PRECISIONS, GenerationParams
from ciap_lib.bridge.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
from ciap_lib.bridge.tiny import build_tiny_audioldm_checkpoint
from ciap_lib.bridge.training import train_clap_aligned

__all__ = [
    "DEFAULT_MODEL", "MODEL_NAMES", "AudioLDMCheckpointError", "AudioLDMNotFoundError", "FrozenAudioLDM",
    "load_audioldm", "build_tiny_audioldm_checkpoint", "CIAPCondStage", "generate", "check_inputs", "write_wavs",
    "clap_audio_features", "clap_score", "clap_frechet_distance", "train_clap_aligned",
    "standard_metrics", "STANDARD_METRICS", "MetricWeightsError",
    "DEFAULT_SAMPLER", "DEFAULT_STEPS", "SAMPLERS", "GenerationParams", "PRECISIONS",
    "clap_text_embedding", "TokenizerNotFoundError", "MixTerm", "parse_mix", "generation_device",
]
