"""Training loop: tqdm bar, per-epoch validation (loss + retrieval metrics), atomic checkpoint each
epoch, resume, seeded reproducibility, a callback hook (MLflow plugs in here), and DDP under torchrun.

Checkpoints go to ``<ckpt_dir>/<run_name>/last.pt`` (overwritten atomically every epoch) and ``best.pt`` (a copy of
the epoch with the best ``select_metric`` so far, :mod:`ciap_lib.selection`); ``patience`` stops early.
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ciap_lib import augment as A
from ciap_lib import distributed as D
from ciap_lib import selection
from ciap_lib.checkpoint import copy_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from ciap_lib.config import TrainConfig, save_config
from ciap_lib.callbacks import Callback
from ciap_lib.data import PairDataset, make_loader
from ciap_lib.embedding import embed_dataset
from ciap_lib.label_words import BackboneTap, LabelWordLoss
from ciap_lib.losses import create_loss, loss_from_config, loss_params
from ciap_lib.models import CIAP, CachedFeatureCIAP, create_model
from ciap_lib.optim import create_optimizer, create_scheduler
from ciap_lib.progress import progress
from ciap_lib.retrieval import retrieval_metrics


@dataclass
class TrainResult:
    """What :func:`train` returns: per-epoch metric history, the final validation metrics, the checkpoint.

    ``extra["best"]``: ``{"epoch", "metric", "value", "path"}`` of ``best.pt``; ``extra["stopped_early"]``: whether
    ``patience`` ended the run, after epoch ``extra["stopped_epoch"]`` (None when it ran to ``epochs``).
    """

    history: list[dict[str, float]]
    metrics: dict[str, float]
    checkpoint: Path
    config: TrainConfig
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def compute_loss(model: nn.Module, loss_fn: nn.Module, images: torch.Tensor, audio: torch.Tensor,
                 info: D.DistInfo = D.DistInfo(), labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Forward one (local) batch and the loss over the global batch.

    Args:
        model: CIAP or DDP(CIAP).
        images: (b,3,S,S); audio: (b,T) waveforms or (b,F) features; b = local batch.
        labels: (b,) long class per pair (-1 = unlabelled), gathered across ranks with the features when the loss
            uses them (``loss_fn.uses_labels``); other losses get None.
    Returns:
        the loss dict (``"loss"`` has the graph), computed over all ranks' embeddings (W*b rows).
    """
    out = model(images, audio)
    img, aud = D.gather_features(out["image_features"], out["audio_features"], info)
    if labels is not None and getattr(loss_fn, "uses_labels", False):
        labels = D.gather_labels(labels.to(img.device), info)
    else:
        labels = None  # label-free losses ignore them: no all_gather per step
    return loss_fn(img, aud, out["logit_scale"], labels=labels)


def compute_word_loss(words: LabelWordLoss, features: torch.Tensor, labels: torch.Tensor,
                      info: D.DistInfo = D.DistInfo()) -> torch.Tensor:
    """The label-word loss over the global batch: ``features`` (b,F) this rank's backbone features (with their
    graph), ``labels`` (b,) its class ids; both gathered across ranks like the embeddings in :func:`compute_loss`,
    so every rank computes the same loss and the word classifier (outside DDP) gets the same gradient."""
    feats = D.gather_rows(features, info)
    return words(feats, D.gather_labels(labels.to(feats.device), info))


