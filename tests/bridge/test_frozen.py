"""The frozen runtime: no trainable weights, eval mode that cannot be switched off, fingerprints, the ''
embedding."""
from __future__ import annotations

import torch

from ciap_lib.bridge.frozen import empty_text_tokens


def test_loaded_model_is_frozen_and_fingerprinted(tiny_audioldm):
    a = tiny_audioldm
    assert all(not p.requires_grad for p in a.ldm.parameters())
    assert not any(m.training for m in a.ldm.modules())
    a.ldm.train()  # cannot switch it back on
    assert not any(m.training for m in a.ldm.modules())
    assert not hasattr(a, "parameters")  # nothing to hand to an optimizer
    assert a.fingerprint() == a.reference_fingerprint
    a.assert_unchanged()


def test_uncond_embedding_is_clap_text_of_empty_string(tiny_audioldm):
    a = tiny_audioldm
    assert a.uncond_embedding.shape == (1, 1, 512)
    assert torch.allclose(a.uncond_embedding.norm(), torch.tensor(1.0), atol=1e-5)
    toks = empty_text_tokens()
    assert toks["input_ids"][0, :3].tolist() == [0, 2, 1] and toks["input_ids"].shape == (1, 512)
    with torch.no_grad():
        again = a.clap.get_text_embedding(empty_text_tokens())
    assert torch.allclose(again.reshape(1, 1, 512), a.uncond_embedding, atol=1e-6)
    cache = a.path.with_name(a.path.name + ".uncond.pt")
    assert cache.is_file()


def test_crafted_uncond_cache_is_not_unpickled_but_recomputed(tiny_audioldm, tmp_path):
    import copy

    from ciap_lib.safe_load import safe_load
    from fixtures.crafted import crafted_file

    a = copy.copy(tiny_audioldm)  # shallow: same frozen model, its own path
    a.path = tmp_path / "x.ckpt"
    cache = tmp_path / "x.ckpt.uncond.pt"
    marker = tmp_path / "pwned"
    crafted_file(cache, marker, obj={"fingerprint": a.reference_fingerprint, "embedding": torch.zeros(512)})
    emb = a._uncond(cache=True)
    assert not marker.exists()
    assert torch.allclose(emb, tiny_audioldm.uncond_embedding, atol=1e-6)
    assert torch.equal(safe_load(cache)["embedding"], emb)  # replaced by a good cache
