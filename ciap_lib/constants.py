"""Constants shared by every layer, and the one rule on generation durations.

AudioLDM, its CLAP towers and CIAP all work on 16 kHz mono audio; AudioLDM generates 2.5 to 10 s clips and is
conditioned on a 512-d CLAP embedding.
"""
from __future__ import annotations

import math

#: audio sample rate (Hz) of AudioLDM, CLAP and every CIAP audio path
SAMPLE_RATE = 16000
#: generation clip length bounds (seconds), as AudioLDM's
MIN_DURATION, MAX_DURATION = 2.5, 10.0
#: size of AudioLDM's condition (the CLAP embedding) and so of CIAP embeddings that condition it
CONDITION_DIM = 512


def check_duration(duration: object, name: str = "duration") -> float:
    """``duration`` as a float, or a ``ValueError`` naming ``name`` unless MIN_DURATION <= duration <= MAX_DURATION."""
    if isinstance(duration, bool):
        raise ValueError(f"{name}: must be a number of seconds, got {duration!r}")
    try:
        d = float(duration)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number of seconds, got {duration!r}") from None
    if not math.isfinite(d) or not MIN_DURATION <= d <= MAX_DURATION:
        raise ValueError(f"{name}: must be between {MIN_DURATION} and {MAX_DURATION} seconds, got {duration!r}")
    return d
