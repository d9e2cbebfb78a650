"""The architecture of an AudioLDM checkpoint, and audioldm's own classes built for it offline.

* the architecture (s / m / l, and the tiny test model) is read off the checkpoint's tensor shapes
  (:func:`infer_architecture`);
* no network: ``audioldm`` is imported with its import-time tokenizer download stubbed out
  (:func:`import_audioldm`), and the CLAP text branch (RoBERTa) is built from its config (roberta-base's,
  or the shape found in the checkpoint) instead of ``from_pretrained``; its weights come from the
  checkpoint anyway. No tokenizer is built: the only text we ever need is ``""``, whose RoBERTa ids are fixed;
* exactly the known stale keys (:data:`KNOWN_STALE_KEYS`) are dropped before the strict load.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ciap_lib.bridge.checkpoint_io import DEFAULT_MODEL

#: Keys original checkpoints hold that current transformers no longer keeps as persistent buffers
#: (AudioLDM issues #95, #105, #117). Only these are dropped, and only when the model lacks them.
KNOWN_STALE_KEYS: tuple[str, ...] = ("cond_stage_model.model.text_branch.embeddings.position_ids",)

#: roberta-base's architecture (its config.json), so the text branch can be built without the hub.
ROBERTA_BASE: dict[str, Any] = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=514, type_vocab_size=1,
    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)

_TEXT = "cond_stage_model.model.text_branch."


class AudioLDMCheckpointError(RuntimeError):
    """The file is a checkpoint, but its keys or shapes do not match audioldm's model."""


@dataclass(frozen=True)
class ArchSpec:
    """The architecture of one AudioLDM checkpoint, read off its tensor shapes."""

    family: str = DEFAULT_MODEL        # name whose default_audioldm_config is the base
    unet_channels: int = 128
    vae_ch: int = 128
    vocoder_channels: int = 1024
    roberta: dict = field(default_factory=lambda: dict(ROBERTA_BASE))

    def audioldm_config(self) -> dict:
        """audioldm's own config dict for this architecture (``default_audioldm_config`` + overrides)."""
        from audioldm.utils import default_audioldm_config

        cfg = default_audioldm_config(self.family)
        p = cfg["model"]["params"]
        p["device"] = "cpu"
        p["cond_stage_key"] = "text"
        p["unet_config"]["params"]["model_channels"] = self.unet_channels
        p["first_stage_config"]["params"]["ddconfig"]["ch"] = self.vae_ch
        return cfg


def _shape(sd: dict, key: str, path: Path) -> torch.Size:
    if key not in sd:
        raise AudioLDMCheckpointError(f"{path}: key {key!r} missing: not an AudioLDM checkpoint of a known layout")
    return sd[key].shape


def infer_architecture(sd: dict[str, torch.Tensor], path: Path = Path("<state_dict>")) -> ArchSpec:
    """Read s/m/l (and tiny test sizes) off the checkpoint's shapes."""
    unet = _shape(sd, "model.diffusion_model.input_blocks.0.0.weight", path)[0]
    htsat = _shape(sd, "cond_stage_model.model.audio_branch.patch_embed.proj.weight", path)[0]
    family = "audioldm-l-full" if unet == 256 else "audioldm-m-full" if (unet == 192 or htsat == 128) else DEFAULT_MODEL
    layers = {int(m.group(1)) for k in sd if (m := re.match(re.escape(_TEXT) + r"encoder\.layer\.(\d+)\.", k))}
    roberta = dict(ROBERTA_BASE)
    roberta.update(
        vocab_size=_shape(sd, _TEXT + "embeddings.word_embeddings.weight", path)[0],
        max_position_embeddings=_shape(sd, _TEXT + "embeddings.position_embeddings.weight", path)[0],
        num_hidden_layers=len(layers),
        intermediate_size=_shape(sd, _TEXT + "encoder.layer.0.intermediate.dense.weight", path)[0],
    )
    return ArchSpec(
        family=family, unet_channels=int(unet),
        vae_ch=int(_shape(sd, "first_stage_model.encoder.conv_in.weight", path)[0]),
        vocoder_channels=int(_shape(sd, "first_stage_model.vocoder.conv_pre.weight", path)[0]),
        roberta=roberta,
    )


