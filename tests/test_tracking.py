"""ciap_lib.tracking against a real temporary SQLite MLflow store (no mocks): tracking URI resolution,
pipeline parent + nested notebook runs, MLflowCallback on a real (tiny) training run, figures, WAVs,
notebooks as .ipynb + HTML, dataset inputs with the data fingerprint as digest, run comparison."""
from __future__ import annotations

import io
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
    assert uri == f"sqlite:///{tracking.repo_root() / 'mlflow.db'}"
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
    assert tracking.list_artifacts(run.info.run_id, tracking_uri=uri) == ["checkpoint/last.pt"]


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
