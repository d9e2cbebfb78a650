"""What classifier-free guidance steers away from (a negative) and what is mixed into the condition (mix).

AudioLDM's guidance is ``eps = eps(u) + g * (eps(c) - eps(u))`` with ``u`` the CLAP text embedding of ``""``.

* **negative**, one of two kinds (not both):

  - ``negative``: audio clips; their CLAP audio embeddings (the audio tower inside the AudioLDM checkpoint,
    ``FrozenAudioLDM.clap_audio_embed``), averaged and re-normalized, become ``u``;
  - ``negative_text``: a text (``"speech"``); its CLAP text embedding (``ciap_lib.bridge.clap_text``, needs a local
    RoBERTa tokenizer) becomes ``u``. ``""`` is the default vector itself.

* **mix**: the condition becomes ``normalize((1 - sum(w)) * image + sum(w_i * other_i))``; each entry is a plain
  string, ``"<audio path>:<w>"`` or ``"text:<text>:<w>"`` (the weight after the last colon), ``0 <= w <= 1`` and
  ``sum(w) <= 1``. One entry is ``normalize((1 - w) * image + w * other)``.

These plain values are what :class:`~ciap_lib.bridge.params.GenerationParams` holds (and so the CLI, the pipeline,
notebook 04 and MLflow). Precomputed, diffusers-style: ``negative_embeds`` (1 or B, 1, 512) and ``mix_embeds``
(M, 512) with ``mix_weights`` (M,) (see :func:`check_embeds`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ciap_lib.bridge.condition import AUDIOLDM_EMBED_DIM

TEXT_PREFIX = "text:"
MIX_FORMS = "'<audio path>:<weight>' or 'text:<text>:<weight>', weight in [0, 1]"


@dataclass(frozen=True)
class MixTerm:
    """One parsed mix entry: ``kind`` ``"audio"`` (``value`` a path) or ``"text"`` (``value`` the text)."""

    kind: str
    value: str
    weight: float

    def __str__(self) -> str:
        return f"{TEXT_PREFIX if self.kind == 'text' else ''}{self.value}:{self.weight:g}"


def parse_mix(entry: str) -> MixTerm:
    """``"rain.wav:0.3"`` -> audio, ``"text:rain:0.5"`` -> text; ``ValueError`` saying the accepted forms."""
    if not isinstance(entry, str):
        raise ValueError(f"{entry!r} is not a string; use {MIX_FORMS}")
    head, sep, tail = entry.rpartition(":")
    try:
        weight = float(tail)
    except ValueError:
        weight = math.nan
    if not sep or not head or not math.isfinite(weight):
        raise ValueError(f"{entry!r} does not end in ':<weight>'; use {MIX_FORMS}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"{entry!r}: weight {weight:g} is outside [0, 1]")
    if head.startswith(TEXT_PREFIX):
        text = head[len(TEXT_PREFIX):]
        if not text.strip():
            raise ValueError(f"{entry!r}: the text is empty; use {MIX_FORMS}")
        return MixTerm("text", text, weight)
    return MixTerm("audio", head, weight)


def spec_problems(negative: Sequence[str], negative_text: str | None, mix: Sequence[str]) -> list[tuple[str, str]]:
    """``[(field, problem), ...]`` for the plain values (no file access); used by ``GenerationParams.check``."""
    out: list[tuple[str, str]] = []
    if not isinstance(negative, (list, tuple)) or any(not isinstance(x, str) or not x for x in negative):
        out.append(("negative", f"must be a list of audio file paths, got {negative!r}"))
    if negative_text is not None and not isinstance(negative_text, str):
        out.append(("negative_text", f"must be a text or null, got {negative_text!r}"))
    elif negative_text and negative:
        out.append(("negative", "give audio clips or negative_text, not both "
                                f"(got {len(negative)} clip(s) and negative_text={negative_text!r})"))
    if not isinstance(mix, (list, tuple)):
        out.append(("mix", f"must be a list of entries {MIX_FORMS}, got {mix!r}"))
        return out
    total = 0.0
    for entry in mix:
        try:
            total += parse_mix(entry).weight
        except ValueError as e:
            out.append(("mix", str(e)))
    if total > 1.0 + 1e-9:
        out.append(("mix", f"the weights sum to {total:g}; they must sum to at most 1 "
                           "(the image keeps 1 - sum)"))
    return out


def uses_text(negative_text: str | None, mix: Sequence[str]) -> bool:
    """Whether a tokenizer is needed (a non-empty negative_text, or a ``text:`` mix entry)."""
    return bool(negative_text) or any(isinstance(m, str) and m.startswith(TEXT_PREFIX) for m in mix)


def clip_paths(negative: Sequence[str | os.PathLike], mix: Sequence[str]) -> list[tuple[str, Path]]:
    """``[(what, path), ...]``: every audio file the values name (``what`` names the parameter)."""
    out = [("negative", Path(p)) for p in negative]
    for entry in mix:
        term = parse_mix(entry)
        if term.kind == "audio":
            out.append(("mix", Path(term.value)))
    return out


def check_files(negative: Sequence[str | os.PathLike], mix: Sequence[str]) -> None:
    """``ValueError`` naming the first audio file that does not exist (decoding is checked when it is read)."""
    for what, path in clip_paths(negative, mix):
        if not path.is_file():
            raise ValueError(f"{what}: audio file {str(path)!r} does not exist")


def _rows(e: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(e, torch.Tensor) or e.dim() not in (1, 2, 3) or e.shape[-1] != AUDIOLDM_EMBED_DIM \
            or (e.dim() == 3 and e.shape[1] != 1) or e.numel() == 0:
        shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
        raise ValueError(f"{name}: expected (512,), (N, 512) or (N, 1, 512), got {shape}")
    e = e.detach().float().reshape(-1, AUDIOLDM_EMBED_DIM)
    if not torch.isfinite(e).all() or (e.norm(dim=-1) == 0).any():
        raise ValueError(f"{name}: contains non-finite values or all-zero rows")
    return e


def check_embeds(negative_embeds: torch.Tensor | None, mix_embeds: torch.Tensor | None,
                 mix_weights: Sequence[float] | torch.Tensor | None, n_images: int | None = None) -> None:
    """Precomputed inputs: ``negative_embeds`` one row for all images or one per image; ``mix_embeds`` (M, 512) with
    M ``mix_weights`` in [0, 1] summing to at most 1. ``ValueError`` naming the input otherwise."""
    if negative_embeds is not None:
        rows = _rows(negative_embeds, "negative_embeds").shape[0]
        if n_images is not None and rows not in (1, n_images):
            raise ValueError(f"negative_embeds: {rows} rows for {n_images} images; give 1 or {n_images}")
    if (mix_embeds is None) != (mix_weights is None):
        raise ValueError("mix_embeds and mix_weights go together: give both or neither")
    if mix_embeds is not None:
        rows = _rows(mix_embeds, "mix_embeds").shape[0]
        w = torch.as_tensor(mix_weights, dtype=torch.float64).reshape(-1)
        if w.numel() != rows:
            raise ValueError(f"mix_weights: {w.numel()} weights for {rows} mix_embeds rows")
        if not torch.isfinite(w).all() or (w < 0).any() or (w > 1).any():
            raise ValueError(f"mix_weights: each must be in [0, 1], got {w.tolist()}")
        if float(w.sum()) > 1.0 + 1e-9:
            raise ValueError(f"mix_weights: sum {float(w.sum()):g} > 1 (the image keeps 1 - sum)")


def clip_embedding(audioldm, path: str | os.PathLike, what: str = "negative") -> torch.Tensor:
    """(512,) unit CLAP audio embedding of one audio file (CPU); ``ValueError`` naming an unreadable file."""
    from ciap_lib.audio_io import load_audio

    try:
        wave = load_audio(path, sample_rate=audioldm.sample_rate)
    except ValueError as e:  # BadFileError names the file and the problem
        raise ValueError(f"{what}: unreadable audio clip: {e}") from e
    return audioldm.clap_audio_embed(torch.from_numpy(wave)[None])[0].float().cpu()


def negative_embedding(audioldm, negative: Sequence[str | os.PathLike] = (), negative_text: str | None = None,
                       tokenizer_dir: str | os.PathLike | None = None) -> torch.Tensor | None:
    """(1, 1, 512) guidance vector for the plain values, or None for the default ``""`` vector."""
    if negative:
        e = torch.stack([clip_embedding(audioldm, p) for p in negative]).mean(0)
        return F.normalize(e, dim=-1).reshape(1, 1, AUDIOLDM_EMBED_DIM)
    if negative_text:
        from ciap_lib.bridge.clap_text import clap_text_embedding

        return clap_text_embedding(audioldm, negative_text, tokenizer_dir)
    return None


def mix_terms(audioldm, mix: Sequence[str], tokenizer_dir: str | os.PathLike | None = None
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mix_embeds (M, 512), mix_weights (M,))`` for the plain mix entries, or None when there are none."""
    if not mix:
        return None
    from ciap_lib.bridge.clap_text import clap_text_embedding

    embeds, weights = [], []
    for entry in mix:
        term = parse_mix(entry)
        if term.kind == "text":
            embeds.append(clap_text_embedding(audioldm, term.value, tokenizer_dir).reshape(AUDIOLDM_EMBED_DIM))
        else:
            embeds.append(clip_embedding(audioldm, term.value, what="mix"))
        weights.append(term.weight)
    return torch.stack(embeds), torch.tensor(weights, dtype=torch.float32)


