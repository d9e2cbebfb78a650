"""``python -m ciap_lib evaluate-generation --checkpoint ciap.pt --data DIR [--split val] [--n 200]
[--audioldm NAME|PATH] [--out DIR] [--batch-size N] [--device auto] [--overwrite] ...``

One clip per image of the split's first ``--n`` pairs (the paired clip is the reference), for the diffusion
generator and the retrieval baseline; figures ``clap_score``, ``clap_fd`` (CLAP space) and ``fad_vggish``,
``fd_panns``, ``kl_panns``, ``is_panns`` (audioldm_eval's definitions); an HTML report with players; MLflow.
Rerunning the same command keeps the clips already made (``<out>/manifest.json``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = ("evaluate generated audio on a split with paired clips (CLAP score/FD, FAD, FD, KL, IS; retrieval "
        "baseline), with an HTML report and MLflow; resumable")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ciap_lib.bridge.evaluation import EVAL_BATCH_SIZE, EVAL_BATCH_SIZE_CUDA
    from ciap_lib.bridge.metric_weights import DEFAULT_WEIGHTS_DIR
    from ciap_lib.bridge.params import GenerationParams
    from ciap_lib.cli.generate import add_steering_arguments

    parser.add_argument("--checkpoint", required=True, help="trained CIAP checkpoint (.pt); audio_encoder 'clap' "
                                                            "for generation that follows the image")
    parser.add_argument("--data", required=True, help="dataset root holding <split>/ (image/audio pairs)")
    parser.add_argument("--split", default="val", help="split whose pairs are evaluated (default: val)")
    parser.add_argument("--n", type=int, default=200, help="first N pairs of the split (default: 200)")
    parser.add_argument("--audioldm", default="audioldm-s-full",
                        help="AudioLDM checkpoint name (under --ckpt-dir) or path; missing: the retrieval "
                             "fallback is evaluated alone, labelled so")
    parser.add_argument("--ckpt-dir", default="ckpt", help="folder of named AudioLDM checkpoints (default: ckpt)")
    parser.add_argument("--out", help="output folder: WAVs, thumbnails, manifest, report.html, summary.json "
                                      "(default: <checkpoint folder>/generation-eval-<split>)")
    add_steering_arguments(parser, dest_prefix="gen_")  # as `generate` takes them (several values after one flag)
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate clips made with other settings (without it they are refused)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="do not score the retrieval baseline (it still runs alone without AudioLDM)")
    parser.add_argument("--baseline-split", default="train",
                        help="split the retrieval baseline returns clips from (default: train)")
    parser.add_argument("--metrics-dir", default=str(DEFAULT_WEIGHTS_DIR),
                        help="folder of vggish-10086976.pth / Cnn14_16k_mAP=0.438.pth "
                             f"(default: {DEFAULT_WEIGHTS_DIR}); "
                             "a missing file skips its metrics, with the reason")
    parser.add_argument("--is-splits", type=int, default=10, help="inception-score splits (audioldm_eval: 10)")
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false",
                        help="do not log to MLflow (default: a new run; MLFLOW_TRACKING_URI picks the store)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment name (default: ciap)")
    # every other generation parameter, from its one home (GenerationParams); values parsed in run()
    d = GenerationParams(batch_size=EVAL_BATCH_SIZE)
    for name in GenerationParams.hints():
        flag = "--" + name.replace("_", "-")
        if flag in parser._option_string_actions:  # --negative, --negative-text, --mix: added above
            continue
        extra = " (None: the sampler's own count)" if name == "steps" else ""
        if name == "batch_size":
            extra = (f" on the CPU, the fastest batch under 4 GB on the 2-core CPU bench; {EVAL_BATCH_SIZE_CUDA} on "
                     "CUDA (see ciap_lib.bridge.evaluation.default_batch_size)")
        parser.add_argument(flag, dest=f"gen_{name}", default=None, metavar="VALUE",
                            help=f"GenerationParams.{name}, default {getattr(d, name)!r}{extra}")


def generation_params(args: argparse.Namespace):
    """The ``GenerationParams`` of the ``--<field>`` flags (each parsed as its field's type; ``ValueError``
    naming the flag), checked."""
    from ciap_lib.bridge.evaluation import EVAL_BATCH_SIZE, default_batch_size
    from ciap_lib.bridge.params import GenerationParams
    from ciap_lib.config import parse_value

    values = {}
    for name, tp in GenerationParams.hints().items():
        text = getattr(args, f"gen_{name}", None)
        if isinstance(text, list):  # --negative / --mix: one value per word
            values[name] = text
        elif text is not None:
            values[name] = parse_value(text, tp, "--" + name.replace("_", "-"))
    if "batch_size" not in values:   # the device's default; a device that does not resolve is reported below
        try:
            values["batch_size"] = default_batch_size(values.get("device", "auto"))
        except ValueError:
            values["batch_size"] = EVAL_BATCH_SIZE
    prefix = "--"
    params = GenerationParams.from_dict(values, prefix=prefix)
    bad = params.problems()
    if bad:
        raise ValueError("\n".join(f"--{k.replace('_', '-')}: {msg}" for k, msg in bad))
    return params


def run(args: argparse.Namespace) -> int:
    from ciap_lib.bridge.architecture import AudioLDMCheckpointError
    from ciap_lib.generation_report import summary_lines
    from ciap_lib.workflows import evaluate_generation

    try:
        params = generation_params(args)
        out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"generation-eval-{args.split}"
        rep = evaluate_generation(
            args.checkpoint, args.data, args.split, args.n, out=out, audioldm=args.audioldm, ckpt_dir=args.ckpt_dir,
            params=params, tokenizer_dir=args.tokenizer_dir, overwrite=args.overwrite, baseline=args.baseline,
            baseline_split=args.baseline_split, metrics_dir=args.metrics_dir, is_splits=args.is_splits,
            mlflow=args.mlflow, experiment_name=args.experiment, progress=True,
            echo=lambda s: print(f"[evaluate-generation] {s}", file=sys.stderr, flush=True))
    except AudioLDMCheckpointError as e:  # a file that is there but is no matching AudioLDM checkpoint
        print(f"evaluate-generation: error: {e}", file=sys.stderr)
        return 2
    ev = rep.evaluation
    print("\n".join(summary_lines(ev)))
    made = ", ".join(f"{s.name} {s.generated} made, {ev.n - s.generated} kept" for s in ev.systems.values())
    print(f"clips: {made} (in {ev.out}/wavs)")
    print(f"report: {rep.report}")
    if rep.run_id:
        print(f"MLflow run {rep.run_id} (table generation_eval/clips.json, report.html)")
    return 0
