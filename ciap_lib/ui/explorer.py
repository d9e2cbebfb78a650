"""Cross-modal neighbour explorer: pick an image (or an audio clip), see the top-k of the other modality.

>>> ex = build_explorer(image_emb, audio_emb, image_paths, audio_paths, labels=labels, k=5)
>>> ex                      # in a notebook: the widget
>>> ex.select(3, "i2a")     # what a click does; returns [(index, score), ...] and refreshes the view
>>> HTML(ex.html())         # batch path (papermill / HTML export): the same view as static HTML

Images are shown as thumbnails, sounds with ``IPython.display.Audio`` players (no autoplay).
"""
from __future__ import annotations

import base64
import html as _html
import io
from pathlib import Path
from typing import Any, Callable, Sequence

import ipywidgets as widgets
import numpy as np
import torch

from ciap_lib.constants import SAMPLE_RATE
from ciap_lib.retrieval import topk

DIRECTIONS = {"i2a": "image → audio", "a2i": "audio → image"}


def image_html(path_or_array: Any, size: int = 96, title: str = "") -> str:
    """An ``<img>`` tag holding a PNG thumbnail (base64) of an image file or an (H,W,3) uint8 array."""
    from PIL import Image

    if isinstance(path_or_array, (str, Path)):
        im = Image.open(path_or_array)
        im = im.convert("RGB")
    else:
        im = Image.fromarray(np.asarray(path_or_array, dtype=np.uint8))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    t = f' title="{_html.escape(title)}"' if title else ""
    return f'<img src="data:image/png;base64,{b64}" width="{size}" height="{size}"{t} style="object-fit:contain"/>'


