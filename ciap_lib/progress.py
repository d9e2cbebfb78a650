"""Progress bars: one tqdm setup for every long loop (stderr, throttled, silenced by ``TQDM_DISABLE=1``)."""
from __future__ import annotations

import os
import sys
from typing import Iterable

from tqdm import tqdm


def disabled() -> bool:
    """True when ``$TQDM_DISABLE`` asks for no progress bars (tests, papermill runs that set it)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", enabled: bool = True,
             **kw) -> tqdm:
    """A tqdm bar on stderr that redraws at most every ``$TQDM_MININTERVAL`` seconds (default 1; the pipeline
    sets 10 so papermill logs stay short) and leaves nothing behind. ``enabled=False`` or ``TQDM_DISABLE=1``
    silences it."""
    kw.setdefault("leave", False)
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("mininterval", float(os.environ.get("TQDM_MININTERVAL", "1.0")))
    return tqdm(iterable, total=total, desc=desc, disable=(not enabled) or disabled(), file=sys.stderr, **kw)
