"""The frozen runtime of a loaded AudioLDM: :class:`FrozenAudioLDM`, its state-dict fingerprints, the
bf16 weight copies used for sampling, and the CLAP embedding of ``""`` (the guidance "unconditional")."""
from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ciap_lib.atomic import atomic_path
from ciap_lib.bridge.architecture import ArchSpec
from ciap_lib.bridge.prepack import can_prepack, packable, prepack_cpu
from ciap_lib.safe_load import safe_load

log = logging.getLogger(__name__)

#: RoBERTa ids of "" as audioldm's tokenizer produces them: <s></s> then <pad> up to 512.
EMPTY_TEXT_LENGTH = 512
BOS_ID, EOS_ID, PAD_ID = 0, 2, 1


def tensor_digests(module: torch.nn.Module, prefixes: tuple[str, ...] | None = None) -> dict[str, str]:
    """SHA-256 of every state-dict entry whose name starts with one of ``prefixes`` (default: all):
    ``{name: hexdigest of (name, dtype, shape, bytes)}``. Tensors are hashed in threads (hashlib releases
    the GIL): audioldm-s-full in 0.9 s on 2 cores, 1.2 s in one pass."""
    from concurrent.futures import ThreadPoolExecutor

    items = [(k, v) for k, v in module.state_dict().items() if prefixes is None or k.startswith(prefixes)]

    def digest(item: tuple[str, torch.Tensor]) -> tuple[str, str]:
        name, t = item
        t = t.detach().cpu().contiguous()
        h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        return name, h.hexdigest()

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(pool.map(digest, items))


def combine_digests(digests: dict[str, str]) -> str:
    """One fingerprint from :func:`tensor_digests` (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}={digests[name]}\n".encode())
    return h.hexdigest()


def state_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 fingerprint of a whole state dict (every entry's name, dtype, shape and bytes)."""
    return combine_digests(tensor_digests(module))


#: layers whose weights autocast casts to bf16/fp16 on every call (and so can be cast once, ahead of time)
HALF_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.Linear)
#: precision name -> the dtype its weight copies hold and autocast runs in
HALF_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def half_weight_copy(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16,
                     parts: tuple[torch.nn.Module, ...] | None = None,
                     skip: Callable[[torch.nn.Module], bool] | None = None) -> torch.nn.Module:
    """A copy of a frozen ``module`` for bf16/fp16-autocast inference: the weights and biases of the
    convolution and linear layers inside ``parts`` (default: all of ``module``) are cast to ``dtype`` once;
    every other parameter and buffer is shared with the original, not copied.

    Under ``torch.autocast(..., dtype)`` the copy computes exactly what the original computes (autocast rounds
    those same weights to ``dtype`` on every call; frozen weights have no autocast cache), without ~600 weight
    casts per UNet step. Extra memory: half the cast layers' float32 size. Layers for which ``skip`` is true are
    not cast: they share the original's weights (for :func:`~ciap_lib.bridge.prepack.prepack_cpu` to pack).
    """
    inside = {id(m) for part in (parts or (module,)) for m in part.modules()}
    memo: dict[int, Any] = {}
    for m in module.modules():
        cast = id(m) in inside and isinstance(m, HALF_LAYERS) and not (skip and skip(m))
        for p in m.parameters(recurse=False):
            memo[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False) if cast else p
        for b in m.buffers(recurse=False):
            memo[id(b)] = b
    return copy.deepcopy(module, memo)


