"""The labelled nearest-neighbour fallback generator (retrieval, not diffusion)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ciap_lib.audio_io import load_audio
from ciap_lib.constants import MAX_DURATION, MIN_DURATION, SAMPLE_RATE
from ciap_lib.data import PairDataset
from ciap_lib.fallback import NearestNeighbourGenerator, fit_length
from ciap_lib.images import load_image
from ciap_lib.models import create_model
from ciap_lib.synthetic import make_synthetic_dataset

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("fb") / "synthetic", n_train=12, n_val=4,
                                  image_size=32, seconds=1.5)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("debug")


@pytest.fixture(scope="module")
def gen(model, data_root):
    return NearestNeighbourGenerator.from_dataset(model, data_root, "train")


def test_labelled_as_retrieval_not_diffusion(gen, data_root):
    assert gen.kind == "retrieval" and gen.is_diffusion is False
    assert "RETRIEVAL" in gen.label and "not diffusion" in gen.label
    assert str(data_root / "train") in gen.label
    assert gen.match == "audio"  # logmel_cnn encoder: cross-modal match
    assert len(gen.audio_paths) == 12


@pytest.mark.parametrize("duration", [MIN_DURATION, 4.0, MAX_DURATION])
def test_returns_training_clip_cropped_or_padded_to_duration(gen, data_root, duration):
    val = PairDataset(data_root, "val", image_size=gen.image_size, train=False)
    images = torch.stack([load_image(p.image, gen.image_size) for p in val.pairs[:2]])
    calls = []
    out = gen.generate(images, duration=duration, callback=lambda step, total: calls.append((step, total)))
    n = int(round(duration * SR))
    assert out.shape == (2, n) and out.dtype == np.float32
    assert calls == [(1, 2), (2, 2)]
    assert len(gen.last_matches) == 2
    for b, m in enumerate(gen.last_matches):
        assert m.audio in gen.audio_paths
        clip = load_audio(m.audio, SR)
        k = min(len(clip), n)
        np.testing.assert_array_equal(out[b, :k], clip[:k])
        assert not out[b, k:].any()  # zero padding, never invented audio
        assert -1.0 <= m.score <= 1.0 + 1e-5
    assert len(gen.describe()) == 2 and "retrieved training clip" in gen.describe()[0]


def test_audio_match_is_the_best_cosine_over_the_index(gen, data_root, model):
    img = load_image(sorted((data_root / "val").glob("*.png"))[0], gen.image_size)[None]
    [m] = gen.search(img)
    with torch.no_grad():
        q = model.encode_image(img)
    scores = (q @ gen.keys.T)[0]
    assert m.index == int(scores.argmax())
    assert m.score == pytest.approx(float(scores.max()), abs=1e-5)


def test_image_match_finds_the_query_pair_itself(model, data_root):
    g = NearestNeighbourGenerator.from_dataset(model, data_root, "train", match="image")
    assert g.match == "image" and "paired image" in g.label
    ds = PairDataset(data_root, "train", image_size=g.image_size, train=False)
    i = 5
    [m] = g.search(load_image(ds.pairs[i].image, g.image_size)[None])
    assert m.score == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(g.keys[m.index], g.keys[i], atol=1e-4)  # itself (or an identical image)


def test_clap_encoder_falls_back_to_image_match(data_root):
    # The 'clap' audio side needs AudioLDM's CLAP tower, i.e. the missing checkpoint: match images instead.
    g = NearestNeighbourGenerator.from_dataset(create_model("debug", audio_encoder="clap"), data_root, "train")
    assert g.match == "image"
    out = g.generate(load_image(sorted((data_root / "val").glob("*.png"))[0], g.image_size)[None], duration=2.5)
    assert out.shape == (1, 40000)


def test_image_embeds_input_and_same_result(gen, data_root, model):
    img = load_image(sorted((data_root / "val").glob("*.png"))[1], gen.image_size)[None]
    with torch.no_grad():
        emb = model.encode_image(img)[:, None, :]  # (B,1,D) like the bridge's condition stage
    a = gen.generate(img, duration=3.0)
    b = gen.generate(image_embeds=emb, duration=3.0)
    np.testing.assert_array_equal(a, b)


def test_bad_inputs_raise_clear_errors(gen, model, tmp_path):
    img = torch.zeros(1, 3, gen.image_size, gen.image_size)
    for bad in (2.0, 10.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="duration"):
            gen.generate(img, duration=bad)
    with pytest.raises(ValueError, match="exactly one"):
        gen.generate(duration=3.0)
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        gen.generate(torch.zeros(3, 8, 8), duration=3.0)
    with pytest.raises(ValueError, match="does not exist"):
        NearestNeighbourGenerator.from_dataset(model, tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="match"):
        NearestNeighbourGenerator(model, torch.zeros(2, 4), ["a.wav", "b.wav"], match="text")
    with pytest.raises(ValueError, match="audio_paths"):
        NearestNeighbourGenerator(model, torch.zeros(2, 4), ["a.wav"])


def test_helpers():
    np.testing.assert_array_equal(fit_length(np.ones(3), 5), [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(fit_length(np.arange(6), 4), [0, 1, 2, 3])


def test_queries_and_index_use_the_preprocessing_the_checkpoint_stores(data_root, tmp_path):
    from fixtures.preprocess import STORED, stored_preprocess_checkpoint

    from ciap_lib.checkpoint import load_ciap

    model, _ = load_ciap(stored_preprocess_checkpoint(tmp_path, data_root))
    g = NearestNeighbourGenerator.from_dataset(model, data_root, "train", match="image")
    assert g.preprocess == STORED and g.image_size == 32
    ds = PairDataset(data_root, "train", STORED, train=False)
    with torch.no_grad():  # the index holds the embeddings of the images prepared the stored way
        stored = model.encode_image(torch.stack([load_image(p.image, g.preprocess) for p in ds.pairs]))
        imagenet = model.encode_image(torch.stack([load_image(p.image, 32) for p in ds.pairs]))
    same, other = float((stored - g.keys).abs().max()), float((imagenet - g.keys).abs().max())
    assert same < 1e-6 and other > 1e-5  # (a random tiny ViT maps all images close together)
    [m] = g.search(load_image(ds.pairs[5].image, g.preprocess)[None])
    assert m.index == 5 and m.score > 0.99999