@torch.no_grad()
def metrics_from_embeddings(image_emb: torch.Tensor, audio_emb: torch.Tensor, labels: torch.Tensor | None,
                            logit_scale: float, loss_name: str = "infonce", loss_batch_size: int = 32,
                            chunk_size: int = 4096, loss_kwargs: Mapping[str, Any] | None = None
                            ) -> dict[str, float]:
    """``val_loss`` (the training loss, built with ``loss_kwargs``, over consecutive batches of ``loss_batch_size``
    rows, averaged) plus :func:`~ciap_lib.retrieval.retrieval_metrics` over all N rows (default method: the exact
    one; class R@1 when some ``labels`` are >= 0)."""
    loss_fn = create_loss(loss_name, **(loss_kwargs or {}))
    n = image_emb.shape[0]
    if labels is not None:
        labels = torch.as_tensor(labels).long()
    scale = torch.tensor(float(logit_scale))
    losses, weights = [], []
    for s in range(0, n, loss_batch_size):
        e = min(n, s + loss_batch_size)
        if e - s < 2 and loss_name.startswith("infonce") and losses:
            break  # a 1-row batch has no negatives
        lab = None if labels is None else labels[s:e]
        losses.append(float(loss_fn(image_emb[s:e], audio_emb[s:e], scale, labels=lab)["loss"]))
        weights.append(e - s)
    metrics = {"val_loss": float(np.average(losses, weights=weights))}
    metrics.update(retrieval_metrics(image_emb, audio_emb, labels, chunk_size=chunk_size))
    return metrics


