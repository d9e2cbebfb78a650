"""VGGish for fad_vggish: a released-format weights file (random weights) loads through the real path, the
final ReLU is gone, examples are torchvggish's 0.96 s log-mel patches, batching does not change embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ciap_lib.bridge.metric_weights import VGGISH, MetricWeightsError
from ciap_lib.bridge.vggish import VGGISH_DIM, build_vggish, vggish_embeddings, vggish_examples


@pytest.fixture(scope="module")
def vggish(metric_weights):
    return build_vggish(metric_weights["dir"] / VGGISH.filename)


def test_loaded_weights_equal_saved(vggish, metric_weights):
    got = vggish.vgg.state_dict()
    saved = metric_weights["vggish"]
    assert set(got) == set(saved)
    assert all(torch.equal(got[k], saved[k]) for k in saved)
    assert not vggish.training and not any(p.requires_grad for p in vggish.parameters())


def test_no_final_relu_and_no_pca(vggish):
    layers = list(vggish.vgg.embeddings.children())
    assert isinstance(layers[-1], torch.nn.Linear) and layers[-1].out_features == VGGISH_DIM
    assert vggish.vgg.postprocess is False
    g = torch.Generator().manual_seed(0)
    emb = vggish_embeddings(vggish, [torch.randn(32000, generator=g) * 0.1])[0]
    assert emb.shape == (2, VGGISH_DIM) and (emb < 0).any()          # a ReLU output would be >= 0


def test_examples_match_torchvggish():
    from torchvggish import vggish_input

    t = torch.arange(48000) / 16000
    w = (0.3 * torch.sin(2 * np.pi * 440 * t)).float()
    ex = vggish_examples(w)
    assert ex.shape == (3, 1, 96, 64) and not ex.requires_grad
    assert torch.equal(ex, vggish_input.waveform_to_examples(w.numpy(), 16000).detach())
    assert vggish_examples(w[:15599]).shape[0] == 0 and vggish_examples(w[:15600]).shape[0] == 1
    assert vggish_examples(w[:100]).shape == (0, 1, 96, 64)


def test_batching_does_not_change_embeddings(vggish):
    g = torch.Generator().manual_seed(1)
    clips = [torch.randn(n, generator=g) * 0.1 for n in (32000, 47000, 16000)]
    a = vggish_embeddings(vggish, clips, batch_size=1)
    b = vggish_embeddings(vggish, clips, batch_size=64)
    assert [e.shape[0] for e in a] == [2, 3, 1]       # whole 0.96 s examples (1 + (T - 400) // 160) // 96
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))


def test_bad_file_named(tmp_path):
    bad = tmp_path / VGGISH.filename
    bad.write_text("not weights")
    with pytest.raises(MetricWeightsError, match=r"vggish-10086976\.pth: cannot be read"):
        build_vggish(bad)
    other = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.ones(1)}, other)
    with pytest.raises(MetricWeightsError, match=r"other\.pth: does not match the VGGish"):
        build_vggish(other)
