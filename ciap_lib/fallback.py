"""Labelled nearest-neighbour "generator": the demo path when no AudioLDM checkpoint exists.

This is **retrieval, not diffusion**. For each query image it returns the closest *training* clip by
CIAP embedding similarity, cropped or zero-padded to the requested duration. It has the same
``generate(...)`` signature as the diffusion wrapper (``ciap_lib.ui.generators.DiffusionGenerator``),
so the generation UI and notebook 04 work with either; ``kind`` / ``label`` say which one is in use.

Two ways of matching (``match``):

* ``"audio"`` (default for the ``mlp`` / ``logmel_cnn`` / ``logmel_cnn_tc`` audio encoders): cross-modal, the query image
  embedding against the CIAP audio embeddings of the training clips (what CIAP was trained for);
* ``"image"`` (used for the ``clap`` encoder, whose audio side needs AudioLDM's CLAP tower, i.e. the very
  checkpoint that is missing): the query image against the training images; the paired clip is returned.

Core layer: imports neither audioldm, diffusers nor mlflow.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ciap_lib.constants import SAMPLE_RATE, check_duration

MATCHES = ("audio", "image")


def fit_length(wave: np.ndarray, n_samples: int) -> np.ndarray:
    """Crop (keep the start) or zero-pad a (T,) waveform to exactly ``n_samples``."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if wave.shape[0] >= n_samples:
        return np.ascontiguousarray(wave[:n_samples])
    return np.concatenate([wave, np.zeros(n_samples - wave.shape[0], dtype=np.float32)])


@dataclass
class Match:
    """One retrieval result: training pair ``index``, its audio file, cosine ``score`` and label."""

    index: int
    audio: Path
    score: float
    label: str | None


