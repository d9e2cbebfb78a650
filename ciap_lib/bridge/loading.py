"""Load an original AudioLDM checkpoint through the ``audioldm`` package's own classes, offline and frozen.

What differs from ``audioldm.pipeline.build_model``:

* no network: the CLAP text branch (RoBERTa) is built from its config (roberta-base's, or the shape
  found in the checkpoint) instead of ``from_pretrained``; its weights come from the checkpoint anyway.
  No tokenizer is built: the only text we ever need is ``""``, whose RoBERTa ids are fixed.
* the architecture (s / m / l, and the tiny test model) is read off the checkpoint's tensor shapes;
* exactly the known stale keys (:data:`KNOWN_STALE_KEYS`) are dropped, then ``strict=True`` loading;
* the EMA weights are copied into the UNet (what ``generate_sample``'s ``ema_scope`` does), then the
  EMA copy is released;
* everything is frozen: ``requires_grad=False``, eval mode, and a state-dict fingerprint taken at load.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ciap_lib.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

#: registry names -> default file name under ``ckpt_dir``
MODEL_NAMES: tuple[str, ...] = ("audioldm-s-full", "audioldm-s-full-v2", "audioldm-m-full", "audioldm-l-full")
DEFAULT_MODEL = "audioldm-s-full"

#: Keys original checkpoints hold that current transformers no longer keeps as persistent buffers
#: (AudioLDM issues #95, #105, #117). Only these are dropped, and only when the model lacks them.
KNOWN_STALE_KEYS: tuple[str, ...] = ("cond_stage_model.model.text_branch.embeddings.position_ids",)

#: roberta-base's architecture (its config.json), so the text branch can be built without the hub.
ROBERTA_BASE: dict[str, Any] = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=514, type_vocab_size=1,
    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)
#: RoBERTa ids of "" as audioldm's tokenizer produces them: <s></s> then <pad> up to 512.
EMPTY_TEXT_LENGTH = 512
BOS_ID, EOS_ID, PAD_ID = 0, 2, 1

_TEXT = "cond_stage_model.model.text_branch."


class AudioLDMNotFoundError(FileNotFoundError):
    """The AudioLDM checkpoint is missing, truncated or corrupt. The message says where to put it."""


class AudioLDMCheckpointError(RuntimeError):
    """The file is a checkpoint, but its keys or shapes do not match audioldm's model."""


def _download_hint(path: Path, name: str | None) -> str:
    target = name or "audioldm-s-full"
    return (f"Put the original AudioLDM checkpoint at {path} "
            f"(or pass its path with --audioldm / load_audioldm(path)). With a network, fetch it with: "
            f"python -m ciap_lib download {target} --ckpt-dir {path.parent}")


def resolve_checkpoint(name_or_path: str | os.PathLike = DEFAULT_MODEL, ckpt_dir: str | os.PathLike = "ckpt"
                       ) -> tuple[Path, str | None]:
    """``("audioldm-s-full", "ckpt")`` -> ``(ckpt/audioldm-s-full.ckpt, "audioldm-s-full")``; a path -> ``(path, None)``."""
    s = str(name_or_path)
    if s in MODEL_NAMES:
        return Path(ckpt_dir) / f"{s}.ckpt", s
    if s.endswith(".ckpt") or os.sep in s or Path(s).exists():
        return Path(s), None
    raise ValueError(f"audioldm: {s!r} is neither a checkpoint name ({', '.join(MODEL_NAMES)}) nor a path")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of a checkpoint is recorded: ``<file>.sha256`` (``sha256sum`` format)."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def write_sidecar(path: str | os.PathLike, digest: str | None = None) -> Path:
    p = Path(path)
    digest = digest or sha256_file(p)
    side = sidecar_path(p)
    return atomic_write_text(side, f"{digest}  {p.name}\n")


def read_sidecar(path: str | os.PathLike) -> str | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    text = side.read_text().split()
    return text[0].lower() if text else None