def audio_html(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """An ``<audio controls>`` player (``IPython.display.Audio``, embedded WAV, no autoplay)."""
    from IPython.display import Audio

    w = np.clip(np.asarray(waveform, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return Audio(w, rate=int(sample_rate), normalize=False, autoplay=False)._repr_html_()


class Explorer(widgets.VBox):
    """The explorer widget (a ``VBox``). See :func:`build_explorer`.

    Attributes:
        direction, index, k: the controls (ToggleButtons, Dropdown/IntText, IntSlider).
        results: the current top-k as ``[(index, score), ...]`` in the other modality, best first.
        view: the HTML widget showing the query and its neighbours.
    """

    def __init__(self, image_emb: torch.Tensor, audio_emb: torch.Tensor, image_paths: Sequence[Any],
                 audio_paths: Sequence[Any], labels: Sequence[str] | None = None, sample_rate: int = SAMPLE_RATE,
                 k: int = 5, max_audio_seconds: float = 5.0,
                 load_audio: Callable[[Any, int], np.ndarray] | None = None) -> None:
        self.image_emb = torch.as_tensor(image_emb, dtype=torch.float32)
        self.audio_emb = torch.as_tensor(audio_emb, dtype=torch.float32)
        n = self.image_emb.shape[0]
        if self.image_emb.ndim != 2 or self.audio_emb.shape != self.image_emb.shape:
            raise ValueError(f"build_explorer: image_emb and audio_emb must both be (N,D), got "
                             f"{tuple(self.image_emb.shape)} and {tuple(self.audio_emb.shape)}")
        if len(image_paths) != n or len(audio_paths) != n:
            raise ValueError(f"build_explorer: {n} embeddings but {len(image_paths)} images and "
                             f"{len(audio_paths)} audio clips")
        if labels is not None and len(labels) != n:
            raise ValueError(f"build_explorer: {n} embeddings but {len(labels)} labels")
        if n < 1:
            raise ValueError("build_explorer: empty dataset")
        self.image_paths, self.audio_paths = list(image_paths), list(audio_paths)
        self.labels = [str(x) for x in labels] if labels is not None else None
        self.sample_rate = int(sample_rate)
        self.max_samples = int(max_audio_seconds * sample_rate)
        if load_audio is None:
            from ciap_lib.audio_io import load_audio as _load

            load_audio = _load
        self._load_audio = load_audio
        self._audio_cache: dict[int, str] = {}
        self.results: list[tuple[int, float]] = []

        self.direction = widgets.ToggleButtons(options=[(v, k_) for k_, v in DIRECTIONS.items()], value="i2a",
                                               description="query")
        names = [self._name(i) for i in range(n)]
        if n <= 1000:
            self.index = widgets.Dropdown(options=[(s, i) for i, s in enumerate(names)], value=0, description="item")
        else:
            self.index = widgets.BoundedIntText(value=0, min=0, max=n - 1, description="item")
        self.k = widgets.IntSlider(value=min(k, n), min=1, max=min(max(k, 10), n), description="top-k")
        self.view = widgets.HTML()
        super().__init__([widgets.HBox([self.direction]), widgets.HBox([self.index, self.k]), self.view])
        for w in (self.direction, self.index, self.k):
            w.observe(self._on_change, names="value")
        self.update()

    # -- callbacks ---------------------------------------------------------------------------
    def _on_change(self, change: dict) -> None:
        self.update()

    def select(self, index: int, direction: str | None = None, k: int | None = None) -> list[tuple[int, float]]:
        """Do what the controls do: pick query ``index`` (and direction 'i2a'/'a2i', k). Returns the results."""
        if direction is not None:
            if direction not in DIRECTIONS:
                raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
            self.direction.value = direction
        if k is not None:
            self.k.value = k
        if not 0 <= int(index) < len(self.image_paths):
            raise ValueError(f"index must be in [0, {len(self.image_paths) - 1}], got {index}")
        self.index.value = int(index)
        self.update()
        return self.results

    def update(self) -> None:
        """Recompute the neighbours of the current query and refresh :attr:`view`."""
        i, kk = int(self.index.value), int(self.k.value)
        if self.direction.value == "i2a":
            q, keys = self.image_emb[i:i + 1], self.audio_emb
        else:
            q, keys = self.audio_emb[i:i + 1], self.image_emb
        scores, idx = topk(q, keys, kk)
        self.results = [(int(j), float(s)) for j, s in zip(idx[0], scores[0])]
        self.view.value = self.html()

    # -- rendering ---------------------------------------------------------------------------
    def _name(self, i: int) -> str:
        return f"{i}: {self.labels[i]}" if self.labels is not None else str(i)

    def _audio(self, i: int) -> str:
        if i not in self._audio_cache:
            w = self._load_audio(self.audio_paths[i], self.sample_rate)[: self.max_samples]
            self._audio_cache[i] = audio_html(w, self.sample_rate)
        return self._audio_cache[i]

    def _item(self, modality: str, i: int, caption: str) -> str:
        body = image_html(self.image_paths[i], title=self._name(i)) if modality == "image" else self._audio(i)
        return (f'<div style="display:inline-block;margin:4px;padding:4px;border:1px solid #ddd;'
                f'vertical-align:top;text-align:center">{body}<br/><small>{_html.escape(caption)}</small></div>')

    def html(self) -> str:
        """The current query and its top-k neighbours as standalone HTML (used by the batch path too)."""
        i = int(self.index.value)
        qmod, kmod = ("image", "audio") if self.direction.value == "i2a" else ("audio", "image")
        parts = [f"<div><b>query ({qmod})</b> {_html.escape(self._name(i))}<br/>",
                 self._item(qmod, i, self._name(i)), "</div>",
                 f"<div><b>top-{len(self.results)} {kmod}</b> (✓ = the true pair)<br/>"]
        for rank, (j, s) in enumerate(self.results, 1):
            mark = " ✓" if j == i else ""
            parts.append(self._item(kmod, j, f"#{rank} {self._name(j)} cos {s:.3f}{mark}"))
        parts.append("</div>")
        return "".join(parts)


def build_explorer(image_emb: torch.Tensor, audio_emb: torch.Tensor, image_paths: Sequence[Any],
                   audio_paths: Sequence[Any], labels: Sequence[str] | None = None, sample_rate: int = SAMPLE_RATE,
                   k: int = 5, max_audio_seconds: float = 5.0,
                   load_audio: Callable[[Any, int], np.ndarray] | None = None) -> Explorer:
    """The explorer widget over N pairs.

    Args:
        image_emb, audio_emb: (N, D) unit-norm embeddings; row i of each belongs to pair i.
        image_paths, audio_paths: N image files / N audio files (shown and played).
        labels: N label strings (shown in captions), or None.
        k: initial number of neighbours.
        load_audio: ``(path, sample_rate) -> (T,) float32``; default ``ciap_lib.audio_io.load_audio``.
    """
    return Explorer(image_emb, audio_emb, image_paths, audio_paths, labels=labels, sample_rate=sample_rate, k=k,
                    max_audio_seconds=max_audio_seconds, load_audio=load_audio)
