"""Matplotlib figures for the notebooks and MLflow (``tracking.log_figure``).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state, nothing
shown twice in notebooks, safe in threads); display it with ``IPython.display.display(fig)``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ciap_lib.callbacks import Callback
from ciap_lib.constants import SAMPLE_RATE

ArrayLike = Any  # np.ndarray | torch.Tensor


def enable_notebook_display() -> None:
    """Make IPython render ``Figure`` objects as PNG (pyplot-free figures get no formatter otherwise).

    Called on import; a no-op outside IPython."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:  # pragma: no cover - IPython is a dependency
        return
    ip = get_ipython()
    if ip is not None and hasattr(ip, "display_formatter"):
        select_figure_formats(ip, {"png"})


enable_notebook_display()


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _metric_keys(history: Sequence[Mapping[str, float]], pred) -> list[str]:
    keys: list[str] = []
    for h in history:
        keys += [k for k in h if pred(k) and k not in keys]
    return keys


def training_curves(history: Sequence[Mapping[str, float]], title: str = "") -> Figure:
    """Loss curves (``*loss*`` keys) and retrieval curves (``*R@*`` keys) per epoch.

    ``history``: list of per-epoch metric dicts (``TrainResult.history``); x = ``epoch`` key or 1..N.
    """
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_l, ax_r = fig.subplots(1, 2)
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    for k in _metric_keys(history, lambda k: "loss" in k):
        ax_l.plot(epochs, [h.get(k, np.nan) for h in history], marker="o", label=k)
    ax_l.set(xlabel="epoch", ylabel="loss", title="loss")
    for k in _metric_keys(history, lambda k: "R@" in k and "class" not in k and k.endswith(("@1", "@5"))):
        ax_r.plot(epochs, [h.get(k, np.nan) for h in history], marker="o", label=k)
    ax_r.set(xlabel="epoch", ylabel="recall", title="retrieval (val)", ylim=(0, 1.02))
    for ax in (ax_l, ax_r):
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def similarity_heatmap(image_emb: ArrayLike, audio_emb: ArrayLike, n: int = 32,
                       labels: Sequence[str] | None = None, title: str = "cosine similarity") -> Figure:
    """Heatmap of ``image_emb[:n] @ audio_emb[:n].T`` (rows images, columns audio; diagonal = true pairs).

    image_emb, audio_emb: (N, D) unit-norm embeddings, row i of each forms a pair.
    """
    a, b = _np(image_emb)[:n], _np(audio_emb)[:n]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"similarity_heatmap: need (N,D) embeddings, got {a.shape} and {b.shape}")
    sim = a @ b.T
    m = sim.shape[0]
    fig = Figure(figsize=(6.4, 5.4), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(sim, cmap="viridis", vmin=-1 if sim.min() < 0 else 0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.85)
    ax.set(xlabel="audio", ylabel="image", title=f"{title} ({m}x{m}; diagonal = true pairs)")
    if labels is not None and m <= 40:
        ticks = [str(x) for x in list(labels)[:m]]
        ax.set_xticks(range(m), ticks, rotation=90, fontsize=6)
        ax.set_yticks(range(m), ticks, fontsize=6)
    return fig


def pca_2d(x: ArrayLike) -> np.ndarray:
    """(N, D) -> (N, 2) projection on the first two principal components (``torch.pca_lowrank``)."""
    t = torch.as_tensor(_np(x), dtype=torch.float32)
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"pca_2d: need (N>=2, D) input, got {tuple(t.shape)}")
    t = t - t.mean(0, keepdim=True)
    q = min(2, t.shape[0], t.shape[1])
    _, _, v = torch.pca_lowrank(t, q=q, center=False, niter=4)
    out = (t @ v[:, :q]).numpy()
    if q < 2:
        out = np.concatenate([out, np.zeros((out.shape[0], 2 - q), out.dtype)], 1)
    return out


def projection_2d(image_emb: ArrayLike, audio_emb: ArrayLike, labels: ArrayLike | None = None,
                  class_names: Sequence[str] | None = None, max_points: int = 1000,
                  title: str = "PCA of image (o) and audio (x) embeddings") -> Figure:
    """Joint 2-D PCA of both modalities, coloured by label; thin lines join the first true pairs.

    image_emb, audio_emb: (N, D); labels: (N,) int (-1 = none) or None.
    """
    a, b = _np(image_emb), _np(audio_emb)
    n = min(len(a), max_points)
    a, b = a[:n], b[:n]
    lab = _np(labels)[:n].astype(int) if labels is not None else np.full(n, -1)
    xy = pca_2d(np.concatenate([a, b], 0))
    pa, pb = xy[:n], xy[n:]
    fig = Figure(figsize=(7.2, 5.6), layout="constrained")
    ax = fig.subplots()
    classes = sorted(set(lab.tolist()))
    cmap = __import__("matplotlib").colormaps["tab20"]
    for j, c in enumerate(classes):
        m = lab == c
        colour = cmap(j % 20) if c >= 0 else (0.5, 0.5, 0.5, 1.0)
        name = (class_names[c] if class_names is not None and 0 <= c < len(class_names) else
                ("no label" if c < 0 else str(c)))
        ax.scatter(pa[m, 0], pa[m, 1], s=18, marker="o", color=colour, label=name if len(classes) <= 20 else None)
        ax.scatter(pb[m, 0], pb[m, 1], s=22, marker="x", color=colour)
    for i in range(min(n, 40)):
        ax.plot([pa[i, 0], pb[i, 0]], [pa[i, 1], pb[i, 1]], color="k", alpha=0.12, lw=0.6)
    ax.set(xlabel="PC 1", ylabel="PC 2", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2, loc="best", markerscale=0.8)
    return fig


