"""How far a recipe's image side could go on the held-out set: a supervised probe with the hidden attributes.

    python bench/image_probe.py [--new experiments/default.yaml] [--seed 0] [--epochs N] [--n-train 384] [--n-val 96]
                                [--target attributes|label]

``bench/recipe.py`` trains the image side contrastively, against sounds. This bench trains the same image backbone
(the ``train`` section of ``--new``: ``image_backbone``, image augmentation, optimizer, lr, weight decay, schedule,
batch size, epochs) with three linear heads on the synthetic set's hidden attributes (shape, colour, count:
``pairs.csv`` columns), cross-entropy on each, on the same ``held_out_conditions=True`` set, and prints how often
it gets each attribute, and all three, right on val (rendered under conditions that never occur in train) and on
val re-rendered in the train style (``shift_variants()["none"]``).

``i2a_class_R@1`` counts a val image as right only when its nearest val sound has the same shape, colour and count,
so the probe's "all three" is roughly what the image side would reach if it were trained with labels it never gets
in ``bench/recipe.py`` and the audio side made no mistakes: a reference for the recipe's figure, not a bound.
``--target label`` trains one head on the combination label instead (``label``: the 36 train combinations of a
48-way head, decoded back into the three attributes), the only supervision a labelled dataset gives: the two
targets show how much of the image side's difficulty is the labels rather than the backbone or the augmentation.
Prints the wall time beside the fp32 matmul rate measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ciap_lib.augment import from_config  # noqa: E402
from ciap_lib.config import load_config  # noqa: E402
from ciap_lib.hardware import matmul_gflops  # noqa: E402
from ciap_lib.images import load_image_uint8, normalize_image  # noqa: E402
from ciap_lib.models import get_model_config  # noqa: E402
from ciap_lib.models.image import build_backbone  # noqa: E402
from ciap_lib.optim import create_optimizer, create_scheduler  # noqa: E402
from ciap_lib.pairs import read_csv_rows  # noqa: E402
from ciap_lib.synthetic import (COLOURS, COUNTS, SHAPES, make_synthetic_dataset, shift_variants,  # noqa: E402
                               write_split)

ATTRIBUTES = (("shape", SHAPES), ("colour", COLOURS), ("count", tuple(str(c) for c in COUNTS)))


def load_split(folder: Path, preprocess) -> tuple[np.ndarray, torch.Tensor]:
    """uint8 images (N,S,S,3) as the backbone sees them, and (N,3) attribute indices (shape, colour, count)."""
    _, rows = read_csv_rows(folder / "pairs.csv")
    images = np.stack([load_image_uint8(folder / r["image"], preprocess) for r in rows])
    y = torch.tensor([[values.index(r[name]) for name, values in ATTRIBUTES] for r in rows])
    return images, y


SIZES = [len(values) for _, values in ATTRIBUTES]


def combination(y: torch.Tensor) -> torch.Tensor:
    """(N,3) attribute indices -> (N,) combination index (shape, colour, count in mixed radix)."""
    return (y[:, 0] * SIZES[1] + y[:, 1]) * SIZES[2] + y[:, 2]


def attributes(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`combination`: (N,) -> (N,3)."""
    return torch.stack([c // (SIZES[1] * SIZES[2]), (c // SIZES[2]) % SIZES[1], c % SIZES[2]], dim=1)


class Probe(torch.nn.Module):
    """backbone -> one Linear: 4 + 4 + 3 logits (shape, colour, count) for ``target="attributes"``, 48 (the
    combination) for ``target="label"``."""

    def __init__(self, net: torch.nn.Module, feature_dim: int, target: str):
        super().__init__()
        self.net = net
        self.sizes = SIZES if target == "attributes" else [int(np.prod(SIZES))]
        self.head = torch.nn.Linear(feature_dim, sum(self.sizes))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.head(self.net(x)).split(self.sizes, dim=1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self(x)
        if len(out) == 1:
            return F.cross_entropy(out[0], combination(y))
        return sum(F.cross_entropy(o, y[:, a]) for a, o in enumerate(out))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3) predicted attribute indices."""
        out = self(x)
        return attributes(out[0].argmax(1)) if len(out) == 1 else torch.stack([o.argmax(1) for o in out], dim=1)


def accuracy(model: Probe, images: np.ndarray, y: torch.Tensor) -> list[float]:
    """Right per attribute, and all three right, as fractions."""
    model.eval()
    with torch.no_grad():
        pred = model.predict(normalize_image(images))
    ok = pred == y
    return ok.float().mean(0).tolist() + [ok.all(1).float().mean().item()]


def train_probe(cfg, data: Path, extra_val: dict[str, Path], target: str = "attributes",
                log=print) -> dict[str, list[float]]:
    """Train a :class:`Probe` on ``data/train`` as ``cfg`` says; ``{name: accuracy}`` on ``data/val`` ("val") and on
    each ``extra_val`` split folder."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(get_model_config(cfg.model, **cfg.model_overrides()))
    model = Probe(backbone.net, backbone.feature_dim, target)
    augment = from_config(cfg).image
    train_images, train_y = load_split(data / "train", backbone.preprocess)
    folders = {"val": data / "val", **extra_val}
    vals = {name: load_split(folder, backbone.preprocess) for name, folder in folders.items()}
    opt = create_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    sched = create_scheduler(cfg.lr_schedule, opt, cfg)
    n = len(train_images)
    for epoch in range(cfg.epochs):
        model.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        for start in range(0, n - cfg.batch_size + 1, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            ims = train_images[idx]
            if augment is not None:
                ims = np.stack([augment.augment(ims[k], np.random.default_rng([cfg.seed, epoch, int(i)]))
                                for k, i in enumerate(idx)])
            loss = model.loss(normalize_image(ims), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == cfg.epochs:
            log(f"  epoch {epoch + 1}: val all three right {accuracy(model, *vals['val'])[3]:.3f}")
    return {name: accuracy(model, *v) for name, v in vals.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new", default=str(ROOT / "experiments" / "default.yaml"),
                    help="experiment YAML whose train section gives the backbone, augmentation and optimisation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--n-train", type=int, default=384)
    ap.add_argument("--n-val", type=int, default=96)
    ap.add_argument("--target", choices=("attributes", "label"), default="attributes",
                    help="heads on the three hidden attributes, or one head on the combination label")
    args = ap.parse_args(argv)
    recipe = dict(yaml.safe_load(Path(args.new).read_text())["train"])
    recipe["seed"] = args.seed
    if args.epochs is not None:
        recipe["epochs"] = args.epochs
    cfg = load_config(None, **recipe)
    rate = matmul_gflops(1024, 1.0, "cpu", torch.float32)
    print(f"fp32 matmul: {rate:.0f} GFLOP/s on {torch.get_num_threads()} threads")
    heads = "linear heads (shape, colour, count)" if args.target == "attributes" else "a linear head on the label"
    print(f"probe: {cfg.image_backbone} + {heads}, augment_image={cfg.augment_image!r}, "
          f"{cfg.epochs} epochs, seed {cfg.seed}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ciap-probe-") as tmp:
        work = Path(tmp)
        data = make_synthetic_dataset(work / "heldout", n_train=args.n_train, n_val=args.n_val,
                                      held_out_conditions=True)
        noshift = write_split(work / "noshift" / "val", "val", args.n_val, shift_variants()["none"])
        scores = train_probe(cfg, data, {"val in the train style": noshift}, args.target)
    seconds = time.perf_counter() - t0
    print(f"\n{'val rendering':26s} {'shape':>6s} {'colour':>6s} {'count':>6s} {'all three':>9s}")
    for name, s in scores.items():
        label = "val (held-out conditions)" if name == "val" else name
        print(f"{label:26s} {s[0]:6.3f} {s[1]:6.3f} {s[2]:6.3f} {s[3]:9.3f}")
    print(f"\n{seconds:.0f} s on a machine doing {rate:.0f} GFLOP/s fp32 matmul now")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
