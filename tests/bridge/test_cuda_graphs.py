"""The CPU side of ciap_lib.bridge.cuda_graphs: the timestep embedding a captured UNet call uses is bitwise
audioldm's, and the swap is undone. Capture and replay themselves need a GPU: tests/bridge/test_cuda.py."""
from __future__ import annotations

import pytest
import torch

from ciap_lib.bridge import cuda_graphs as G
from ciap_lib.bridge import sampling as S


@pytest.mark.parametrize("dim", [32, 33, 128, 320])
def test_timestep_embedding_is_bitwise_audioldms(dim):
    from audioldm.latent_diffusion.util import timestep_embedding

    t = torch.tensor([0, 1, 37, 500, 999], dtype=torch.long)
    assert torch.equal(G.timestep_embedding(t, dim), timestep_embedding(t, dim))
    tf = torch.tensor([0.5, 123.25, 998.75])
    assert torch.equal(G.timestep_embedding(tf, dim, max_period=1000), timestep_embedding(tf, dim, max_period=1000))
    assert torch.equal(G.timestep_embedding(t, dim, repeat_only=True), timestep_embedding(t, dim, repeat_only=True))


def test_the_unet_uses_the_cached_frequencies_only_inside_the_block(tiny_audioldm, unit_embeds):
    import audioldm.latent_diffusion.openaimodel as openaimodel

    original = openaimodel.timestep_embedding
    a = tiny_audioldm
    x, c = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(1)), unit_embeds(2)
    with torch.inference_mode():
        eager = S.predict_noise(a, x, torch.tensor(500), c, 2.5)
        with G.cached_timestep_frequencies():
            assert openaimodel.timestep_embedding is G.timestep_embedding
            swapped = S.predict_noise(a, x, torch.tensor(500), c, 2.5)
    assert openaimodel.timestep_embedding is original
    assert torch.equal(swapped, eager)
    with pytest.raises(RuntimeError, match="boom"), G.cached_timestep_frequencies():
        raise RuntimeError("boom")
    assert openaimodel.timestep_embedding is original


def test_cpu_sampling_makes_no_graphs_and_moving_the_model_drops_them(tiny_audioldm, unit_embeds):
    a = tiny_audioldm
    assert a.cuda_graphs is True                       # the default: CUDA sampling replays graphs
    with torch.inference_mode():
        S.predict_noise(a, torch.randn(1, 8, 16, 16), torch.tensor(10), unit_embeds(1), 2.5)
    assert a.graphs == {}
    a.graphs[("stale", None)] = object()
    a.to("cpu")
    assert a.graphs == {}
