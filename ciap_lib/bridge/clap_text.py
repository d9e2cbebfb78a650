"""CLAP text embeddings of the frozen AudioLDM's own text branch, from a LOCAL RoBERTa tokenizer, cached.

Text is tokenized exactly as AudioLDM's text conditioning does (``CLAPAudioEmbeddingClassifierFreev2.tokenizer``:
``padding="max_length", truncation=True, max_length=512``) and embedded by ``CLAP.get_text_embedding`` (RoBERTa's
pooled output, the text projection, L2-normalized): deterministic, and never through the wrapper's ``forward``.

Nothing is downloaded. The tokenizer is roberta-base's, in a folder (default: ``roberta-base`` beside the AudioLDM
checkpoint, see :func:`default_tokenizer_dir`) holding ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``.
Make one on a machine with a network::

    python -c "from transformers import RobertaTokenizer; RobertaTokenizer.from_pretrained('roberta-base').save_pretrained('roberta-base')"

and copy the folder next to the checkpoint (or pass its path: ``--tokenizer-dir`` / ``tokenizer_dir=``).

Cache: ``<checkpoint>.clap_text/<sha256(text)[:32]>.pt`` holding the text, its token ids, the checkpoint's
fingerprint and the (1, 512) embedding; used only when all three match (like ``<checkpoint>.uncond.pt``, the
``""`` vector). Written atomically; a read-only folder just means no cache.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ciap_lib.atomic import atomic_path
from ciap_lib.bridge.frozen import FrozenAudioLDM

log = logging.getLogger(__name__)

#: audioldm's tokenizer call (audioldm/clap/encoders.py, CLAPAudioEmbeddingClassifierFreev2.tokenizer)
TOKENIZER_KWARGS: dict[str, Any] = dict(padding="max_length", truncation=True, max_length=512, return_tensors="pt")
#: the folder name looked for beside the AudioLDM checkpoint
DEFAULT_TOKENIZER_FOLDER = "roberta-base"
SAVE_COMMAND = ('python -c "from transformers import RobertaTokenizer; '
                "RobertaTokenizer.from_pretrained('roberta-base').save_pretrained('{dir}')\"")


class TokenizerNotFoundError(ValueError):
    """No usable local RoBERTa tokenizer; the message says where to put one and how to make it."""


def default_tokenizer_dir(checkpoint: str | os.PathLike) -> Path:
    """``<folder of the AudioLDM checkpoint>/roberta-base``."""
    return Path(checkpoint).parent / DEFAULT_TOKENIZER_FOLDER


def _how_to(folder: Path) -> str:
    return (f"Text features (negative_text, text: mix entries) need roberta-base's tokenizer in a local folder; "
            f"nothing is downloaded. On a machine with a network run {SAVE_COMMAND.format(dir=folder.name)} and copy "
            f"that folder to {folder} (or pass its path with --tokenizer-dir / tokenizer_dir=).")


def tokenizer_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` holds no tokenizer (None when it holds ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``)."""
    p = Path(folder)
    if not p.is_dir():
        return f"no tokenizer folder at {p}"
    if (p / "tokenizer.json").is_file() or ((p / "vocab.json").is_file() and (p / "merges.txt").is_file()):
        return None
    return f"{p} holds neither tokenizer.json nor vocab.json + merges.txt"


def check_tokenizer_dir(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path, or :class:`TokenizerNotFoundError` saying where to put a tokenizer and how to get it."""
    problem = tokenizer_problem(folder)
    if problem:
        raise TokenizerNotFoundError(f"{problem}. {_how_to(Path(folder))}")
    return Path(folder)


@functools.lru_cache(maxsize=4)
def _load(folder: str, stamp: tuple) -> Any:
    from transformers import RobertaTokenizer

    return RobertaTokenizer.from_pretrained(folder, local_files_only=True)


def load_tokenizer(folder: str | os.PathLike, vocab_size: int | None = None):
    """The ``RobertaTokenizer`` saved in ``folder`` (``from_pretrained(folder, local_files_only=True)``; loaded once
    per folder and file state). ``vocab_size``: the text branch's, which the tokenizer must match."""
    p = check_tokenizer_dir(folder).resolve()
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(p.iterdir()) if f.is_file())
    try:
        tok = _load(str(p), stamp)
    except Exception as e:  # noqa: BLE001 - a damaged folder: say which, and how to remake it
        raise TokenizerNotFoundError(f"the tokenizer in {p} cannot be loaded ({type(e).__name__}: {str(e)[:300]}). "
                                     + _how_to(p)) from e
    if vocab_size is not None and len(tok) != vocab_size:
        raise TokenizerNotFoundError(
            f"the tokenizer in {p} has {len(tok)} tokens but the checkpoint's CLAP text branch has {vocab_size} "
            f"(roberta-base: 50265): it is not this model's tokenizer. " + _how_to(p))
    return tok


def tokenize(tokenizer: Any, text: str) -> dict[str, torch.Tensor]:
    """``{"input_ids": (512,), "attention_mask": (512,)}`` as audioldm's tokenizer method returns them."""
    result = tokenizer(text, **TOKENIZER_KWARGS)
    return {k: v.squeeze(0) for k, v in result.items()}


def cache_file(audioldm: FrozenAudioLDM, text: str) -> Path:
    p = audioldm.path
    return p.with_name(p.name + ".clap_text") / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.pt"


def clap_text_embedding(audioldm: FrozenAudioLDM, text: str, tokenizer_dir: str | os.PathLike | None = None,
                        cache: bool = True) -> torch.Tensor:
    """(1, 1, 512) unit CLAP text embedding of ``text`` (CPU, float32), as AudioLDM's text conditioning computes it.

    ``tokenizer_dir``: the local RoBERTa tokenizer (default :func:`default_tokenizer_dir` of the checkpoint);
    :class:`TokenizerNotFoundError` (a ``ValueError``) when there is none.
    """
    folder = Path(tokenizer_dir) if tokenizer_dir is not None else default_tokenizer_dir(audioldm.path)
    vocab = int(audioldm.spec.roberta["vocab_size"])
    tokens = tokenize(load_tokenizer(folder, vocab), text)
    ids = tokens["input_ids"].to(torch.long).cpu()
    side = cache_file(audioldm, text)
    if cache and side.is_file():
        try:
            obj = torch.load(side, map_location="cpu", weights_only=True)
            if (obj.get("fingerprint") == audioldm.reference_fingerprint and obj.get("text") == text
                    and torch.equal(obj["input_ids"], ids)):
                return obj["embedding"].float().reshape(1, 1, audioldm.embed_dim)
        except Exception:  # noqa: BLE001 - a bad cache entry is recomputed
            pass
    with torch.inference_mode():
        emb = audioldm.clap.get_text_embedding(dict(tokens))
    emb = emb.detach().float().cpu().reshape(1, 1, audioldm.embed_dim).clone()
    if cache:
        try:
            side.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(side) as tmp:
                torch.save({"fingerprint": audioldm.reference_fingerprint, "text": text, "input_ids": ids,
                            "embedding": emb}, tmp)
        except OSError as e:  # read-only checkpoint folder: fine, just not cached
            log.info("cannot cache the CLAP text embedding of %r beside %s: %s", text, audioldm.path, e)
    return emb