def log_mel(waveform: ArrayLike, sample_rate: int = SAMPLE_RATE, n_mels: int = 64) -> np.ndarray:
    """(T,) waveform -> (n_mels, frames) log-mel spectrogram in dB (torchaudio, hop 10 ms)."""
    import torchaudio

    w = torch.as_tensor(_np(waveform), dtype=torch.float32).reshape(-1)
    hop = max(1, sample_rate // 100)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=max(256, 4 * hop), hop_length=hop,
                                               n_mels=n_mels)(w)
    return (10 * torch.log10(mel + 1e-10)).numpy()


def _draw_spec(ax, waveform: ArrayLike, sample_rate: int, title: str = "") -> None:
    spec = log_mel(waveform, sample_rate)
    dur = len(_np(waveform).reshape(-1)) / sample_rate
    vmax = float(spec.max())
    ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=(0, dur, 0, spec.shape[0]),
              vmin=vmax - 80, vmax=vmax)
    ax.set(xlabel="s", ylabel="mel bin")
    if title:
        ax.set_title(title, fontsize=9)


def spectrogram(waveform: ArrayLike, sample_rate: int = SAMPLE_RATE, title: str = "") -> Figure:
    """Log-mel spectrogram of a (T,) waveform."""
    fig = Figure(figsize=(6, 2.6), layout="constrained")
    _draw_spec(fig.subplots(), waveform, sample_rate, title)
    return fig


def _as_image(img: ArrayLike) -> np.ndarray:
    """(H,W,3) uint8/float or (3,H,W) tensor (denormalised) -> (H,W,3) array for imshow."""
    x = _np(img)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.transpose(x, (1, 2, 0))
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 1)
    return x


def sample_pair_grid(images: Sequence[ArrayLike], waveforms: Sequence[ArrayLike], sample_rate: int = SAMPLE_RATE,
                     titles: Sequence[str] | None = None, ncols: int = 2) -> Figure:
    """A grid of pairs: each image next to the spectrogram of its sound.

    images: (H,W,3) uint8 arrays (or (3,H,W) float in [0,1]); waveforms: (T,) arrays.
    """
    if len(images) != len(waveforms):
        raise ValueError(f"sample_pair_grid: {len(images)} images but {len(waveforms)} waveforms")
    n = len(images)
    if n == 0:
        raise ValueError("sample_pair_grid: no pairs to show")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(5.2 * ncols, 2.2 * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, 2 * ncols, gridspec_kw={"width_ratios": [1, 2] * ncols}))
    for i in range(nrows * ncols):
        r, c = divmod(i, ncols)
        ax_i, ax_s = axes[r, 2 * c], axes[r, 2 * c + 1]
        if i >= n:
            ax_i.axis("off")
            ax_s.axis("off")
            continue
        ax_i.imshow(_as_image(images[i]))
        ax_i.set_xticks([])
        ax_i.set_yticks([])
        t = titles[i] if titles is not None else f"pair {i}"
        ax_i.set_title(t, fontsize=9)
        _draw_spec(ax_s, waveforms[i], sample_rate)
    return fig


def distributions(columns: Mapping[str, Sequence[Any]], title: str = "") -> Figure:
    """One small panel per column: a histogram for numbers, a bar chart of counts otherwise."""
    names = list(columns)
    if not names:
        raise ValueError("distributions: no columns")
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, name in zip(axes, names):
        vals = list(columns[name])
        numeric = len(vals) > 0 and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                                        for v in vals)
        if numeric and len(set(vals)) > 8:
            ax.hist(np.asarray(vals, dtype=float), bins=20, color="C0")
        else:
            keys, counts = np.unique(np.asarray([str(v) for v in vals]), return_counts=True)
            order = np.argsort(-counts)[:20]
            ax.bar([keys[i] for i in order], counts[order], color="C1")
            ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("count")
    for ax in axes[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def counts_bar(counts: Mapping[str, Mapping[str, int]], title: str = "pairs per label") -> Figure:
    """Grouped bar chart: ``counts[split][label] -> n``."""
    splits = list(counts)
    labels = sorted({lab for s in splits for lab in counts[s]})
    fig = Figure(figsize=(max(6, 0.25 * len(labels) * len(splits)), 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(labels))
    for j, s in enumerate(splits):
        ax.bar(x + j * width, [counts[s].get(lab, 0) for lab in labels], width, label=s)
    ax.set_xticks(x + width * (len(splits) - 1) / 2, labels, rotation=90, fontsize=6)
    ax.set(ylabel="pairs", title=title)
    ax.legend()
    return fig


class LiveLossPlot(Callback):
    """Training callback that redraws :func:`training_curves` in place after every epoch.

    In a notebook it updates one display (``display_id``), so an executed notebook keeps only the
    final plot (also under papermill); outside IPython it does nothing. ``history`` holds the epochs.
    """

    def __init__(self, title: str = "") -> None:
        self.title = title
        self.history: list[dict[str, float]] = []
        self._handle = None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint=None) -> None:
        self.history.append(dict(metrics))
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython is a dependency
            return
        if get_ipython() is None or os.environ.get("CIAP_NO_LIVE_PLOT"):
            return
        fig = training_curves(self.history, self.title)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
