"""Time `make demo`'s pipeline: experiments/default.yaml through all four notebooks, on this machine.

Prints the per-notebook split, the total and the pipeline overhead (validation, MLflow parent run, HTML
export) against the target (< 10 min on 2 CPU cores after installation).

    .venv/bin/python bench/demo_pipeline.py                 # temp MLflow store + temp runs dir
    .venv/bin/python bench/demo_pipeline.py --repo-store    # the repo's mlflow.db and experiments/runs/
    .venv/bin/python bench/demo_pipeline.py -p train.epochs=2

The dataset is built under data/synthetic on first use (as `make demo` does); pass --fresh-data to time
that build too (it then goes to a temporary folder).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_S = 600.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default=str(ROOT / "experiments" / "default.yaml"))
    ap.add_argument("-p", "--param", action="append", default=[])
    ap.add_argument("--repo-store", action="store_true", help="log into the repo's mlflow.db / experiments/runs")
    ap.add_argument("--fresh-data", action="store_true", help="build the synthetic set in a temp folder (timed)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    from ciap_lib import pipeline

    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="ciap-bench-") as tmp:
        overrides = list(args.param)
        if args.fresh_data:
            overrides.append(f"data.root={Path(tmp) / 'synthetic'}")
        exp = pipeline.load_experiment(args.experiment, overrides)
        uri = None if args.repo_store else f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        runs = None if args.repo_store else Path(tmp) / "runs"
        if not args.repo_store:
            exp.train["ckpt_dir"] = str(Path(tmp) / "ckpt")
        t0 = time.perf_counter()
        result = pipeline.run_pipeline(exp, tracking_uri=uri, runs_dir=runs, echo=lambda s: print(s, flush=True))
        wall = time.perf_counter() - t0
        from ciap_lib import tracking

        ev = tracking.find_notebook_run(result.parent_run_id, "03_retrieval_evaluation", result.tracking_uri)
        quality = tracking.client(result.tracking_uri).get_run(ev).data.metrics if ev else {}
    total = time.perf_counter() - t_start
    nb_total = sum(result.seconds.values())
    print()
    print(f"demo pipeline ({Path(args.experiment).name}, {os.cpu_count()} CPUs, torch threads "
          f"{__import__('torch').get_num_threads()}):")
    for nb, s in result.seconds.items():
        print(f"  {nb:<26s} {s:7.1f} s  ({100 * s / wall:4.1f} %)")
    print(f"  {'notebooks':<26s} {nb_total:7.1f} s")
    print(f"  {'pipeline overhead':<26s} {wall - nb_total:7.1f} s  (parent run, HTML export, artifact logging)")
    print(f"  {'run_pipeline wall':<26s} {wall:7.1f} s")
    print(f"  {'incl. imports/validation':<26s} {total:7.1f} s")
    if quality:
        n = exp.data["n_val"]
        print(f"val retrieval after {exp.train['epochs']} epochs ({n} pairs; chance R@1 {1 / n:.3f}): "
              + ", ".join(f"{k} {quality[k]:.3f}" for k in ("i2a_R_at_1", "a2i_R_at_1", "i2a_R_at_5",
                                                              "i2a_class_R_at_1", "i2a_median_rank") if k in quality))
    ok = total < TARGET_S
    print(f"target < {TARGET_S / 60:.0f} min: {'OK' if ok else 'MISSED'} ({total / 60:.2f} min)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
