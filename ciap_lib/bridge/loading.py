"""Load an original AudioLDM checkpoint through the ``audioldm`` package's own classes, offline and frozen.

What differs from ``audioldm.pipeline.build_model``:

* the file is read with the weights-only unpickler and a small fixed allowlist
  (:func:`~ciap_lib.bridge.checkpoint_io.read_state_dict`), after its SHA-256 sidecar is checked; a file
  asking for other globals is refused by name unless ``trust_checkpoint=True``;
* no network, and the architecture is read off the checkpoint (:mod:`ciap_lib.bridge.architecture`);
* exactly the known stale keys (:data:`~ciap_lib.bridge.architecture.KNOWN_STALE_KEYS`) are dropped, then
  ``strict=True`` loading;
* the EMA weights are copied into the UNet (what ``generate_sample``'s ``ema_scope`` does), then the
  EMA copy is released;
* everything is frozen (:class:`~ciap_lib.bridge.frozen.FrozenAudioLDM`): ``requires_grad=False``, eval mode,
  and a state-dict fingerprint taken at load.
"""
from __future__ import annotations

import logging
import os

import torch

from ciap_lib.bridge.architecture import (
    KNOWN_STALE_KEYS, AudioLDMCheckpointError, build_latent_diffusion, drop_stale_keys, infer_architecture,
)
from ciap_lib.bridge.checkpoint_io import DEFAULT_MODEL, read_state_dict, resolve_checkpoint
from ciap_lib.bridge.frozen import FrozenAudioLDM

log = logging.getLogger(__name__)


def load_audioldm(name_or_path: str | os.PathLike = DEFAULT_MODEL, ckpt_dir: str | os.PathLike = "ckpt",
                  device: str | torch.device = "cpu", cache_uncond: bool = True,
                  trust_checkpoint: bool = False) -> FrozenAudioLDM:
    """Load an original AudioLDM checkpoint (by registry name under ``ckpt_dir``, or by path), offline.

    ``trust_checkpoint=True``: unpickle the file fully even if it asks for globals outside
    :data:`~ciap_lib.bridge.checkpoint_io.AUDIOLDM_SAFE_GLOBALS` (logged as a warning): only for a file
    whose source you trust, since unpickling can run code from it.

    Raises :class:`AudioLDMNotFoundError` (missing / unreadable / SHA-256 mismatch with the sidecar),
    :class:`~ciap_lib.safe_load.UnsafeCheckpointError` (a ``ValueError``: the file asks for globals outside
    the allowlist; names them and the file) and :class:`AudioLDMCheckpointError` (keys or shapes not
    matching audioldm's model; strict).
    """
    path, name = resolve_checkpoint(name_or_path, ckpt_dir)
    sd = read_state_dict(path, name, trusted=trust_checkpoint)
    spec = infer_architecture(sd, path)
    ldm = build_latent_diffusion(spec, init_weights=False)
    dropped = drop_stale_keys(sd, ldm)
    if dropped:
        log.info("%s: dropped stale keys %s", path, dropped)
    try:
        ldm.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise AudioLDMCheckpointError(
            f"{path} does not match audioldm's {spec.family} model (strict load; only the known stale keys "
            f"{list(KNOWN_STALE_KEYS)} are dropped): {str(e)[:1500]}") from e
    del sd
    if getattr(ldm, "use_ema", False) and getattr(ldm, "model_ema", None) is not None:
        ldm.model_ema.copy_to(ldm.model)  # what generate_sample's ema_scope does
        del ldm.model_ema
        ldm.use_ema = False
    ldm.to(device)
    return FrozenAudioLDM(ldm, path, name, spec, cache_uncond=cache_uncond)
