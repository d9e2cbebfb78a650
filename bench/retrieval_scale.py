"""Retrieval at scale: R@1/5/10 and median rank for N x N random unit vectors with planted pairs.

    python bench/retrieval_scale.py                 # N = 100,000, D = 512, 2 threads
    python bench/retrieval_scale.py --n 20000 --baseline-n 20000

Data: image_i = random unit vector, audio_i = normalize(image_i + noise * g / sqrt(D)) (g standard normal),
so every true pair scores ~1/sqrt(1 + noise^2) against a bulk of N(0, 1/D) impostors: recall is high but
not perfect, and the ranks are checked exactly.

Phases (all in this process, on the same data, so the timings compare):
1. ``ciap_lib.retrieval.pair_ranks(method="exact")`` (bf16 screening + float32/float64 rescoring) at N:
   seconds, peak RSS, metrics. Correctness: the ranks of ``--check`` random queries are recomputed against
   all N keys in float64 and must be equal.
2. At ``--baseline-n`` (default 20,000; the blocked method at 100k takes several minutes here): the exact
   method without and with labels (class R@1, i.e. exact top-1: its extra cost) and the float32 blocked
   method with labels: seconds, and all metrics must be equal; the top-1 of ``--check`` random queries must
   equal a float64 brute force.
3. A naive full-matrix argsort at ``--naive-n`` (fits in memory) vs both methods at that size: ratio.

Peak memory is the process's peak resident set (``resource.getrusage``; torch allocations are invisible
to tracemalloc, which is printed too for the Python-level part).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ciap_lib.retrieval import pair_ranks, retrieval_metrics  # noqa: E402


def rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def planted(n: int, d: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, d)
    y = torch.empty(n, d)
    for s in range(0, n, 8192):  # in chunks: no N x D temporaries beyond the outputs
        e = min(n, s + 8192)
        a = torch.nn.functional.normalize(torch.randn(e - s, d, generator=g), dim=1)
        x[s:e] = a
        y[s:e] = torch.nn.functional.normalize(a + noise * torch.randn(e - s, d, generator=g) / d ** 0.5, dim=1)
    return x, y


def naive_metrics(x: torch.Tensor, y: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Full N x N matrix, argsort per row and per column, rank = position of the partner."""
    s = x @ y.T
    n = s.shape[0]
    out = {}
    for name, m in (("i2a", s), ("a2i", s.T)):
        order = torch.argsort(m, dim=1, descending=True, stable=True)
        rank = (order == torch.arange(n)[:, None]).float().argmax(1).double() + 1
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank <= k).double().mean())
        out[f"{name}_median_rank"] = float(rank.median()) if n % 2 else float(rank.quantile(0.5))
    return out


