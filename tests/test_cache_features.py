"""``python -m ciap_lib cache-features``: two gloo processes fill the same cache as one process, a rerun resumes,
training then reads everything from the cache; the CLAP audio cache is filled through the bridge."""
from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from ciap_lib.cli import main
from ciap_lib.synthetic import make_synthetic_dataset

SETTINGS = ["model=debug", "image_backbone=timm/ciap_tiny_vit_clip.test", "freeze_backbone=true"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("cf") / "syn", n_train=20, n_val=7, image_size=40)


def _argv(data: Path, cache: Path, *extra: str) -> list[str]:
    return ["cache-features", "--data", str(data), "--no-progress", "--batch-size", "4",
            "--set", *SETTINGS, f"feature_cache_dir={cache}", *extra]


def _entries(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, argv: list[str], out: str) -> None:
    import contextlib
    import io

    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    Path(f"{out}.{rank}").write_text(json.dumps({"rc": rc, "summary": json.loads(buf.getvalue())}))


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_two_processes_fill_the_same_cache_as_one(data, tmp_path, capsys):
    n = len(list((data / "train").glob("*.png"))) + len(list((data / "val").glob("*.png")))
    assert main(_argv(data, tmp_path / "one")) == 0
    one = _summary(capsys)
    assert one["image_features"]["computed"] == n and one["clap_audio"]["skipped"]
    mp.spawn(_worker, args=(_free_port(), _argv(data, tmp_path / "two"), str(tmp_path / "res")), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"res.{r}").read_text()) for r in range(2)]
    assert [r["rc"] for r in ranks] == [0, 0] and [r["summary"]["rank"] for r in ranks] == [0, 1]
    counts = [r["summary"]["image_features"]["computed"] for r in ranks]
    assert sum(counts) == n and min(counts) > 0  # each rank took its own shard
    one_files, two_files = _entries(tmp_path / "one"), _entries(tmp_path / "two")
    assert one_files.keys() == two_files.keys() and len(one_files) == n + 1  # one entry per image + meta.json
    for name in one_files:  # the same features (up to float rounding: other batches, other thread counts)
        if name.endswith(".npy"):
            a, b = (np.load(io.BytesIO(f[name])) for f in (one_files, two_files))
            assert np.allclose(a, b, atol=1e-6), name
        else:
            assert one_files[name] == two_files[name]


def test_a_rerun_resumes_and_training_reads_the_cache(data, tmp_path, capsys):
    from ciap_lib.config import load_config
    from ciap_lib.workflows import fit

    assert main(_argv(data, tmp_path / "c")) == 0
    n = _summary(capsys)["image_features"]["computed"]
    entries = sorted((tmp_path / "c").rglob("*.npy"))
    for p in entries[::3]:  # as if the first run had been stopped before these
        p.unlink()
    assert main(_argv(data, tmp_path / "c")) == 0
    again = _summary(capsys)["image_features"]
    assert (again["computed"], again["cached"]) == (len(entries[::3]), n - len(entries[::3]))
    cfg = load_config(None, [*SETTINGS, f"feature_cache_dir={tmp_path / 'c'}", "epochs=1", "batch_size=4",
                             "num_workers=0", f"ckpt_dir={tmp_path / 'ckpt'}"], data=str(data))
    result = fit(cfg)
    assert result.extra["image_features"]["computed"] == 0 and result.extra["image_features"]["cached"] == n


def test_a_trainable_backbone_reads_no_cache(data, tmp_path, capsys):
    assert main(_argv(data, tmp_path / "c", "freeze_backbone=false")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["image_features"] == {"skipped": "freeze_backbone is false"}
    assert "freeze_backbone is false" in captured.err and not (tmp_path / "c").exists()
    assert main(["cache-features", "--data", str(tmp_path / "nowhere"), "--set", *SETTINGS]) == 2


def test_clap_audio_cache_is_filled_through_the_bridge(data, tmp_path, capsys, tiny_audioldm_ckpt):
    argv = _argv(data, tmp_path / "img", "audio_encoder=clap", f"audioldm={tiny_audioldm_ckpt}",
                 f"clap_cache_dir={tmp_path / 'clap'}")
    assert main(argv) == 0
    first = _summary(capsys)["clap_audio"]
    n_audio = len(list((data / "train").glob("*.wav"))) + len(list((data / "val").glob("*.wav")))
    assert first["computed"] + first["cached"] == n_audio and first["computed"] > 0
    assert len(list((tmp_path / "clap").rglob("*.npy"))) == first["computed"]
    assert main(argv) == 0
    assert _summary(capsys)["clap_audio"]["computed"] == 0


def _worker_disagreeing(rank: int, port: int, argv: list[str], out: str) -> None:
    """As :func:`_worker`, on a rank whose own measurement would resolve ``auto`` to bf16 (rank 0) or fp32 (rank 1)."""
    from ciap_lib import hardware

    hardware.cpu_prefers_bf16 = lambda: rank == 0
    _worker(rank, port, argv, out)


def test_ranks_that_would_resolve_auto_differently_key_as_rank_0(data, tmp_path):
    """``feature_precision=auto`` is measured in each process; every rank takes rank 0's answer, so the shards land
    in one cache folder and the run records one precision."""
    argv = _argv(data, tmp_path / "auto")
    argv[argv.index("--set") + 1:argv.index("--set") + 1] = ["feature_precision=auto"]
    mp.spawn(_worker_disagreeing, args=(_free_port(), argv, str(tmp_path / "res")), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"res.{r}").read_text()) for r in range(2)]
    assert [r["rc"] for r in ranks] == [0, 0]
    assert [r["summary"]["image_features"]["precision"] for r in ranks] == ["bf16", "bf16"]
    assert len({p.parent for p in (tmp_path / "auto").rglob("*.npy")}) == 1
