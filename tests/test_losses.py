"""Symmetric InfoNCE, cosine regression and their sum: finite, symmetric, matched < shuffled, grads reach the scale,
parameters (cosine_weight) from the config. Label-aware InfoNCE: equals InfoNCE when all labels differ, pulls
same-class pairs together, keeps unlabelled pairs distinct; its within-modality SupCon term (``intra_weight``)
matches a brute force, vanishes when no class repeats, and pulls same-class images together on its own."""
import math

import pytest
import torch
import torch.nn.functional as F

from ciap_lib.losses import (ClipLoss, CosineRegressionLoss, InfoNCECosineLoss, LabelClipLoss, create_loss,
                             positive_targets, supcon_loss)


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


def test_infonce_plus_cosine_interpolates_between_its_terms():
    torch.manual_seed(3)
    img = F.normalize(torch.randn(8, 16), dim=-1).requires_grad_()
    aud = F.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(10.0)
    nce = ClipLoss()(img, aud, scale)["loss"]
    cos = CosineRegressionLoss()(img, aud)["loss"]
    zero = create_loss("infonce+cosine", cosine_weight=0.0)(img, aud, scale)
    assert torch.equal(zero["loss"], nce)  # weight 0 is InfoNCE exactly
    big = create_loss("infonce+cosine", cosine_weight=1e4)(img, aud, scale)
    assert torch.allclose(big["loss"], nce + 1e4 * cos) and float(1e4 * cos / big["loss"]) > 0.999
    g_big, = torch.autograd.grad(big["loss"], img)
    g_cos, = torch.autograd.grad(cos, img)
    assert F.cosine_similarity(g_big.flatten(), g_cos.flatten(), dim=0) > 0.999  # dominated by the cosine term
    assert set(big) == {"loss", "loss_infonce", "loss_cosine", "cosine"}


def test_losses_take_their_parameters_from_the_config():
    from ciap_lib.config import load_config
    from ciap_lib.losses import LOSSES, loss_from_config, loss_param_names

    assert {"infonce", "infonce_labels", "cosine", "infonce+cosine"} <= set(LOSSES)
    assert isinstance(loss_from_config(load_config(None, loss="infonce_labels")), LabelClipLoss)
    assert loss_param_names("infonce+cosine") == ["cosine_weight"] and loss_param_names("infonce") == []
    loss = loss_from_config(load_config(None, loss="infonce+cosine", cosine_weight=0.25))
    assert isinstance(loss, InfoNCECosineLoss) and loss.cosine_weight == 0.25
    with pytest.raises(ValueError, match="takes no parameters"):
        create_loss("infonce", cosine_weight=1.0)
    with pytest.raises(ValueError, match="cosine_weight must be >= 0"):
        create_loss("infonce+cosine", cosine_weight=-1.0)


@pytest.mark.parametrize("labels", [None, torch.arange(8), torch.full((8,), -1),
                                    torch.tensor([5, -1, 2, 0, -1, 7, 1, -1])])
def test_label_infonce_equals_infonce_when_all_labels_differ(labels):
    img, aud = _feats()
    scale = torch.tensor(1 / 0.07)
    got = LabelClipLoss()(img, aud, scale, labels=labels)
    ref = ClipLoss()(img, aud, scale)
    for k in ("loss", "loss_i2a", "loss_a2i"):
        torch.testing.assert_close(got[k], ref[k])
    assert float(got["positives"]) == 1.0
    # gradients too
    a, b = img.clone().requires_grad_(), img.clone().requires_grad_()
    g_got, = torch.autograd.grad(LabelClipLoss()(a, aud, scale, labels=labels)["loss"], a)
    g_ref, = torch.autograd.grad(ClipLoss()(b, aud, scale)["loss"], b)
    torch.testing.assert_close(g_got, g_ref)


def test_label_infonce_matches_brute_force_multi_positive():
    img, aud = _feats()
    labels = torch.tensor([0, 0, 1, -1, 1, 1, -1, 2])
    scale = torch.tensor(10.0)
    out = LabelClipLoss()(img, aud, scale, labels=labels)
    sim = scale * img @ aud.t()

    def positives(i):
        return [j for j in range(8) if j == i or (labels[i] >= 0 and labels[j] == labels[i])]

    ref_i2a = -torch.stack([sim[i].log_softmax(0)[positives(i)].mean() for i in range(8)]).mean()
    ref_a2i = -torch.stack([sim[:, i].log_softmax(0)[positives(i)].mean() for i in range(8)]).mean()
    torch.testing.assert_close(out["loss_i2a"], ref_i2a)
    torch.testing.assert_close(out["loss_a2i"], ref_a2i)
    torch.testing.assert_close(out["loss"], (ref_i2a + ref_a2i) / 2)
    torch.testing.assert_close(out["positives"], torch.tensor(sum(len(positives(i)) for i in range(8)) / 8))


def test_unlabelled_pairs_are_distinct_from_every_other():
    t = positive_targets(torch.tensor([-1, -1, 3, 3, -1]))
    torch.testing.assert_close(t, t.t())
    torch.testing.assert_close(t[0], torch.tensor([1.0, 0, 0, 0, 0]))
    torch.testing.assert_close(t[1], torch.tensor([0, 1.0, 0, 0, 0]))
    torch.testing.assert_close(t[2], torch.tensor([0, 0, 0.5, 0.5, 0]))
    torch.testing.assert_close(t.sum(1), torch.ones(5))