def timed(fn):
    """``(result, wall seconds, CPU seconds)`` of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn()
    return res, time.perf_counter() - t0, time.process_time() - c0


def fmt(m: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in m.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--noise", type=float, default=4.5, help="norm of the noise added to each partner")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", type=int, default=200, help="queries verified against float64 brute force")
    ap.add_argument("--baseline-n", type=int, default=20_000, help="N for phase 2 (labels, blocked; 0: skip)")
    ap.add_argument("--classes", type=int, default=1000, help="labels in phase 2: row index modulo this")
    ap.add_argument("--naive-n", type=int, default=6000, help="N for the naive full argsort (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible; "
          f"load average {os.getloadavg()[0]:.1f} (other processes share these cores)")
    ok = True

    # ---------------------------------------------------------------- phase 1: N x N
    tracemalloc.start()
    rss_import = rss_mb()
    x, y = planted(args.n, args.dim, args.noise, args.seed)
    rss_data = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    stats: dict[str, int] = {}
    r_i2a, r_a2i = pair_ranks(x, y, chunk_size=args.chunk, method="exact", stats=stats)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = rss_mb()
    m = {}
    for name, r in (("i2a", r_i2a), ("a2i", r_a2i)):
        for k in (1, 5, 10):
            m[f"{name}_R@{k}"] = float((r <= k).double().mean())
        m[f"{name}_median_rank"] = float(r.median()) if args.n % 2 else float(r.quantile(0.5))
    print(f"\n[1] exact ranks, {args.n:,} x {args.n:,} x {args.dim}: {secs:.1f} s wall, {cpu:.1f} CPU-s "
          f"(uncontended estimate ~{cpu / args.threads:.1f} s on {args.threads} cores); peak RSS {rss_peak:.0f} MiB "
          f"(after imports {rss_import:.0f} MiB, with data {rss_data:.0f} MiB; tracemalloc peak "
          f"{tm_peak / 2**20:.0f} MiB)")
    print("    " + fmt(m))
    print(f"    blocks settled by the bf16 screen: {stats['blocks_bf16']}, scored in float32: "
          f"{stats['blocks_float32']}; queries rescored in float32 inside screened blocks: "
          f"{stats['rescored_queries']}; candidates scored one by one: {stats['float32_scores']:,} in float32, "
          f"{stats['float64_scores']:,} in float64")
    print(f"    target < 60 s and < 2 GB peak on 2 cores: wall {'MET' if secs < 60 else 'NOT MET'}, "
          f"CPU-s/{args.threads} {'MET' if cpu / args.threads < 60 else 'NOT MET'}, "
          f"memory {'MET' if rss_peak < 2048 else 'NOT MET'}")
    # correctness: random queries against every key, float64, pessimistic ties
    rng = np.random.default_rng(args.seed)
    q = torch.from_numpy(rng.choice(args.n, size=min(args.check, args.n), replace=False))
    x64, y64 = x.double(), y.double()
    tau = (x64[q] * y64[q]).sum(1)
    s_i2a = x64[q] @ y64.T
    s_i2a[torch.arange(len(q)), q] = float("-inf")
    s_a2i = y64[q] @ x64.T
    s_a2i[torch.arange(len(q)), q] = float("-inf")
    ref_i2a = 1 + (s_i2a >= tau[:, None] - 1e-12).sum(1).double()
    ref_a2i = 1 + (s_a2i >= tau[:, None] - 1e-12).sum(1).double()
    exact = torch.equal(ref_i2a, r_i2a[q]) and torch.equal(ref_a2i, r_a2i[q])
    ok &= exact
    print(f"    check: ranks of {len(q)} random queries vs float64 brute force over all {args.n:,} keys: "
          f"{'equal' if exact else 'DIFFERENT'}")
    del s_i2a, s_a2i, x64, y64

    # ---------------------------------------------------------------- phase 2: labels, blocked method
    if args.baseline_n:
        nb = min(args.baseline_n, args.n)
        xb, yb = x[:nb].contiguous(), y[:nb].contiguous()
        labels = torch.arange(nb) % args.classes
        mf, sf, cf = timed(lambda: retrieval_metrics(xb, yb, chunk_size=args.chunk, method="exact"))
        ml, sl, cl = timed(lambda: retrieval_metrics(xb, yb, labels, chunk_size=args.chunk, method="exact"))
        mb, sb, cb = timed(lambda: retrieval_metrics(xb, yb, labels, chunk_size=args.chunk, method="blocked"))
        same = mb == ml and mf == {k: v for k, v in ml.items() if "class" not in k}
        ok &= same
        f = (args.n / nb) ** 2
        print(f"\n[2] at N={nb:,}, {args.classes} classes: exact {sf:.1f} s wall / {cf:.1f} CPU-s | exact with "
              f"labels (class R@1) {sl:.1f} s / {cl:.1f} CPU-s (x{cl / cf:.2f} CPU) | blocked with labels "
              f"{sb:.1f} s / {cb:.1f} CPU-s | blocked/exact x{cb / cl:.1f} (CPU) | "
              f"metrics {'equal' if same else 'DIFFERENT'}")
        print("    " + fmt(ml))
        if nb < args.n:
            print(f"    blocked at N={args.n:,} extrapolated (x (N/n)^2): ~{sb * f:.0f} s wall, "
                  f"~{cb * f / args.threads:.0f} s uncontended on {args.threads} cores")
        if not same:
            print("    blocked: " + fmt(mb) + "\n    exact:   " + fmt(mf))
        # top-1 of random queries against a float64 brute force (lowest index among tied best scores)
        _, _, t_i2a, t_a2i = pair_ranks(xb, yb, chunk_size=args.chunk, return_top1=True, method="exact")
        q = torch.from_numpy(rng.choice(nb, size=min(args.check, nb), replace=False))
        s_i2a, s_a2i = xb[q].double() @ yb.double().T, yb[q].double() @ xb.double().T
        top_ok = all(torch.equal(t[q], (s >= s.amax(1, keepdim=True) - 1e-12).double().argmax(1))
                     for t, s in ((t_i2a, s_i2a), (t_a2i, s_a2i)))
        ok &= top_ok
        print(f"    check: top-1 of {len(q)} random queries vs float64 brute force over all {nb:,} keys: "
              f"{'equal' if top_ok else 'DIFFERENT'}")

    # ---------------------------------------------------------------- phase 3: naive full argsort
    if args.naive_n:
        nn_ = min(args.naive_n, args.n)
        xn, yn = x[:nn_].contiguous(), y[:nn_].contiguous()
        mn, sn, cn = timed(lambda: naive_metrics(xn, yn))
        mf, sf, cf = timed(lambda: retrieval_metrics(xn, yn, chunk_size=args.chunk, method="exact"))
        mb, sb, cb = timed(lambda: retrieval_metrics(xn, yn, chunk_size=args.chunk, method="blocked"))
        # the naive argsort breaks exact ties by index (optimistic for earlier partners); with random
        # data there are none, so all three agree
        same = mn == mf == mb
        ok &= same
        print(f"\n[3] at N={nn_:,}: naive full-matrix argsort {sn:.2f} s / {cn:.1f} CPU-s | "
              f"exact {sf:.2f} s / {cf:.1f} CPU-s | blocked {sb:.2f} s / "
              f"{cb:.1f} CPU-s\n    ratio naive/exact: x{sn / sf:.1f} wall, x{cn / cf:.1f} CPU; naive/blocked: "
              f"x{sn / sb:.1f} wall, x{cn / cb:.1f} CPU | metrics {'equal' if same else 'DIFFERENT'}")
        if not same:
            print("    naive:   " + fmt(mn) + "\n    exact:   " + fmt(mf) + "\n    blocked: " + fmt(mb))
    print("\nall correctness checks passed" if ok else "\nCORRECTNESS CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
