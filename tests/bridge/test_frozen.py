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


def test_no_gradient_checkpointing_at_inference_and_the_same_noise_prediction(tiny_audioldm_ckpt):
    """Loading turns audioldm's gradient-checkpointing flags off (inference never runs a backward pass); the UNet
    then predicts bitwise the same noise as with them on."""
    from ciap_lib.bridge import load_audioldm

    a = load_audioldm(tiny_audioldm_ckpt, cache_uncond=False)
    flagged = [m for m in a.ldm.modules() if isinstance(getattr(m, "checkpoint", None), bool)
               or isinstance(getattr(m, "use_checkpoint", None), bool)]
    assert any(hasattr(m, "checkpoint") for m in flagged)            # the transformer blocks exist in the tiny UNet
    assert not any(getattr(m, "checkpoint", False) or getattr(m, "use_checkpoint", False) for m in flagged)
    torch.manual_seed(0)
    x, c = torch.randn(2, 8, 32, 16), torch.nn.functional.normalize(torch.randn(2, 1, 512), dim=-1)
    ts = torch.full((2,), 500)
    with torch.inference_mode():
        off = a.unet(x, ts, c_film=[c])
        for m in flagged:
            for flag in ("checkpoint", "use_checkpoint"):
                if hasattr(m, flag):
                    setattr(m, flag, True)
        on = a.unet(x, ts, c_film=[c])
    assert torch.equal(off, on)
