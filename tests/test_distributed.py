"""Two CPU processes (gloo) give the same loss and gradients as one process on the combined batch (InfoNCE, the
label-aware InfoNCE with its labels gathered across ranks, and that plus the label-word loss on the backbone);
``torchrun -m ciap_lib train`` trains with DDP, rank 0 checkpoints, and resume works with another world size."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ciap_lib import distributed as D
from ciap_lib.checkpoint import load_checkpoint
from ciap_lib.losses import ClipLoss, create_loss
from ciap_lib.models import create_model
from ciap_lib.synthetic import make_synthetic_dataset
from ciap_lib.label_words import BackboneTap, LabelWordLoss
from ciap_lib.train import compute_loss, compute_word_loss

WORLD = 2
GLOBAL_BATCH = 8
#: classes shared across the two ranks' shards, and unlabelled pairs
LABELS = torch.tensor([0, 1, 0, 2, 1, -1, 2, -1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g), 0.1 * torch.randn(GLOBAL_BATCH, 16000, generator=g)


def _model():
    torch.manual_seed(0)
    model = create_model("debug").train()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)  # not at init, so its gradient is a generic value
    return model


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(model, loss, images, audio, labels, info=D.DistInfo()):
    """Forward and backward one (local) batch as training does; ``loss="words"``: label-aware InfoNCE plus the
    label-word loss, which alone trains the backbone. Returns (loss, gradients of the model and word classifier)."""
    words = None
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if loss == "words":
        torch.manual_seed(1)
        words = LabelWordLoss(["a-b", "a-c", "d"], inner.image_encoder.feature_dim)
        tap = BackboneTap(inner.image_encoder.backbone, stop_gradient=True)
    total = compute_loss(model, create_loss("infonce_labels" if words else loss), images, audio, info,
                         labels=labels)["loss"]
    if words is not None:
        total = total + compute_word_loss(words, tap.pop(), labels, info)
    total.backward()
    grads = _grads(inner)
    if words is not None:
        grads.update({f"words.{n}": g for n, g in _grads(words).items()})
    return total.detach(), grads


def _worker(rank: int, port: int, out: str, loss: str = "infonce") -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = D.setup("cpu")
    try:
        assert info.world_size == WORLD and info.rank == rank and info.backend == "gloo"
        model = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        images, audio = _batch()
        b = GLOBAL_BATCH // WORLD
        shard = slice(rank * b, (rank + 1) * b)
        total, grads = _step(ddp, loss, images[shard], audio[shard], LABELS[shard], info)
        torch.save({"loss": total, "grads": grads}, f"{out}.{rank}")
    finally:
        D.cleanup(info)


@pytest.mark.parametrize("loss", ["infonce", "infonce_labels", "words"])
def test_two_processes_match_one_process_on_the_combined_batch(tmp_path, loss):
    model = _model()
    images, audio = _batch()
    ref_loss, ref = _step(model, loss, images, audio, LABELS)
    if loss == "infonce_labels":  # the labels matter: same-class pairs across the two shards are positives
        assert not torch.allclose(ref_loss, compute_loss(model, ClipLoss(), images, audio)["loss"])
    if loss == "words":  # the word classifier is outside DDP: its gradient must agree on every rank too
        assert "words.classifier.weight" in ref

    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "res"), loss), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"res.{rank}")
        assert torch.allclose(got["loss"], ref_loss.detach(), atol=1e-6), (got["loss"], ref_loss)
        assert got["grads"].keys() == ref.keys()
        for name, g in ref.items():
            assert torch.allclose(got["grads"][name], g, rtol=1e-4, atol=1e-7), \
                (name, (got["grads"][name] - g).abs().max())
    assert ref["logit_scale"].abs() > 0


def test_gather_features_is_identity_for_one_process():
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    gx, gy = D.gather_features(x, y, D.DistInfo())
    assert gx is x and gy is y
    labels = torch.tensor([0, -1, 0])
    assert D.gather_labels(labels, D.DistInfo()) is labels


def test_distributed_epoch_sampler_shards_and_carries_the_epoch():
    shards = [list(D.DistributedEpochSampler(10, D.DistInfo(rank=r, world_size=2), shuffle=True, seed=0))
              for r in range(2)]
    assert all(len(s) == 5 for s in shards)
    assert sorted(i for s in shards for i, _ in s) == list(range(10))
    s = D.DistributedEpochSampler(10, D.DistInfo(), shuffle=True, seed=0)
    s.set_epoch(3)
    e3 = list(s)
    assert {e for _, e in e3} == {3} and e3 == list(s)  # same epoch -> same order


def test_torchrun_train_then_resume_with_one_process(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_train=32, n_val=8, image_size=32)
    common = ["--data", str(data), "--set", "model=debug", "batch_size=16", "num_workers=0",
              f"ckpt_dir={tmp_path / 'ckpt'}", "run_name=ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "ciap_lib", "train", *common, "--set", "epochs=3", "patience=1",
           "select_metric=i2a_R@10", "loss=infonce_labels"]
    # 8 val pairs: i2a_R@10 is 1.0 every epoch, so epoch 2 does not improve on epoch 1 and patience 1 stops the run
    # there; rank 0 decides, and every rank must leave the loop together (else the next all_gather hangs)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "ckpt" / "ddp" / "last.pt"
    ck = load_checkpoint(ckpt)
    assert ck["epoch"] == 2 and '"stopped_early": true' in r.stdout
    assert load_checkpoint(ckpt.parent / "best.pt")["epoch"] == 1
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.pt", "config.yaml", "last.pt"]  # no temp files
    assert r.stdout.count('"checkpoint"') == 1  # only rank 0 reports
    r = subprocess.run([sys.executable, "-m", "ciap_lib", "train", *common, "--set", "epochs=3", "patience=null",
                        "select_metric=i2a_R@10", "loss=infonce_labels", "--resume"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(ckpt)
    assert ck["epoch"] == 3 and [h["epoch"] for h in ck["history"]] == [1.0, 2.0, 3.0]


def test_torchrun_train_with_a_frozen_backbone_shards_the_feature_cache(tmp_path):
    """Each rank computes its shard of the missing backbone features, then all read all; DDP trains the head."""
    data = make_synthetic_dataset(tmp_path / "data", n_train=16, n_val=8, image_size=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "ciap_lib", "train", "--data", str(data), "--set", "model=debug", "batch_size=8", "num_workers=0",
           "image_backbone=timm/ciap_tiny_vit_clip.test", "freeze_backbone=true", "head=mlp", "head_width=32",
           "epochs=1", f"ckpt_dir={tmp_path / 'ckpt'}", f"feature_cache_dir={tmp_path / 'cache'}", "run_name=frozen"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 24  # every train and val image, once
    ck = load_checkpoint(tmp_path / "ckpt" / "frozen" / "last.pt")
    assert ck["epoch"] == 1 and ck["model_config"]["freeze_backbone"] is True
    assert ck["model_config"]["image_preprocess"]["mean"][0] == pytest.approx(0.48145466)


def _train_disagreeing(rank: int, port: int, argv: list[str]) -> None:
    """``python -m ciap_lib train`` on one of two gloo ranks whose own measurement would resolve
    ``feature_precision=auto`` to bf16 (rank 0) or fp32 (rank 1)."""
    import contextlib
    import io

    from ciap_lib import hardware
    from ciap_lib.cli import main

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    hardware.cpu_prefers_bf16 = lambda: rank == 0
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0


def test_ranks_that_would_resolve_feature_precision_auto_differently_train_on_rank_0s(tmp_path):
    """Every rank keys the feature cache as rank 0 resolved ``auto``: one cache folder, computed in bf16."""
    data = make_synthetic_dataset(tmp_path / "data", n_train=16, n_val=8, image_size=32)
    argv = ["train", "--data", str(data), "--set", "model=debug", "batch_size=8", "num_workers=0",
            "image_backbone=timm/ciap_tiny_vit_clip.test", "freeze_backbone=true", "feature_precision=auto",
            "epochs=1", f"ckpt_dir={tmp_path / 'ckpt'}", f"feature_cache_dir={tmp_path / 'cache'}", "run_name=auto"]
    mp.spawn(_train_disagreeing, args=(_free_port(), argv), nprocs=WORLD, join=True)
    folders = {p.parent for p in (tmp_path / "cache").rglob("*.npy")}
    assert len(folders) == 1 and len(list(next(iter(folders)).glob("*.npy"))) == 24
    assert '"precision": "bf16"' in (next(iter(folders)) / "meta.json").read_text()


def test_torchrun_resume_draws_what_an_uninterrupted_run_draws_on_every_rank(tmp_path):
    """With SpecAugment (model-side random masks) on, 1 epoch + resume under two processes ends with the weights of
    2 uninterrupted epochs, bitwise: every rank's random draws continue as if never stopped."""
    data = make_synthetic_dataset(tmp_path / "data", n_train=32, n_val=8, image_size=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

    def torchrun(run_name: str, epochs: int, *extra: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "ciap_lib", "train", "--data", str(data), "--set", "model=debug",
               "batch_size=16", "num_workers=0", f"ckpt_dir={tmp_path / 'ckpt'}", f"run_name={run_name}",
               f"epochs={epochs}", "augment_audio=specaugment", "lr_schedule=constant", *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                           cwd=Path(__file__).parent.parent)
        assert r.returncode == 0, r.stderr[-3000:]

    torchrun("whole", 2)
    torchrun("stopped", 1)
    torchrun("stopped", 2, "--resume")
    whole = load_checkpoint(tmp_path / "ckpt" / "whole" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "ckpt" / "stopped" / "last.pt")["model"]
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_torchrun_clap_training_embeds_each_clip_once(tmp_path, tiny_audioldm_ckpt):
    """audio_encoder clap under two processes: each computes its shard of the CLAP features, then both read all."""
    import re

    data = make_synthetic_dataset(tmp_path / "data", n_train=16, n_val=8, image_size=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "ciap_lib", "train", "--data", str(data), "--set", "model=debug", "audio_encoder=clap",
           "loss=cosine", "batch_size=8", "num_workers=0", "epochs=1", f"audioldm={tiny_audioldm_ckpt}",
           f"clap_cache_dir={tmp_path / 'clap'}", f"ckpt_dir={tmp_path / 'ckpt'}", "run_name=clap"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = sorted(re.findall(r"CLAP audio features, rank (\d) of 2: (\d+) computed, (\d+) cached", r.stderr))
    assert counts == [("0", "12", "0"), ("1", "12", "0")], r.stderr[-3000:]  # 24 clips, each embedded once
    assert len(list((tmp_path / "clap").rglob("*.npy"))) == 24
    assert load_checkpoint(tmp_path / "ckpt" / "clap" / "last.pt")["epoch"] == 1