class _NoTokenizer:
    """Stands in for RobertaTokenizer: CIAP never tokenizes text (the "" ids are fixed)."""

    def __call__(self, *a, **k):
        raise RuntimeError("ciap_lib builds AudioLDM offline without a text tokenizer; text prompts are not "
                           "supported (use image embeddings; the '' embedding is FrozenAudioLDM.uncond_embedding)")


@contextlib.contextmanager
def _setattrs(*triples: tuple[Any, str, Any]) -> Iterator[None]:
    old = [(obj, name, getattr(obj, name)) for obj, name, _ in triples]
    try:
        for obj, name, value in triples:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in old:
            setattr(obj, name, value)


def import_audioldm() -> None:
    """Import audioldm's modules without touching the network: ``audioldm.clap.training.data`` calls
    ``RobertaTokenizer.from_pretrained("roberta-base")`` at import time (hub download, or minutes of
    retries offline). That call gets a stub here; no tokenizer is ever used."""
    import sys

    if "audioldm.clap.training.data" in sys.modules:
        return
    import transformers

    stub = classmethod(lambda cls, *_a, **_k: _NoTokenizer())
    with _setattrs((transformers.RobertaTokenizer, "from_pretrained", stub)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import audioldm  # noqa: F401
        import audioldm.clap.encoders  # noqa: F401
        import audioldm.clap.training.data  # noqa: F401


@contextlib.contextmanager
def offline_construction(spec: ArchSpec) -> Iterator[None]:
    """While audioldm's classes are constructed: RoBERTa from config (no hub), no tokenizer,
    the vocoder at ``spec.vocoder_channels``; also silences audioldm's construction prints/warnings."""
    import_audioldm()
    import audioldm.clap.encoders as clap_encoders
    import audioldm.clap.open_clip.model as clap_model
    import audioldm.hifigan.utilities as hifigan_utils
    import transformers

    cfg = transformers.RobertaConfig(**spec.roberta)

    class _RobertaFromConfig:
        @staticmethod
        def from_pretrained(*_a, **_k):
            return transformers.RobertaModel(cfg)

    class _TokenizerStub:
        @staticmethod
        def from_pretrained(*_a, **_k):
            return _NoTokenizer()

    vocoder = dict(hifigan_utils.HIFIGAN_16K_64, upsample_initial_channel=spec.vocoder_channels)
    with _setattrs((clap_model, "RobertaModel", _RobertaFromConfig),
                   (clap_encoders, "RobertaTokenizer", _TokenizerStub),
                   (hifigan_utils, "HIFIGAN_16K_64", vocoder)), \
            warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Skip random weight init (every weight is overwritten by the strict load right after)."""
    import audioldm.clap.open_clip.htsat as htsat
    from transformers.initialization import no_init_weights

    with no_init_weights(), _setattrs((htsat, "trunc_normal_", lambda t, *a, **k: t)):
        yield


def build_latent_diffusion(spec: ArchSpec, init_weights: bool = True):
    """audioldm's ``LatentDiffusion`` for ``spec``, offline; random init unless ``init_weights=False``
    (then the weights are uninitialised memory, to be overwritten by a state dict)."""
    import_audioldm()
    from audioldm.ldm import LatentDiffusion

    with offline_construction(spec), (contextlib.nullcontext() if init_weights else _skip_init()):
        return LatentDiffusion(**spec.audioldm_config()["model"]["params"])


def drop_stale_keys(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """Remove exactly the :data:`KNOWN_STALE_KEYS` the model no longer has; returns what was dropped."""
    own = model.state_dict().keys()
    dropped = [k for k in KNOWN_STALE_KEYS if k in sd and k not in own]
    for k in dropped:
        del sd[k]
    return dropped
