"""ciap_lib.tracking against a real temporary SQLite MLflow store (no mocks): tracking URI resolution,
pipeline parent + nested notebook runs, MLflowCallback on a real (tiny) training run, figures, WAVs,
notebooks as .ipynb + HTML, dataset inputs with the data fingerprint as digest, run comparison."""
from __future__ import annotations

import dataclasses
import math

import mlflow
import nbformat
import numpy as np
import pytest
import soundfile as sf
from matplotlib.figure import Figure

from ciap_lib import tracking
from ciap_lib.config import TrainConfig
from ciap_lib.pairs import dataset_fingerprint
from ciap_lib.paths import repo_root
from ciap_lib.synthetic import make_synthetic_dataset
from ciap_lib.train import train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    yield uri, d
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "syn", n_train=32, n_val=16, image_size=32,
                                  seconds=1.0)


def test_default_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.default_tracking_uri()
    assert uri == f"sqlite:///{repo_root() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.default_tracking_uri() == "http://127.0.0.1:5999"


def test_flatten_and_param_values():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    assert tracking._param_value([1, "x"]) == '[1, "x"]'
    assert len(tracking._param_value("y" * 10000)) == 6000


def test_pipeline_parent_and_nested_runs(store, tmp_path):
    uri, d = store
    parent = tracking.start_pipeline_run("p1", {"train": {"epochs": 2, "lr": 1e-3}, "name": "x"}, tracking_uri=uri,
                                         experiment_name="t-runs")
    c = tracking.client(uri)
    run = c.get_run(parent)
    assert run.data.params["train.epochs"] == "2" and run.data.params["name"] == "x"
    assert run.data.tags[tracking.PIPELINE_TAG] == "1" and run.data.tags["git_commit"]
    # artifacts live next to the SQLite file
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.artifact_location == (d / "mlartifacts" / "t-runs").as_uri()

    for nb in ("01_a", "02_b"):
        with tracking.notebook_run(nb, parent_run_id=parent, tracking_uri=uri, experiment_name="t-runs",
                                   params={"section": {"k": 1}}) as r:
            tracking.log_metrics({"m@1": 0.5, "bad": float("nan"), "skip": "text"}, step=1)
            assert mlflow.active_run().info.run_id == r.info.run_id
    assert mlflow.active_run() is None
    children = tracking.child_runs(parent, uri)
    assert [r.info.run_name for r in children] == ["01_a", "02_b"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert children[0].data.params == {"section.k": "1"}
    assert children[0].data.metrics == {"m_at_1": 0.5}  # '@' renamed, NaN and text skipped
    assert tracking.find_notebook_run(parent, "02_b", uri) == children[1].info.run_id
    assert tracking.find_notebook_run(parent, "03_c", uri) is None

    with pytest.raises(RuntimeError, match="boom"):
        with tracking.notebook_run("03_c", parent_run_id=parent, tracking_uri=uri, experiment_name="t-runs"):
            raise RuntimeError("boom")
    failed = c.get_run(tracking.find_notebook_run(parent, "03_c", uri))
    assert failed.info.status == "FAILED"
    tracking.end_run(parent)
    assert c.get_run(parent).info.status == "FINISHED"


def test_mlflow_callback_logs_params_metrics_checkpoint(store, dataset, tmp_path):
    uri, _ = store
    cfg = TrainConfig.from_dict({"model": "debug", "data": str(dataset), "epochs": 2, "batch_size": 16,
                                 "num_workers": 0, "ckpt_dir": str(tmp_path / "ckpt"), "run_name": "cb"})
    run = tracking.start_notebook_run("02_training", tracking_uri=uri, experiment_name="t-cb")
    result = train(cfg, callbacks=[tracking.MLflowCallback()])
    tracking.end_notebook_run()
    c = tracking.client(uri)
    r = c.get_run(run.info.run_id)
    for k, v in cfg.to_dict().items():  # all params
        assert r.data.params[k] == tracking._param_value(v), k
    hist = c.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in hist] == [1, 2]
    assert [m.value for m in hist] == pytest.approx([h["train_loss"] for h in result.history])
    for k in ("val_loss", "i2a_R_at_1", "a2i_R_at_1", "i2a_median_rank", "logit_scale", "lr"):
        assert k in r.data.metrics, k
        assert math.isfinite(r.data.metrics[k])
    assert 0.0 <= r.data.metrics["i2a_R_at_1"] <= 1.0
    assert r.data.metrics["final_val_loss"] == pytest.approx(result.metrics["val_loss"])
    assert int(r.data.tags["model.n_params"]) > 0
    summary = result.extra["model"]  # the resolved image side, as params: backbone, weights digest, head, ...
    assert r.data.params["model.image_backbone"] == "tiny_cnn" and r.data.params["model.head"] == "linear"
    assert r.data.params["model.image_weights_digest"] == summary["image_weights_digest"]
    assert len(summary["image_weights_digest"]) == 64 and r.data.params["model.preprocess.size"] == "32"
    assert tracking.list_artifacts(run.info.run_id, tracking_uri=uri) == ["checkpoint/best.pt", "checkpoint/last.pt"]
    best = result.extra["best"]  # the synthetic val split has labels
    assert best["metric"] == "i2a_class_R@1" and r.data.metrics["best_epoch"] == best["epoch"]
    assert r.data.metrics["best_i2a_class_R_at_1"] == pytest.approx(best["value"])
    assert r.data.tags["select_metric"] == "i2a_class_R@1" and r.data.tags["stopped_early"] == "False"


