"""ipywidgets UIs for the notebooks.

* :mod:`ciap_lib.ui.explorer` — cross-modal neighbour explorer (notebook 03).
* :mod:`ciap_lib.ui.generation` — image-to-audio generation UI (notebook 04);
  :mod:`ciap_lib.ui.generators` — the generators it drives (diffusion, or the labelled retrieval fallback);
  :mod:`ciap_lib.ui.batch` — notebook 04's batch path (images -> WAVs, one record per image).

Build functions take data and return the widget; their callbacks are plain methods, so tests drive them
headlessly. Widget callbacks never fire under papermill: the notebooks also have a batch path.
Inline audio is ``IPython.display.Audio`` HTML (``<audio controls>``, never autoplay).
"""
from __future__ import annotations

from typing import Any

__all__ = ["Explorer", "build_explorer", "audio_html", "image_html"]


def __getattr__(name: str) -> Any:  # lazy: importing ciap_lib.ui does not import ipywidgets
    if name in __all__:
        from ciap_lib.ui import explorer

        return getattr(explorer, name)
    raise AttributeError(f"module 'ciap_lib.ui' has no attribute {name!r}")
