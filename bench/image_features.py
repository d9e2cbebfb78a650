"""Image side throughput, in one run: feature extraction and head training on cached features.

    python bench/image_features.py [--threads 2] [--batch 32] [--json out.json]

1. Feature extraction, images/s, batch 32, ``torch.inference_mode()``, random weights: ResNet18 (torchvision) and
   CLIP ViT-B/32 (timm ``vit_base_patch32_clip_224``, with its 512-d projection), each in fp32 and bf16 autocast,
   at 224 px: the model alone (a batch already in memory), and the whole cache fill for ViT-B/32 bf16
   (``ciap_lib.features.image_features``: PNG decode, CLIP preprocessing, backbone, one atomic .npy per image).
   Goal: caching >= 40 images/s for ViT-B/32 in bf16 on 2 cores.
2. Training, pairs/s, batch 32, through the real loader (PairDataset -> DataLoader -> step: forward, InfoNCE,
   backward, Adam), the audio side precomputed (as CLAP's cache gives it) in every case: the head alone on cached
   backbone features (ResNet18's 512-d with the ``linear`` head; CLIP's 512-d with the ``mlp`` head, the V2A-Mapper
   setup) against end-to-end ResNet18 at 224 px. Goal: head training >= 50x the end-to-end pairs/s.

Compare the figures as ratios measured in this run (the configurations take turns, so all see the same load); the
load average is printed at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ciap_lib.data import PairDataset, make_loader  # noqa: E402
from ciap_lib.features import CacheReport, feature_key, image_features  # noqa: E402
from ciap_lib.losses import ClipLoss  # noqa: E402
from ciap_lib.models import CachedFeatureCIAP, create_model  # noqa: E402
from ciap_lib.synthetic import make_synthetic_dataset  # noqa: E402

CLIP = "timm/vit_base_patch32_clip_224.openai"  # the CLIP tower (random weights here: image_pretrained none)


def _model(backbone: str, freeze: bool, head: str = "linear"):
    torch.manual_seed(0)
    return create_model("clap_aligned", image_backbone=backbone, image_pretrained="none", image_size=224,
                        freeze_backbone=freeze, head=head)


def extraction(batch: int, rounds: int) -> dict[str, float]:
    """images/s of each backbone alone on a (batch, 3, 224, 224) tensor, fp32 and bf16 autocast. The four
    configurations take turns (one batch each per round) so that all see the same machine load."""
    nets = {"ResNet18": _model("resnet18", True).image_encoder.backbone.eval(),
            "CLIP ViT-B/32": _model(CLIP, True).image_encoder.backbone.eval()}
    x = torch.randn(batch, 3, 224, 224)
    seconds: dict[str, float] = {}
    with torch.inference_mode():
        for r in range(rounds + 1):  # round 0 warms up
            for name, net in nets.items():
                for precision in ("fp32", "bf16"):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        t = time.perf_counter()
                        net(x)
                        if r:
                            key = f"{name} {precision}"
                            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t
    return {k: batch * rounds / v for k, v in seconds.items()}


def cache_fill(data: Path, cache: Path, batch: int) -> tuple[float, int]:
    """images/s of ``image_features`` filling an empty cache for CLIP ViT-B/32 in bf16 (decode included)."""
    model = _model(CLIP, True)
    paths = sorted((data / "train").glob("*.png"))
    image_features(model.image_encoder.backbone, feature_key(model, "bf16"), paths[:batch], cache / "warm",
                   batch_size=batch)  # warm-up
    report = CacheReport()
    t = time.perf_counter()
    image_features(model.image_encoder.backbone, feature_key(model, "bf16"), paths, cache / "timed", batch_size=batch,
                   report=report)
    return report.computed / (time.perf_counter() - t), report.computed


class Trainer:
    """Training steps through PairDataset -> DataLoader (audio: precomputed 512-d features, as CLAP's cache gives
    them): end to end on images, or the head alone on cached backbone features."""

    def __init__(self, data: Path, backbone: str, head: str, cached: bool, batch: int, cache: Path):
        model = _model(backbone, cached, head).train()
        g = torch.Generator().manual_seed(0)
        pairs = PairDataset(data, "train", model.preprocess, train=True, cache="none").pairs
        audio = {str(p.audio.resolve()): torch.randn(512, generator=g) for p in pairs}
        feats = None
        if cached:
            feats = image_features(model.image_encoder.backbone, feature_key(model, "bf16"),
                                   [p.image for p in pairs], cache, batch_size=batch)
        ds = PairDataset(data, "train", model.preprocess, train=True, audio_features=audio, image_features=feats)
        self.net = CachedFeatureCIAP(model) if cached else model
        self.trainable = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        self.opt = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=1e-3)
        self.loss_fn = ClipLoss()
        self.loader = make_loader(ds, batch, shuffle=True, num_workers=0, drop_last=True)
        self.it = iter(self.loader)
        self.seconds, self.pairs = 0.0, 0

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def steps(self, n: int, timed: bool = True) -> None:
        t = time.perf_counter()
        for _ in range(n):
            b = self._next()  # the loader's time counts
            out = self.net(b["image"], b["audio"])
            loss = self.loss_fn(out["image_features"], out["audio_features"], out["logit_scale"])["loss"]
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.net.clamp_logit_scale()
            if timed:
                self.pairs += b["image"].shape[0]
        if timed:
            self.seconds += time.perf_counter() - t

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    ap.add_argument("--head-steps", type=int, default=30, help="head-only steps per round (default 30)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    load0 = os.getloadavg()
    out: dict = {"threads": args.threads, "batch": args.batch, "loadavg_start": [round(v, 2) for v in load0]}
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_synthetic_dataset(tmp / "syn", n_train=6 * args.batch, n_val=8, image_size=96)
        print("\nfeature extraction, model alone, 224 px, images/s (configurations interleaved):")
        for name, ips in extraction(args.batch, args.rounds).items():
            out[f"extract.{name}"] = round(ips, 1)
            print(f"  {name:19s} {ips:7.1f}")
        ips, n = cache_fill(data, tmp / "cache_fill", args.batch)
        out["cache_fill.CLIP ViT-B/32 bf16"] = round(ips, 1)
        print(f"  CLIP ViT-B/32 bf16, whole cache fill ({n} PNGs: decode + preprocess + backbone + write): "
              f"{ips:.1f} images/s (goal >= 40)")

        print(f"\ntraining, batch {args.batch}, real loader, pairs/s (interleaved: per round 1 end-to-end step, "
              f"{args.head_steps} steps of each head):")
        runs = {"end-to-end ResNet18 224 px": (Trainer(data, "resnet18", "linear", False, args.batch, tmp / "c0"), 1),
                "cached ResNet18 features, linear head": (
                    Trainer(data, "resnet18", "linear", True, args.batch, tmp / "c1"), args.head_steps),
                "cached CLIP features, mlp head": (
                    Trainer(data, CLIP, "mlp", True, args.batch, tmp / "c2"), args.head_steps)}
        for trainer, n in runs.values():
            trainer.steps(1 if n == 1 else 3, timed=False)  # warm-up
        for _ in range(args.rounds):
            for trainer, n in runs.values():
                trainer.steps(n)
        e2e = runs["end-to-end ResNet18 224 px"][0].rate
        for name, (trainer, _) in runs.items():
            key = name.split(",")[0] if name.startswith("end") else name
            out[f"train.{key}"] = round(trainer.rate, 1)
            ratio = "" if trainer.rate == e2e else f"  ({trainer.rate / e2e:.0f}x end-to-end; goal >= 50x)"
            print(f"  {name:38s} {trainer.rate:9.1f}   ({trainer.trainable:,} trainable){ratio}")
            out[f"ratio.{name}"] = round(trainer.rate / e2e, 1)
    load1 = os.getloadavg()
    out["loadavg_end"] = [round(v, 2) for v in load1]
    print(f"\nload average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