def mix_condition(cond: torch.Tensor, mix_embeds: torch.Tensor, mix_weights: Sequence[float] | torch.Tensor
                  ) -> torch.Tensor:
    """``normalize((1 - sum(w)) * cond + sum(w_i * e_i))``: cond (B, 1, 512), mix_embeds (M, 512) (each row
    re-normalized), mix_weights (M,) -> (B, 1, 512)."""
    e = F.normalize(_rows(mix_embeds, "mix_embeds").to(cond.device), dim=-1)
    w = torch.as_tensor(mix_weights, dtype=torch.float32, device=cond.device).reshape(-1)
    other = (w[:, None] * e).sum(0)
    return F.normalize((1.0 - w.sum()) * cond.float() + other, dim=-1)


def as_negative_rows(negative_embeds: torch.Tensor, n_images: int) -> torch.Tensor:
    """Precomputed ``negative_embeds`` -> (n_images, 1, 512) unit rows (one row is shared by every image)."""
    e = F.normalize(_rows(negative_embeds, "negative_embeds"), dim=-1)
    return e.expand(n_images, AUDIOLDM_EMBED_DIM).reshape(n_images, 1, AUDIOLDM_EMBED_DIM) if e.shape[0] == 1 \
        else e.reshape(n_images, 1, AUDIOLDM_EMBED_DIM)
