"""The whole notebook pipeline, executed ONCE through papermill with tiny parameters (debug model, a small
synthetic set, the tiny AudioLDM checkpoint of the bridge tests), then checked through MLflow's own API on a
temporary SQLite store: parent + nested runs, params, metrics with sane values, figures, WAVs, checkpoint,
executed notebooks (.ipynb + .html). Plus: a failing cell is surfaced with the executed notebook's path, and
bad parameters fail before any heavy work with a message naming the parameter."""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import mlflow
import nbformat
import pytest
import soundfile as sf
import torch

from ciap_lib import pipeline, tracking
from ciap_lib.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_VAL, EPOCHS, DURATION = 48, 24, 2, 2.5


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_audioldm_ckpt):
    """One pipeline run of all four notebooks; every test below asserts on it.

    ``tiny_audioldm_ckpt``: engineer C's session fixture (tests/fixtures/audioldm.py), the tiny AudioLDM in
    the original checkpoint format, so notebook 04 runs real diffusion through the frozen-model bridge."""
    tmp = tmp_path_factory.mktemp("pipeline")
    audioldm = tiny_audioldm_ckpt
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    exp = pipeline.load_experiment(ROOT / "experiments" / "default.yaml", [
        f"data.root={tmp / 'syn'}", f"data.n_train={N_TRAIN}", f"data.n_val={N_VAL}", "data.image_size=32",
        "data.n_examples=2", "model=debug", f"epochs={EPOCHS}", "batch_size=16", f"train.ckpt_dir={tmp / 'ckpt'}",
        f"generation.duration={DURATION}", "generation.steps=2", "generation.n_images=2",
        f"generation.audioldm={audioldm}", "evaluate.heatmap_size=8", "run_name=test-run",
    ])
    t0 = time.perf_counter()
    result = pipeline.run_pipeline(exp, tracking_uri=uri, runs_dir=tmp / "runs", echo=lambda s: None)
    result.wall = time.perf_counter() - t0
    client = tracking.client(uri)
    children = {r.data.tags[tracking.NOTEBOOK_TAG]: r for r in tracking.child_runs(result.parent_run_id, uri)}
    return result, uri, client, children, tmp


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
        assert parent.data.metrics[f"seconds.{nb}"] > 0


def test_params(run):
    result, uri, client, children, tmp = run
    p = client.get_run(result.parent_run_id).data.params
    assert p["train.epochs"] == str(EPOCHS) and p["train.model"] == "debug"
    assert p["data.root"] == str(tmp / "syn") and p["generation.duration"] == str(DURATION)
    assert p["train.run_name"] == "test-run"
    t = children["02_training"].data.params
    assert t["epochs"] == str(EPOCHS) and t["batch_size"] == "16" and t["lr"] == "0.001"
    assert t["data"] == str(tmp / "syn")
    assert children["01_data_exploration"].data.params["data.n_train"] == str(N_TRAIN)
    assert children["03_retrieval_evaluation"].data.params["evaluate.split"] == "val"
    g = children["04_generation"].data.params  # GenerationParams' guidance and device fields reach MLflow
    assert (g["generation.negative"], g["generation.negative_text"], g["generation.mix"], g["generation.device"]) \
        == ("[]", "None", "[]", "auto")


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
    for d in ("i2a", "a2i"):
        assert 0 <= m3[f"{d}_R_at_1"] <= m3[f"{d}_R_at_5"] <= m3[f"{d}_R_at_10"] <= 1
        assert 1 <= m3[f"{d}_median_rank"] <= N_VAL
    # 03 re-evaluates the checkpoint 02 wrote: same retrieval numbers as 02's final epoch
    m2 = children["02_training"].data.metrics
    assert m3["i2a_R_at_5"] == pytest.approx(m2["i2a_R_at_5"], abs=1e-6)
    assert children["04_generation"].data.metrics["n_clips"] == 2


def test_artifacts(run):
    result, uri, client, children, tmp = run
    arts = {nb: tracking.list_artifacts(r.info.run_id, tracking_uri=uri) for nb, r in children.items()}
    assert {"figures/label_counts.png", "figures/distributions.png", "figures/sample_pairs.png"} <= set(
        arts["01_data_exploration"])
    assert {"figures/training_curves.png", "checkpoint/last.pt"} <= set(arts["02_training"])
    assert {"figures/similarity_heatmap.png", "figures/projection_2d.png"} <= set(arts["03_retrieval_evaluation"])
    for nb, a in arts.items():
        assert {f"notebook/{nb}.ipynb", f"notebook/{nb}.html"} <= set(a), nb
    parent_arts = tracking.list_artifacts(result.parent_run_id, tracking_uri=uri)
    for nb in pipeline.NOTEBOOKS:
        assert {f"notebooks/{nb}.ipynb", f"notebooks/{nb}.html"} <= set(parent_arts)
    assert "experiment.yaml" in parent_arts
    wavs = [a for a in arts["04_generation"] if a.startswith("wavs/") and a.endswith(".wav")]
    assert len(wavs) == 2
    rid = children["04_generation"].info.run_id
    local = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=wavs[0], tracking_uri=uri,
                                                dst_path=str(tmp / "dl"))
    info = sf.info(local)
    assert info.samplerate == 16000 and info.frames == int(DURATION * 16000)
    assert children["04_generation"].data.tags["generator"] == "diffusion"
    assert len(list(result.wav_dir.glob("*.wav"))) == 2
    assert result.checkpoint == tmp / "ckpt" / "test-run" / "last.pt" and result.checkpoint.is_file()


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
    ck = torch.load(result.checkpoint, weights_only=False)
    lines = {ln.split()[0]: ln.split()[1] for ln in text.splitlines() if ln.startswith("  ") and ln.split()}
    assert lines["i2a_R@1"] == f"{ck['metrics']['i2a_R@1']:.3f}"
    assert lines["a2i_median_rank"] == f"{ck['metrics']['a2i_median_rank']:.3f}"
    assert "mlflow ui --host 127.0.0.1" in text and "jupyter lab --ip 127.0.0.1" in text
    assert str(pipeline._rel(result.wav_dir)) in text


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


@pytest.mark.parametrize("name", ["default", "seed", "clap_aligned"])
def test_experiment_files_validate(name):
    exp = pipeline.load_experiment(ROOT / "experiments" / f"{name}.yaml", check_paths=False)
    assert exp.name == name