def test_figures_wavs_notebooks_and_dataset(store, dataset, tmp_path):
    uri, _ = store
    run = tracking.start_notebook_run("01_x", tracking_uri=uri, experiment_name="t-art")
    rid = run.info.run_id
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    tracking.log_figure(fig, "figures/line.png")
    wave = 0.5 * np.sin(np.linspace(0, 200, 40000)).astype(np.float32)
    tracking.log_wav(wave, 16000, "wavs/tone.wav")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# hello"),
                                         nbformat.v4.new_code_cell("1 + 1")])
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    html = tracking.log_notebook(path)
    assert "hello" in html.read_text()
    fp = tracking.log_dataset(dataset, "train")
    assert fp == dataset_fingerprint(dataset / "train")
    tracking.end_notebook_run()

    arts = tracking.list_artifacts(rid, tracking_uri=uri)
    assert arts == ["figures/line.png", "notebooks/x.html", "notebooks/x.ipynb", "wavs/tone.wav"]
    local = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="wavs/tone.wav", tracking_uri=uri,
                                                dst_path=str(tmp_path / "dl"))
    back, sr = sf.read(local)
    assert sr == 16000 and len(back) == 40000
    np.testing.assert_allclose(back, wave, atol=1e-3)
    r = tracking.client(uri).get_run(rid)
    (inp,) = r.inputs.dataset_inputs
    assert inp.dataset.digest == fp[:32]
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "train"
    assert r.data.tags["data_fingerprint.train"] == fp
    with pytest.raises(ValueError, match="shape"):
        tracking.log_wav(np.zeros((1, 2, 3)), 16000, "wavs/bad.wav", run_id=rid)


def test_compare_runs_table(store):
    uri, _ = store
    parent = tracking.start_pipeline_run("cmp-run", {"x": 1}, tracking_uri=uri, experiment_name="t-cmp")
    for lr in (0.1, 0.01):
        with tracking.notebook_run("02_training", parent_run_id=parent, tracking_uri=uri, experiment_name="t-cmp",
                                   params={"lr": lr}):
            tracking.log_metrics({"val_loss": lr * 10})
    tracking.end_run(parent)
    df = tracking.compare_runs("t-cmp", uri)
    assert len(df) == 2
    assert list(df["pipeline_run"]) == ["cmp-run", "cmp-run"]
    assert sorted(df["params.lr"].astype(float)) == [0.01, 0.1]
    assert sorted(df["metrics.val_loss"]) == pytest.approx([0.1, 1.0])