class NearestNeighbourGenerator:
    """Returns the closest training clip for each image (retrieval, **not** diffusion).

    Args:
        model: a CIAP model (its ``encode_image`` embeds the queries).
        keys: (N, D) unit-norm embeddings of the training set: audio embeddings for ``match="audio"``,
            image embeddings for ``match="image"``.
        audio_paths: N audio files, row i of ``keys`` belongs to ``audio_paths[i]``.
        labels: optional N labels (shown in the result description).
        match: ``"audio"`` or ``"image"`` (see the module docstring).
        source: where the training set came from (for the label), e.g. ``data/synthetic/train``.
        sample_rate: output rate (16 kHz, as AudioLDM).

    Attributes:
        kind: ``"retrieval"``; ``is_diffusion``: False; ``label``: one human-readable line saying so.
        last_matches: the :class:`Match` of each image of the latest ``generate`` call.
    """

    kind = "retrieval"
    is_diffusion = False
    samplers: tuple[str, ...] = ()

    def __init__(self, model: torch.nn.Module, keys: torch.Tensor, audio_paths: Sequence[str | Path],
                 labels: Sequence[str | None] | None = None, match: str = "audio", source: str = "",
                 sample_rate: int = SAMPLE_RATE) -> None:
        if match not in MATCHES:
            raise ValueError(f"NearestNeighbourGenerator: match must be one of {MATCHES}, got {match!r}")
        keys = torch.as_tensor(keys, dtype=torch.float32)
        if keys.ndim != 2 or keys.shape[0] < 1:
            raise ValueError(f"NearestNeighbourGenerator: keys must be (N,D) with N >= 1, got {tuple(keys.shape)}")
        if len(audio_paths) != keys.shape[0]:
            raise ValueError(f"NearestNeighbourGenerator: {keys.shape[0]} keys but {len(audio_paths)} audio_paths")
        if labels is not None and len(labels) != keys.shape[0]:
            raise ValueError(f"NearestNeighbourGenerator: {keys.shape[0]} keys but {len(labels)} labels")
        self.model = model.eval()
        self.keys = torch.nn.functional.normalize(keys, dim=-1)
        self.audio_paths = [Path(p) for p in audio_paths]
        self.labels = list(labels) if labels is not None else [None] * len(self.audio_paths)
        self.match = match
        self.source = str(source)
        self.sample_rate = int(sample_rate)
        self.last_matches: list[Match] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset(cls, model: torch.nn.Module, data: str | Path, split: str | None = "train",
                     match: str = "auto", batch_size: int = 64, skip_bad: bool = True) -> "NearestNeighbourGenerator":
        """Index the pairs of ``<data>/<split>`` (or of the split folder ``data`` when ``split`` is None).

        ``match="auto"`` picks ``"image"`` for a ``clap`` audio encoder, else ``"audio"``.
        """
        from ciap_lib.data import PairDataset, make_loader
        from ciap_lib.embedding import embed_dataset

        mc = model.config
        if match == "auto":
            match = "image" if mc.audio_encoder == "clap" else "audio"
        if match not in MATCHES:
            raise ValueError(f"NearestNeighbourGenerator.from_dataset: match must be 'auto' or one of {MATCHES}, "
                             f"got {match!r}")
        root = Path(data)
        if split and not (root / split).is_dir():
            raise ValueError(f"NearestNeighbourGenerator.from_dataset: data folder {str(root / split)!r} does not "
                             "exist (the fallback needs the training pairs to retrieve from)")
        ds = PairDataset(root, split, model.preprocess, train=False, sample_rate=mc.sample_rate,
                         segment_seconds=mc.segment_seconds, skip_bad=skip_bad)
        if match == "audio":
            _, keys, _ = embed_dataset(model, ds, batch_size=batch_size)
        else:
            was_training = model.training
            model.eval()
            chunks = []
            with torch.no_grad():
                for batch in make_loader(ds, batch_size, shuffle=False, num_workers=0):
                    chunks.append(model.encode_image(batch["image"]).float().cpu())
            model.train(was_training)
            keys = torch.cat(chunks)
        source = str(root / split) if split else str(root)
        return cls(model, keys, [p.audio for p in ds.pairs], [p.label for p in ds.pairs], match=match,
                   source=source, sample_rate=mc.sample_rate)

    # ------------------------------------------------------------------ info
    @property
    def preprocess(self) -> Any:
        """How query images must be prepared (the CIAP model's ``ImagePreprocess``, stored in its checkpoint):
        ``ciap_lib.images.load_image(path, generator.preprocess)``."""
        return self.model.preprocess

    @property
    def image_size(self) -> int:
        """Side S of the (B,3,S,S) images ``generate`` expects (the CIAP model's)."""
        return int(self.preprocess.size)

    @property
    def label(self) -> str:
        what = ("whose CIAP audio embedding" if self.match == "audio"
                else "whose paired image's CIAP embedding")
        return (f"Nearest-neighbour RETRIEVAL fallback (not diffusion): returns the training clip from "
                f"{self.source or 'the index'} ({len(self.audio_paths)} clips) {what} is closest to the "
                "image's embedding, cropped/zero-padded to the requested duration.")

    def __repr__(self) -> str:
        return f"NearestNeighbourGenerator(match={self.match!r}, n={len(self.audio_paths)}, source={self.source!r})"

    # ------------------------------------------------------------------ search + "generation"
    @torch.no_grad()
    def search(self, images: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None) -> list[Match]:
        """The best training pair for each query: images (B,3,S,S) or image_embeds (B,D) / (B,1,D)."""
        if (images is None) == (image_embeds is None):
            raise ValueError("NearestNeighbourGenerator: pass exactly one of images or image_embeds")
        if images is not None:
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be (B,3,H,W), got {tuple(images.shape)}")
            q = self.model.encode_image(images.float())
        else:
            q = torch.as_tensor(image_embeds, dtype=torch.float32)
            q = q.reshape(q.shape[0], -1)
        if q.shape[-1] != self.keys.shape[-1]:
            raise ValueError(f"query embedding size {q.shape[-1]} does not match the index's {self.keys.shape[-1]}")
        scores = torch.nn.functional.normalize(q.float(), dim=-1) @ self.keys.T  # (B,N)
        best = scores.argmax(dim=1)
        return [Match(int(i), self.audio_paths[int(i)], float(scores[b, i]), self.labels[int(i)])
                for b, i in enumerate(best)]

    def generate(self, images: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                 cond_stage: Any = None, duration: float = 5.0, steps: int | None = None,
                 guidance_scale: float = 2.5, seed: int = 0, n_candidates: int = 1, sampler: str = "dpmpp",
                 callback: Callable[..., Any] | None = None, negative: Sequence[str] | None = None,
                 negative_text: str | None = None, mix: Sequence[str] | None = None,
                 device: str | None = None, precision: str = "auto") -> np.ndarray:
        """The closest training clip per image, as (B, T) float32 at 16 kHz, T = round(duration * 16000).

        Same signature as the diffusion wrapper; ``cond_stage``, ``steps``, ``guidance_scale``, ``seed``,
        ``n_candidates``, ``sampler``, ``negative``, ``negative_text``, ``mix``, ``device`` and ``precision`` have no
        effect on retrieval (the result is deterministic).
        ``callback(step, total)`` is called once per image.
        """
        from ciap_lib.audio_io import load_audio

        duration = check_duration(duration)
        matches = self.search(images, image_embeds)
        n = int(round(duration * self.sample_rate))
        out = np.zeros((len(matches), n), dtype=np.float32)
        for b, m in enumerate(matches):
            out[b] = fit_length(load_audio(m.audio, self.sample_rate), n)
            if callback is not None:
                callback(b + 1, len(matches))
        self.last_matches = matches
        return out

    def describe(self, matches: Sequence[Match] | None = None) -> list[str]:
        """One line per match of the latest call: which training clip was returned, with its score."""
        return [f"retrieved training clip {m.audio.name}" + (f" (label {m.label})" if m.label else "")
                + f", cosine {m.score:.3f}" for m in (self.last_matches if matches is None else matches)]
