"""Notebook 04's batch path: which checkpoint and images, where the WAVs go, one record per image."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ciap_lib.bridge.params import GenerationParams
from ciap_lib.constants import SAMPLE_RATE
from ciap_lib.pairs import safe_stem
from ciap_lib.ui.generators import Generator


def find_latest_checkpoint(ckpt_dir: str | Path = "ckpt", name: str = "last.pt") -> Path | None:
    """The newest ``<ckpt_dir>/*/<name>`` (a run's CIAP checkpoint), or None."""
    found = sorted(Path(ckpt_dir).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_checkpoint(checkpoint: str | Path, ckpt_dir: str | Path = "ckpt") -> tuple[Path, str]:
    """``checkpoint`` when it exists; else (a notebook opened by hand) the newest ``<ckpt_dir>/*/last.pt``. Either
    way a run's ``best.pt`` is used when it is there (:func:`ciap_lib.checkpoint.pick_checkpoint`).

    Returns ``(path, note)``; ``note`` says when another checkpoint than the requested one is used.
    ``ValueError`` naming ``checkpoint`` when there is none at all.
    """
    from ciap_lib.checkpoint import pick_checkpoint

    if checkpoint and Path(checkpoint).is_file():
        picked = pick_checkpoint(checkpoint)
        note = "" if picked == Path(checkpoint) else \
            f"using {picked} (the run's best epoch by its select_metric) instead of {checkpoint}"
        return picked, note
    latest = find_latest_checkpoint(ckpt_dir)
    if latest is None:
        raise ValueError(f"checkpoint {str(checkpoint)!r} not found and no {ckpt_dir}/*/last.pt exists: train a CIAP "
                         "model first (notebooks/02_training.ipynb or `python -m ciap_lib train`) or set "
                         "the `checkpoint` parameter")
    latest = pick_checkpoint(latest)
    return latest, f"checkpoint {str(checkpoint)!r} not found; using the newest run's, {latest}"


def default_images(data_root: str | Path, n: int, split: str = "val") -> list[Path]:
    """The images of the first ``n`` pairs of ``<data_root>/<split>`` (the batch default)."""
    from ciap_lib.pairs import scan_pairs

    split_dir = Path(data_root) / split
    if not split_dir.is_dir():
        raise ValueError(f"generation.images is empty and the data folder {str(split_dir)!r} does not exist: "
                         "pass image paths in generation.images")
    pairs, _ = scan_pairs(split_dir, skip_bad=True)
    return [p.image for p in pairs[:max(int(n), 0)]]


def resolved_settings(params: GenerationParams) -> dict[str, str]:
    """``{"device", "precision"}``: what ``params.device`` and ``params.precision`` resolve to here (``auto`` is not
    what runs, and the two precisions give different audio), for MLflow beside the parameters as given. The
    evaluation path records its own resolved values (``ciap_lib.bridge.evaluation``)."""
    from ciap_lib.bridge.devices import generation_device, resolve_precision

    dev = generation_device(params.device)
    return {"device": str(dev), "precision": resolve_precision(params.precision, dev)}


def output_name(image_name: str, generator: Any) -> str:
    """WAV file name for ``image_name``: ``<stem>.wav`` for diffusion, ``<stem>.nn-retrieval.wav`` for the fallback."""
    return f"{safe_stem(image_name)}{'' if generator.is_diffusion else '.nn-retrieval'}.wav"


def generate_files(generator: Generator, image_paths: Sequence[str | Path], out_dir: str | Path,
                   params: GenerationParams | None = None, clap_score: bool = True,
                   **overrides: Any) -> list[dict[str, Any]]:
    """Batch path: render each image to ``<out_dir>/<name>`` (see :func:`output_name`), one at a time, with
    ``params`` (default: ``GenerationParams()``) and ``overrides`` (any of its fields), checked first.

    Returns one record per image: ``image``, ``wav`` (Path), ``waveform`` ((T,) float32), ``seconds``
    (generation + WAV writing), ``kind`` ("diffusion" / "retrieval"), ``note`` (for the fallback: which
    training clip was returned) and, for diffusion with ``clap_score``, ``clap_score`` (CLAP-space cosine
    between the condition and the clip, see :meth:`DiffusionGenerator.clap_score`).
    """
    from ciap_lib.audio_io import write_wav
    from ciap_lib.images import load_image

    p = GenerationParams.from_dict({**(params.to_dict() if params is not None else {}), **overrides}).check()
    paths = [Path(x) for x in image_paths]
    missing = [str(x) for x in paths if not x.is_file()]
    if missing:
        raise ValueError(f"generation.images: file(s) not found: {missing}")
    out_dir = Path(out_dir)
    records = []
    for path in paths:
        t0 = time.perf_counter()
        img = load_image(path, generator.preprocess)[None]
        wave = generator.generate(images=img, duration=p.duration, steps=p.steps, guidance_scale=p.guidance_scale,
                                  seed=p.seed, sampler=p.sampler, n_candidates=p.n_candidates, negative=p.negative,
                                  negative_text=p.negative_text, mix=p.mix, device=p.device,
                                  precision=p.precision)[0]
        wav = write_wav(out_dir / output_name(path.name, generator), wave, SAMPLE_RATE)
        seconds = time.perf_counter() - t0
        note = "; ".join(generator.describe()) if not generator.is_diffusion and hasattr(generator, "describe") else ""
        rec = {"image": path, "wav": wav, "waveform": np.asarray(wave, dtype=np.float32), "seconds": seconds,
               "kind": generator.kind, "note": note}
        if clap_score and hasattr(generator, "clap_score"):
            rec["clap_score"] = float(generator.clap_score(wave[None], img)[0])
            rec["note"] = f"CLAP score {rec['clap_score']:.3f}"
        records.append(rec)
    return records


def records_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """MLflow figures of :func:`generate_files` records (images of the user's own, no reference clips):
    ``n_clips``, ``<kind>.seconds_per_clip`` and, for diffusion, ``<kind>.clap_score`` (the mean CLAP score, the
    only figure an image without a paired clip has); ``<kind>`` is ``diffusion`` or ``retrieval``, as in the
    evaluation report's figures."""
    if not records:
        return {}
    kind = records[0]["kind"]
    out = {"n_clips": float(len(records)),
           f"{kind}.seconds_per_clip": sum(r["seconds"] for r in records) / len(records)}
    scores = [r["clap_score"] for r in records if "clap_score" in r]
    if scores:
        out[f"{kind}.clap_score"] = sum(scores) / len(scores)
    return out


def evaluate_split(generator: Generator, model: Any, checkpoint: str | Path, data_root: str | Path,
                   generation: dict[str, Any], params: GenerationParams, out: str | Path, run_id: str | None,
                   split: str = "val") -> Any:
    """Notebook 04's batch mode for images of a split with paired clips: ``evaluate-generation``'s function
    (:func:`ciap_lib.workflows.evaluate_generation`) on the first ``generation["n_images"]`` pairs of
    ``<data_root>/<split>``, reusing the notebook's loaded model and generator (the loaded AudioLDM, or the
    retrieval fallback), with the retrieval baseline from ``generation["fallback_split"]``. Logs into ``run_id``.
    Clips made with other parameters are regenerated (a notebook rerun with new parameters means new clips).
    Returns the :class:`ciap_lib.workflows.GenerationReport`."""
    from ciap_lib.workflows import evaluate_generation

    diffusion = bool(getattr(generator, "is_diffusion", False))
    return evaluate_generation(
        checkpoint, data_root, split, int(generation["n_images"]), out=out, run_id=run_id, params=params,
        audioldm=generator.audioldm if diffusion else generation.get("audioldm", "audioldm-s-full"),
        ckpt_dir=generation.get("ckpt_dir", "ckpt"), baseline_split=generation.get("fallback_split", "train"),
        retrieval=None if diffusion else generator, model=model, overwrite=True,
        metrics_dir=generation.get("metrics_dir", "ckpt/metrics"),
        tokenizer_dir=generation.get("tokenizer_dir") or getattr(generator, "tokenizer_dir", None))
