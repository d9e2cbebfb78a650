"""Label words: the word split, the multi-label word loss, and the backbone tap that lets only that loss train the
image backbone (``backbone_loss: words``)."""
import pytest
import torch
import torch.nn.functional as F

from ciap_lib.label_words import BackboneTap, LabelWordLoss, label_words
from ciap_lib.losses import create_loss
from ciap_lib.models import create_model
from ciap_lib.train import compute_loss, compute_word_loss

CLASSES = ["red-circle-x2", "red-square-x3", "blue-circle-x2"]


def test_label_words_split_on_anything_but_letters_and_digits():
    assert label_words("red-circle-x2") == ["red", "circle", "x2"]
    assert label_words("Dog  barking") == ["dog", "barking"]
    assert label_words("playing_acoustic guitar, guitar") == ["playing", "acoustic", "guitar"]
    assert label_words("7") == ["7"]
    assert label_words("--") == []


def test_targets_mark_each_class_words():
    loss = LabelWordLoss(CLASSES, in_dim=4)
    assert loss.vocab == ["blue", "circle", "red", "square", "x2", "x3"]
    assert loss.targets.tolist() == [[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 0, 1], [1, 1, 0, 0, 1, 0]]
    assert loss.words_per_class == 3.0


def test_loss_is_the_word_bce_of_labelled_rows():
    torch.manual_seed(0)
    loss = LabelWordLoss(CLASSES, in_dim=4)
    feats = torch.randn(5, 4)
    labels = torch.tensor([0, -1, 2, 1, -1])
    keep = labels >= 0
    logits = loss.classifier(feats[keep])
    want = F.binary_cross_entropy_with_logits(logits, loss.targets[labels[keep]], reduction="sum") / 3 / 3
    assert torch.allclose(loss(feats, labels), want)
    # unlabelled rows add nothing; none labelled gives 0, still on the graph
    assert torch.allclose(loss(feats[keep], labels[keep]), want)
    zero = loss(feats.requires_grad_(), torch.full((5,), -1))
    assert zero.item() == 0.0 and zero.requires_grad


def test_training_the_loss_reads_an_unseen_combination_of_seen_words():
    """The words are learnt one by one: blue + square + x3 never occurs together, yet is read off."""
    classes = [f"{c}-{s}-{n}" for c in ("red", "blue") for s in ("circle", "square") for n in ("x1", "x3")]
    classes.remove("blue-square-x3")
    vocab_dirs = {"red": 0, "blue": 1, "circle": 2, "square": 3, "x1": 4, "x3": 5}

    def feats(label):  # features that carry each word in its own direction
        x = torch.zeros(6)
        for w in label_words(label):
            x[vocab_dirs[w]] = 1.0
        return x

    torch.manual_seed(0)
    loss = LabelWordLoss(classes, in_dim=6)
    x = torch.stack([feats(c) for c in classes])
    opt = torch.optim.Adam(loss.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        loss(x, torch.arange(len(classes))).backward()
        opt.step()
    probs = torch.sigmoid(loss.classifier(feats("blue-square-x3")))
    read = {w for w, p in zip(loss.vocab, probs.tolist()) if p > 0.5}
    assert read == {"blue", "square", "x3"}


def test_no_labels_or_wordless_labels_are_clear_errors():
    with pytest.raises(ValueError, match="needs labelled training pairs"):
        LabelWordLoss([], in_dim=4)
    with pytest.raises(ValueError, match="without a letter or digit"):
        LabelWordLoss(["dog", "--"], in_dim=4)


def _backbone_grads(model):
    return [p.grad for p in model.image_encoder.backbone.parameters()]


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_tap_lets_only_the_word_loss_train_the_backbone(stop_gradient):
    torch.manual_seed(0)
    model = create_model("debug").train()
    tap = BackboneTap(model.image_encoder.backbone, stop_gradient=stop_gradient)
    words = LabelWordLoss(CLASSES, model.image_encoder.feature_dim)
    images, audio = torch.randn(4, 3, 32, 32), 0.1 * torch.randn(4, 16000)
    labels = torch.tensor([0, 1, 2, 0])
    contrastive = compute_loss(model, create_loss("infonce_labels"), images, audio, labels=labels)["loss"]
    features = tap.pop()
    assert features.shape == (4, model.image_encoder.feature_dim)
    contrastive.backward(retain_graph=True)
    head = model.image_encoder.head.proj.weight.grad
    assert head is not None and head.abs().sum() > 0  # the contrastive loss trains the head either way
    backbone = _backbone_grads(model)
    if stop_gradient:
        assert all(g is None for g in backbone)
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in backbone)
    model.zero_grad(set_to_none=True)
    compute_word_loss(words, features, labels).backward()
    assert all(g is not None for g in _backbone_grads(model))  # the word loss reaches the backbone
    assert model.image_encoder.head.proj.weight.grad is None  # ... and nothing else of the model
    assert words.classifier.weight.grad.abs().sum() > 0

    model.eval()  # evaluation passes through untouched and keeps nothing
    with torch.no_grad():
        model.encode_image(images)
    with pytest.raises(RuntimeError, match="no training-mode backbone forward"):
        tap.pop()
    tap.remove()
    model.train()
    compute_loss(model, create_loss("infonce"), images, audio)
    assert tap.features is None