def read_state_dict(path: Path, name: str | None = None) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an original (Lightning-format) checkpoint; clear error if unreadable."""
    if not path.is_file():
        raise AudioLDMNotFoundError(f"AudioLDM checkpoint not found: {path}. " + _download_hint(path, name))
    expected = read_sidecar(path)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise AudioLDMNotFoundError(
                f"AudioLDM checkpoint {path} is corrupt: its SHA-256 {actual[:16]}... does not match the "
                f"recorded {expected[:16]}... in {sidecar_path(path)}. Delete both and download again. "
                + _download_hint(path, name))
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as first:  # noqa: BLE001 - Lightning pickles other objects beside the weights
            if "weights_only" not in str(first) and "Unsupported global" not in str(first):
                raise
            log.warning("%s holds non-tensor objects; loading it with weights_only=False", path)
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise AudioLDMNotFoundError(
            f"AudioLDM checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); it is probably "
            f"truncated or corrupt. " + _download_hint(path, name)) from e
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise AudioLDMNotFoundError(
            f"{path} opens, but holds no 'state_dict': it is not an original AudioLDM checkpoint. "
            + _download_hint(path, name))
    return sd


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


#: layers whose weights bf16 autocast casts on every call (and so can be cast once, ahead of time)
_AUTOCAST_BF16_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.Linear)


def bf16_weight_copy(module: torch.nn.Module, parts: tuple[torch.nn.Module, ...] | None = None) -> torch.nn.Module:
    """A copy of a frozen ``module`` for bf16-autocast inference: the weights and biases of the
    convolution and linear layers inside ``parts`` (default: all of ``module``) are cast to bfloat16 once;
    every other parameter and buffer is shared with the original, not copied.

    Under ``torch.autocast("cpu", torch.bfloat16)`` the copy computes exactly what the original computes
    (autocast rounds those same weights to bfloat16 on every call; frozen weights have no autocast cache),
    without ~600 weight casts per UNet step. Extra memory: half the cast layers' float32 size.
    """
    inside = {id(m) for part in (parts or (module,)) for m in part.modules()}
    memo: dict[int, Any] = {}
    for m in module.modules():
        cast = id(m) in inside and isinstance(m, _AUTOCAST_BF16_LAYERS)
        for p in m.parameters(recurse=False):
            memo[id(p)] = torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False) if cast else p
        for b in m.buffers(recurse=False):
            memo[id(b)] = b
    return copy.deepcopy(module, memo)


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
        self._bf16: tuple[torch.nn.Module, torch.nn.Module] | None = None

    def sampling_modules(self, precision: str = "fp32") -> tuple[torch.nn.Module, torch.nn.Module]:
        """``(unet, first_stage)`` to sample and decode with: audioldm's ``DiffusionWrapper`` and its
        ``AutoencoderKL`` (which holds the vocoder). ``"fp32"``: the frozen modules themselves. ``"bf16"``:
        :func:`bf16_weight_copy` of both (UNet, VAE decoder and vocoder layers cast once, on first use;
        ~0.5 GB for s-full; ~8% faster per UNet step on 2 cores), for use under bf16 autocast. The copies
        derive from the frozen weights, which :meth:`assert_unchanged` checks."""
        if precision == "fp32":
            return self.unet, self.vae
        if precision != "bf16":
            raise ValueError(f"precision: {precision!r} is not one of ('bf16', 'fp32')")
        if self._bf16 is None:
            vae = self.vae
            self._bf16 = (bf16_weight_copy(self.unet),
                          bf16_weight_copy(vae, (vae.post_quant_conv, vae.decoder, vae.vocoder)))
        return self._bf16

    # -- frozen, provably ------------------------------------------------------------------------
    def _freeze(self) -> None:
        from audioldm.ldm import disabled_train

        for p in self.ldm.parameters():
            p.requires_grad_(False)
        self.ldm.eval()
        for m in self.ldm.modules():  # no .train(True) can flip dropout/BN back on
            m.train = disabled_train.__get__(m)

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
        self._bf16 = None
        self.uncond_embedding = self.uncond_embedding.to(device)
        return self

    # -- CLAP ----------------------------------------------------------------------------------
    def _uncond(self, cache: bool) -> torch.Tensor:
        side = self.path.with_name(self.path.name + ".uncond.pt")
        if cache and side.is_file():
            try:
                obj = torch.load(side, map_location="cpu", weights_only=True)
                if obj.get("fingerprint") == self._fingerprint:
                    return obj["embedding"].reshape(1, 1, self.embed_dim)
            except Exception:  # noqa: BLE001 - a bad cache is recomputed
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


def load_audioldm(name_or_path: str | os.PathLike = DEFAULT_MODEL, ckpt_dir: str | os.PathLike = "ckpt",
                  device: str | torch.device = "cpu", cache_uncond: bool = True) -> FrozenAudioLDM:
    """Load an original AudioLDM checkpoint (by registry name under ``ckpt_dir``, or by path), offline.

    Raises :class:`AudioLDMNotFoundError` (missing / unreadable / SHA-256 mismatch with the sidecar)
    and :class:`AudioLDMCheckpointError` (keys or shapes not matching audioldm's model; strict).
    """
    path, name = resolve_checkpoint(name_or_path, ckpt_dir)
    sd = read_state_dict(path, name)
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


def spec_dict(spec: ArchSpec) -> dict:
    return asdict(spec)
