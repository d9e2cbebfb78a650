"""The explorer widget driven headlessly: controls change, callbacks fire, neighbours and players update."""
from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from ciap_lib.retrieval import topk
from ciap_lib.ui.explorer import build_explorer

N, D = 8, 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("explorer")
    images, audio = [], []
    for i in range(N):
        im = d / f"{i}.png"
        Image.fromarray(np.full((24, 24, 3), 30 * i, np.uint8)).save(im)
        wav = d / f"{i}.wav"
        t = np.arange(8000) / 16000
        sf.write(wav, (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
        images.append(im)
        audio.append(wav)
    return images, audio


@pytest.fixture()
def emb():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
    aud = torch.nn.functional.normalize(img + 0.3 * torch.randn(N, D, generator=g), dim=1)
    return img, aud


def test_initial_view_and_select_image_to_audio(files, emb):
    img, aud = emb
    ex = build_explorer(img, aud, *files, labels=[f"c{i % 3}" for i in range(N)], k=3)
    assert len(ex.results) == 3
    res = ex.select(5, "i2a", k=4)
    scores, idx = topk(img[5:6], aud, 4)
    assert [j for j, _ in res] == idx[0].tolist()
    np.testing.assert_allclose([s for _, s in res], scores[0].numpy(), atol=1e-6)
    assert [s for _, s in res] == sorted((s for _, s in res), reverse=True)
    html = ex.view.value
    assert html.count("<img") == 1 and html.count("<audio") == 4  # query image + 4 players
    assert "autoplay" not in html
    assert "data:audio/wav;base64," in html


def test_widget_controls_fire_callbacks(files, emb):
    img, aud = emb
    ex = build_explorer(img, aud, *files, k=2)
    ex.index.value = 3                      # what a user's pick does
    assert ex.results[0][0] == topk(img[3:6][:1], aud, 1)[1].item()
    ex.direction.value = "a2i"              # switch to audio queries
    scores, idx = topk(aud[3:4], img, 2)
    assert [j for j, _ in ex.results] == idx[0].tolist()
    assert ex.view.value.count("<audio") == 1 and ex.view.value.count("<img") == 2
    ex.k.value = 5
    assert len(ex.results) == 5
    assert ex.html() == ex.view.value       # batch path renders the same view


def test_true_pair_is_marked(files):
    e = torch.nn.functional.normalize(torch.eye(N, D), dim=1)
    ex = build_explorer(e, e, *files, k=3)
    ex.select(2, "i2a")
    assert ex.results[0] == (2, pytest.approx(1.0))
    assert re.search(r"#1 2 cos 1\.000 ✓", ex.view.value)


def test_players_are_cut_to_max_seconds(files, emb):
    img, aud = emb
    seen = []

    def load(path, sr):
        w = np.zeros(sr * 10, np.float32)
        seen.append(path)
        return w

    ex = build_explorer(img, aud, *files, k=1, max_audio_seconds=0.5, load_audio=load)
    m = re.search(r'data:audio/wav;base64,([A-Za-z0-9+/=]+)', ex.view.value)
    import base64, io
    w, sr = sf.read(io.BytesIO(base64.b64decode(m.group(1))))
    assert sr == 16000 and len(w) == 8000
    assert seen


def test_bad_inputs(files, emb):
    img, aud = emb
    with pytest.raises(ValueError, match="both be"):
        build_explorer(img, aud[:, :4], *files)
    with pytest.raises(ValueError, match="audio clips"):
        build_explorer(img, aud, files[0], files[1][:3])
    ex = build_explorer(img, aud, *files)
    with pytest.raises(ValueError, match="index"):
        ex.select(N)
    with pytest.raises(ValueError, match="direction"):
        ex.select(0, "x2y")