def _cross_cosine_after_step(loss_fn, labels, i, j, lr=0.5):
    """cos(image i, audio j) before and after one SGD step of ``loss_fn`` on the raw embeddings."""
    g = torch.Generator().manual_seed(4)
    img = torch.randn(8, 16, generator=g).requires_grad_()
    aud = (img.detach() + 0.5 * torch.randn(8, 16, generator=g)).requires_grad_()
    before = F.cosine_similarity(img[i], aud[j], dim=0).item()
    loss = loss_fn(F.normalize(img, dim=-1), F.normalize(aud, dim=-1), torch.tensor(10.0), labels=labels)["loss"]
    loss.backward()
    with torch.no_grad():
        img -= lr * img.grad
        aud -= lr * aud.grad
    return before, F.cosine_similarity(img[i], aud[j], dim=0).item()


def test_label_infonce_gradient_pulls_same_class_pairs_together():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, -1])
    for i, j in ((0, 1), (1, 0), (2, 3), (5, 4)):  # same class, not each other's pair
        before, after = _cross_cosine_after_step(LabelClipLoss(), labels, i, j)
        assert after > before, (i, j, before, after)
        plain_before, plain_after = _cross_cosine_after_step(ClipLoss(), labels, i, j)
        assert plain_before == before and plain_after - before < (after - before) / 2  # InfoNCE: a negative
    before, after = _cross_cosine_after_step(LabelClipLoss(), labels, 6, 7)  # different classes / unlabelled
    assert after < before


def test_intra_modal_supcon_matches_brute_force_and_vanishes_without_repeated_labels():
    img, aud = _feats()
    scale = torch.tensor(10.0)
    labels = torch.tensor([0, 0, 1, -1, 1, 1, -1, 2])

    def supcon_ref(f):
        sim = scale * f @ f.t()
        rows = []
        for i in range(8):
            pos = [j for j in range(8) if j != i and labels[i] >= 0 and labels[j] == labels[i]]
            if pos:
                others = [j for j in range(8) if j != i]
                logp = sim[i, others].log_softmax(0)
                rows.append(-torch.stack([logp[others.index(j)] for j in pos]).mean())
        return torch.stack(rows).mean()

    torch.testing.assert_close(supcon_loss(img, labels, scale), supcon_ref(img))
    out = create_loss("infonce_labels", intra_weight=0.5)(img, aud, scale, labels=labels)
    plain = LabelClipLoss()(img, aud, scale, labels=labels)
    intra = (supcon_ref(img) + supcon_ref(aud)) / 2
    torch.testing.assert_close(out["loss_intra"], intra)
    torch.testing.assert_close(out["loss"], plain["loss"] + 0.5 * intra)
    # no class occurs twice (or nothing labelled): the loss is plain InfoNCE, gradients included
    for distinct in (torch.arange(8), torch.tensor([5, -1, 2, 0, -1, 7, 1, -1]), None):
        a = img.clone().requires_grad_()
        got = LabelClipLoss(intra_weight=2.0)(a, aud, scale, labels=distinct)
        torch.testing.assert_close(got["loss"], ClipLoss()(img, aud, scale)["loss"])
        g, = torch.autograd.grad(got["loss"], a)
        b = img.clone().requires_grad_()
        g_ref, = torch.autograd.grad(ClipLoss()(b, aud, scale)["loss"], b)
        torch.testing.assert_close(g, g_ref)
    with pytest.raises(ValueError, match="intra_weight must be >= 0"):
        LabelClipLoss(intra_weight=-0.1)
    from ciap_lib.config import load_config
    from ciap_lib.losses import loss_from_config, loss_param_names

    assert loss_param_names("infonce_labels") == ["intra_weight"]
    assert loss_from_config(load_config(None, loss="infonce_labels", intra_weight=0.25)).intra_weight == 0.25


def test_intra_modal_supcon_pulls_same_class_images_together_without_the_audio():
    """The within-modality term alone moves two images of one class towards each other and away from another class,
    even when the audio embeddings carry no class information at all."""
    g = torch.Generator().manual_seed(7)
    img = torch.randn(6, 16, generator=g).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    cos = lambda i, j: F.cosine_similarity(img[i], img[j], dim=0).item()  # noqa: E731
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]

    def same_and_other():
        same = [cos(i, j) for i, j in pairs if labels[i] == labels[j]]
        other = [cos(i, j) for i, j in pairs if labels[i] != labels[j]]
        return same, sum(other) / len(other)

    same_before, other_before = same_and_other()
    supcon_loss(F.normalize(img, dim=-1), labels, torch.tensor(10.0)).backward()
    with torch.no_grad():
        img -= 0.5 * img.grad
    same_after, other_after = same_and_other()
    assert all(a > b for a, b in zip(same_after, same_before)) and other_after < other_before


def test_every_loss_accepts_labels_and_label_shapes_are_checked():
    img, aud = _feats()
    scale = torch.tensor(10.0)
    labels = torch.zeros(8, dtype=torch.long)
    for name in ("infonce", "cosine", "infonce+cosine"):
        torch.testing.assert_close(create_loss(name)(img, aud, scale, labels=labels)["loss"],
                                   create_loss(name)(img, aud, scale)["loss"])
    for bad in (torch.zeros(7, dtype=torch.long), torch.zeros(8, 1, dtype=torch.long), torch.zeros(8),
                torch.zeros(8, dtype=torch.bool)):
        with pytest.raises(ValueError, match="labels must be"):
            LabelClipLoss()(img, aud, scale, labels=bad)
    with pytest.raises(ValueError, match="same shape"):
        LabelClipLoss()(img, aud[:4], scale, labels=labels)
