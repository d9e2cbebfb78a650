"""ciap_lib.retrieval against a brute-force full-matrix reference (ties, chunk sizes, memmaps, topk)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ciap_lib.retrieval import pair_ranks, retrieval_metrics, topk


def brute_force(img: np.ndarray, aud: np.ndarray, labels=None, ks=(1, 5, 10), ties="pessimistic"):
    """Reference: the full N x N score matrix, ranks by explicit comparison, class hit via argmax."""
    s = img.astype(np.float64) @ aud.astype(np.float64).T
    n = len(s)
    out = {}
    for name, m in (("i2a", s), ("a2i", s.T)):
        true = np.diag(m)[:, None]
        off = ~np.eye(n, dtype=bool)
        gt = ((m > true) & off).sum(1)
        eq = ((m == true) & off).sum(1)
        rank = {"pessimistic": 1 + gt + eq, "optimistic": 1 + gt, "mean": 1 + gt + eq / 2}[ties]
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank <= k).mean())
        out[f"{name}_median_rank"] = float(np.median(rank))
        if labels is not None:
            top1 = m.argmax(1)  # first index among ties
            has = labels >= 0
            out[f"{name}_class_R@1"] = float((labels[top1] == labels)[has].mean())
    return out


def _emb(n, d, seed, noise=0.7):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    b = torch.nn.functional.normalize(a + noise * torch.randn(n, d, generator=g), dim=1)
    return a.numpy(), b.numpy()


@pytest.mark.parametrize("n,chunk", [(1, 4), (37, 1), (100, 7), (100, 100), (257, 64), (50, 4096)])
def test_matches_brute_force(n, chunk):
    img, aud = _emb(n, 16, seed=n)
    labels = np.random.default_rng(n).integers(-1, 5, n)
    got = retrieval_metrics(torch.from_numpy(img), torch.from_numpy(aud), torch.from_numpy(labels), chunk_size=chunk)
    ref = brute_force(img.astype(np.float32), aud.astype(np.float32), labels)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic", "mean"])
@pytest.mark.parametrize("chunk", [3, 10, 64])
def test_ties(ties, chunk):
    # Small integer embeddings: dot products are exact, with many exact ties (and duplicate rows).
    rng = np.random.default_rng(0)
    img = rng.integers(-1, 2, (40, 3)).astype(np.float32)
    aud = rng.integers(-1, 2, (40, 3)).astype(np.float32)
    aud[:5] = img[:5]
    labels = rng.integers(0, 3, 40)
    got = retrieval_metrics(img, aud, labels, chunk_size=chunk, ties=ties)
    ref = brute_force(img, aud, labels, ties=ties)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k


def test_collapsed_embeddings_are_not_flattered():
    x = np.ones((20, 4), np.float32)
    assert retrieval_metrics(x, x)["i2a_R@1"] == 0.0           # pessimistic default
    assert retrieval_metrics(x, x, ties="optimistic")["i2a_R@1"] == 1.0
    assert retrieval_metrics(x, x, ties="mean")["a2i_median_rank"] == 10.5


def test_perfect_and_keys():
    img, _ = _emb(30, 8, 1)
    m = retrieval_metrics(img, img, labels=np.arange(30) % 3, ks=(1, 2))
    assert m["i2a_R@1"] == m["a2i_R@1"] == 1.0 and m["i2a_median_rank"] == 1.0
    assert set(m) == {"i2a_R@1", "i2a_R@2", "i2a_median_rank", "a2i_R@1", "a2i_R@2", "a2i_median_rank",
                      "i2a_class_R@1", "a2i_class_R@1"}
    assert "i2a_class_R@1" not in retrieval_metrics(img, img, labels=-np.ones(30, int))


def test_memmap_input(tmp_path):
    img, aud = _emb(300, 32, 2)
    mi = np.memmap(tmp_path / "i.f32", np.float32, "w+", shape=img.shape)
    ma = np.memmap(tmp_path / "a.f32", np.float32, "w+", shape=aud.shape)
    mi[:], ma[:] = img, aud
    mi.flush(), ma.flush()
    ri = np.memmap(tmp_path / "i.f32", np.float32, "r", shape=img.shape)
    ra = np.memmap(tmp_path / "a.f32", np.float32, "r", shape=aud.shape)
    assert retrieval_metrics(ri, ra, chunk_size=64) == retrieval_metrics(img, aud, chunk_size=64)
    s, i = topk(ri, ra, 5, chunk_size=33)
    s2, i2 = topk(torch.from_numpy(img), torch.from_numpy(aud), 5, chunk_size=1000)
    assert torch.equal(i, i2) and torch.allclose(s, s2)


def test_ranks_direct():
    img, aud = _emb(64, 8, 3)
    r_i2a, r_a2i, t_i2a, t_a2i = pair_ranks(img, aud, chunk_size=9, return_top1=True)
    s = img.astype(np.float64) @ aud.astype(np.float64).T
    ref = 1 + (s > np.diag(s)[:, None]).sum(1)
    assert r_i2a.tolist() == ref.tolist()
    assert t_i2a.tolist() == s.argmax(1).tolist() and t_a2i.tolist() == s.argmax(0).tolist()


@pytest.mark.parametrize("q,n,k,chunk", [(10, 50, 1, 7), (33, 100, 10, 16), (5, 12, 12, 5), (64, 64, 3, 1000)])
def test_topk_matches_full_sort(q, n, k, chunk):
    g = torch.Generator().manual_seed(q * n)
    queries, keys = torch.randn(q, 8, generator=g), torch.randn(n, 8, generator=g)
    s, i = topk(queries, keys, k, chunk_size=chunk)
    full = queries @ keys.T
    rs, ri = full.topk(k, dim=1)
    assert s.shape == (q, k) and i.dtype == torch.long
    assert torch.equal(i, ri)
    assert torch.allclose(s, rs, atol=1e-6)


def test_topk_ties_scores_exact():
    keys = torch.tensor([[1.0], [1.0], [0.5], [1.0]])
    s, i = topk(torch.tensor([[1.0]]), keys, 3, chunk_size=2)
    assert s.tolist() == [[1.0, 1.0, 1.0]] and sorted(i[0].tolist()) == [0, 1, 3]


def test_input_errors():
    a = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        retrieval_metrics(a, np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(a[0], a[0])
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(a, a, labels=np.zeros(3))
    with pytest.raises(ValueError, match="ties"):
        retrieval_metrics(a, a, ties="random")
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(a, a, chunk_size=0)
    with pytest.raises(ValueError, match="k must be"):
        topk(a, a, 5)
    with pytest.raises(TypeError):
        retrieval_metrics([[0.0]], [[0.0]])
