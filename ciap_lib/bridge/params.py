"""Generation parameters: one home for their defaults and their checks (as diffusers' ``check_inputs``).

The CLI (``generate``), the pipeline's ``generation`` section, notebook 04 and its widget all take their
defaults from :class:`GenerationParams` and validate with :meth:`GenerationParams.check`, so a bad value fails
before any model is loaded, with a message naming the parameter, the rejected value and what is allowed.

``steps=None`` means the sampler's own count (:data:`~ciap_lib.bridge.sampling.DEFAULT_STEPS`: 6 for the fast
solvers, 200 for AudioLDM's DDIM).

Every value is a plain type (numbers, strings, lists of strings), so the pipeline's YAML, papermill and MLflow carry
them as they are. ``negative``/``negative_text``/``mix`` are parsed and explained in :mod:`ciap_lib.bridge.guidance`.
"""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from ciap_lib.bridge.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
from ciap_lib.bridge.guidance import spec_problems
from ciap_lib.config import DEVICE_CHOICES, DEVICE_PATTERN, check_type
from ciap_lib.constants import check_duration

PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


@dataclass
class GenerationParams:
    """What one generation call needs besides the models and the images.

    Attributes:
        duration: clip length in seconds (2.5 to 10, as AudioLDM).
        steps: solver steps; None = the sampler's own default.
        sampler: ``dpmpp`` (DPM-Solver++ 2M), ``unipc`` or ``ddim`` (AudioLDM's reference).
        guidance_scale: classifier-free guidance weight (>= 0; 1 = no guidance).
        seed: clip ``i`` candidate ``k`` starts from the noise of seed ``seed + i * n_candidates + k``.
        n_candidates: clips sampled per image; the one closest to the condition in CLAP space is kept.
        batch_size: clips (images x candidates) sampled together.
        precision: ``auto`` (the faster of the two on the device: ``bf16`` on CUDA and on CPUs whose bf16 matmul is
            measured >= 1.2x float32's, such as AMX Xeons, else ``fp32``: ``ciap_lib.bridge.devices.resolve_precision``),
            ``bf16`` (half-precision weight copies under autocast: bfloat16, or float16 on GPUs without bfloat16;
            float32 on CPUs without native bf16, where emulated bf16 is ~8x slower per UNet step) or ``fp32``.
        negative: audio clip paths; guidance steers away from their averaged CLAP audio embedding instead of
            the CLAP text embedding of ``""``.
        negative_text: a text to steer away from instead (``"speech"``; needs a local RoBERTa tokenizer); not
            together with ``negative``. None or ``""``: the default ``""``.
        mix: entries ``"<audio path>:<w>"`` / ``"text:<text>:<w>"``; the condition becomes
            ``normalize((1 - sum(w)) * image + sum(w * other))`` (each w in [0, 1], sum <= 1).
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    duration: float = 5.0
    steps: int | None = None
    sampler: str = DEFAULT_SAMPLER
    guidance_scale: float = 2.5
    seed: int = 0
    n_candidates: int = 1
    batch_size: int = 4
    precision: str = "auto"
    negative: list[str] = field(default_factory=list)
    negative_text: str | None = None
    mix: list[str] = field(default_factory=list)
    device: str = "auto"

    @property
    def resolved_steps(self) -> int:
        """``steps``, or the sampler's default when None."""
        return DEFAULT_STEPS[self.sampler] if self.steps is None else int(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def hints(cls) -> dict[str, Any]:
        """``{field: type}`` (what the pipeline's schema and the command-line parser use)."""
        h = typing.get_type_hints(cls)
        return {f.name: h[f.name] for f in fields(cls)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "") -> "GenerationParams":
        """Build from a mapping of some fields, type-checking each (``ValueError`` names ``prefix`` + key)."""
        hints = cls.hints()
        unknown = sorted(set(d) - set(hints))
        if unknown:
            raise ValueError(f"unknown generation parameter(s) {[prefix + k for k in unknown]}; "
                             f"known: {sorted(hints)}")
        return cls(**{k: check_type(f"{prefix}{k}", v, hints[k]) for k, v in d.items()})

    def problems(self) -> list[tuple[str, str]]:
        """``[(field, problem), ...]``: every value outside what is allowed (empty when all are fine)."""
        out: list[tuple[str, str]] = []
        try:
            check_duration(self.duration, "duration")
        except ValueError as e:
            out.append(("duration", str(e).partition(": ")[2]))
        if self.sampler not in SAMPLERS:
            out.append(("sampler", f"{self.sampler!r} is not one of {list(SAMPLERS)}"))
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            out.append(("steps", f"must be an integer >= 1, or null for the sampler's default "
                                 f"({', '.join(f'{k} {v}' for k, v in DEFAULT_STEPS.items())}), got {self.steps!r}"))
        for key in ("n_candidates", "batch_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                out.append((key, f"must be an integer >= 1, got {v!r}"))
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            out.append(("guidance_scale", f"must be a finite number >= 0, got {g!r}"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            out.append(("seed", f"must be an integer, got {self.seed!r}"))
        if self.precision not in PRECISIONS:
            out.append(("precision", f"{self.precision!r} is not one of {list(PRECISIONS)}"))
        out += spec_problems(self.negative, self.negative_text, self.mix)
        steered = bool(self.negative) or bool(self.negative_text)
        if steered and isinstance(g, (int, float)) and not isinstance(g, bool) and g <= 1:
            out.append(("guidance_scale", f"{g!r} with a negative: guidance steers away from the negative only at "
                                          "guidance_scale > 1 (at 1 the negative has no effect; below 1 the sound "
                                          "moves towards it)"))
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            out.append(("device", f"{self.device!r} is not a device; use {DEVICE_CHOICES}"))
        return out

    def check(self, prefix: str = "") -> "GenerationParams":
        """Raise one ``ValueError`` listing every bad value (each line ``<prefix><field>: <problem>``);
        returns ``self``."""
        bad = self.problems()
        if bad:
            raise ValueError("\n".join(f"{prefix}{k}: {msg}" for k, msg in bad))
        return self
