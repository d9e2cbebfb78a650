"""The generators notebook 04 and its UI drive, and how one is chosen.

Two generators share one ``generate(images=None, image_embeds=None, cond_stage=None, duration=5.0, steps=None,
guidance_scale=2.5, seed=0, n_candidates=1, sampler="dpmpp", callback=None, negative=None, negative_text=None,
mix=None, device=None) -> (B, T)`` signature:

* :class:`DiffusionGenerator`: the frozen AudioLDM (``ciap_lib.bridge``) conditioned on CIAP image embeddings;
* :class:`ciap_lib.fallback.NearestNeighbourGenerator`: retrieval of the closest training clip, used when no
  AudioLDM checkpoint exists. It is labelled as retrieval everywhere (status line, batch file names, MLflow tags).

>>> gen, notice = load_generator(ciap_model, audioldm="audioldm-s-full", data="data/synthetic")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from ciap_lib.fallback import NearestNeighbourGenerator
from ciap_lib.safe_load import UnsafeCheckpointError

DEFAULT_SAMPLERS: tuple[str, ...] = ("dpmpp", "ddim")


class Generator(Protocol):
    """What the UI needs from a generator (see the module docstring)."""

    kind: str              # "diffusion" | "retrieval"
    is_diffusion: bool
    samplers: tuple[str, ...]

    @property
    def label(self) -> str: ...

    @property
    def preprocess(self) -> Any: ...

    @property
    def image_size(self) -> int: ...

    def generate(self, images: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                 cond_stage: Any = None, duration: float = 5.0, steps: int | None = None,
                 guidance_scale: float = 2.5, seed: int = 0, n_candidates: int = 1, sampler: str = "dpmpp",
                 callback: Callable[..., Any] | None = None, negative: Sequence[str] | None = None,
                 negative_text: str | None = None, mix: Sequence[str] | None = None,
                 device: str | None = None, precision: str = "auto") -> np.ndarray: ...


class DiffusionGenerator:
    """The frozen AudioLDM conditioned on a CIAP model's image embeddings (``ciap_lib.bridge.generate``).

    Args:
        audioldm: a loaded ``FrozenAudioLDM`` (``ciap_lib.bridge.load_audioldm``).
        ciap_model: the CIAP model whose image tower conditions AudioLDM (``CIAPCondStage``).
        name: what to call the checkpoint in the label (its name or path).
        tokenizer_dir: local RoBERTa tokenizer for ``negative_text`` / ``text:`` mix entries (None: ``roberta-base``
            beside the AudioLDM checkpoint).
    """

    kind = "diffusion"
    is_diffusion = True

    def __init__(self, audioldm: Any, ciap_model: torch.nn.Module, name: str = "",
                 tokenizer_dir: str | Path | None = None) -> None:
        from ciap_lib import bridge  # lazy: imports audioldm / diffusers

        self.audioldm = audioldm
        self.model = ciap_model.eval()
        self.cond_stage = bridge.CIAPCondStage(ciap_model)
        self.name = str(name)
        self.tokenizer_dir = tokenizer_dir
        self.samplers = _bridge_samplers()

    @property
    def preprocess(self) -> Any:
        """The CIAP model's ``ImagePreprocess`` (how query images are prepared)."""
        return self.model.preprocess

    @property
    def image_size(self) -> int:
        return int(self.preprocess.size)

    @property
    def label(self) -> str:
        return (f"Diffusion: frozen AudioLDM ({self.name or 'checkpoint'}) conditioned on the CIAP image "
                f"embedding ({self.model.config.audio_encoder} mode).")

    def __repr__(self) -> str:
        return f"DiffusionGenerator(audioldm={self.name!r})"

    def generate(self, images: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                 cond_stage: Any = None, duration: float = 5.0, steps: int | None = None,
                 guidance_scale: float = 2.5, seed: int = 0, n_candidates: int = 1, sampler: str = "dpmpp",
                 callback: Callable[..., Any] | None = None, negative: Sequence[str] | None = None,
                 negative_text: str | None = None, mix: Sequence[str] | None = None,
                 device: str | None = None, precision: str = "auto") -> np.ndarray:
        """(B, T) float32 16 kHz waveforms, T = round(duration * 16000); see ``ciap_lib.bridge.generate``
        (``negative``/``negative_text``/``mix``: what guidance steers away from and what is mixed in;
        ``device``: ``auto``/``cpu``/``cuda[:N]``, None = where the model is; ``precision``: ``auto``/``bf16``/``fp32``)."""
        from ciap_lib import bridge

        return np.asarray(bridge.generate(
            self.audioldm, images=images, image_embeds=image_embeds,
            cond_stage=cond_stage if cond_stage is not None else (self.cond_stage if image_embeds is None else None),
            duration=duration, steps=steps, guidance_scale=guidance_scale, seed=seed, n_candidates=n_candidates,
            sampler=sampler, callback=callback, negative=negative, negative_text=negative_text, mix=mix,
            tokenizer_dir=self.tokenizer_dir, device=device, precision=precision), dtype=np.float32)

    def clap_score(self, waveforms: np.ndarray, images: torch.Tensor) -> np.ndarray:
        """(B,) cosine between each image's condition embedding and its clip's CLAP audio embedding
        (``ciap_lib.bridge.clap_score``; a CLAP-space figure, meaningful for ``clap``-mode checkpoints)."""
        from ciap_lib import bridge

        with torch.no_grad():
            cond = self.cond_stage(images)
        return bridge.clap_score(self.audioldm, np.asarray(waveforms, dtype=np.float32), cond).numpy()


