"""Entry-point layer: the one place that dispatches training / evaluation to core or to the bridge.

The CLI and the notebooks call these; for ``audio_encoder == "clap"`` they lazily import the bridge
(``ciap_lib.bridge``), which loads the frozen AudioLDM and computes cached CLAP audio features. Other
modes never import audioldm/diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ciap_lib.config import TrainConfig
from ciap_lib.losses import loss_params
from ciap_lib.models import get_model_config
from ciap_lib.callbacks import Callback
from ciap_lib.train import TrainResult, evaluate, train


def resolved_audio_encoder(cfg: TrainConfig) -> str:
    """The audio encoder ``cfg`` trains (its override, else the named model config's)."""
    return get_model_config(cfg.model, **cfg.model_overrides()).audio_encoder


def ensure_data(cfg: TrainConfig) -> Path:
    """The dataset root of ``cfg``; the embedded synthetic set is built on first use when ``cfg.data`` is its
    default location (``data/synthetic``) and missing. Any other missing folder is an error naming it."""
    root = Path(cfg.data)
    if not root.exists() and Path(cfg.data) == Path(TrainConfig.data):
        from ciap_lib.synthetic import make_synthetic_dataset
        make_synthetic_dataset(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} (config key 'data') does not exist")
    return root


def fit(cfg: TrainConfig, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train ``cfg``: core :func:`~ciap_lib.train.train`, or the bridge's ``train_clap_aligned`` for 'clap'.

    Builds the embedded synthetic dataset first when ``cfg.data`` is its (missing) default location.
    """
    ensure_data(cfg)
    if resolved_audio_encoder(cfg) == "clap":
        from ciap_lib.bridge import train_clap_aligned  # lazy: imports audioldm
        return train_clap_aligned(cfg, callbacks)
    return train(cfg, callbacks)


def resolve_split(data: str | Path, split: str) -> tuple[Path, str | None]:
    """``data`` is a dataset root holding ``<split>/`` or a split folder itself -> (root, split or None)."""
    d = Path(data)
    if (d / split).is_dir():
        return d, split
    if d.is_dir():
        return d, None
    raise ValueError(f"data folder {str(d)!r} does not exist")


@dataclass
class EvalSplit:
    """A trained checkpoint ready to evaluate on one split: ``model`` (eval mode, on its device), its training
    ``config``, and ``dataset`` (a :class:`~ciap_lib.data.PairDataset` in evaluation mode: centre crops; for
    'clap' checkpoints its audio items are the cached CLAP audio embeddings of AudioLDM's frozen tower)."""

    model: Any
    config: TrainConfig
    dataset: Any

    @property
    def clap_mode(self) -> bool:
        """The audio side is AudioLDM's frozen CLAP audio tower (the model's embeddings live in CLAP space)."""
        return self.model.config.audio_encoder == "clap"


def load_eval_split(checkpoint: str | Path, data: str | Path | None = None, split: str = "val", *,
                    skip_bad: bool = False, cache: str = "auto", device: str = "cpu", audioldm: Any = None,
                    **bridge_kw: Any) -> EvalSplit:
    """Checkpoint -> model -> (CLAP audio features, for 'clap' checkpoints) -> evaluation dataset: the one path
    that ``evaluate``, ``embed`` and notebook 03 take. Images are prepared as the checkpoint stores
    (``model.preprocess``: the backbone's size, mean/std, interpolation and crop at training time).

    Args:
        checkpoint: a CIAP checkpoint (``ciap_lib.checkpoint.load_ciap``).
        data: a dataset root holding ``<split>/``, or a split folder itself; default: the data the checkpoint was
            trained on.
        split: the split folder under ``data``.
        skip_bad: skip (and report, ``dataset.skipped``) bad files instead of raising.
        cache: the dataset's cache mode (``"auto"``, ``"lazy"`` for large embedding jobs, ...).
        device: ``cpu``, ``cuda[:N]`` or ``auto``.
        audioldm: an already loaded ``FrozenAudioLDM`` for 'clap' checkpoints (else ``config.audioldm`` is
            loaded); ``bridge_kw`` goes to ``ciap_lib.bridge.clap_audio_features``.
    """
    from ciap_lib.checkpoint import load_ciap
    from ciap_lib.data import PairDataset
    from ciap_lib.distributed import resolve_device
    from ciap_lib.pairs import scan_pairs

    model, cfg = load_ciap(checkpoint, map_location=resolve_device(device))
    root, sub = resolve_split(data if data is not None else cfg.data, split)
    mc = model.config
    features = None
    if mc.audio_encoder == "clap":
        from ciap_lib.bridge import clap_audio_features, load_audioldm  # lazy: imports audioldm

        pairs, _ = scan_pairs(root / sub if sub else root, skip_bad=skip_bad)
        if audioldm is None:
            audioldm = load_audioldm(cfg.audioldm)
        features = clap_audio_features(audioldm, [p.audio for p in pairs], cfg.clap_cache_dir,
                                       **{"skip_bad": skip_bad, **bridge_kw})
    ds = PairDataset(root, sub, model.preprocess, train=False, sample_rate=mc.sample_rate,
                     segment_seconds=mc.segment_seconds, skip_bad=skip_bad, audio_features=features, seed=cfg.seed,
                     cache=cache)
    return EvalSplit(model=model, config=cfg, dataset=ds)


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | None = None, split: str = "val",
                        batch_size: int = 128, num_workers: int = 0, skip_bad: bool = False,
                        device: str = "cpu", progress: bool = False, audioldm: Any = None,
                        **bridge_kw: Any) -> dict[str, float]:
    """Validation loss + retrieval metrics of a checkpoint on ``data`` (root with ``<split>/``, or a split
    folder; default: the data the checkpoint was trained on), through :func:`load_eval_split`."""
    ev = load_eval_split(checkpoint, data, split, skip_bad=skip_bad, device=device, audioldm=audioldm, **bridge_kw)
    cfg = ev.config
    metrics = evaluate(ev.model, ev.dataset, batch_size=batch_size, loss=cfg.loss, loss_batch_size=cfg.batch_size,
                       chunk_size=cfg.eval_chunk_size, num_workers=num_workers, progress=progress,
                       loss_kwargs=loss_params(cfg.loss, cfg))
    metrics["n_pairs"] = float(len(ev.dataset))
    metrics["n_skipped"] = float(len(ev.dataset.skipped))
    return metrics


@dataclass
class GenerationReport:
    """What :func:`evaluate_generation` made: the ``evaluation`` (``ciap_lib.bridge.evaluation``'s
    ``GenerationEvaluation``), the HTML ``report`` and ``summary`` JSON under its ``out``, and the MLflow run
    that holds them (None when nothing was logged)."""

    evaluation: Any
    report: Path
    summary: Path
    run_id: str | None


def evaluate_generation(checkpoint: str | Path, data: str | Path, split: str = "val", n: int = 200, *,
                        out: str | Path, run_id: str | None = None, mlflow: bool = False,
                        experiment_name: str | None = None, run_name: str | None = None,
                        **kwargs: Any) -> GenerationReport:
    """``evaluate-generation``: generate one clip per image of ``<data>/<split>`` (first ``n`` pairs), score
    them against the paired clips with the retrieval baseline beside them
    (:func:`ciap_lib.bridge.evaluation.evaluate_generation`, which takes ``kwargs``), write
    ``<out>/report.html`` and ``<out>/summary.json``, and log to MLflow.

    MLflow: into ``run_id`` when given (e.g. notebook 04's run); else, with ``mlflow=True``, into a new run of
    ``experiment_name`` (default ``ciap``). Logged: the summary figures as metrics (``<system>.<metric>``, e.g.
    ``diffusion.fad_vggish``, ``retrieval.clap_score``; ``n_clips``), the per-clip table (``mlflow.log_table``,
    ``generation_eval/clips.json``), the report's files under ``out`` (``report.html``, ``wavs/``,
    ``reference/``, ``thumbs/``, ``manifest.json``, ``summary.json``) at the artifact root, as in ``out``, the
    parameters, and the tags ``generator`` (``diffusion`` / ``retrieval``: what the headline clips are),
    ``generation_eval.systems`` and ``generation_eval.skipped`` (the names of the figures skipped; the reasons are
    in ``summary.json`` and the report).
    """
    import json

    from ciap_lib.atomic import atomic_write_text
    from ciap_lib.bridge.evaluation import evaluate_generation as evaluate
    from ciap_lib.generation_report import clip_table, report_title, write_report

    ev = evaluate(checkpoint, data, split, n, out=out, **kwargs)
    report = write_report(ev)
    summary = atomic_write_text(Path(ev.out) / "summary.json", json.dumps({
        "title": report_title(ev), "retrieval_only": ev.retrieval_only, "n_clips": ev.n,
        "metrics": ev.summary_metrics(), "skipped": ev.skipped(), "params": ev.params.to_dict(),
        "checkpoint": str(ev.checkpoint), "split": str(ev.split_dir), "audioldm": ev.audioldm,
        "audioldm_missing": ev.audioldm_missing, "fingerprints": ev.fingerprints}, indent=1))
    if run_id is None and not mlflow:
        return GenerationReport(ev, report, summary, None)

    from ciap_lib import tracking

    if run_id is None:
        exp_id = tracking.setup(None, experiment_name or tracking.DEFAULT_EXPERIMENT)
        run_id = tracking.client().create_run(
            exp_id, run_name=run_name or f"evaluate-generation-{Path(checkpoint).parent.name}-{split}",
            tags={"git_commit": tracking.git_commit(), "ciap.entry": "cli.evaluate-generation"}).info.run_id
        own_run = True
    else:
        own_run = False
    status = "FAILED"
    try:
        metrics = ev.summary_metrics()
        for s in ev.systems.values():
            if s.generated:
                metrics[f"{s.name}.seconds_per_clip"] = s.seconds / s.generated
        tracking.log_metrics(metrics, run_id=run_id)
        tracking.log_params({"generation_eval": {"checkpoint": str(ev.checkpoint), "split": str(ev.split_dir),
                                                 "n": ev.n, "audioldm": str(ev.audioldm), **ev.params.to_dict()}},
                            run_id=run_id)
        tracking.set_tags({"generator": "retrieval" if ev.retrieval_only else "diffusion",
                           "generation_eval.systems": ",".join(ev.systems),
                           "generation_eval.title": report_title(ev),
                           "generation_eval.skipped": ",".join(sorted(ev.skipped())) or "none"}, run_id=run_id)
        tracking.log_table(clip_table(ev), "generation_eval/clips.json", run_id=run_id)
        for name in ("report.html", "summary.json", "manifest.json", "wavs", "reference", "thumbs"):
            if (Path(ev.out) / name).exists():  # only the report's own files: ``out`` may hold others
                tracking.log_artifact(Path(ev.out) / name, name if (Path(ev.out) / name).is_dir() else None,
                                      run_id=run_id)
        status = "FINISHED"
    finally:
        if own_run:
            tracking.end_run(run_id, status)
    return GenerationReport(ev, report, summary, run_id)
