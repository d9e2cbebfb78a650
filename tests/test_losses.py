"""Symmetric InfoNCE and cosine regression: finite, symmetric, matched < shuffled, grads reach the scale."""
import math

import pytest
import torch
import torch.nn.functional as F

from ciap_lib.losses import ClipLoss, CosineRegressionLoss, create_loss


def _feats(b=8, d=16, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    aud = F.normalize(img + noise * torch.randn(b, d, generator=g), dim=-1)
    return img, aud


def test_infonce_finite_and_matches_brute_force():
    img, aud = _feats()
    scale = torch.tensor(1 / 0.07)
    out = ClipLoss()(img, aud, scale)
    assert set(out) == {"loss", "loss_i2a", "loss_a2i"}
    assert all(torch.isfinite(v) for v in out.values())
    sim = scale * img @ aud.t()
    ref_i2a = -torch.stack([sim[i].log_softmax(0)[i] for i in range(len(img))]).mean()
    ref_a2i = -torch.stack([sim[:, i].log_softmax(0)[i] for i in range(len(img))]).mean()
    assert torch.allclose(out["loss_i2a"], ref_i2a, atol=1e-5)
    assert torch.allclose(out["loss_a2i"], ref_a2i, atol=1e-5)
    assert torch.allclose(out["loss"], (ref_i2a + ref_a2i) / 2, atol=1e-5)


def test_infonce_symmetric():
    img, aud = _feats()
    scale = torch.tensor(10.0)
    a, b = ClipLoss()(img, aud, scale), ClipLoss()(aud, img, scale)
    assert torch.allclose(a["loss"], b["loss"])
    assert torch.allclose(a["loss_i2a"], b["loss_a2i"]) and torch.allclose(a["loss_a2i"], b["loss_i2a"])


def test_matched_lower_than_shuffled():
    img, aud = _feats(b=16)
    scale = torch.tensor(1 / 0.07)
    perm = torch.roll(torch.arange(16), 1)
    assert ClipLoss()(img, aud, scale)["loss"] < ClipLoss()(img, aud[perm], scale)["loss"]
    cos = CosineRegressionLoss()
    assert cos(img, aud)["loss"] < cos(img, aud[perm])["loss"]


def test_gradient_reaches_logit_scale_and_features():
    img, aud = _feats()
    img.requires_grad_(True)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    ClipLoss()(img, aud, log_scale.exp())["loss"].backward()
    assert log_scale.grad is not None and log_scale.grad.abs() > 0
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_cosine_regression_zero_when_equal_and_bad_shapes():
    img, _ = _feats()
    out = CosineRegressionLoss()(img, img.clone())
    assert abs(float(out["loss"])) < 1e-6 and abs(float(out["cosine"]) - 1) < 1e-6
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(img, img[:4], torch.tensor(1.0))
    assert isinstance(create_loss("cosine"), CosineRegressionLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("triplet")