def decode_parts(first_stage: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """The parts of audioldm's ``AutoencoderKL`` that decoding runs: ``post_quant_conv``, ``decoder``, ``vocoder``."""
    return first_stage.post_quant_conv, first_stage.decoder, first_stage.vocoder


def empty_text_tokens() -> dict[str, torch.Tensor]:
    """RoBERTa input for ``""`` exactly as audioldm's tokenizer pads it: (1, 512) ids and mask."""
    ids = torch.full((1, EMPTY_TEXT_LENGTH), PAD_ID, dtype=torch.long)
    ids[0, 0], ids[0, 1] = BOS_ID, EOS_ID
    mask = (ids != PAD_ID).long()
    return {"input_ids": ids, "attention_mask": mask}


class FrozenAudioLDM:
    """A loaded, frozen AudioLDM. Deliberately not an ``nn.Module``: it has no ``.parameters()`` to
    hand to an optimizer. Components: ``ldm`` (audioldm's LatentDiffusion), ``unet`` (its
    DiffusionWrapper), ``vae``, ``vocoder``, ``clap`` (the CLAP model: audio + text towers).

    ``uncond_embedding``: (1, 1, 512) CLAP text embedding of ``""``, the guidance "unconditional" vector.
    """

    embed_dim = 512
    sample_rate = 16000
    #: whether :meth:`sampling_modules` prepacks the bf16 copies for oneDNN where it can
    #: (:func:`~ciap_lib.bridge.prepack.can_prepack`); False keeps them as cast (``bench/generation.py --no-prepack``)
    prepack = True
    #: whether sampling on CUDA replays the UNet call from CUDA graphs (:mod:`ciap_lib.bridge.cuda_graphs`); False
    #: runs it eagerly (``bench/generation.py --no-cuda-graphs``)
    cuda_graphs = True

    def __init__(self, ldm, path: Path, name: str | None, spec: ArchSpec, cache_uncond: bool = True):
        self.ldm = ldm
        self.path = Path(path)
        self.name = name or self.path.stem
        self.spec = spec
        self.unet = ldm.model
        self.vae = ldm.first_stage_model
        self.vocoder = ldm.first_stage_model.vocoder
        self.clap = ldm.cond_stage_model.model
        self.clap_audio_cfg = dict(ldm.cond_stage_model.model_cfg["audio_cfg"])
        self.latent_channels = int(ldm.channels)
        self.latent_f_size = int(ldm.latent_f_size)
        self._freeze()
        # channels_last convolutions are ~15% faster on CPU (bench/generation.py); the layout is not part
        # of the fingerprint (it hashes contiguous copies), and the 1-D vocoder convs are unaffected.
        for module in (self.unet, self.vae):
            module.to(memory_format=torch.channels_last)
        self._digests = tensor_digests(self.ldm)
        self._fingerprint = combine_digests(self._digests)
        self.uncond_embedding = self._uncond(cache_uncond)
        self._half: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}
        #: the captured UNet calls on CUDA (:func:`ciap_lib.bridge.cuda_graphs.graphed_call`), per module and dtype
        self.graphs: dict = {}

    def sampling_modules(self, precision: str = "fp32") -> tuple[torch.nn.Module, torch.nn.Module]:
        """``(unet, first_stage)`` to sample and decode with: audioldm's ``DiffusionWrapper`` and its
        ``AutoencoderKL`` (which holds the vocoder). ``"fp32"``: the frozen modules themselves. ``"bf16"`` /
        ``"fp16"``: :func:`half_weight_copy` of both (UNet, VAE decoder and vocoder layers cast once, on first use
        on this device; ~0.5 GB for s-full; ~8% faster per UNet step on 2 cores), for use under autocast to that
        dtype; on CUDA of the UNet alone, with the frozen first stage (decoding runs in float32 there). On a CPU with native bf16, the bf16 copies' convolution and linear layers are also reordered once
        for oneDNN (:func:`~ciap_lib.bridge.prepack.prepack_cpu`). The copies derive from the frozen weights, which
        :meth:`assert_unchanged` checks."""
        if precision == "fp32":
            return self.unet, self.vae
        if precision not in HALF_DTYPES:
            raise ValueError(f"precision: {precision!r} is not one of ('bf16', 'fp16', 'fp32')")
        if precision not in self._half:
            dtype = HALF_DTYPES[precision]
            pack = self.prepack and can_prepack(self.device, dtype)
            unet = half_weight_copy(self.unet, dtype, skip=packable if pack else None)
            # no decoder copy where decoding runs in float32 anyway (CUDA: ciap_lib.bridge.devices.decode_dtype)
            from ciap_lib.bridge.devices import decode_dtype

            first_stage = (self.vae if decode_dtype(self.device, dtype) is None else
                           half_weight_copy(self.vae, dtype, decode_parts(self.vae), skip=packable if pack else None))
            if pack:
                prepack_cpu(unet, dtype)
                prepack_cpu(first_stage, dtype, decode_parts(first_stage))
            self._half[precision] = (unet, first_stage)
        return self._half[precision]

    # -- frozen, provably ------------------------------------------------------------------------
    def _freeze(self) -> None:
        from audioldm.ldm import disabled_train

        for p in self.ldm.parameters():
            p.requires_grad_(False)
        self.ldm.eval()
        for m in self.ldm.modules():  # no .train(True) can flip dropout/BN back on
            m.train = disabled_train.__get__(m)
            # gradient checkpointing only saves activations for a backward pass, which never comes: without it
            # a block computes the same ops (its forward already ran under no_grad), minus audioldm's
            # CheckpointFunction.apply over all the block's parameters (4% of a float32 UNet step)
            for flag in ("checkpoint", "use_checkpoint"):
                if isinstance(getattr(m, flag, None), bool):
                    setattr(m, flag, False)

    @property
    def reference_fingerprint(self) -> str:
        """The state-dict fingerprint taken at load."""
        return self._fingerprint

    def fingerprint(self) -> str:
        """The state-dict fingerprint now (a full SHA-256 pass; ~0.9 s for audioldm-s-full on 2 cores)."""
        return state_fingerprint(self.ldm)

    #: state-dict prefixes of the parts ``assert_unchanged(parts=...)`` can check on their own
    PARTS: dict[str, str] = {"unet": "model.", "vae": "first_stage_model.", "clap": "cond_stage_model."}

    def assert_unchanged(self, parts: tuple[str, ...] | None = None) -> None:
        """Raise ``RuntimeError`` unless every weight is frozen, the model is in eval mode and the
        state dict still has the fingerprint taken at load. ``parts`` (keys of :attr:`PARTS`; default:
        everything) restricts the hash to those components, e.g. the ones a generation ran
        (``("unet", "vae")``: UNet, VAE and vocoder, 2/3 of audioldm-s-full's weights)."""
        trainable = [n for n, p in self.ldm.named_parameters() if p.requires_grad]
        if trainable:
            raise RuntimeError(f"frozen AudioLDM has trainable parameters: {trainable[:5]}")
        training = [n for n, m in self.ldm.named_modules() if m.training]
        if training:
            raise RuntimeError(f"frozen AudioLDM has modules in training mode: {training[:5]}")
        if parts is None:
            now = self.fingerprint()
            if now != self._fingerprint:
                raise RuntimeError(f"frozen AudioLDM weights changed: fingerprint {now[:16]} != {self._fingerprint[:16]} at load")
            return
        unknown = set(parts) - set(self.PARTS)
        if unknown:
            raise ValueError(f"parts: {sorted(unknown)} not among {sorted(self.PARTS)}")
        prefixes = tuple(self.PARTS[p] for p in parts)
        now = tensor_digests(self.ldm, prefixes)
        then = {k: v for k, v in self._digests.items() if k.startswith(prefixes)}
        if now != then:
            changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
            raise RuntimeError(f"frozen AudioLDM weights changed since load: {changed[:5]}")

    @property
    def device(self) -> torch.device:
        return next(self.ldm.parameters()).device

    def to(self, device: str | torch.device) -> "FrozenAudioLDM":
        self.ldm.to(device)
        self._half, self.graphs = {}, {}
        self.uncond_embedding = self.uncond_embedding.to(device)
        return self

    # -- CLAP ----------------------------------------------------------------------------------
    def _uncond(self, cache: bool) -> torch.Tensor:
        side = self.path.with_name(self.path.name + ".uncond.pt")
        if cache and side.is_file():
            try:
                obj = safe_load(side)
                if obj.get("fingerprint") == self._fingerprint:
                    return obj["embedding"].reshape(1, 1, self.embed_dim)
            except Exception:  # noqa: BLE001 - a bad (or refused) cache is recomputed
                pass
        with torch.inference_mode():
            emb = self.clap.get_text_embedding(empty_text_tokens()).reshape(1, 1, self.embed_dim).clone()
        if cache:
            try:
                with atomic_path(side) as tmp:
                    torch.save({"fingerprint": self._fingerprint, "embedding": emb}, tmp)
            except OSError as e:  # read-only checkpoint folder: fine, just not cached
                log.info("cannot cache the '' embedding beside %s: %s", self.path, e)
        return emb

    @property
    def clap_window_samples(self) -> int:
        """How many leading samples (at ``sample_rate``) of a clip :meth:`clap_audio_embed` can see: its 10 s
        window plus a margin wider than the resampling filter. Cutting a clip to this many samples changes nothing
        in its embedding, and lets long clips of different lengths be embedded in one batch."""
        clap_sr = int(self.clap_audio_cfg["sample_rate"])
        return -(-int(self.clap_audio_cfg["clip_samples"]) * self.sample_rate // clap_sr) + 64

    def clap_audio_embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) 16 kHz waveforms -> (B, 512) unit CLAP audio embeddings (frozen audio tower).

        Deterministic: clips longer than 10 s are cut to their first 10 s (CLAP's own window;
        audioldm would pick random chunks), shorter ones repeat-padded as audioldm does.
        """
        import torchaudio
        from audioldm.clap.training.data import get_audio_features

        if waveform.dim() != 2 or waveform.shape[-1] == 0:
            raise ValueError(f"clap_audio_embed: expected a (B, T>0) waveform, got {tuple(waveform.shape)}")
        max_len = int(self.clap_audio_cfg["clip_samples"])
        with torch.inference_mode():
            x = waveform.detach().float().to(self.device)
            x = torchaudio.functional.resample(x, orig_freq=self.sample_rate, new_freq=int(self.clap_audio_cfg["sample_rate"]))
            x = x[:, :max_len]
            feats = [get_audio_features({}, xi, max_len, data_truncating="fusion", data_filling="repeatpad",
                                        audio_cfg=self.clap_audio_cfg) for xi in x]
            emb = self.clap.get_audio_embedding(feats)
        return F.normalize(emb.float(), dim=-1)

    def __repr__(self) -> str:
        return f"FrozenAudioLDM({self.name!r}, path={str(self.path)!r}, fingerprint={self._fingerprint[:12]})"
