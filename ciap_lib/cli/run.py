"""``python -m ciap_lib run experiments/<name>.yaml [-p key=value ...]``: the notebook pipeline.

``python -m ciap_lib run --from-run <parent run id> [-p key=value ...]`` reruns a logged pipeline run."""
from __future__ import annotations

import argparse
import sys

HELP = "run the notebook pipeline (01..04 through papermill, tracked in MLflow) for an experiment YAML"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", nargs="?", default=None,
                        help="experiment YAML, e.g. experiments/default.yaml (or give --from-run instead)")
    parser.add_argument("--from-run", default=None, metavar="RUN_ID",
                        help="rerun a logged pipeline run: its parameters (the run's experiment.yaml artifact), "
                             "with -p overrides applied; warns when the git commit or the data differ from then")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter: section.key=value (train.epochs=5, generation.duration=2.5, "
                             "data.root=DIR); a bare TrainConfig field means train.<key>. Repeatable.")
    parser.add_argument("--run-name", default=None, help="run name (default <name>-<UTC timestamp>)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    parser.add_argument("--notebooks", default=None,
                        help="comma-separated subset to run, e.g. 01_data_exploration,02_training (default: all four)")
    parser.add_argument("--runs-dir", default=None,
                        help="where executed notebooks go (default experiments/runs/<run-name>/)")
    parser.add_argument("--kernel", default="ciap", help="Jupyter kernel name (default ciap)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to this terminal")
    parser.add_argument("--check", action="store_true", help="only validate the parameters, run nothing")


def run(args: argparse.Namespace) -> int:
    from ciap_lib import pipeline

    if (args.experiment is None) == (args.from_run is None):
        print("error: give exactly one of: an experiment YAML (e.g. experiments/default.yaml), "
              "or --from-run RUN_ID", file=sys.stderr)
        return 2
    overrides = list(args.param)
    if args.run_name:
        overrides.append(f"run_name={args.run_name}")
    try:
        if args.from_run:
            exp, logged = pipeline.experiment_from_run(args.from_run, overrides, tracking_uri=args.tracking_uri)
            for line in pipeline.rerun_warnings(logged, exp):
                print(f"warning: {line}", file=sys.stderr)
            what = f"run {logged.run_id} ({logged.run_name})"
        else:
            exp = pipeline.load_experiment(args.experiment, overrides)
            what = args.experiment
        notebooks = tuple(args.notebooks.split(",")) if args.notebooks else pipeline.NOTEBOOKS
        pipeline.check_kernel(args.kernel)
        if args.check:
            print(f"{what}: parameters OK" + (f" (run name {exp.run_name})" if exp.run_name else ""))
            return 0
        result = pipeline.run_pipeline(exp, tracking_uri=args.tracking_uri, notebooks=notebooks,
                                       kernel_name=args.kernel, log_output=args.log_output,
                                       runs_dir=args.runs_dir, from_run=logged.run_id if args.from_run else "")
    except pipeline.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except pipeline.PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(pipeline.summary(result))
    return 0
