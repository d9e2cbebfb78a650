"""The whole notebook pipeline, executed ONCE through papermill with tiny parameters (debug model, a small
synthetic set, the tiny AudioLDM checkpoint of the bridge tests), then checked through MLflow's own API on a
temporary SQLite store: parent + nested runs, params, metrics with sane values, figures, WAVs, checkpoint,
executed notebooks (.ipynb + .html). Plus: a failing cell is surfaced with the executed notebook's path, and
bad parameters fail before any heavy work with a message naming the parameter."""
from __future__ import annotations

import math
import re
from pathlib import Path

import mlflow
import nbformat
import pytest
import soundfile as sf

from ciap_lib import pipeline, tracking
from ciap_lib.checkpoint import load_checkpoint, pick_checkpoint
from ciap_lib.cli import main as cli_main
from fixtures import pipeline as pipe_fx

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_VAL, EPOCHS, DURATION = pipe_fx.N_TRAIN, pipe_fx.N_VAL, pipe_fx.EPOCHS, pipe_fx.DURATION


@pytest.fixture(scope="module")
def run(pipeline_store, default_pipeline_run):
    """The default pipeline run of all four notebooks (session fixture ``default_pipeline_run``,
    tests/fixtures/pipeline.py, shared with the browser test); every test below asserts on it."""
    r = default_pipeline_run
    return r.result, pipeline_store.uri, pipeline_store.client, r.children, pipeline_store.tmp


def test_parent_and_nested_runs(run):
    result, uri, client, children, _ = run
    parent = client.get_run(result.parent_run_id)
    assert parent.info.run_name == "test-run" and parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.PIPELINE_TAG] == "1"
    assert parent.data.tags["git_commit"] not in ("", "unknown")
    assert list(children) == list(pipeline.NOTEBOOKS)
    for nb, r in children.items():
        assert r.info.status == "FINISHED", nb
        assert r.data.tags[tracking.PARENT_TAG] == result.parent_run_id
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", r.data.tags["git_commit"]), nb  # HEAD may move meanwhile
    for nb in pipeline.NOTEBOOKS:
        assert parent.data.metrics[f"wall_seconds.{nb}"] > 0


def test_params(run):
    result, uri, client, children, tmp = run
    p = client.get_run(result.parent_run_id).data.params
    assert p["train.epochs"] == str(EPOCHS) and p["train.model"] == "debug"
    assert p["data.root"] == str(tmp / "syn") and p["generation.duration"] == str(DURATION)
    assert p["train.run_name"] == "test-run"
    t = children["02_training"].data.params
    assert t["epochs"] == str(EPOCHS) and t["batch_size"] == "16" and t["lr"] == "0.002"
    assert t["data"] == str(tmp / "syn")
    assert children["01_data_exploration"].data.params["data.n_train"] == str(N_TRAIN)
    assert children["03_retrieval_evaluation"].data.params["evaluate.split"] == "val"
    g = children["04_generation"].data.params  # GenerationParams' guidance and device fields reach MLflow
    assert (g["generation.negative"], g["generation.negative_text"], g["generation.mix"], g["generation.device"]) \
        == ("[]", "None", "[]", "auto")
    # beside the parameters as given, what "auto" resolved to (the two precisions give different audio)
    import torch

    from ciap_lib.bridge.devices import resolve_precision

    assert g["generation.precision"] == "auto"
    assert (g["generation_resolved.device"], g["generation_resolved.precision"]) \
        == ("cpu", resolve_precision("auto", torch.device("cpu")))


