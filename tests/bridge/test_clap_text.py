"""CLAP text embeddings: a local tokenizer saved in the real format, AudioLDM's own tokenization and text
conditioning, the cache beside the checkpoint, and the errors when the tokenizer is missing or wrong."""
from __future__ import annotations

import shutil

import pytest
import torch

from ciap_lib.bridge import TokenizerNotFoundError, clap_text_embedding
from ciap_lib.bridge import clap_text as T
from ciap_lib.bridge.frozen import empty_text_tokens


def test_tokenizes_as_audioldm_and_empty_text_is_the_uncond_vector(tiny_audioldm, tiny_tokenizer_dir):
    tok = T.load_tokenizer(tiny_tokenizer_dir, vocab_size=16)
    empty = T.tokenize(tok, "")
    assert torch.equal(empty["input_ids"], empty_text_tokens()["input_ids"][0])  # <s></s> then <pad> to 512
    assert torch.equal(empty["attention_mask"], empty_text_tokens()["attention_mask"][0])
    e = clap_text_embedding(tiny_audioldm, "", tiny_tokenizer_dir, cache=False)
    assert e.shape == (1, 1, 512)
    torch.testing.assert_close(e, tiny_audioldm.uncond_embedding, rtol=0, atol=1e-6)
    speech = T.tokenize(tok, "speech")["input_ids"]
    assert speech[:8].tolist() == [0, 4, 5, 15, 7, 8, 2, 1] and speech.shape == (512,)


def test_equals_audioldms_own_text_conditioning(tiny_audioldm, tiny_tokenizer_dir):
    """AudioLDM's CLAP wrapper in text mode (its tokenizer call, get_text_embedding), with the random swap to
    the unconditional vector switched off, gives the same vector."""
    wrapper = tiny_audioldm.ldm.cond_stage_model
    saved = (wrapper.tokenize, wrapper.embed_mode, wrapper.unconditional_prob)
    wrapper.tokenize = T.load_tokenizer(tiny_tokenizer_dir)
    wrapper.embed_mode, wrapper.unconditional_prob = "text", 0.0
    try:
        with torch.no_grad():
            theirs = wrapper(["rain speech"])
    finally:
        wrapper.tokenize, wrapper.embed_mode, wrapper.unconditional_prob = saved
    ours = clap_text_embedding(tiny_audioldm, "rain speech", tiny_tokenizer_dir, cache=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert (ours - tiny_audioldm.uncond_embedding).norm() > 1e-3
    again = clap_text_embedding(tiny_audioldm, "rain speech", tiny_tokenizer_dir, cache=False)
    assert torch.equal(ours, again)                                # deterministic
    tiny_audioldm.assert_unchanged(("clap",))


def test_cached_beside_the_checkpoint_keyed_by_text_and_fingerprint(tiny_audioldm_ckpt, tiny_tokenizer_dir,
                                                                     tmp_path, monkeypatch):
    from ciap_lib.bridge import load_audioldm

    ckpt = tmp_path / "copy.ckpt"
    shutil.copy(tiny_audioldm_ckpt, ckpt)
    a = load_audioldm(ckpt, cache_uncond=False)
    first = clap_text_embedding(a, "rain", tiny_tokenizer_dir)
    side = T.cache_file(a, "rain")
    assert side.is_file() and side.parent == tmp_path / "copy.ckpt.clap_text"
    assert [p.name for p in side.parent.iterdir()] == [side.name]  # atomic: no temporary left behind

    def no_text_branch(*_a, **_k):
        raise AssertionError("the cached embedding should have been used")

    monkeypatch.setattr(a.clap, "get_text_embedding", no_text_branch)
    assert torch.equal(clap_text_embedding(a, "rain", tiny_tokenizer_dir), first)
    with pytest.raises(AssertionError, match="cached"):         # another text is not in the cache
        clap_text_embedding(a, "speech", tiny_tokenizer_dir)
    obj = torch.load(side, weights_only=True)                     # another checkpoint's entry is not used
    obj["fingerprint"] = "0" * 64
    torch.save(obj, side)
    with pytest.raises(AssertionError, match="cached"):
        clap_text_embedding(a, "rain", tiny_tokenizer_dir)


def test_missing_or_wrong_tokenizer_is_a_clear_error(tiny_audioldm, tiny_tokenizer_dir, tmp_path):
    with pytest.raises(TokenizerNotFoundError) as e:
        clap_text_embedding(tiny_audioldm, "speech", tmp_path / "nowhere", cache=False)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "no tokenizer folder at" in msg and "nowhere" in msg
    assert "RobertaTokenizer.from_pretrained('roberta-base').save_pretrained(" in msg
    assert "--tokenizer-dir" in msg and "nothing is downloaded" in msg
    # the default place: roberta-base beside the checkpoint
    assert T.default_tokenizer_dir(tiny_audioldm.path) == tiny_audioldm.path.parent / "roberta-base"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerNotFoundError, match="neither tokenizer.json nor vocab.json"):
        T.load_tokenizer(empty)
    with pytest.raises(TokenizerNotFoundError, match="has 16 tokens but the checkpoint's CLAP text branch has 50265"):
        T.load_tokenizer(tiny_tokenizer_dir, vocab_size=50265)