# ------------------------------------------------------------------------------ the MLflow UI's experiment kind
def test_experiment_opens_in_the_model_training_view(store):
    """MLflow 3's UI opens an experiment on its GenAI overview unless ``mlflow.experimentKind`` says otherwise."""
    from mlflow.tracking import MlflowClient

    uri, _ = store
    c = MlflowClient(uri)
    new = tracking.setup(uri, "t-kind-new")
    assert c.get_experiment(new).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    old = c.create_experiment("t-kind-old")  # made before the tag existed: no kind
    assert tracking.EXPERIMENT_KIND_TAG not in c.get_experiment(old).tags
    assert tracking.setup(uri, "t-kind-old") == old
    assert c.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    picked = c.create_experiment("t-kind-picked", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.setup(uri, "t-kind-picked")  # a kind a user chose in the UI is kept
    assert c.get_experiment(picked).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


# ------------------------------------------------------------------- parent run: headline figures, resolved params
def test_headline_figures_of_the_nested_runs_go_onto_the_parent(store):
    from ciap_lib import pipeline

    uri, _ = store
    parent = tracking.start_pipeline_run("headline", {"x": 1}, tracking_uri=uri, experiment_name="t-head")
    logged = {"02_training": {"final_i2a_R_at_1": 0.25, "final_a2i_R_at_1": 0.5, "final_i2a_class_R_at_1": 0.75,
                              "i2a_R_at_1": 0.1, "val_loss": 2.0},
              "03_retrieval_evaluation": {"clap_mean_cosine": 0.3, "i2a_R_at_1": 0.2},
              "04_generation": {"diffusion.clap_score": 0.4, "diffusion.seconds_per_clip": 1.5, "n_clips": 2,
                                "retrieval.seconds_per_clip": 0.1, "retrieval.clap_score": 0.9}}
    for nb, metrics in logged.items():
        with tracking.notebook_run(nb, parent_run_id=parent, tracking_uri=uri, experiment_name="t-head"):
            tracking.log_metrics(metrics)
    assert pipeline.headline_metrics(parent, "01_data_exploration", uri) == {}
    assert pipeline.headline_metrics(parent, "02_training", uri) == {
        "val_i2a_R_at_1": 0.25, "val_a2i_R_at_1": 0.5, "val_i2a_class_R_at_1": 0.75}  # no a2i class R@1 logged
    assert pipeline.headline_metrics(parent, "03_retrieval_evaluation", uri) == {"clap_mean_cosine": 0.3}
    assert pipeline.headline_metrics(parent, "04_generation", uri) == {"clap_score": 0.4, "seconds_per_clip": 1.5}
    other = tracking.start_pipeline_run("no-children", {}, tracking_uri=uri, experiment_name="t-head")
    assert pipeline.headline_metrics(other, "02_training", uri) == {}


@pytest.mark.parametrize("name, overrides, want", [
    ("default", ["model=debug", "train.image_backbone=null"],
     {"model": "debug", "image_backbone": "tiny_cnn", "image_size": 32, "audio_encoder": "logmel_cnn_tc",
      "loss": "infonce_labels", "epochs": 40}),
    ("default", [], {"model": "default", "image_backbone": "small_cnn", "image_size": 64,
                     "audio_encoder": "logmel_cnn_tc"}),
    ("clap_aligned", ["train.image_backbone=tiny_cnn", "epochs=3", "loss=cosine"],
     {"model": "clap_aligned", "image_backbone": "tiny_cnn", "audio_encoder": "clap", "epochs": 3, "loss": "cosine"}),
    ("seed", [], {"image_backbone": "resnet18", "image_pretrained": "imagenet", "audio_encoder": "mlp",
                  "image_size": 224}),
])
def test_resolved_params_name_what_is_built(name, overrides, want):
    """``train.image_backbone`` is None (= the model's own) unless overridden; the parent run logs what is built."""
    from ciap_lib import pipeline

    exp = pipeline.load_experiment(repo_root() / "experiments" / f"{name}.yaml", overrides,
                                   check_paths=False)
    got = pipeline.resolved_params(exp)
    assert {k: got[k] for k in want} == want
    assert None not in got.values()


# ---------------------------------------------------------------------------------- rerunning a logged run
def _logged_pipeline(uri: str, data_root, commit: str, fingerprint: str, tmp_path, name: str = "logged") -> str:
    """A parent run the way the pipeline logs one (experiment.yaml artifact, git commit) and a nested run that
    recorded ``fingerprint`` for the train split at ``commit``."""
    import yaml

    from ciap_lib import pipeline

    exp = pipeline.load_experiment(repo_root() / "experiments" / "default.yaml",
                                   [f"data.root={data_root}", "model=debug", "epochs=2", "warmup_epochs=1",
                                    f"run_name={name}"])
    exp.train["run_name"] = exp.run_name  # as run_pipeline does
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
    parent = tracking.start_pipeline_run(name, exp.to_dict(), tracking_uri=uri, experiment_name="t-rerun",
                                         tags={"git_commit": commit})
    tracking.log_artifact(tmp_path / "experiment.yaml", run_id=parent)
    with tracking.notebook_run("02_training", parent_run_id=parent, tracking_uri=uri, experiment_name="t-rerun",
                               tags={"git_commit": commit}):
        tracking.set_tags({"data_fingerprint.train": fingerprint})
    tracking.end_run(parent)
    return parent


def test_experiment_from_run_reads_back_what_ran(store, dataset, tmp_path):
    from ciap_lib import pipeline

    uri, _ = store
    parent = _logged_pipeline(uri, dataset, "a" * 40, dataset_fingerprint(dataset / "train"), tmp_path)
    exp, logged = pipeline.experiment_from_run(parent, ["epochs=5", "generation.duration=3.0"], tracking_uri=uri)
    assert logged.run_id == parent and logged.run_name == "logged" and logged.experiment_name == "t-rerun"
    assert exp.train["epochs"] == 5 and exp.train["model"] == "debug" and exp.generation["duration"] == 3.0
    assert exp.data["root"] == str(dataset) and exp.train["data"] == str(dataset)
    assert exp.run_name == ""  # a fresh name, not the logged run's
    assert parent in exp.source
    assert logged.data_fingerprints == {"train": {"02_training": dataset_fingerprint(dataset / "train")}}
    assert pipeline.rerun_warnings(logged, exp, git_commit="a" * 40) == []  # same commit, same data
    assert logged.git_commits == {"pipeline": "a" * 40, "02_training": "a" * 40}
    # a nested run's id means its pipeline run
    child = tracking.find_notebook_run(parent, "02_training", uri)
    assert pipeline.experiment_from_run(child, tracking_uri=uri)[1].run_id == parent
    # bad ids are errors naming them
    with pytest.raises(pipeline.ConfigError, match="no MLflow run 'nope'"):
        pipeline.experiment_from_run("nope", tracking_uri=uri)
    with tracking.notebook_run("lonely", tracking_uri=uri, experiment_name="t-rerun") as r:
        pass
    with pytest.raises(pipeline.ConfigError, match="not a pipeline run"):
        pipeline.experiment_from_run(r.info.run_id, tracking_uri=uri)
    with pytest.raises(pipeline.ConfigError, match="-p train.epochs: expects int, got 'many'"):
        pipeline.experiment_from_run(parent, ["epochs=many"], tracking_uri=uri)


def test_rerun_warns_when_code_or_data_differ(store, dataset, tmp_path):
    from ciap_lib import pipeline

    uri, _ = store
    parent = _logged_pipeline(uri, dataset, "0" * 40, "0123456789abcdef", tmp_path, name="old")
    exp, logged = pipeline.experiment_from_run(parent, tracking_uri=uri)
    code, data = pipeline.rerun_warnings(logged, exp, git_commit="1" * 40)
    assert code.startswith("the code differs") and "0" * 40 in code and "1" * 40 in code
    assert f"git diff {'0' * 40} --stat" in code
    assert data.startswith("the data differs") and "0123456789abcdef" in data
    assert dataset_fingerprint(dataset / "train") in data and "train" in data
    # the data folder is gone today
    exp2, _ = pipeline.experiment_from_run(parent, [f"data.root={tmp_path / 'gone'}"], tracking_uri=uri)
    (msg,) = [m for m in pipeline.rerun_warnings(logged, exp2, git_commit="0" * 40) if "data" in m]
    assert "does not exist now" in msg and "notebook 01 rebuilds the synthetic set" in msg
    # committed then, uncommitted changes now: differs; uncommitted changes on both sides: may differ
    assert pipeline.rerun_warnings(logged, exp2, git_commit="0" * 40 + "-dirty")[0].startswith("the code differs")
    dirty = dataclasses.replace(logged, git_commits={"pipeline": "0" * 40 + "-dirty"})
    assert pipeline.rerun_warnings(dirty, exp, git_commit="0" * 40 + "-dirty")[0].startswith("the code may differ")
    unknown = dataclasses.replace(logged, git_commits={"pipeline": "unknown"})
    assert pipeline.rerun_warnings(unknown, exp, git_commit="0" * 40)[0].startswith("the code cannot be compared")
