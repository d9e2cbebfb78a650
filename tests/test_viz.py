"""ciap_lib.viz: every builder returns a drawable Figure with the expected content; bad input is a ValueError."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ciap_lib import viz


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def _emb(n=12, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_training_curves_plots_losses_and_recalls():
    hist = [{"epoch": e, "train_loss": 3 - e * 0.5, "val_loss": 3.2 - e * 0.4, "i2a_R@1": 0.1 * e,
             "a2i_R@1": 0.08 * e, "i2a_R@5": 0.3 * e, "lr": 1e-3} for e in (1, 2, 3)]
    fig = viz.training_curves(hist, title="t")
    ax_l, ax_r = fig.axes[:2]
    assert {l.get_label() for l in ax_l.lines} == {"train_loss", "val_loss"}
    assert {l.get_label() for l in ax_r.lines} == {"i2a_R@1", "a2i_R@1", "i2a_R@5"}
    np.testing.assert_allclose(ax_l.lines[0].get_ydata(), [2.5, 2.0, 1.5])
    _png(fig)


def test_similarity_heatmap_diagonal_is_pair_cosine():
    a, b = _emb(10), _emb(10, seed=1)
    fig = viz.similarity_heatmap(a, b, n=6, labels=[f"l{i}" for i in range(10)])
    arr = fig.axes[0].images[0].get_array()
    assert arr.shape == (6, 6)
    np.testing.assert_allclose(np.diag(arr), (a[:6] * b[:6]).sum(1).numpy(), atol=1e-5)
    _png(fig)
    with pytest.raises(ValueError, match="embeddings"):
        viz.similarity_heatmap(a, torch.zeros(10, 3))


def test_pca_2d_keeps_the_dominant_direction():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, generator=g) * torch.tensor([[5.0, 0, 0, 0]]) + 0.01 * torch.randn(200, 4, generator=g)
    xy = viz.pca_2d(x)
    assert xy.shape == (200, 2)
    corr = np.corrcoef(xy[:, 0], x[:, 0].numpy())[0, 1]
    assert abs(corr) > 0.99


def test_projection_colours_by_label_and_marks_modalities():
    a, b = _emb(20), _emb(20, seed=2)
    labels = torch.tensor([i % 3 for i in range(20)])
    fig = viz.projection_2d(a, b, labels, class_names=["x", "y", "z"], max_points=15)
    ax = fig.axes[0]
    # one image scatter (o) and one audio scatter (x) per class
    assert len(ax.collections) == 6
    assert sum(len(c.get_offsets()) for c in ax.collections) == 30
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x", "y", "z"]
    _png(fig)


def test_spectrogram_and_pair_grid():
    sr = 16000
    t = np.arange(sr) / sr
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    spec = viz.log_mel(wave, sr)
    assert spec.shape[0] == 64 and np.isfinite(spec).all()
    # 440 Hz lands in a low mel bin: the loudest bin is in the lower half
    assert spec.mean(1).argmax() < 32
    _png(viz.spectrogram(wave, sr, title="tone"))
    imgs = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(3)]
    fig = viz.sample_pair_grid(imgs, [wave] * 3, sr, titles=["a", "b", "c"], ncols=2)
    assert len([ax for ax in fig.axes if ax.images]) == 6  # 3 images + 3 spectrograms
    _png(fig)
    with pytest.raises(ValueError, match="waveforms"):
        viz.sample_pair_grid(imgs, [wave], sr)


def test_distributions_and_counts_bar():
    fig = viz.distributions({"duration": list(np.linspace(1, 2, 30)), "mode": ["RGB"] * 5 + ["L"] * 2})
    assert len([ax for ax in fig.axes if ax.patches]) == 2
    _png(fig)
    fig = viz.counts_bar({"train": {"a": 3, "b": 1}, "val": {"a": 1}})
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [3, 1, 1, 0]
    _png(fig)


def test_live_loss_plot_collects_history_outside_ipython():
    cb = viz.LiveLossPlot()
    cb.on_epoch_end(1, {"epoch": 1, "train_loss": 2.0}, None)
    cb.on_epoch_end(2, {"epoch": 2, "train_loss": 1.0}, None)
    assert [h["train_loss"] for h in cb.history] == [2.0, 1.0]