def test_metrics_sane(run):
    result, uri, client, children, _ = run
    m1 = children["01_data_exploration"].data.metrics
    assert m1["n_pairs.train"] == N_TRAIN and m1["n_pairs.val"] == N_VAL and m1["n_skipped.train"] == 0
    rid = children["02_training"].info.run_id
    hist = client.get_metric_history(rid, "train_loss")
    assert [h.step for h in hist] == list(range(1, EPOCHS + 1))
    assert all(math.isfinite(h.value) and 0 < h.value < 10 for h in hist)
    assert len(client.get_metric_history(rid, "val_loss")) == EPOCHS
    m3 = children["03_retrieval_evaluation"].data.metrics
    # 03 re-evaluates the checkpoint 02 chose (best.pt): the same retrieval numbers as 02's best epoch, every one
    best_epoch = int(children["02_training"].data.metrics["best_epoch"])
    keys = [f"{d}_{k}" for d in ("i2a", "a2i")
            for k in ("R_at_1", "R_at_5", "R_at_10", "median_rank", "class_R_at_1")]
    m2 = {k: [h.value for h in client.get_metric_history(rid, k) if h.step == best_epoch][0] for k in keys}
    assert {k: m3[k] for k in keys} == pytest.approx(m2, abs=1e-6)
    assert children["03_retrieval_evaluation"].data.params["checkpoint"].endswith("best.pt")
    assert children["04_generation"].data.metrics["n_clips"] == 2


def test_artifacts(run):
    result, uri, client, children, tmp = run
    arts = {nb: tracking.list_artifacts(r.info.run_id, tracking_uri=uri) for nb, r in children.items()}
    assert {"figures/label_counts.png", "figures/distributions.png", "figures/sample_pairs_train.png",
            "figures/sample_pairs_val.png"} <= set(arts["01_data_exploration"])
    assert {"figures/training_curves.png", "checkpoint/last.pt", "checkpoint/best.pt"} <= set(arts["02_training"])
    assert {"figures/similarity_heatmap.png", "figures/projection_2d.png"} <= set(arts["03_retrieval_evaluation"])
    for nb, a in arts.items():
        assert {f"notebook/{nb}.ipynb", f"notebook/{nb}.html"} <= set(a), nb
    parent_arts = tracking.list_artifacts(result.parent_run_id, tracking_uri=uri)
    for nb in pipeline.NOTEBOOKS:
        assert {f"notebooks/{nb}.ipynb", f"notebooks/{nb}.html"} <= set(parent_arts)
    assert "experiment.yaml" in parent_arts
    wavs = [a for a in arts["04_generation"] if a.startswith("wavs/") and a.endswith(".wav")]
    assert len(wavs) == 4  # 2 diffusion clips + the retrieval baseline's 2 (*.nn-retrieval.wav)
    assert len([a for a in wavs if a.endswith(".nn-retrieval.wav")]) == 2
    rid = children["04_generation"].info.run_id
    local = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=wavs[0], tracking_uri=uri,
                                                dst_path=str(tmp / "dl"))
    info = sf.info(local)
    assert info.samplerate == 16000 and info.frames == int(DURATION * 16000)
    assert children["04_generation"].data.tags["generator"] == "diffusion"
    assert len(list(result.wav_dir.glob("*.wav"))) == 4
    assert result.checkpoint == tmp / "ckpt" / "test-run" / "last.pt" and result.checkpoint.is_file()


def test_notebook_04_evaluates_the_val_pairs_through_evaluate_generation(run):
    """Batch mode on the first n_images val pairs: the evaluate-generation figures on 04's run (diffusion and the
    retrieval baseline; the standard metrics skipped here, no weights), its table and report, the report inline."""
    result, uri, client, children, tmp = run
    r = children["04_generation"]
    m = r.data.metrics
    for system in ("diffusion", "retrieval"):
        assert -1 <= m[f"{system}.clap_score"] <= 1 and math.isfinite(m[f"{system}.clap_fd"])
    assert r.data.tags["generation_eval.systems"] == "diffusion,retrieval"
    assert "diffusion.fad_vggish" in r.data.tags["generation_eval.skipped"]
    arts = set(tracking.list_artifacts(r.info.run_id, tracking_uri=uri))
    assert {"generation_eval/clips.json", "report.html", "summary.json", "manifest.json"} <= arts
    html = (result.run_dir / "04_generation.html").read_text()  # nbconvert rewrites the quotes
    assert re.search(r"class=[\"']ciap-report", html) and len(re.findall(r"<tr class=[\"']clip[\"']", html)) == 2
    assert "fad_vggish skipped" in html  # the skipped figures are listed with their reasons


