"""A tiny AudioLDM in the ORIGINAL checkpoint format, for tests, smoke runs and benchmarks.

Same classes and layout as audioldm-s-full (``default_audioldm_config`` reduced: UNet
model_channels 32, VAE ch 32, a 1-layer RoBERTa with a 16-token vocabulary, HiFi-GAN with 64
initial channels; the HTS-AT CLAP audio tower keeps its size). Random init, except that the
layers audioldm zero-initialises (UNet output convolutions) get small random weights so that the
UNet output depends on its input, and the film projection is scaled up so the
condition visibly moves the result. Saved as ``{"state_dict": ...}`` with EMA
buffers and a stale RoBERTa ``embeddings.position_ids`` key, like the released checkpoints.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ciap_lib.atomic import atomic_path
from ciap_lib.bridge.architecture import KNOWN_STALE_KEYS, ROBERTA_BASE, ArchSpec, build_latent_diffusion

TINY_SPEC = ArchSpec(
    family="audioldm-s-full", unet_channels=32, vae_ch=32, vocoder_channels=64,
    roberta=dict(ROBERTA_BASE, vocab_size=16, num_hidden_layers=1, intermediate_size=64),
)


def full_size_spec(name: str = "audioldm-s-full") -> ArchSpec:
    """The real architecture of ``name`` (what the released checkpoint holds)."""
    unet = {"audioldm-l-full": 256, "audioldm-m-full": 192}.get(name, 128)
    return ArchSpec(family=name, unet_channels=unet)


def build_state_dict(spec: ArchSpec = TINY_SPEC, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-init AudioLDM state dict for ``spec``, in the released checkpoints' key layout."""
    torch.manual_seed(seed)
    ldm = build_latent_diffusion(spec)
    with torch.no_grad():
        for name, p in ldm.model.named_parameters():
            if p.dim() > 1 and not p.any():  # zero_module()'d convs: make the UNet respond
                p.normal_(0.0, 0.02)
        ldm.model.diffusion_model.film_emb.weight.mul_(20.0)  # let the 512-d condition matter
        if getattr(ldm, "model_ema", None) is not None:  # EMA = the weights, as after a finished run
            shadow = dict(ldm.model_ema.named_buffers())
            for name, p in ldm.model.named_parameters():
                key = ldm.model_ema.m_name2s_name.get(name)
                if key is not None:
                    shadow[key].copy_(p)
    sd = {k: v.detach().clone() for k, v in ldm.state_dict().items()}
    # what transformers < 4.31 saved as a persistent buffer and the released checkpoints carry
    n_pos = spec.roberta["max_position_embeddings"]
    sd[KNOWN_STALE_KEYS[0]] = torch.arange(n_pos).unsqueeze(0)
    return sd


def save_original_format(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write ``{"state_dict": ...}`` (plus Lightning-style counters) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"epoch": 0, "global_step": 0, "state_dict": state_dict}, tmp)
    return Path(path)


def build_tiny_audioldm_checkpoint(path: str | os.PathLike, seed: int = 0, verify: bool = True) -> Path:
    """Build the tiny AudioLDM, save it at ``path`` in the original format, and (``verify``) load it
    back through :func:`ciap_lib.bridge.load_audioldm`. Returns ``path``."""
    path = save_original_format(build_state_dict(TINY_SPEC, seed=seed), path)
    if verify:
        from ciap_lib.bridge.loading import load_audioldm

        load_audioldm(path)
    return path
