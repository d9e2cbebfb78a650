"""Audio towers, selected by name through the ``AUDIO_ENCODERS`` registry.

Every encoder is built as ``cls(config: ModelConfig)`` and maps its input to (B, embed_dim)
unit-norm embeddings. ``input_kind`` tells the data pipeline what to feed: ``"waveform"``
(B,T) 16 kHz mono, or ``"embedding"`` (B,clap_dim) precomputed features.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from ciap_lib.models.config import ModelConfig

AUDIO_ENCODERS: dict[str, type[nn.Module]] = {}
_T = TypeVar("_T", bound=type)


def register_audio_encoder(name: str) -> Callable[[_T], _T]:
    """Class decorator adding an audio encoder to ``AUDIO_ENCODERS`` under ``name`` (kept as ``cls.registry_name``)."""

    def deco(cls: _T) -> _T:
        if name in AUDIO_ENCODERS and AUDIO_ENCODERS[name] is not cls:
            raise ValueError(f"audio encoder {name!r} is already registered ({AUDIO_ENCODERS[name].__name__})")
        AUDIO_ENCODERS[name] = cls
        cls.registry_name = name         # the name errors give (a subclass registers its own)
        return cls

    return deco


def build_audio_encoder(config: ModelConfig) -> nn.Module:
    if config.audio_encoder not in AUDIO_ENCODERS:
        raise ValueError(f"unknown audio_encoder {config.audio_encoder!r}; choose from {sorted(AUDIO_ENCODERS)}")
    return AUDIO_ENCODERS[config.audio_encoder](config)


def _check_waveform(audio: torch.Tensor, num_samples: int, name: str) -> None:
    if audio.ndim != 2 or audio.shape[1] != num_samples:
        raise ValueError(f"audio encoder {name!r} expects (B,{num_samples}) 16 kHz waveforms, "
                         f"got shape {tuple(audio.shape)}")


@register_audio_encoder("mlp")
class MLPAudioEncoder(nn.Module):
    """The original design: raw 1 s waveform (B,16000) -> Linear 1024 -> ReLU -> Linear 512 -> L2."""

    input_kind = "waveform"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_samples = config.num_samples
        self.net = nn.Sequential(nn.Linear(self.num_samples, config.mlp_hidden), nn.ReLU(inplace=True),
                                 nn.Linear(config.mlp_hidden, config.embed_dim))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        _check_waveform(audio, self.num_samples, self.registry_name)
        return F.normalize(self.net(audio), dim=-1)


@register_audio_encoder("logmel_cnn")
class LogMelCNNAudioEncoder(nn.Module):
    """(B,T) waveform -> log-mel (B,1,n_mels,frames) -> ``spec_augment`` -> 4 conv blocks (GroupNorm, each halving
    frequency and time: ``POOLS``) -> mean+max pool -> Linear -> LayerNorm -> L2 (B,D).

    ``spec_augment`` is the front end's augmentation slot: ``nn.Identity`` unless training puts a
    :class:`ciap_lib.augment.SpecAugment` there (``set_spec_augment``; it masks in training mode only).
    """

    input_kind = "waveform"
    #: (frequency, time) max-pooling after each conv block
    POOLS: tuple[tuple[int, int], ...] = ((2, 2),) * 4

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_samples = config.num_samples
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=config.sample_rate, n_fft=config.n_fft,
                                                        hop_length=config.hop_length, n_mels=config.n_mels)
        self.spec_augment: nn.Module = nn.Identity()
        w = config.cnn_width
        chans = [1, w, 2 * w, 4 * w, 8 * w]
        layers: list[nn.Module] = []
        for cin, cout, pool in zip(chans[:-1], chans[1:], self.POOLS, strict=True):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout // 2), cout),
                       nn.ReLU(inplace=True), nn.MaxPool2d(pool, ceil_mode=True)]
        self.cnn = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * chans[-1], config.embed_dim)
        self.norm = nn.LayerNorm(config.embed_dim)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B,T) -> (B,1,n_mels,frames), per-clip standardised log power."""
        x = torch.log(self.mel(audio) + 1e-6).unsqueeze(1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True)
        return (x - mean) / (std + 1e-5)

    def frame_features(self, mel: torch.Tensor) -> torch.Tensor:
        """(B,1,n_mels,frames) log-mel (:meth:`log_mel`) -> (B, 8 * cnn_width, n_mels / 16, frames / 16) features of
        the conv blocks, before pooling."""
        return self.cnn(mel)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        _check_waveform(audio, self.num_samples, self.registry_name)
        h = self.frame_features(self.spec_augment(self.log_mel(audio))).flatten(2)    # (B, C, positions)
        h = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        return F.normalize(self.norm(self.proj(h)), dim=-1)


@register_audio_encoder("logmel_cnn_tc")
class LogMelTemporalCNNAudioEncoder(LogMelCNNAudioEncoder):
    """``logmel_cnn`` with temporal context. The last conv block halves only the frequency axis, so that the frames
    stay 80 ms apart (13 for a 1 s window; ``logmel_cnn``'s are 160 ms apart, 7 frames). Then the frequency axis is
    averaged out, and three residual 1-D convolutions over the frames (kernel 3, dilations 1, 2 and 4, GroupNorm)
    run before ``logmel_cnn``'s mean+max pooling and projection. A frame of the conv blocks sees ~0.38 s of audio
    (38 mel frames at the 10 ms hop); after the temporal convolutions it sees 7 frames either side as well, ~1.5 s:
    a rhythm (a pulse rate) across the whole 1 s window, at a step finer than the 167 ms between pulses at 6 a
    second. (B,T) -> (B,D)."""

    POOLS = ((2, 2), (2, 2), (2, 2), (2, 1))
    #: dilation of each residual temporal convolution
    DILATIONS: tuple[int, ...] = (1, 2, 4)

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = 8 * config.cnn_width
        self.temporal = nn.ModuleList(
            nn.Sequential(nn.Conv1d(c, c, 3, padding=d, dilation=d), nn.GroupNorm(min(8, c // 2), c), nn.ReLU())
            for d in self.DILATIONS)

    def frame_features(self, mel: torch.Tensor) -> torch.Tensor:
        """(B,1,n_mels,frames) log-mel (:meth:`log_mel`) -> (B, 8 * cnn_width, frames / 8) features per time frame,
        before pooling (the pooling and projection are ``logmel_cnn``'s)."""
        h = self.cnn(mel).mean(dim=2)
        for block in self.temporal:
            h = h + block(h)
        return h


@register_audio_encoder("clap")
class PrecomputedEmbeddingEncoder(nn.Module):
    """Parameter-free: (B,clap_dim) precomputed (frozen CLAP) embeddings -> L2-normalised (B,D).

    The CLAP tower itself lives in ``ciap_lib.bridge``, which computes and caches the embeddings.
    """

    input_kind = "embedding"

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.embed_dim != config.clap_dim:
            raise ValueError(f"audio_encoder='clap' needs embed_dim == clap_dim ({config.clap_dim}), "
                             f"got embed_dim={config.embed_dim}")
        self.dim = config.clap_dim

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim != 2 or audio.shape[1] != self.dim:
            raise ValueError(f"audio encoder 'clap' expects (B,{self.dim}) precomputed CLAP embeddings, "
                             f"got shape {tuple(audio.shape)}")
        return F.normalize(audio.float(), dim=-1)