def test_dataset_inputs_carry_the_fingerprint(run):
    from ciap_lib.pairs import dataset_fingerprint

    result, uri, client, children, tmp = run
    fp = dataset_fingerprint(tmp / "syn" / "train")
    r = children["02_training"]
    digests = {i.dataset.name: i.dataset.digest for i in r.inputs.dataset_inputs}
    assert digests["syn/train"] == fp[:32]
    assert r.data.tags["data_fingerprint.train"] == fp


def test_executed_notebooks(run):
    result, *_ = run
    for nb in pipeline.NOTEBOOKS:
        path = result.run_dir / f"{nb}.ipynb"
        assert result.executed[nb] == path
        assert path.with_suffix(".html").is_file()
        node = nbformat.read(str(path), as_version=4)
        tags = [c.metadata.get("tags", []) for c in node.cells]
        assert any("injected-parameters" in t for t in tags), nb
        outs = [o for c in node.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outs if o.output_type == "error"], nb
        # progress bars are throttled: no flood of stream outputs
        streams = "".join(o.get("text", "") for o in outs if o.output_type == "stream")
        assert streams.count("\r") + streams.count("\n") < 200, nb
        assert path.stat().st_size < 5_000_000, nb
    html = (result.run_dir / "01_data_exploration.html").read_text()
    assert "<audio" in html and not re.search(r"<audio[^>]*autoplay", html)
    assert "data:image/png;base64" in html  # figures rendered, not "<Figure ...>" text


def test_summary_says_where_things_are_and_how_well_it_did(run):
    result, *_ = run
    text = pipeline.summary(result)
    ck = load_checkpoint(pick_checkpoint(result.checkpoint))  # best.pt: the checkpoint 03 and 04 used
    lines = {ln.split()[0]: ln.split()[1] for ln in text.splitlines() if ln.startswith("  ") and len(ln.split()) > 1}
    assert lines["i2a_R@1"] == f"{ck['metrics']['i2a_R@1']:.3f}"
    assert lines["a2i_median_rank"] == f"{ck['metrics']['a2i_median_rank']:.3f}"
    assert "mlflow ui --host 127.0.0.1" in text and "jupyter lab --ip 127.0.0.1" in text
    assert str(pipeline._rel(result.wav_dir)) in text
    exp_id = tracking.client(result.tracking_uri).get_run(result.parent_run_id).info.experiment_id
    assert f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning" in text
    assert f"python -m ciap_lib run --from-run {result.parent_run_id} --tracking-uri {result.tracking_uri}" in text
    m = client_metrics(result)
    assert lines["clap_score"] == f"{m['clap_score']:.3f}" and lines["seconds_per_clip"] == f"{m['seconds_per_clip']:.3f}"


def client_metrics(result) -> dict:
    return tracking.client(result.tracking_uri).get_run(result.parent_run_id).data.metrics


# ------------------------------------------------------------------ what "compare runs" on parent runs shows
def test_parent_run_carries_headline_figures_and_resolved_params(run):
    """The headline figures of the nested runs and the parameters as built sit on the parent run."""
    result, uri, client, children, _ = run
    parent = client.get_run(result.parent_run_id)
    m, m2, m4 = parent.data.metrics, children["02_training"].data.metrics, children["04_generation"].data.metrics
    for d in ("i2a", "a2i"):
        assert m[f"val_{d}_R_at_1"] == m2[f"final_{d}_R_at_1"] == m2[f"{d}_R_at_1"]  # the last epoch's val R@1
        assert m[f"val_{d}_class_R_at_1"] == m2[f"final_{d}_class_R_at_1"]  # the synthetic set has labels
    assert m["clap_score"] == m4["diffusion.clap_score"]
    assert m["seconds_per_clip"] == m4["diffusion.seconds_per_clip"] > 0
    assert "clap_mean_cosine" not in m  # logmel_cnn_tc mode: 03 has no CLAP alignment to report
    p = parent.data.params
    assert p["train.image_backbone"] == "None"  # the override as given ...
    assert {k: p[f"resolved.{k}"] for k in ("model", "image_backbone", "image_size", "audio_encoder", "loss",
                                            "epochs")} == {  # ... and what was built
        "model": "debug", "image_backbone": "tiny_cnn", "image_size": "32", "audio_encoder": "logmel_cnn_tc",
        "loss": "infonce_labels", "epochs": str(EPOCHS)}
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


