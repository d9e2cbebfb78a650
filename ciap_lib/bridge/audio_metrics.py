"""Standard audio-generation metrics, defined as in audioldm_eval (github.com/haoheliu/audioldm_eval, read at
commit 8dc07ee; the metric code is unchanged since 2023-06), so that figures can be set beside published tables.

Names say which embedding space a figure lives in; none of them is the CLAP-space ``clap_fd``/``clap_score``
of :mod:`ciap_lib.bridge.metrics`:

==================  ==========================================================================================
``fad_vggish``      FAD: Fréchet distance between VGGish embeddings (128-d, no PCA, no final ReLU) of all
                    0.96 s examples of the generated clips vs. those of the reference clips
                    (``metrics/fad.py``; see :mod:`ciap_lib.bridge.vggish`). audioldm_eval's
                    ``frechet_audio_distance``.
``fd_panns``        FD: Fréchet distance between PANNs Cnn14 16 kHz ``"2048"`` clip embeddings (one per clip)
                    (``metrics/fid.py``; see :mod:`ciap_lib.bridge.panns`). audioldm_eval's ``frechet_distance``.
``kl_panns``        KL with softmax, audioldm_eval's ``kullback_leibler_divergence_softmax`` (printed "KL"):
                    ``mean_i sum_c r_ic (log r_ic - log(g_ic + 1e-6))``, ``r_i = softmax(ref logits_i)``,
                    ``g_i = softmax(gen logits_i)``: KL(reference_i || generated_i), generated clip i paired
                    with reference clip i (``metrics/kl.py``, ``calculate_kl``; it pairs by file name).
``kl_panns_sigmoid`` the same with ``sigmoid`` instead of ``softmax`` (``kullback_leibler_divergence_sigmoid``,
                    printed "KL_Sigmoid"); the per-class terms of unnormalised sigmoid outputs, so it can be
                    negative.
``is_panns``        Inception score over the generated clips' logits (``metrics/isc.py``): rows shuffled by
                    ``np.random.RandomState(2020).permutation``, 10 splits ``[i*N//10, (i+1)*N//10)``, per
                    split ``exp(mean_i KL(p_i || mean_j p_j))`` with ``p = softmax(logits)`` in float64;
                    ``is_panns`` is the mean over splits, ``is_panns_std`` their (population) std. In
                    ``[1, 527]``; 1 when all predictions are equal.
==================  ==========================================================================================

Preprocessing of every clip (``datasets/load_mel.py``, ``WaveDataset.read_from_file``): first channel of a
file; the clip's mean is subtracted; resampled to 16 kHz with torchaudio's sinc resampler (its default
parameters); zero-padded at the end to at least 32,000 samples (2 s). Then VGGish gets the clip as is and
Cnn14 gets the whole clip in one pass.

Weights come from local files (:mod:`ciap_lib.bridge.metric_weights`); a metric whose file is absent is
returned under ``"skipped"`` with the reason, never silently left out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ciap_lib.bridge.clips import Clips, clip_list
from ciap_lib.bridge.frechet import frechet_distance
from ciap_lib.bridge.metric_weights import (
    CNN14_16K, DEFAULT_WEIGHTS_DIR, VGGISH, find_weights, missing_message,
)

#: The metric groups :func:`standard_metrics` computes (``kl_panns`` also gives ``kl_panns_sigmoid``,
#: ``is_panns`` also ``is_panns_std``).
STANDARD_METRICS = ("fad_vggish", "fd_panns", "kl_panns", "is_panns")
EVAL_SAMPLE_RATE = 16000     #: audioldm_eval's 16 kHz evaluation
MIN_SAMPLES = 32000          #: ``pad_short_audio(min_samples=32000)``
KL_EPS = 1e-6                #: ``calculate_kl``'s EPS, added to the generated clip's probabilities
IS_SPLITS = 10               #: ``calculate_isc(splits=10)`` in ``eval.py``
IS_SEED = 2020               #: ``calculate_isc(rng_seed=2020, samples_shuffle=True)``


def prepare_clips(clips: Clips, sample_rate: int = 16000) -> list[torch.Tensor]:
    """audioldm_eval's preprocessing: each clip as a (T,) float32 16 kHz tensor, mean removed, >= 2 s.

    ``clips``: a (N, T) array/tensor or a list of 1-D clips at ``sample_rate``, or audio file paths (decoded
    at their own rate, first channel). Mean removed before resampling, as audioldm_eval does.
    """
    from ciap_lib.audio_io import resample

    out = []
    for i, (w, sr) in enumerate(clip_list(clips, sample_rate, channel="first")):
        if w.numel() == 0:
            raise ValueError(f"clip {i} is empty")
        if not torch.isfinite(w).all():
            raise ValueError(f"clip {i} contains NaN or infinite samples")
        w = w - w.mean()
        if sr != EVAL_SAMPLE_RATE:
            w = torch.from_numpy(resample(w, sr, EVAL_SAMPLE_RATE))
        if w.shape[0] < MIN_SAMPLES:
            w = F.pad(w, (0, MIN_SAMPLES - w.shape[0]))
        out.append(w.float())
    return out


def kl_per_clip(gen_logits: torch.Tensor, ref_logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """(N,) float64: for each pair i, ``sum_c r_ic (log r_ic - log(g_ic + 1e-6))`` with ``r``/``g`` the
    ``activation`` ('softmax' or 'sigmoid') of reference/generated logits (N, C). The mean over i is
    audioldm_eval's KL (``calculate_kl``: ``kl_div(..., reduction="sum") / N``)."""
    if gen_logits.shape != ref_logits.shape or gen_logits.dim() != 2:
        raise ValueError(f"kl_per_clip: need two (N, C) logit tensors of one shape, got "
                         f"{tuple(gen_logits.shape)} and {tuple(ref_logits.shape)}")
    g, r = gen_logits.double(), ref_logits.double()
    if activation == "softmax":
        pg, pr = g.softmax(dim=1), r.softmax(dim=1)
    elif activation == "sigmoid":
        pg, pr = g.sigmoid(), r.sigmoid()
    else:
        raise ValueError(f"kl_per_clip: activation must be 'softmax' or 'sigmoid', got {activation!r}")
    return F.kl_div((pg + KL_EPS).log(), pr, reduction="none").sum(dim=1)


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS, seed: int | None = IS_SEED
                    ) -> tuple[float, float]:
    """``(mean, std)`` of the inception score over ``splits`` splits of ``logits`` (N, C), as
    audioldm_eval's ``calculate_isc`` (rows shuffled with ``RandomState(seed)`` unless ``seed`` is None).
    Needs N >= ``splits`` (an empty split has no score)."""
    if logits.dim() != 2:
        raise ValueError(f"inception_score: logits must be (N, C), got {tuple(logits.shape)}")
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"inception_score: need at least {splits} clips for {splits} splits, got {n}")
    x = logits.detach().cpu()
    if seed is not None:
        x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    x = x.double()
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(dim=0, keepdim=True)
        scores.append(float((p[lo:hi] * (log_p[lo:hi] - q.log())).sum(dim=1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


@dataclass
class ClipFeatures:
    """What the standard metrics need from one set of N clips (all on the CPU, in the order of the clips).

    ``vggish``: per clip, its (n_i, 128) VGGish example embeddings; ``panns_embedding`` (N, 2048) and
    ``panns_logits`` (N, 527): Cnn14's ``"2048"`` and ``"logits"``. A field is None when its model was not
    loaded (weights absent or metric not asked for).
    """

    n: int
    vggish: list[torch.Tensor] | None = None
    panns_embedding: torch.Tensor | None = None
    panns_logits: torch.Tensor | None = None


class StandardMetricModels:
    """VGGish and/or PANNs Cnn14 16 kHz, loaded once from local weights for several feature extractions
    (e.g. one reference set against several generated sets).

    A model whose weights file is absent is not loaded; ``skipped`` maps each metric that needs it to the
    reason (:func:`ciap_lib.bridge.metric_weights.missing_message`). A file that exists but is unusable raises
    :class:`ciap_lib.bridge.metric_weights.MetricWeightsError` naming it.
    """

    def __init__(self, weights_dir: str | os.PathLike | None = DEFAULT_WEIGHTS_DIR,
                 device: str | torch.device = "cpu", metrics: Sequence[str] = STANDARD_METRICS):
        unknown = [m for m in metrics if m not in STANDARD_METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(STANDARD_METRICS)}")
        self.metrics = tuple(metrics)
        self.skipped: dict[str, str] = {}
        self.vggish = self.cnn14 = None
        if "fad_vggish" in self.metrics:
            path = find_weights(VGGISH, weights_dir)
            if path is None:
                self.skipped["fad_vggish"] = missing_message(VGGISH, "fad_vggish", weights_dir)
            else:
                from ciap_lib.bridge.vggish import build_vggish

                self.vggish = build_vggish(path, device)
        panns = [m for m in ("fd_panns", "kl_panns", "is_panns") if m in self.metrics]
        if panns:
            path = find_weights(CNN14_16K, weights_dir)
            if path is None:
                self.skipped.update({m: missing_message(CNN14_16K, m, weights_dir) for m in panns})
            else:
                from ciap_lib.bridge.panns import build_cnn14_16k

                self.cnn14 = build_cnn14_16k(path, device)

    def features(self, clips: Clips, sample_rate: int = 16000, batch_size: int = 8) -> ClipFeatures:
        """:class:`ClipFeatures` of ``clips`` after :func:`prepare_clips`. ``batch_size``: clips per Cnn14 pass
        (equal-length clips only) and 8x that many VGGish examples per pass; results do not depend on it."""
        return self.features_of_prepared(prepare_clips(clips, sample_rate), batch_size)

    def features_of_prepared(self, prepared: list[torch.Tensor], batch_size: int = 8) -> ClipFeatures:
        """:meth:`features` of clips that already went through :func:`prepare_clips`."""
        out = ClipFeatures(n=len(prepared))
        if self.vggish is not None:
            from ciap_lib.bridge.vggish import vggish_embeddings

            out.vggish = vggish_embeddings(self.vggish, prepared, batch_size * 8)
        if self.cnn14 is not None:
            from ciap_lib.bridge.panns import panns_features

            out.panns_embedding, out.panns_logits = panns_features(self.cnn14, prepared, batch_size)
        return out


def metrics_from_features(gen: ClipFeatures, ref: ClipFeatures | None, metrics: Sequence[str] = STANDARD_METRICS,
                          is_splits: int = IS_SPLITS, skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """The figures of :func:`standard_metrics` from features already extracted (``ref`` may be None when
    only ``is_panns`` is asked for). ``skipped``: reasons already known (e.g. ``StandardMetricModels.skipped``);
    a metric whose features are missing without a known reason raises ``ValueError``."""
    skipped = dict(skipped or {})
    out: dict[str, Any] = {"n_generated": gen.n, "n_reference": ref.n if ref is not None else 0}
    per_clip: dict[str, list[float]] = {}
    wanted = [m for m in metrics if m not in skipped]
    if ref is None and any(m != "is_panns" for m in wanted):
        raise ValueError("metrics_from_features: reference features are needed for " + ", ".join(wanted))
    for side, f in (("generated", gen), ("reference", ref)):
        if f is not None and f.n < 2:
            raise ValueError(f"standard metrics: need at least 2 {side} clips, got {f.n}")

    def need(m: str, *fields: Any) -> None:
        if any(x is None for x in fields):
            raise ValueError(f"metrics_from_features: {m} asked for, but its features were not extracted")

    if "fad_vggish" in wanted:
        need("fad_vggish", gen.vggish, ref.vggish)
        out["fad_vggish"] = frechet_distance(torch.cat(gen.vggish), torch.cat(ref.vggish))
    if "fd_panns" in wanted:
        need("fd_panns", gen.panns_embedding, ref.panns_embedding)
        out["fd_panns"] = frechet_distance(gen.panns_embedding, ref.panns_embedding)
    if "kl_panns" in wanted:
        need("kl_panns", gen.panns_logits, ref.panns_logits)
        if gen.n != ref.n:
            skipped["kl_panns"] = (f"kl_panns skipped: KL pairs generated[i] with reference[i], but there are "
                                   f"{gen.n} generated and {ref.n} reference clips")
        else:
            for key, act in (("kl_panns", "softmax"), ("kl_panns_sigmoid", "sigmoid")):
                kl = kl_per_clip(gen.panns_logits, ref.panns_logits, act)
                out[key] = float(kl.mean())
                per_clip[key] = [float(v) for v in kl]
    if "is_panns" in wanted:
        need("is_panns", gen.panns_logits)
        if gen.n < is_splits:
            skipped["is_panns"] = (f"is_panns skipped: the inception score uses {is_splits} splits (audioldm_eval), "
                                   f"which needs at least {is_splits} generated clips; got {gen.n}")
        else:
            out["is_panns"], out["is_panns_std"] = inception_score(gen.panns_logits, is_splits)
    out["per_clip"] = per_clip
    out["skipped"] = skipped
    return out


def standard_metrics(generated: Clips, reference: Clips, sample_rate: int = 16000,
                     weights_dir: str | os.PathLike | None = DEFAULT_WEIGHTS_DIR, device: str | torch.device = "cpu",
                     metrics: Sequence[str] = STANDARD_METRICS, batch_size: int = 8, is_splits: int = IS_SPLITS,
                     models: StandardMetricModels | None = None) -> dict[str, Any]:
    """FAD (VGGish), FD/KL/IS (PANNs Cnn14 16 kHz) of ``generated`` against ``reference``, as audioldm_eval.

    Args:
        generated, reference: (N, T) arrays/tensors or lists of 1-D clips at ``sample_rate``, or audio file
            paths. For KL, ``generated[i]`` is paired with ``reference[i]``.
        sample_rate: rate of the array/tensor clips (files carry their own).
        weights_dir: folder holding ``vggish-10086976.pth`` / ``Cnn14_16k_mAP=0.438.pth`` (the original tools'
            caches are looked in next, see :mod:`ciap_lib.bridge.metric_weights`).
        device: where the two networks run.
        metrics: which of :data:`STANDARD_METRICS` to compute.
        batch_size: clips per Cnn14 pass (equal-length clips only) and 8x that many VGGish examples per pass.
        is_splits: inception-score splits (audioldm_eval: 10).
        models: already loaded :class:`StandardMetricModels` (then ``weights_dir`` and ``device`` are unused);
            metrics it could not load stay skipped.

    Returns:
        ``{"fad_vggish": float, "fd_panns": float, "kl_panns": float, "kl_panns_sigmoid": float,
        "is_panns": float, "is_panns_std": float, "per_clip": {"kl_panns": [N floats], "kl_panns_sigmoid":
        [...]}, "skipped": {metric: reason}, "n_generated": N, "n_reference": M}``. A metric that could not be
        computed (weights file absent, unpaired sets for KL, fewer clips than IS splits) is absent from the
        figures and present in ``"skipped"`` with the reason.

    Raises:
        ValueError: unknown metric names, fewer than 2 clips on a side, empty or non-finite clips.
        ciap_lib.audio_io.BadFileError: an unreadable audio file (named).
        ciap_lib.bridge.metric_weights.MetricWeightsError: a weights file that exists but is unusable (named).
    """
    unknown = [m for m in metrics if m not in STANDARD_METRICS]
    if unknown:
        raise ValueError(f"standard_metrics: unknown metrics {unknown}; known: {', '.join(STANDARD_METRICS)}")
    gen, ref = prepare_clips(generated, sample_rate), prepare_clips(reference, sample_rate)
    for clips, side in ((gen, "generated"), (ref, "reference")):
        if len(clips) < 2:
            raise ValueError(f"standard_metrics: need at least 2 {side} clips, got {len(clips)}")
    if models is None:
        models = StandardMetricModels(weights_dir, device, metrics)
    else:
        missing = [m for m in metrics if m not in models.metrics]
        if missing:
            raise ValueError(f"standard_metrics: the models given were loaded without {missing}")
    skipped = {m: r for m, r in models.skipped.items() if m in metrics}
    return metrics_from_features(models.features_of_prepared(gen, batch_size),
                                 models.features_of_prepared(ref, batch_size), metrics, is_splits, skipped)
