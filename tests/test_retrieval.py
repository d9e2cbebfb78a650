"""ciap_lib.retrieval: both backends against a float64 brute force (ranks in every ties mode, top-1 and class
R@1) on random data, planted pairs, collapsed embeddings, exact duplicates and near-ties float32 cannot
resolve; memmap inputs; the exact backend's screening paths; topk."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ciap_lib.retrieval import choose_method, pair_ranks, retrieval_metrics, topk

METHODS = ("exact", "blocked")
TIES = ("pessimistic", "optimistic", "mean")


# ------------------------------------------------------------------------------------------- reference
def brute_force_ranks(img: np.ndarray, aud: np.ndarray, ties: str, tol: float = 1e-12):
    """Full N x N matrix in float64: ranks by explicit comparison (|difference| <= tol is a tie), top-1 =
    the lowest index among the keys within tol of the best (the partner included)."""
    s = img.astype(np.float64) @ aud.astype(np.float64).T
    n = len(s)
    off = ~np.eye(n, dtype=bool)
    out = []
    for m in (s, s.T):
        true = np.diag(m)[:, None]
        gt = ((m > true + tol) & off).sum(1)
        eq = ((np.abs(m - true) <= tol) & off).sum(1)
        rank = {"pessimistic": 1 + gt + eq, "optimistic": 1 + gt, "mean": 1 + gt + eq / 2}[ties]
        top1 = np.argmax(m >= m.max(1, keepdims=True) - tol, axis=1)   # first True
        out.append((rank.astype(np.float64), top1))
    return out


def brute_force_metrics(img, aud, labels=None, ks=(1, 5, 10), ties="pessimistic"):
    out = {}
    for name, (rank, top1) in zip(("i2a", "a2i"), brute_force_ranks(img, aud, ties)):
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank <= k).mean())
        out[f"{name}_median_rank"] = float(np.median(rank))
    if labels is not None and (labels >= 0).any():
        has = labels >= 0
        for name, (_, top1) in zip(("i2a", "a2i"), brute_force_ranks(img, aud, ties)):
            out[f"{name}_class_R@1"] = float((labels[top1] == labels)[has].mean())
    return out


# ------------------------------------------------------------------------------------------- data
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _nudge(v: np.ndarray, k: int, steps: int) -> np.ndarray:
    """v with component k moved by ``steps`` float32 ulps (sign = direction)."""
    v = v.copy()
    for _ in range(abs(steps)):
        v[k] = np.nextafter(v[k], np.float32(np.inf if steps > 0 else -np.inf))
    return v


def make_case(name: str, n: int = 150, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, d)))
    if name == "random":          # true pairs inside the bulk
        return x, _unit(rng.standard_normal((n, d)))
    if name == "planted":         # most true pairs above the bulk, some beaten
        return x, _unit(x + 1.2 * rng.standard_normal((n, d)) / d ** 0.5)
    if name == "collapsed":       # every score ties
        return np.repeat(x[:1], n, 0), np.repeat(x[:1], n, 0)
    if name == "duplicates":      # exact ties between distinct keys, both sides
        y = _unit(x + 0.8 * rng.standard_normal((n, d)) / d ** 0.5)
        y[1::3] = y[0::3][: len(y[1::3])]
        x[2::5] = x[0::5][: len(x[2::5])]
        return x, y
    if name == "mixed_norms":     # not unit-norm, negative true scores
        img = x * rng.uniform(0, 3, (n, 1))
        return img.astype(np.float32), (-x + rng.standard_normal((n, d))).astype(np.float32)
    if name == "integers":        # small integers: exact products, many exact ties and duplicate rows
        img = rng.integers(-1, 2, (n, 3)).astype(np.float32)
        aud = rng.integers(-1, 2, (n, 3)).astype(np.float32)
        aud[:5] = img[:5]
        return img, aud
    if name == "near_ties":
        return near_ties(n, d, seed)
    raise ValueError(name)


def near_ties(n: int = 150, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Planted pairs where rival keys score within a few 1e-9 of the true pair (below the ~6e-8 resolution of
    float32 scores near 1, far above float64 rounding): a copy of the partner with one component moved by
    1-3 ulps, either way, plus exact copies; on the audio side (image -> audio queries) and the image side."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, d)))
    y = _unit(x + 0.5 * rng.standard_normal((n, d)) / d ** 0.5)
    for i in range(0, n - 1, 2):                       # query i, rival key j = i + 1
        j, steps = i + 1, int(rng.choice([-3, -2, -1, 0, 1, 2, 3]))
        if i % 4 == 0:                                 # rival audio for image query i
            k = int(np.argmax(np.abs(x[i])))
            y[j] = _nudge(y[i], k, steps * int(np.sign(x[i, k])))
        else:                                          # rival image for audio query i
            k = int(np.argmax(np.abs(y[i])))
            x[j] = _nudge(x[i], k, steps * int(np.sign(y[i, k])))
    return x, y


CASES = ("random", "planted", "collapsed", "duplicates", "mixed_norms", "integers", "near_ties")


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", METHODS)
def test_ranks_and_top1_equal_float64_brute_force(case, method):
    img, aud = make_case(case)
    for ties in TIES:
        got = pair_ranks(img, aud, chunk_size=64, ties=ties, return_top1=True, method=method)
        (r_i2a, t_i2a), (r_a2i, t_a2i) = brute_force_ranks(img, aud, ties)
        assert got[0].tolist() == r_i2a.tolist(), (ties, "i2a")
        assert got[1].tolist() == r_a2i.tolist(), (ties, "a2i")
        assert got[2].tolist() == t_i2a.tolist() and got[3].tolist() == t_a2i.tolist(), ties


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", METHODS)
def test_metrics_with_labels_equal_brute_force(case, method):
    img, aud = make_case(case, n=101, seed=3)
    labels = np.random.default_rng(1).integers(-1, 4, len(img))
    for ties in TIES:
        got = retrieval_metrics(img, aud, labels, chunk_size=40, ties=ties, method=method)
        ref = brute_force_metrics(img, aud, labels, ties=ties)
        assert got == pytest.approx(ref, abs=1e-12) and got.keys() == ref.keys(), ties


def test_near_ties_are_beyond_float32():
    """The crafted near-ties really need float64: float32 scores rank them differently."""
    img, aud = near_ties()
    s32 = torch.from_numpy(img) @ torch.from_numpy(aud).T
    true = s32.diagonal()[:, None]
    off = ~torch.eye(len(img), dtype=torch.bool)
    r32 = 1 + ((s32 >= true) & off).sum(1)
    (r64, _), _ = brute_force_ranks(img, aud, "pessimistic")
    assert (r32.numpy() != r64).sum() >= 3
    assert (pair_ranks(img, aud, method="blocked")[0].numpy() == r64).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,chunk", [(1, 4), (37, 5), (100, 100), (257, 64)])
def test_sizes_and_chunks(method, n, chunk):
    img, aud = make_case("planted", n=n, d=16, seed=n)
    labels = np.random.default_rng(n).integers(-1, 5, n)
    got = retrieval_metrics(torch.from_numpy(img), torch.from_numpy(aud), torch.from_numpy(labels),
                            chunk_size=chunk, method=method)
    assert got == pytest.approx(brute_force_metrics(img, aud, labels), abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_collapsed_known_answers(method):
    x = np.ones((20, 4), np.float32)
    labels = np.array([2, 2, 1, -1] * 5)
    m = retrieval_metrics(x, x, labels, method=method)                     # pessimistic default
    assert m["i2a_R@1"] == m["i2a_R@10"] == 0.0 and m["a2i_median_rank"] == 20.0
    # every key ties: the top-1 is key 0 (label 2) for every query; labelled queries with label 2: 10 of 15
    assert m["i2a_class_R@1"] == m["a2i_class_R@1"] == pytest.approx(10 / 15)
    assert retrieval_metrics(x, x, ties="optimistic", method=method)["i2a_R@1"] == 1.0
    assert retrieval_metrics(x, x, ties="mean", method=method)["a2i_median_rank"] == 10.5


@pytest.mark.parametrize("method", METHODS)
def test_duplicates_known_top1(method):
    """Keys 0, 3, 6 are the same vector, the best for queries 0..8: the top-1 is the lowest of them, 0."""
    rng = np.random.default_rng(5)
    img = _unit(rng.standard_normal((9, 8)))
    aud = img.copy()
    aud[[0, 3, 6]] = _unit(img[:9].sum(0, keepdims=True) * 10)[0]
    img[:] = aud[0] + 0.01 * img                       # every image closest to that vector
    _, _, t_i2a, _ = pair_ranks(img, aud, chunk_size=4, return_top1=True, method=method)
    assert t_i2a.tolist() == [0] * 9


@pytest.mark.parametrize("method", METHODS)
def test_perfect_and_keys(method):
    img = _unit(np.random.default_rng(1).standard_normal((30, 8)))
    m = retrieval_metrics(img, img, labels=np.arange(30) % 3, ks=(1, 2), method=method)
    assert m == {"i2a_R@1": 1.0, "i2a_R@2": 1.0, "i2a_median_rank": 1.0, "a2i_R@1": 1.0, "a2i_R@2": 1.0,
                 "a2i_median_rank": 1.0, "i2a_class_R@1": 1.0, "a2i_class_R@1": 1.0}
    assert "i2a_class_R@1" not in retrieval_metrics(img, img, labels=-np.ones(30, int), method=method)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_memmap_input(tmp_path, dtype):
    img, aud = near_ties(300, 32, seed=2)
    img, aud = img.astype(dtype), aud.astype(dtype)
    labels = np.arange(300) % 7
    paths = []
    for name, a in (("i", img), ("a", aud)):
        m = np.memmap(tmp_path / name, dtype, "w+", shape=a.shape)
        m[:] = a
        m.flush()
        paths.append(tmp_path / name)
    ri, ra = (np.memmap(p, dtype, "r", shape=img.shape) for p in paths)
    ref = brute_force_metrics(img.astype(np.float32), aud.astype(np.float32), labels)
    for method in ("auto", "exact", "blocked"):
        assert retrieval_metrics(ri, ra, labels, chunk_size=64, method=method) == pytest.approx(ref, abs=1e-12)
    s, i = topk(ri, ra, 5, chunk_size=33)        # memmap rows read per block = the in-memory result
    s2, i2 = topk(torch.from_numpy(img).float(), torch.from_numpy(aud).float(), 5, chunk_size=33)
    assert torch.equal(i, i2) and torch.equal(s, s2)


def test_choose_method(tmp_path, monkeypatch):
    x = np.zeros((100, 8), np.float32)
    mm = np.memmap(tmp_path / "m", np.float32, "w+", shape=(100, 8))
    assert choose_method(x, x) == "exact" and choose_method(mm, mm) == "exact"
    assert choose_method(x, x, device="cuda") == "blocked"
    monkeypatch.setattr("ciap_lib.retrieval.metrics.available_memory", lambda: 12 * 100 * 8)
    assert choose_method(mm, mm) == "blocked" and choose_method(x, x) == "exact"


@pytest.mark.parametrize("case", ["planted", "partly_random", "random", "collapsed", "duplicates"])
def test_exact_backend_paths(case):
    """The exact backend's bf16 screen settles planted blocks with few float32 rescores, rescoring rows with
    many candidates in float32 and whole blocks when the screen cannot help; ranks and top-1 stay exact."""
    g = torch.Generator().manual_seed(1)
    n, d = 700, 48
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + 1.5 * torch.randn(n, d, generator=g) / d ** 0.5, dim=1)
    if case == "partly_random":   # 15% of the pairs unrelated: their queries are rescored in float32
        y[::7] = torch.nn.functional.normalize(torch.randn(len(y[::7]), d, generator=g), dim=1)
    elif case == "random":
        y = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    elif case == "collapsed":
        x = x[:1].repeat(n, 1)
        y = x.clone()
    elif case == "duplicates":
        y = x.clone()
        y[1::2] = y[0::2][: len(y[1::2])]
    (r_i2a, t_i2a), (r_a2i, t_a2i) = brute_force_ranks(x.numpy(), y.numpy(), "pessimistic")
    for bf16 in (True, False):
        stats: dict[str, int] = {}
        got = pair_ranks(x, y, chunk_size=256, return_top1=True, method="exact", use_bf16=bf16, stats=stats)
        assert got[0].tolist() == r_i2a.tolist() and got[1].tolist() == r_a2i.tolist(), (case, bf16)
        assert got[2].tolist() == t_i2a.tolist() and got[3].tolist() == t_a2i.tolist(), (case, bf16)
        if not bf16:
            assert stats["blocks_float32"] == 9 and stats["blocks_bf16"] == 0
        elif case == "planted":
            assert stats["blocks_bf16"] == 9 and stats["rescored_queries"] == 0
            assert 0 < stats["float32_scores"] < 0.01 * n * n
        elif case == "partly_random":
            assert stats["blocks_bf16"] > 0 and stats["rescored_queries"] > 0
        elif case == "random":
            assert stats["blocks_float32"] == 9
        if case in ("collapsed", "duplicates"):
            assert stats["float64_scores"] > 0
    if case == "collapsed":
        assert (r_i2a == n).all() and (t_i2a == 0).all()


def test_planted_pairs_backends_agree():
    g = torch.Generator().manual_seed(2)
    n, d = 900, 96
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + 3.0 * torch.randn(n, d, generator=g) / d ** 0.5, dim=1).half()
    labels = torch.arange(n) % 11
    exact = retrieval_metrics(x.numpy(), y.numpy(), labels, chunk_size=400, method="exact")
    assert exact == retrieval_metrics(x, y.float(), labels, chunk_size=400, method="blocked")
    assert exact == pytest.approx(brute_force_metrics(x.numpy(), y.float().numpy(), labels.numpy()), abs=1e-12)
    assert 0.2 < exact["i2a_R@1"] < 1.0    # planted but not trivial


def test_float32_precision_setting_is_respected_and_restored():
    img, aud = near_ties()
    ref = brute_force_metrics(img, aud)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        for method in METHODS:
            assert retrieval_metrics(img, aud, chunk_size=64, method=method) == pytest.approx(ref, abs=1e-12)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.cuda
def test_blocked_on_cuda_equals_cpu():
    img, aud = near_ties(600, 64, seed=4)
    labels = np.arange(600) % 5
    ref = brute_force_metrics(img, aud, labels)
    for ties in TIES:
        got = retrieval_metrics(img, aud, labels, chunk_size=128, ties=ties, device="cuda")
        assert got == pytest.approx(brute_force_metrics(img, aud, labels, ties=ties), abs=1e-12), ties
    assert retrieval_metrics(img, aud, labels, device="cuda") == pytest.approx(ref, abs=1e-12)


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
    with pytest.raises(ValueError, match="method"):
        retrieval_metrics(a, a, method="fast")
    with pytest.raises(ValueError, match="CPU"):
        retrieval_metrics(a, a, method="exact", device="cuda")
    with pytest.raises(ValueError, match="use_bf16"):
        retrieval_metrics(a, a, method="blocked", use_bf16=True)
    with pytest.raises(ValueError, match="k must be"):
        topk(a, a, 5)
    with pytest.raises(TypeError):
        retrieval_metrics([[0.0]], [[0.0]])
