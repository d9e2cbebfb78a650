"""Entry-point layer: the one place that dispatches training / evaluation to core or to the bridge.

The CLI and the notebooks call these; for ``audio_encoder == "clap"`` they lazily import the bridge
(``ciap_lib.bridge``), which loads the frozen AudioLDM and computes cached CLAP audio features. Other
modes never import audioldm/diffusers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ciap_lib.config import TrainConfig
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


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | None = None, split: str = "val",
                        batch_size: int = 128, num_workers: int = 0, skip_bad: bool = False,
                        device: str = "cpu", progress: bool = False, audioldm: Any = None,
                        **bridge_kw: Any) -> dict[str, float]:
    """Validation loss + retrieval metrics of a checkpoint on ``data`` (root with ``<split>/``, or a split
    folder; default: the data the checkpoint was trained on).

    For 'clap' checkpoints the bridge computes (and caches) CLAP features of the split's audio first, with
    ``audioldm`` (an already loaded ``FrozenAudioLDM``) or the checkpoint's ``cfg.audioldm`` loaded here;
    ``bridge_kw`` goes to ``ciap_lib.bridge.clap_audio_features``.
    """
    from ciap_lib.checkpoint import load_ciap
    from ciap_lib.data import PairDataset
    from ciap_lib.pairs import scan_pairs
    from ciap_lib.distributed import resolve_device

    model, cfg = load_ciap(checkpoint, map_location=resolve_device(device))
    root, sub = resolve_split(data if data is not None else cfg.data, split if data is None else split)
    mc = model.config
    features = None
    if mc.audio_encoder == "clap":
        from ciap_lib.bridge import clap_audio_features, load_audioldm  # lazy: imports audioldm
        pairs, _ = scan_pairs(root / sub if sub else root, skip_bad=skip_bad)
        if audioldm is None:
            audioldm = load_audioldm(cfg.audioldm)
        features = clap_audio_features(audioldm, [p.audio for p in pairs], cfg.clap_cache_dir, **bridge_kw)
    ds = PairDataset(root, sub, image_size=mc.image_size, train=False, sample_rate=mc.sample_rate,
                     segment_seconds=mc.segment_seconds, skip_bad=skip_bad, audio_features=features, seed=cfg.seed)
    metrics = evaluate(model, ds, batch_size=batch_size, loss=cfg.loss, loss_batch_size=cfg.batch_size,
                       chunk_size=cfg.eval_chunk_size, num_workers=num_workers, progress=progress)
    metrics["n_pairs"] = float(len(ds))
    metrics["n_skipped"] = float(len(ds.skipped))
    return metrics
