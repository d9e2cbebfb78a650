"""ciap_lib.embed: sharded embedding folders, resume, memory-mapped metrics equal in-memory metrics."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ciap_lib.cli import main as cli_main
from ciap_lib.checkpoint import save_checkpoint
from ciap_lib.config import TrainConfig
from ciap_lib.data import PairDataset
from ciap_lib.embed import (embed_to_dir, load_embeddings, metrics_from_dir, shard_paths, topk_from_dir)
from ciap_lib.models import create_model
from ciap_lib.retrieval import retrieval_metrics, topk
from ciap_lib.synthetic import make_synthetic_dataset
from ciap_lib.embedding import embed_dataset

N_VAL = 23


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    data = make_synthetic_dataset(root / "data", n_train=8, n_val=N_VAL, image_size=32, seconds=1.0)
    torch.manual_seed(0)
    model = create_model("debug").eval()
    ds = PairDataset(data, "val", image_size=model.config.image_size, train=False)
    img, aud, lab = embed_dataset(model, ds, batch_size=16)
    return root, data, model, ds, (img, aud, lab)


class Counting:
    """The real embed_dataset, counting calls (and optionally failing after some, like a killed run)."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, *args):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        return embed_dataset(*args)


def test_shards_index_and_memmap(setup, tmp_path):
    _, _, model, ds, (img, aud, lab) = setup
    out = embed_to_dir(model, ds, tmp_path / "e", shard_size=10, dtype="float32", batch_size=4, progress=False)
    for s, rows in enumerate([10, 10, 3]):
        for m, p in shard_paths(out, s).items():
            assert np.load(p).shape == (rows, model.config.embed_dim), (m, s)
    assert not (out / "image" / "shard_00003.npy").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["n"] == N_VAL and meta["num_shards"] == 3 and meta["classes"] == ds.classes
    index = pd.read_parquet(out / "index.parquet")
    assert list(index.columns) == ["row", "image", "audio", "label", "label_id", "shard"]
    assert index["image"].tolist() == [str(p.image) for p in ds.pairs]
    assert index["label"].tolist() == [p.label for p in ds.pairs]
    assert index["label_id"].tolist() == lab.tolist() and index["shard"].tolist() == [i // 10 for i in range(N_VAL)]
    es = load_embeddings(out)
    assert isinstance(es.image, np.memmap) and isinstance(es.audio, np.memmap) and len(es) == N_VAL
    np.testing.assert_allclose(es.image, img.numpy(), atol=1e-5)
    np.testing.assert_allclose(es.audio, aud.numpy(), atol=1e-5)
    assert not list(out.rglob("*.tmp"))


def test_metrics_and_topk_over_files_equal_in_memory(setup, tmp_path):
    _, _, model, ds, (img, aud, lab) = setup
    out = embed_to_dir(model, ds, tmp_path / "e", shard_size=8, dtype="float32", progress=False)
    es = load_embeddings(out)
    ref = retrieval_metrics(img, aud, lab, chunk_size=5, method="blocked")
    assert "i2a_class_R@1" in ref and "a2i_median_rank" in ref
    for method in ("auto", "exact", "blocked"):       # the memmaps give the in-memory numbers, either method
        assert metrics_from_dir(es, chunk_size=5, method=method) == ref, method
    assert metrics_from_dir(out) == ref
    assert metrics_from_dir(out, use_labels=False, ties="optimistic") == retrieval_metrics(
        img, aud, chunk_size=5, ties="optimistic", method="blocked")
    from ciap_lib.ui.explorer import build_explorer   # the notebooks' explorer over the files
    ex = build_explorer(**es.explorer_kwargs(), k=3)
    res = ex.select(2, "i2a")
    assert [i for i, _ in res] == topk(img[2:3], aud, k=3)[1][0].tolist()
    s1, i1 = topk_from_dir(out, es.image[:4], k=3, against="audio", chunk_size=6)
    s2, i2 = topk(img[:4], aud, k=3)
    torch.testing.assert_close(s1, s2)
    assert torch.equal(i1, i2)
    # float16 halves the files; the metrics are those of the float16 values, whichever method
    out16 = embed_to_dir(model, ds, tmp_path / "e16", shard_size=8, dtype="float16", progress=False)
    es16 = load_embeddings(out16)
    assert es16.image.dtype == np.float16
    np.testing.assert_allclose(es16.image.astype(np.float32), img.numpy(), atol=2e-3)
    ref16 = retrieval_metrics(torch.from_numpy(es16.image.astype(np.float32)),
                              torch.from_numpy(es16.audio.astype(np.float32)), lab, method="blocked")
    assert metrics_from_dir(es16, method="exact") == metrics_from_dir(es16, method="blocked") == ref16


def test_resume_skips_finished_shards(setup, tmp_path):
    _, _, model, ds, (img, _, _) = setup
    out = tmp_path / "e"
    killed = Counting(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        embed_to_dir(model, ds, out, shard_size=5, dtype="float32", progress=False, embed_fn=killed)
    assert killed.calls == 2 and shard_paths(out, 1)["audio"].is_file() and not shard_paths(out, 2)["image"].exists()
    with pytest.raises(ValueError, match="did not finish"):
        load_embeddings(out)
    resumed = Counting()
    embed_to_dir(model, ds, out, shard_size=5, dtype="float32", progress=False, embed_fn=resumed)
    assert resumed.calls == 3                       # shards 2, 3, 4 of 5
    np.testing.assert_allclose(load_embeddings(out).image, img.numpy(), atol=1e-5)
    again = Counting()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    embed_to_dir(model, ds, out, shard_size=5, dtype="float32", progress=False, embed_fn=again)
    assert again.calls == 0 and before == {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    # a lost shard is recomputed alone, and the combined file follows it
    shard_paths(out, 3)["audio"].unlink()
    one = Counting()
    embed_to_dir(model, ds, out, shard_size=5, dtype="float32", progress=False, embed_fn=one)
    assert one.calls == 1 and load_embeddings(out).audio.shape == (N_VAL, model.config.embed_dim)
    # another job into the same folder is refused unless overwritten
    with pytest.raises(ValueError, match="another job.*shard_size"):
        embed_to_dir(model, ds, out, shard_size=7, dtype="float32", progress=False)
    embed_to_dir(model, ds, out, shard_size=7, dtype="float32", progress=False, overwrite=True)
    assert not shard_paths(out, 4)["image"].exists() and load_embeddings(out).meta["shard_size"] == 7


def test_cli_embed(setup, tmp_path, capsys):
    root, data, model, ds, (img, aud, lab) = setup
    ck = save_checkpoint(tmp_path / "m.pt", model, TrainConfig(model="debug", data=str(data)), epoch=1)
    out = tmp_path / "cli"
    args = ["embed", "--checkpoint", str(ck), "--data", str(data), "--out", str(out), "--dtype", "float32",
            "--shard-size", "10", "--metrics", "--no-progress"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {N_VAL} pairs" in printed and "i2a_R@1" in printed
    es = load_embeddings(out)
    np.testing.assert_allclose(es.audio, aud.numpy(), atol=1e-5)
    assert es.meta["source"]["checkpoint"] == str(ck.resolve())
    assert cli_main(args) == 0                      # resumable: nothing left to do
    assert cli_main(["embed", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(data),
                     "--out", str(out)]) == 2
    assert "missing.pt" in capsys.readouterr().err
