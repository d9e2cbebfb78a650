"""Image -> 16 kHz audio through the frozen AudioLDM.

``generate(audioldm, images, cond_stage=...)`` or ``generate(audioldm, image_embeds=(B,1,512))``.
Clip ``i``, candidate ``k`` starts from the noise of ``torch.Generator().manual_seed(seed + i *
n_candidates + k)`` (drawn on the CPU, whatever the device): the same seed gives the same audio whatever the
batch size: bitwise on the CPU (:mod:`ciap_lib.bridge.invariance`), within 1e-3 on CUDA.

What guidance steers away from and what is mixed into the condition: ``negative`` (audio clips) or
``negative_text``, and ``mix`` (plain values, :mod:`ciap_lib.bridge.guidance`), or precomputed
``negative_embeds`` / ``mix_embeds`` + ``mix_weights``. ``device``: ``auto``/``cpu``/``cuda[:N]``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ciap_lib.bridge import devices, guidance
from ciap_lib.bridge.clap_text import check_tokenizer_dir, default_tokenizer_dir
from ciap_lib.bridge.condition import AUDIOLDM_EMBED_DIM, CIAPCondStage
from ciap_lib.bridge.frozen import FrozenAudioLDM
from ciap_lib.bridge.params import GenerationParams
from ciap_lib.bridge.sampling import (
    DEFAULT_SAMPLER, DEFAULT_STEPS, decode_latents, initial_noise, latent_frames, sample_latents,
)
from ciap_lib.constants import SAMPLE_RATE

ImageInput = torch.Tensor | Sequence[str | os.PathLike | bytes] | str | os.PathLike | None
PathList = Sequence[str | os.PathLike] | None


def check_inputs(duration: float = 5.0, steps: int | None = None, guidance_scale: float = 2.5,
                 n_candidates: int = 1, sampler: str = DEFAULT_SAMPLER, batch_size: int = 4,
                 precision: str = "auto", images: ImageInput = None, image_embeds: torch.Tensor | None = None,
                 cond_stage: CIAPCondStage | None = None, require_cond_stage: bool = True, *,
                 negative: PathList = None, negative_text: str | None = None, mix: Sequence[str] | None = None,
                 negative_embeds: torch.Tensor | None = None, mix_embeds: torch.Tensor | None = None,
                 mix_weights: Sequence[float] | torch.Tensor | None = None,
                 tokenizer_dir: str | os.PathLike | None = None, device: str | torch.device | None = None) -> None:
    """Raise a clear ``ValueError`` for any bad argument, before any heavy work: the generation parameters
    (:meth:`GenerationParams.check`: values, mix entries and weights, device names), then the images or
    embeddings, the negative/mix audio files (they exist), the tokenizer folder when a text is used
    (``tokenizer_dir``; None: not checked here), the precomputed ``negative_embeds``/``mix_embeds``, and that
    ``device`` exists here (``cuda`` without CUDA is an error).
    (``require_cond_stage=False``: check image paths before the CIAP checkpoint is loaded.)"""
    negative, mix = _plain_list(negative), _plain_list(mix)
    GenerationParams(duration=duration, steps=steps, sampler=sampler, guidance_scale=guidance_scale,
                     n_candidates=n_candidates, batch_size=batch_size, precision=precision, negative=negative,
                     negative_text=negative_text, mix=mix,
                     device="auto" if device is None else str(device)).check()
    if negative_embeds is not None and (negative or negative_text):
        raise ValueError("negative_embeds: give either negative_embeds or negative/negative_text, not both")
    if mix_embeds is not None and mix:
        raise ValueError("mix_embeds: give either mix_embeds + mix_weights or mix entries, not both")
    guidance.check_files(negative, mix)
    if tokenizer_dir is not None and guidance.uses_text(negative_text, mix):
        check_tokenizer_dir(tokenizer_dir)
    n_images = None
    if isinstance(image_embeds, torch.Tensor) and image_embeds.dim() in (2, 3):
        n_images = image_embeds.shape[0]
    elif isinstance(images, torch.Tensor) and images.dim() == 4:
        n_images = images.shape[0]
    elif images is not None and not isinstance(images, torch.Tensor):
        n_images = len(_as_list(images))
    guidance.check_embeds(negative_embeds, mix_embeds, mix_weights, n_images)
    if device is not None:
        devices.generation_device(device)
    if (images is None) == (image_embeds is None):
        raise ValueError("generate: pass exactly one of images or image_embeds")
    if image_embeds is not None:
        e = image_embeds
        if not isinstance(e, torch.Tensor) or e.dim() not in (2, 3) or e.shape[-1] != AUDIOLDM_EMBED_DIM \
                or (e.dim() == 3 and e.shape[1] != 1) or e.shape[0] < 1:
            shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"image_embeds: expected (B, 1, {AUDIOLDM_EMBED_DIM}) or (B, {AUDIOLDM_EMBED_DIM}), got {shape}")
        if not torch.isfinite(e).all() or (e.reshape(e.shape[0], -1).norm(dim=-1) == 0).any():
            raise ValueError("image_embeds: contains non-finite values or all-zero rows")
    else:
        if cond_stage is None and require_cond_stage:
            raise ValueError("generate: images need a cond_stage (CIAPCondStage from a trained CIAP checkpoint)")
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
                raise ValueError(f"images: expected a (B, 3, H, W) tensor, got {tuple(images.shape)}")
        else:
            for im in _as_list(images):
                if isinstance(im, (bytes, bytearray)):
                    continue
                if not Path(im).is_file():
                    raise ValueError(f"image {str(im)!r}: file does not exist")


def _plain_list(items) -> list[str]:
    """``negative`` / ``mix`` as a list of strings (one path or entry alone is a list of one)."""
    if items is None:
        return []
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    return [str(x) if isinstance(x, os.PathLike) else x for x in items]


def _as_list(images) -> list:
    if isinstance(images, (str, os.PathLike, bytes, bytearray)):
        return [images]
    return list(images)


def embed_images(images: ImageInput, cond_stage: CIAPCondStage) -> torch.Tensor:
    """Paths/bytes or an image tensor -> (B, 1, 512) unit condition; unreadable image -> ValueError."""
    if not isinstance(images, torch.Tensor):
        try:
            images = cond_stage.load_images(_as_list(images))
        except ValueError as e:  # ciap_lib.data.BadFileError names the file and the problem
            raise ValueError(f"unreadable image: {e}") from e
    return cond_stage(images)


def generate(audioldm: FrozenAudioLDM, images: ImageInput = None, *, image_embeds: torch.Tensor | None = None,
             cond_stage: CIAPCondStage | None = None, duration: float = 5.0, steps: int | None = None,
             guidance_scale: float = 2.5, seed: int = 0, n_candidates: int = 1, sampler: str = DEFAULT_SAMPLER,
             callback: Callable[[int, int], None] | None = None, batch_size: int = 4, precision: str = "auto",
             verify_frozen: bool = True, return_latents: bool = False,
             negative: PathList = None, negative_text: str | None = None, mix: Sequence[str] | None = None,
             negative_embeds: torch.Tensor | None = None, mix_embeds: torch.Tensor | None = None,
             mix_weights: Sequence[float] | torch.Tensor | None = None,
             tokenizer_dir: str | os.PathLike | None = None, device: str | torch.device | None = None):
    """Generate one clip per image (or per row of ``image_embeds``).

    Args:
        images: image paths / bytes, or an ImageNet-normalized (B, 3, S, S) tensor (needs ``cond_stage``).
        image_embeds: (B, 1, 512) or (B, 512) condition embeddings instead of images (re-normalized).
        duration: seconds, 2.5-10; the output is cropped to exactly ``round(duration * 16000)`` samples.
        steps: solver steps (None: 6 for ``dpmpp`` and ``unipc``, 200 for ``ddim``).
        guidance_scale: classifier-free guidance against the CLAP text embedding of ``""`` (or the negative).
        seed: clip ``i`` candidate ``k`` uses seed ``seed + i * n_candidates + k``.
        n_candidates: generate this many per image and keep the one whose CLAP audio embedding is
            closest (cosine) to the condition embedding (after ``mix``).
        callback: ``callback(done, total)`` after each solver step and each decode.
        batch_size: clips (images x candidates) sampled together.
        precision: ``"auto"`` (the default: ``"bf16"`` on CUDA and on CPUs where bf16 is measured faster than float32,
            else ``"fp32"``: ``devices.resolve_precision``), ``"bf16"`` (autocast in UNet/VAE/vocoder with
            half-precision weight copies; float16 on GPUs without bfloat16; float32 on CPUs without native bf16:
            ``devices.half_dtype``) or ``"fp32"``. The two give different audio for the same seed.
        verify_frozen: after generating, check that the weights of the AudioLDM parts this call ran still
            hash as at load (~0.5 s for audioldm-s-full's UNet, VAE and vocoder on 2 cores).
        return_latents: also return the chosen clips' latents (B, 8, T, 16).
        negative: audio clip paths; guidance steers away from their averaged, re-normalized CLAP audio embedding
            (the checkpoint's own CLAP audio tower) instead of ``""``.
        negative_text: a text to steer away from instead (its CLAP text embedding; cached beside the checkpoint).
        mix: ``"<audio path>:<w>"`` / ``"text:<text>:<w>"`` entries: the condition becomes
            ``normalize((1 - sum(w)) * image + sum(w * other))``.
        negative_embeds: precomputed guidance vector(s), (1, 1, 512) for every image or (B, 1, 512) one per image
            ((512,) and (N, 512) also accepted); re-normalized. Instead of ``negative``/``negative_text``.
        mix_embeds, mix_weights: precomputed (M, 512) embeddings and their M weights, instead of ``mix``.
        tokenizer_dir: local RoBERTa tokenizer for the texts (default: ``roberta-base`` beside the checkpoint).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``: the model is moved there (and stays) before
            sampling; None: wherever it is. Clear ``ValueError`` for ``cuda`` without CUDA.

    Every check (parameters, images, clips, tokenizer, embeddings, device) runs before the UNet's first call.

    Returns:
        float32 ``np.ndarray`` (B, round(duration * 16000)) of 16 kHz audio (and the latents if asked).
    """
    negative, mix = _plain_list(negative), _plain_list(mix)
    texts = guidance.uses_text(negative_text, mix)
    if texts and tokenizer_dir is None:
        tokenizer_dir = default_tokenizer_dir(audioldm.path)
    check_inputs(duration, steps, guidance_scale, n_candidates, sampler, batch_size, precision,
                 images, image_embeds, cond_stage, negative=negative, negative_text=negative_text, mix=mix,
                 negative_embeds=negative_embeds, mix_embeds=mix_embeds, mix_weights=mix_weights,
                 tokenizer_dir=tokenizer_dir, device=device)
    if image_embeds is None:
        cond = embed_images(images, cond_stage)
    else:
        cond = image_embeds.detach().float().reshape(image_embeds.shape[0], 1, AUDIOLDM_EMBED_DIM)
    cond = F.normalize(cond.float().cpu(), dim=-1)
    n_images, k = cond.shape[0], n_candidates

    # what guidance steers away from, and what is mixed in: resolved (files read, CLAP run) before sampling
    ran_clap = bool(negative or negative_text or mix)
    if negative_embeds is not None:
        uncond = guidance.as_negative_rows(negative_embeds, n_images)
    else:
        one = guidance.negative_embedding(audioldm, negative, negative_text, tokenizer_dir)
        uncond = None if one is None else one.expand(n_images, 1, AUDIOLDM_EMBED_DIM)
    terms = (mix_embeds, mix_weights) if mix_embeds is not None else guidance.mix_terms(audioldm, mix, tokenizer_dir)
    if terms is not None:
        cond = guidance.mix_condition(cond, *terms)

    dev = audioldm.device if device is None else devices.generation_device(device)
    devices.place(audioldm, dev)
    half = devices.half_dtype(dev)
    steps = DEFAULT_STEPS[sampler] if steps is None else steps
    autocast = devices.resolve_precision(precision, dev) == "bf16"
    n_frames = latent_frames(duration)
    n_samples = int(round(duration * SAMPLE_RATE))

    rows = [(i, c) for i in range(n_images) for c in range(k)]
    chunks = [rows[j:j + batch_size] for j in range(0, len(rows), batch_size)]
    total = len(chunks) * (steps + 1)
    waves = torch.zeros(len(rows), n_samples)
    latents = torch.zeros(len(rows), audioldm.latent_channels, n_frames, audioldm.latent_f_size)
    done = 0
    for chunk in chunks:
        idx = [i * k + c for i, c in chunk]
        noise = initial_noise(audioldm, n_frames, [seed + j for j in idx])
        which = [i for i, _ in chunk]
        c = cond[which]

        def step_cb(i: int, _n: int, base: int = done) -> None:
            if callback is not None:
                callback(base + i, total)

        z = sample_latents(audioldm, c, noise, sampler=sampler, steps=steps, guidance_scale=guidance_scale,
                           autocast=autocast, callback=step_cb, half=half,
                           uncond=None if uncond is None else uncond[which])
        w = decode_latents(audioldm, z, autocast=autocast, half=half)
        if w.shape[-1] < n_samples:  # cannot happen with latent_frames(); keep the contract explicit
            raise RuntimeError(f"decoded {w.shape[-1]} samples < {n_samples} requested")
        waves[idx] = w[:, :n_samples].cpu()
        latents[idx] = z.cpu()
        done += steps + 1
        if callback is not None:
            callback(done, total)

    if k > 1:
        sims = (audioldm.clap_audio_embed(waves).cpu() * cond.squeeze(1).repeat_interleave(k, 0)).sum(-1)
        best = sims.view(n_images, k).argmax(dim=1)
        pick = torch.arange(n_images) * k + best
    else:
        pick = torch.arange(n_images)
    if verify_frozen:  # the parts this call ran: UNet, VAE + vocoder, and CLAP when it embedded clips or texts
        audioldm.assert_unchanged(("unet", "vae", "clap") if k > 1 or ran_clap else ("unet", "vae"))
    out = waves[pick].numpy().astype(np.float32)
    return (out, latents[pick]) if return_latents else out


def write_wavs(waveforms: np.ndarray, paths: Sequence[str | os.PathLike], sample_rate: int = SAMPLE_RATE) -> list[Path]:
    """One 16 kHz WAV per row (``ciap_lib.audio_io.write_wav``, atomic)."""
    from ciap_lib.audio_io import write_wav

    if len(paths) != len(waveforms):
        raise ValueError(f"write_wavs: {len(waveforms)} waveforms but {len(paths)} paths")
    return [write_wav(p, np.clip(w, -1.0, 1.0), sample_rate) for w, p in zip(waveforms, paths)]
