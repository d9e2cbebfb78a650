"""fused_attention: audioldm's CrossAttention through torch's SDPA, the same function, undone on exit."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ciap_lib.bridge import attention as A


def _cross_attentions(unet):
    from audioldm.latent_diffusion.attention import CrossAttention

    return [m for m in unet.modules() if isinstance(m, CrossAttention)]


def test_sdpa_attention_equals_audioldms_attention(tiny_audioldm):
    mods = _cross_attentions(tiny_audioldm.unet)
    assert mods
    torch.manual_seed(0)
    for m in mods[:2]:
        d = m.n_heads * m.d_head
        for kv_len in (1, 48):                                   # film-style context, and self-attention
            q, k, v = torch.randn(3, 48, d), torch.randn(3, kv_len, d), torch.randn(3, kv_len, d)
            with torch.inference_mode():
                ours, theirs = A.sdpa_attention(m, q, k, v), m.normal_attention(q, k, v)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_the_unet_runs_sdpa_inside_the_block_and_audioldms_code_after(tiny_audioldm, monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    unet = tiny_audioldm.unet
    torch.manual_seed(1)
    x, c, ts = torch.randn(2, 8, 32, 16), F.normalize(torch.randn(2, 1, 512), dim=-1), torch.full((2,), 300)
    with torch.inference_mode():
        with A.fused_attention(unet):
            fused = unet(x, ts, c_film=[c])
        assert len(calls) == len(_cross_attentions(unet))       # every attention layer, once
        plain = unet(x, ts, c_film=[c])
    assert len(calls) == len(_cross_attentions(unet))           # none after the block
    assert not any("normal_attention" in vars(m) for m in _cross_attentions(unet))
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)