@torch.no_grad()
def evaluate(model: CIAP, dataset: torch.utils.data.Dataset, batch_size: int = 128,
             audio_features: Mapping[str, torch.Tensor] | None = None, loss: str = "infonce",
             loss_batch_size: int = 32, chunk_size: int = 4096, num_workers: int = 0,
             progress: bool = False, loss_kwargs: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Validation loss and retrieval metrics of ``model`` on ``dataset`` (a :class:`PairDataset`).

    ``audio_features`` (precomputed CLAP features keyed by resolved audio path) must already be in the
    dataset for the ``clap`` encoder; passing them here only checks that the dataset carries them.
    """
    if audio_features is not None and getattr(dataset, "audio_features", None) is None:
        raise ValueError("evaluate: audio_features given but the dataset was built without them; "
                         "build PairDataset(..., audio_features=...) instead")
    img, aud, labels = embed_dataset(model, dataset, batch_size, num_workers, progress=progress)
    return metrics_from_embeddings(img, aud, labels, float(model.logit_scale.exp()), loss,
                                   loss_batch_size, chunk_size, loss_kwargs)


def _local_batch(cfg: TrainConfig, info: D.DistInfo) -> int:
    """Validate ``cfg`` and return the per-rank batch size."""
    cfg.check()
    if cfg.batch_size % info.world_size:
        raise ValueError(f"config key 'batch_size' ({cfg.batch_size}, the global batch) must be divisible by "
                         f"the number of processes ({info.world_size})")
    return cfg.batch_size // info.world_size


def _cached_image_features(cfg: TrainConfig, model: CIAP, info: D.DistInfo
                           ) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """With a frozen backbone: the cached features of every train/val image (each rank computes its shard of the
    missing ones, then all read all), and what happened (``{"model": summary, "image_features": counts and the
    precision they were computed in}``);
    without: (None, ``{"model": summary}``)."""
    from ciap_lib.features import CacheReport, feature_key, image_features
    from ciap_lib.pairs import scan_pairs

    extra: dict[str, Any] = {"model": model.summary()}
    if not model.image_encoder.frozen:
        return None, extra
    paths = []
    for split in (cfg.train_split, cfg.val_split):
        pairs, _ = scan_pairs(Path(cfg.data) / split, skip_bad=cfg.skip_bad)
        paths += [p.image for p in pairs]
    # every rank keys its features as rank 0 resolved ``auto`` (measured per process: ranks must not disagree)
    key = D.broadcast_object(feature_key(model, cfg.feature_precision), info)
    report = CacheReport()
    kw = dict(batch_size=cfg.eval_batch_size, skip_bad=cfg.skip_bad)
    if info.enabled:  # each rank fills its shard, then every rank reads them all (cache hits)
        image_features(model.image_encoder.backbone, key, paths, cfg.feature_cache_dir, rank=info.rank,
                       world_size=info.world_size, report=report, progress=info.is_main, **kw)
        D.barrier(info)
    features = image_features(model.image_encoder.backbone, key, paths, cfg.feature_cache_dir,
                              report=CacheReport() if info.enabled else report, progress=info.is_main, **kw)
    extra["image_features"] = {**report.to_dict(), "precision": key.precision}   # what ran ("auto" resolved)
    if info.is_main:
        print(f"image features ({key.precision}, {report.folder}): {report.computed} computed, "
              f"{report.cached} from the cache", file=sys.stderr)
    return features, extra


def _reconcile_best(best_path: Path, last_path: Path, best: "selection.Best", start_epoch: int, select: str) -> None:
    """On resume: make ``best.pt`` hold ``best.epoch`` (the best epoch of the history by ``select``). It may not when
    the run stopped between writing ``last.pt`` and copying it, or when ``select_metric`` changed: copy ``last.pt``
    when the best is its epoch, else remove the stale file (the next improvement writes it again) and say so."""
    held = int(load_checkpoint(best_path)["epoch"]) if best_path.is_file() else None
    if best.epoch is None or held == best.epoch:
        return
    if best.epoch == start_epoch:
        copy_checkpoint(last_path, best_path)
        return
    if held is not None:
        best_path.unlink()
        print(f"removed {best_path}: it held epoch {held}, but the best epoch by {select} is {best.epoch}, whose "
              "weights were not kept; the next improvement writes best.pt again", file=sys.stderr)


def _has_labels(dataset: Any) -> bool:
    """Whether some pair of ``dataset`` has a label (>= 0)."""
    from ciap_lib.retrieval.inputs import check_labels

    labels = getattr(dataset, "labels", None)
    return labels is not None and check_labels(labels, len(dataset)) is not None


def train(cfg: TrainConfig, callbacks: Sequence[Callback] = (),
          audio_features: Mapping[str, torch.Tensor] | None = None) -> TrainResult:
    """Train CIAP as ``cfg`` says; return the history, final validation metrics and checkpoint path.

    Args:
        cfg: the run configuration (``cfg.data`` root with ``train_split``/``val_split`` folders).
        callbacks: hooks, called on rank 0 only.
        audio_features: precomputed audio features keyed by resolved audio path (``clap`` encoder).

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1) it trains with DDP: ``cfg.batch_size`` is the global batch,
    each rank contrasts against all ranks' embeddings, rank 0 validates, writes checkpoints and runs callbacks.
    Resume (``cfg.resume``) continues from ``last.pt`` with any world size.
    """
    t0 = time.time()
    info = D.setup(cfg.device)
    try:
        return _train(cfg, callbacks, audio_features, info, t0)
    finally:
        D.cleanup(info)


def _train(cfg: TrainConfig, callbacks: Sequence[Callback], audio_features: Mapping[str, torch.Tensor] | None,
           info: D.DistInfo, t0: float) -> TrainResult:
    local_batch = _local_batch(cfg, info)
    seed_everything(cfg.seed)
    model = create_model(cfg.model, **cfg.model_overrides())
    mc = model.config
    if (mc.audio_encoder == "clap") != (audio_features is not None):
        raise ValueError("audio_encoder='clap' trains on precomputed CLAP features: call "
                         "ciap_lib.workflows.fit (it computes them) or pass audio_features"
                         if audio_features is None else
                         f"audio_features were given but audio_encoder={mc.audio_encoder!r} encodes waveforms")
    loss_fn = loss_from_config(cfg)
    model.to(info.device)
    image_features, extra = _cached_image_features(cfg, model, info)  # frozen backbone: features, not images
    aug = A.from_config(cfg)  # training split only; SpecAugment masks in model.train() mode only
    if aug.spec is not None:
        A.set_spec_augment(model, aug.spec)
    ds_kw = dict(image_size=model.preprocess, sample_rate=mc.sample_rate, segment_seconds=mc.segment_seconds,
                 skip_bad=cfg.skip_bad, audio_features=audio_features, seed=cfg.seed, image_features=image_features)
    train_ds = PairDataset(cfg.data, cfg.train_split, train=True, audio_augment=aug.audio, image_augment=aug.image,
                           **ds_kw)
    val_ds = PairDataset(cfg.data, cfg.val_split, train=False, **ds_kw) if info.is_main else None
    if len(train_ds) < cfg.batch_size:
        raise ValueError(f"train split {train_ds.split_dir} has {len(train_ds)} pairs, fewer than "
                         f"batch_size={cfg.batch_size}; lower batch_size")
    # the metric that picks best.pt: rank 0 sees the val split, the others follow
    select = D.broadcast_object(selection.resolve_metric(cfg.select_metric, _has_labels(val_ds))
                                if info.is_main else None, info)
    if info.is_main and train_ds.skipped:
        print(train_ds.report(), file=sys.stderr)
    sampler = D.DistributedEpochSampler(len(train_ds), info, shuffle=True, seed=cfg.seed)
    loader = make_loader(train_ds, local_batch, shuffle=True, num_workers=cfg.num_workers, seed=cfg.seed,
                         sampler=sampler, drop_last=True)

    if info.enabled and info.device.type == "cuda":
        # BatchNorm statistics over the global batch (SyncBatchNorm is CUDA-only; same state-dict keys).
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    words, tap = None, None
    if cfg.word_weight > 0:  # the label-word loss on the image backbone's features (ciap_lib.label_words)
        words = LabelWordLoss(train_ds.classes, model.image_encoder.feature_dim).to(info.device)
        tap = BackboneTap(model.image_encoder.backbone, stop_gradient=cfg.backbone_loss == "words")
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable += [] if words is None else list(words.parameters())
    optimizer = create_optimizer(cfg.optimizer, trainable, cfg.lr, cfg.weight_decay)
    scheduler = create_scheduler(cfg.lr_schedule, optimizer, cfg)
    ckpt_path = cfg.checkpoint_dir / "last.pt"
    start_epoch, history = 0, []
    if cfg.resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, map_location=info.device)
        model.load_state_dict(ck["model"])
        if words is not None:
            if "label_words" not in ck:
                raise ValueError(f"cannot resume {ckpt_path} with word_weight > 0: it was written without the "
                                 f"label-word loss (start a new run_name, or resume with word_weight 0)")
            words.load_state_dict(ck["label_words"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        start_epoch, history = int(ck["epoch"]), list(ck["history"])
        set_rng_state(ck["rng"])
        if info.is_main:
            print(f"resumed {ckpt_path} after epoch {start_epoch}", file=sys.stderr)
    best_path = cfg.checkpoint_dir / "best.pt"
    best = selection.Best.from_history(select, history)  # resume: the best so far, so a worse epoch cannot replace it
    if info.is_main and start_epoch == 0:
        best_path.unlink(missing_ok=True)  # a fresh run: an earlier run's best.pt under this name is not its best
    elif info.is_main:
        _reconcile_best(best_path, ckpt_path, best, start_epoch, select)
    stopped = (cfg.patience is not None and bool(history) and start_epoch < cfg.epochs
               and best.stale(start_epoch) >= cfg.patience)
    if info.is_main:
        cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, cfg.checkpoint_dir / "config.yaml")
    step_model: nn.Module = model if image_features is None else CachedFeatureCIAP(model)  # the head alone
    net: nn.Module = step_model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=not getattr(loss_fn, "uses_logit_scale", True))  # 'cosine': no logit_scale
    if info.is_main:
        for cb in callbacks:
            cb.on_train_start(cfg, model)

    metrics: dict[str, float] = dict(history[-1]) if history else {}
    for epoch in range(start_epoch, cfg.epochs if not stopped else start_epoch):
        sampler.set_epoch(epoch)
        if info.rank:  # distinct randomness per rank beyond the shared data order (SpecAugment's masks, dropout),
            # reseeded from (seed, rank, epoch) each epoch, so a resumed run draws what an uninterrupted one does
            # (rank 0's generator state is saved in the checkpoint instead)
            seed_everything(cfg.seed + 7919 * info.rank + epoch)
        net.train()
        total, count = 0.0, 0
        bar = progress(loader, len(loader), f"epoch {epoch + 1}/{cfg.epochs}", info.is_main)
        for batch in bar:
            images = batch["image"].to(info.device, non_blocking=True)
            audio = batch["audio"].to(info.device, non_blocking=True)
            labels = batch["label"].to(info.device, non_blocking=True)
            losses = compute_loss(net, loss_fn, images, audio, info, labels=labels)
            if words is not None:
                losses["loss_words"] = compute_word_loss(words, tap.pop(), labels, info)
                losses["loss"] = losses["loss"] + cfg.word_weight * losses["loss_words"]
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)  # what the optimizer steps
            optimizer.step()
            model.clamp_logit_scale()
            loss = float(losses["loss"].detach())
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at epoch {epoch + 1}; lower lr")
            total, count = total + loss, count + 1
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.close()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if info.is_main:
            metrics = {"epoch": float(epoch + 1), "train_loss": total / max(count, 1), "lr": lr,
                       "logit_scale": float(model.logit_scale.detach().exp())}
            metrics.update(evaluate(step_model, val_ds, cfg.eval_batch_size, loss=cfg.loss,
                                    loss_batch_size=cfg.batch_size, chunk_size=cfg.eval_chunk_size,
                                    loss_kwargs=loss_params(cfg.loss, cfg)))
            history.append(metrics)
            save_checkpoint(ckpt_path, model, cfg, epoch + 1, optimizer, scheduler, history, metrics,
                            label_words=None if words is None else words.state_dict())
            improved = best.update(epoch + 1, metrics)
            if improved:
                copy_checkpoint(ckpt_path, best_path)
            shown = "" if select in ("val_loss", "i2a_R@1", "a2i_R@1") else \
                f" {select} {metrics.get(select, float('nan')):.3f}"
            print(f"epoch {epoch + 1}/{cfg.epochs} train_loss {metrics['train_loss']:.4f} "
                  f"val_loss {metrics['val_loss']:.4f} i2a_R@1 {metrics.get('i2a_R@1', float('nan')):.3f} "
                  f"a2i_R@1 {metrics.get('a2i_R@1', float('nan')):.3f}{shown}"
                  f"{' (best)' if improved else ''}", file=sys.stderr)
            for cb in callbacks:
                cb.on_epoch_end(epoch + 1, metrics, ckpt_path)
        D.barrier(info)
        if cfg.patience is not None and epoch + 1 < cfg.epochs and D.broadcast_object(
                best.stale(epoch + 1) >= cfg.patience if info.is_main else None, info):
            stopped = True
            break

    if tap is not None:
        tap.remove()
    history = D.broadcast_object(history, info)
    best = selection.Best.from_history(select, history)
    extra["best"] = best.to_dict(best_path if best_path.is_file() else None)
    extra["stopped_early"] = stopped
    extra["stopped_epoch"] = int(history[-1]["epoch"]) if stopped and history else None
    result = TrainResult(history=history, metrics=dict(history[-1]) if history else {}, checkpoint=ckpt_path,
                         config=cfg, seconds=time.time() - t0, extra=extra)
    if info.is_main:
        if stopped:
            print(f"early stop after epoch {extra['stopped_epoch']}: {select} has not improved for "
                  f"{best.stale(extra['stopped_epoch'])} epochs (patience {cfg.patience})", file=sys.stderr)
        if best.epoch is not None:
            print(f"best: epoch {best.epoch}, {select} {best.value:.4f} -> "
                  f"{extra['best']['path'] or 'its weights were not kept (see above)'}", file=sys.stderr)
        for cb in callbacks:
            cb.on_train_end(result)
    return result