def _bridge_samplers() -> tuple[str, ...]:
    """The sampler names the bridge accepts (``ciap_lib.bridge.SAMPLERS``)."""
    from ciap_lib import bridge

    return tuple(bridge.SAMPLERS) or DEFAULT_SAMPLERS


def missing_audioldm_notice(error: BaseException | str, name: str) -> str:
    """The notebook's message when the AudioLDM checkpoint is missing (names where to put it, how to get it)."""
    text = str(error)
    target = name if "/" not in name and not name.endswith(".ckpt") else "audioldm-s-full"
    if "python -m ciap_lib download" not in text:
        text += f"\nWith a network, download it with: python -m ciap_lib download {target}"
    return (f"No usable AudioLDM checkpoint ({name}):\n{text}\n\n"
            "Until then this notebook uses the NEAREST-NEIGHBOUR RETRIEVAL fallback: every sound below is a "
            "clip copied from the training set, NOT diffusion output.")


def load_generator(ciap_model: torch.nn.Module, audioldm: str = "audioldm-s-full", ckpt_dir: str | Path = "ckpt",
                   data: str | Path = "data/synthetic", split: str = "train",
                   allow_fallback: bool = True, tokenizer_dir: str | Path | None = None) -> tuple[Any, str]:
    """The diffusion generator when the AudioLDM checkpoint loads, else the labelled retrieval fallback.
    (``tokenizer_dir``: see :class:`DiffusionGenerator`; None or "" = the default place.)

    Returns ``(generator, notice)``; ``notice`` is "" for diffusion, else the explanation to show (where to put
    the checkpoint, how to download it, that the fallback is retrieval). With ``allow_fallback=False`` the
    ``AudioLDMNotFoundError`` is raised instead.
    """
    try:
        from ciap_lib import bridge  # imports audioldm / diffusers
    except ImportError as e:  # the generation stack itself is unusable here: say so, then fall back
        if not allow_fallback:
            raise
        error: BaseException = ImportError(f"the AudioLDM bridge cannot be imported ({type(e).__name__}: {e})")
    else:
        try:
            ldm = bridge.load_audioldm(audioldm, ckpt_dir=str(ckpt_dir))
        except (bridge.AudioLDMNotFoundError, UnsafeCheckpointError) as e:  # missing, corrupt, or refused
            if not allow_fallback:
                raise
            error = e
        else:
            return DiffusionGenerator(ldm, ciap_model, name=audioldm, tokenizer_dir=tokenizer_dir or None), ""
    notice = missing_audioldm_notice(error, audioldm)
    return NearestNeighbourGenerator.from_dataset(ciap_model, data, split), notice


def generator_markdown(generator: Any, notice: str = "") -> str:
    """Markdown saying which generator is in use; for the fallback, the notice in a warning block."""
    if generator.is_diffusion:
        text = f"**Generator: diffusion.** {generator.label}"
        encoder = getattr(getattr(getattr(generator, "model", None), "config", None), "audio_encoder", "clap")
        if encoder != "clap":
            text += (f"\n\n> **Note:** this CIAP checkpoint was trained with the `{encoder}` audio encoder, whose "
                     "embedding space is not CLAP's: AudioLDM receives an embedding it was not trained on. "
                     "Train in `clap` mode (experiments/clap_aligned.yaml) for sounds that follow the image.")
        return text
    body = "\n".join(f"> {line}" if line else ">" for line in (notice or generator.label).splitlines())
    return (f"**Generator: nearest-neighbour RETRIEVAL fallback (not diffusion).** {generator.label}\n\n"
            f"> **No AudioLDM checkpoint**\n>\n{body}")