# --------------------------------------------------------------------- the CLAP-aligned pipeline, end to end
def test_clap_pipeline_end_to_end(clap_pipeline_run, pipeline_store):
    """Notebooks 02-04 in clap mode on the tiny AudioLDM: the image tower trains against the frozen CLAP audio
    tower, 03 measures the CLAP alignment, 04 generates by diffusion; all of it lands in MLflow."""
    from fixtures.pipeline import CLAP_DATA, DURATION, EPOCHS

    r, client = clap_pipeline_run, pipeline_store.client
    parent = client.get_run(r.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert list(r.children) == ["02_training", "03_retrieval_evaluation", "04_generation"]
    assert all(c.info.status == "FINISHED" for c in r.children.values())
    # 02: trained against CLAP features of every clip (computed once by the frozen tower, cached on disk)
    train = r.children["02_training"]
    assert train.data.tags["audio_encoder"] == "clap"
    cached = list((pipeline_store.tmp / "clap-cache").rglob("*.npy"))
    assert len(cached) == CLAP_DATA["n_train"] + CLAP_DATA["n_val"]
    hist = client.get_metric_history(train.info.run_id, "train_loss")
    assert [h.step for h in hist] == list(range(1, EPOCHS + 1)) and all(math.isfinite(h.value) for h in hist)
    assert 0 <= train.data.metrics["final_i2a_R_at_1"] <= 1
    assert r.checkpoint.is_file()
    # 03: the CLAP alignment of the image embeddings
    cos = r.children["03_retrieval_evaluation"].data.metrics["clap_mean_cosine"]
    assert math.isfinite(cos) and -1 <= cos <= 1
    html = (r.run_dir / "03_retrieval_evaluation.html").read_text()
    assert "paired <strong>CLAP audio embeddings</strong>" in html and f"{cos:.3f}" in html
    # 04: real diffusion, frozen weights checked after generating, WAVs of the asked duration
    gen = r.children["04_generation"]
    assert gen.data.tags["generator"] == "diffusion"
    assert gen.data.tags["audioldm.frozen_check"] == "passed" and len(gen.data.tags["audioldm.fingerprint"]) >= 16
    wavs = sorted(r.wav_dir.glob("*.wav"))
    (wav,) = [w for w in wavs if not w.name.endswith(".nn-retrieval.wav")]  # + the retrieval baseline's clip
    info = sf.info(str(wav))
    assert info.samplerate == 16000 and info.frames == int(DURATION * 16000)
    assert [a for a in tracking.list_artifacts(gen.info.run_id, tracking_uri=pipeline_store.uri)
            if a.startswith("wavs/") and a.endswith(".wav")] == [f"wavs/{w.name}" for w in wavs]
    # the parent run: headline figures and the parameters as built
    m, p = parent.data.metrics, parent.data.params
    for k in ("val_i2a_R_at_1", "val_a2i_R_at_1", "val_i2a_class_R_at_1", "clap_mean_cosine", "clap_score",
              "seconds_per_clip"):
        assert math.isfinite(m[k]), k
    assert m["clap_mean_cosine"] == cos and m["clap_score"] == gen.data.metrics["diffusion.clap_score"]
    assert (p["resolved.model"], p["resolved.audio_encoder"], p["resolved.image_backbone"]) == (
        "clap_aligned", "clap", "tiny_cnn")


# ------------------------------------------------------------------------------ output a user can act on
NOISE = ("Kernel is running over TCP without encryption", "onesided")


def test_run_output_and_notebooks_hold_no_known_noise(clap_pipeline_run, default_pipeline_run):
    """What `python -m ciap_lib run` prints and what the executed notebooks hold: the summary, without
    ipykernel's TCP warning (one per notebook before) or torchaudio's onesided deprecation warning (raised by
    the CLAP audio tower in 02 and 04)."""
    out = clap_pipeline_run.output
    assert "pipeline run clap-run finished" in out and "clap_mean_cosine" in out and "--from-run" in out
    for text in NOISE:
        assert text not in out, text
    for r in (clap_pipeline_run, default_pipeline_run):
        for nb in r.children:
            for path in (r.run_dir / f"{nb}.ipynb", r.run_dir / f"{nb}.html"):
                body = path.read_text()
                for text in NOISE:
                    assert text not in body, f"{path.name}: {text}"


def test_kernels_start_with_transport_encryption():
    """The kernel manager config passed through papermill: CurveZMQ keys when the kernelspec supports them."""
    from jupyter_client.kernelspec import KernelSpecManager

    cfg = pipeline.kernel_manager_config("ciap")
    declared = KernelSpecManager().get_kernel_spec("ciap").metadata.get("supported_encryption")
    if declared:
        assert cfg.KernelManager.transport_encryption == "auto"
    else:
        assert cfg.KernelManager.transport == "ipc"


# ------------------------------------------------------------------------------------ rerun a logged run
def test_from_run_check_names_what_differs(run, tmp_path, capsys):
    result, uri, client, children, tmp = run
    rc = cli_main(["run", "--from-run", result.parent_run_id, "--tracking-uri", uri, "--check"])
    out, err = capsys.readouterr()
    assert rc == 0 and f"run {result.parent_run_id} (test-run): parameters OK" in out
    assert "the code differs" not in err and "the data differs" not in err  # same checkout, same data
    # another data folder: named, with its fingerprint then
    rc = cli_main(["run", "--from-run", result.parent_run_id, "--tracking-uri", uri, "--check",
                   "-p", f"data.root={tmp_path / 'elsewhere'}"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning: the data differs" in err and "elsewhere" in err
    assert children["02_training"].data.tags["data_fingerprint.train"] in err
    # a nested run's id means its pipeline run; bad ids and bad arguments are errors
    assert cli_main(["run", "--from-run", children["03_retrieval_evaluation"].info.run_id, "--tracking-uri", uri,
                     "--check"]) == 0
    assert "(test-run): parameters OK" in capsys.readouterr().out
    assert cli_main(["run", "--from-run", "0" * 32, "--tracking-uri", uri, "--check"]) == 2
    assert f"no MLflow run '{'0' * 32}'" in capsys.readouterr().err
    assert cli_main(["run", str(ROOT / "experiments" / "default.yaml"), "--from-run", result.parent_run_id]) == 2
    assert cli_main(["run"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_from_run_reruns_and_tags_the_new_run(run, tmp_path):
    """What `python -m ciap_lib run --from-run <id>` does after its checks: a new pipeline run with the logged
    parameters (+ -p), tagged with the run it came from. No notebook is run (the notebooks themselves are
    exercised by the runs above), which keeps this test at about a second."""
    result, uri, client, children, tmp = run
    exp, logged = pipeline.experiment_from_run(result.parent_run_id, ["data.n_examples=1", "run_name=rerun"],
                                               tracking_uri=uri)
    new = pipeline.run_pipeline(exp, tracking_uri=uri, notebooks=(), runs_dir=tmp_path / "runs",
                                echo=lambda _: None, from_run=logged.run_id)
    parent = client.get_run(new.parent_run_id)
    assert parent.info.run_name == "rerun" and parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.FROM_RUN_TAG] == result.parent_run_id
    old = client.get_run(result.parent_run_id).data.params
    differs = {k for k in set(old) | set(parent.data.params) if old.get(k) != parent.data.params.get(k)}
    assert differs == {"run_name", "train.run_name", "data.n_examples"}
    assert parent.data.params["data.n_examples"] == "1"
    assert "experiment.yaml" in tracking.list_artifacts(new.parent_run_id, tracking_uri=uri)  # rerunnable in turn
    client.delete_run(new.parent_run_id)  # keep the shared store to the two pipeline runs the browser test compares


def test_failing_cell_is_surfaced(tmp_path):
    """A notebook that raises: PipelineError names the notebook, the cell, the error and the executed path;
    the parent and nested runs are FAILED and the failed notebook is logged."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    data_tmp = tmp_path
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "ciap", "display_name": "ciap",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell('tracking_uri = ""\nexperiment_name = "ciap"\nparent_run_id = ""\n'
                                       'run_name = ""\nrun_dir = ""\ncheckpoint = ""\ndata = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params,
                nbformat.v4.new_code_cell("from ciap_lib import tracking\n"
                                          "tracking.start_notebook_run('01_data_exploration', parent_run_id=parent_run_id,"
                                          " tracking_uri=tracking_uri, experiment_name=experiment_name)"),
                nbformat.v4.new_code_cell("x = 1\nraise ValueError('synthetic failure for the test')")]
    nbformat.write(nb, str(nbs / "01_data_exploration.ipynb"))
    exp = pipeline.load_experiment(ROOT / "experiments" / "default.yaml",
                                   [f"data.root={data_tmp / 'syn'}", "run_name=fail-run", "model=debug"],
                                   notebooks_dir=nbs)
    with pytest.raises(pipeline.PipelineError) as ei:
        pipeline.run_pipeline(exp, tracking_uri=uri, notebooks=["01_data_exploration"], notebooks_dir=nbs,
                              runs_dir=tmp_path / "runs", echo=lambda s: None)
    msg = str(ei.value)
    assert "01_data_exploration" in msg and "ValueError: synthetic failure for the test" in msg
    assert "raise ValueError" in msg and "cell 3 of the executed notebook" in msg  # after injected-parameters
    assert str(tmp_path / "runs" / "fail-run" / "01_data_exploration.ipynb") in msg
    assert ei.value.executed_path.is_file()
    parent = [r for r in client.search_runs([client.get_experiment_by_name("ciap").experiment_id])
              if r.info.run_name == "fail-run"][0]
    assert parent.info.status == "FAILED"
    (child,) = tracking.child_runs(parent.info.run_id, uri)
    assert child.info.status == "FAILED"
    assert "notebook/01_data_exploration.html" in tracking.list_artifacts(child.info.run_id, tracking_uri=uri)


# ------------------------------------------------------------------------------------------ bad parameters
@pytest.mark.parametrize("override, names", [
    ("train.epochs=two", "epochs"),
    ("epochs=1.5", "epochs"),
    ("train.not_a_key=1", "not_a_key"),
    ("bogus=1", "bogus"),
    ("generation.duration=long", "generation.duration"),
    ("generation.nope=1", "generation.nope"),
    ("evaluate.top_k=[1]", "evaluate.top_k"),
    ("data.synthetic=maybe", "data.synthetic"),
    ("generation.images=[missing.png]", "generation.images"),
    ("generation.duration=20", "generation.duration"),
    ("train.model=nope", "train.model"),
    ("train.epochs=-1", "train.epochs"),
    ("generation.sampler=euler", "generation.sampler"),
    ("train.optimizer=sgd", "train.optimizer"),
    ("generation.n_candidates=0", "generation.n_candidates"),
    ("generation.mix=[text:rain:1.5]", "generation.mix"),
    ("generation.negative=[missing.wav]", "generation.negative"),
    ("generation.device=gpu", "generation.device"),
])
def test_bad_parameter_fails_before_heavy_work(override, names, tmp_path, capsys):
    rc = cli_main(["run", str(ROOT / "experiments" / "default.yaml"), "-p", override,
                   "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert names in err, err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.parametrize("override, words", [
    ("generation.duration=20", ["generation.duration", "20", "between 2.5 and 10.0"]),
    ("train.model=nope", ["train.model", "'nope'", "debug", "default", "seed"]),
    ("train.epochs=-1", ["train.epochs", "-1", "positive"]),
    ("generation.sampler=euler", ["generation.sampler", "'euler'", "dpmpp", "unipc", "ddim"]),
    ("train.optimizer=sgd", ["train.optimizer", "'sgd'", "adam", "adamw"]),
    ("generation.n_candidates=0", ["generation.n_candidates", "0", ">= 1"]),
    ("generation.mix=[rain.wav:0.5, text:sea:0.6]", ["generation.mix", "sum to 1.1", "at most 1"]),
    ("generation.mix=[rain.wav]", ["generation.mix", "'rain.wav'", "text:<text>:<weight>"]),
])
def test_check_rejects_bad_values_naming_value_and_what_is_allowed(override, words, capsys):
    """``run --check`` used to answer "parameters OK" to each of these; they then failed minutes later."""
    rc = cli_main(["run", str(ROOT / "experiments" / "default.yaml"), "--check", "-p", override])
    out = capsys.readouterr()
    assert rc == 2 and "parameters OK" not in out.out
    for w in words:
        assert w in out.err, out.err


def test_check_lists_every_bad_value_at_once(capsys):
    rc = cli_main(["run", str(ROOT / "experiments" / "default.yaml"), "--check", "-p", "train.epochs=0",
                   "-p", "generation.sampler=euler", "-p", "evaluate.top_k=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "3 bad parameters" in err
    assert "train.epochs" in err and "generation.sampler" in err and "evaluate.top_k" in err


def test_values_keep_the_type_their_parameter_takes(capsys):
    exp = pipeline.load_experiment(ROOT / "experiments" / "default.yaml",
                                   ["run_name=007", "train.lr=1e-3", "generation.steps=null", "generation.seed=7"])
    assert exp.run_name == "007" and exp.train["lr"] == 1e-3
    assert exp.generation["steps"] is None and exp.generation["seed"] == 7
    assert cli_main(["run", str(ROOT / "experiments" / "default.yaml"), "--check", "--run-name", "007"]) == 0
    assert "run name 007" in capsys.readouterr().out


def test_negative_mix_and_device_are_plain_values_of_the_generation_section(tmp_path):
    clip = tmp_path / "talk.wav"
    clip.write_bytes(b"")
    exp = pipeline.load_experiment(ROOT / "experiments" / "default.yaml",
                                   [f"generation.negative=[{clip}]", "generation.negative_text=null",
                                    f"generation.mix=[text:rain:0.3, {clip}:0.2]", "generation.device=cpu"])
    g = exp.generation
    assert (g["negative"], g["negative_text"], g["mix"], g["device"]) == (
        [str(clip)], None, ["text:rain:0.3", f"{clip}:0.2"], "cpu")
    exp = pipeline.load_experiment(ROOT / "experiments" / "default.yaml", ["generation.negative_text=speech"])
    assert exp.generation["negative_text"] == "speech" and exp.generation["device"] == "auto"


def test_steps_default_to_the_samplers_own_count():
    from ciap_lib.bridge import DEFAULT_STEPS, GenerationParams

    for name in ("default", "seed", "clap_aligned"):
        exp = pipeline.load_experiment(ROOT / "experiments" / f"{name}.yaml", check_paths=False)
        assert exp.generation["steps"] is None, name
        params = GenerationParams.from_dict({k: exp.generation[k] for k in GenerationParams.hints()})
        assert params.resolved_steps == DEFAULT_STEPS[params.sampler]
    exp = pipeline.load_experiment(ROOT / "experiments" / "default.yaml", ["generation.sampler=ddim"])
    params = GenerationParams.from_dict({k: exp.generation[k] for k in GenerationParams.hints()})
    assert params.resolved_steps == 200


def test_missing_data_folder(tmp_path, capsys):
    rc = cli_main(["run", str(ROOT / "experiments" / "default.yaml"), "-p", "data.synthetic=false",
                   "-p", f"data.root={tmp_path / 'nowhere'}", "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "data.root" in err and "nowhere" in err and "does not exist" in err
    assert not (tmp_path / "runs").exists()


def test_missing_experiment_file_and_unknown_kernel(tmp_path, capsys):
    assert cli_main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    assert cli_main(["run", str(ROOT / "experiments" / "default.yaml"), "--kernel", "no-such-kernel-xyz",
                     "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "no-such-kernel-xyz" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["default", "seed", "clap_aligned", "clip_mapper"])
def test_experiment_files_validate(name):
    exp = pipeline.load_experiment(ROOT / "experiments" / f"{name}.yaml", check_paths=False)
    assert exp.name == name
