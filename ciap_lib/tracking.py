"""MLflow tracking: the only module of ``ciap_lib`` that imports ``mlflow``.

* Backend: ``$MLFLOW_TRACKING_URI`` when set, else the SQLite file ``<repo root>/mlflow.db``
  (:func:`default_tracking_uri`). Artifacts of an experiment created here go next to the
  SQLite file, in ``mlartifacts/`` (so the UI started with that backend finds them).
* One parent run per pipeline (:func:`start_pipeline_run`), one nested run per notebook
  (:func:`start_notebook_run` / :func:`notebook_run`), found again by the tags
  ``mlflow.parentRunId`` + ``ciap.notebook`` (:func:`find_notebook_run`).
* Training reaches MLflow only through :class:`MLflowCallback` (a ``ciap_lib.callbacks.Callback``).

Every logging helper takes an optional ``run_id``; without it the active run is used.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from ciap_lib.paths import repo_root
from ciap_lib.callbacks import Callback

#: tag naming the notebook of a nested run
NOTEBOOK_TAG = "ciap.notebook"
#: tag marking a pipeline parent run
PIPELINE_TAG = "ciap.pipeline"
PARENT_TAG = "mlflow.parentRunId"
#: tag of a pipeline parent run started with ``--from-run``: the run it reran
FROM_RUN_TAG = "ciap.from_run"
DEFAULT_EXPERIMENT = "ciap"
#: experiment tag naming the kind of an experiment for the MLflow UI; ``custom_model_development`` is the UI's own
#: enum value for "model training" (the UI sets this tag when a user picks the kind).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: MLflow 3.17's UI picks the page of an experiment from its "GenAI | Model training" switch (the URL parameter
#: ``workflowType``, else the browser's localStorage, default GenAI), not from the tag above (checked in its
#: bundle: the tag lookup sits behind a feature flag that is on). So the links printed for users carry it.
UI_WORKFLOW_PARAM = "workflowType=machine_learning"
_MAX_PARAM_LEN = 6000



def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def _artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """Artifact root for a new experiment: ``<dir of the sqlite file>/mlartifacts/<name>``.

    None (MLflow's own default) for non-SQLite backends such as a tracking server.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///"):])
    if not db.is_absolute():
        db = Path.cwd() / db
    return (db.parent / "mlartifacts" / experiment_name).as_uri()


def setup(tracking_uri: str | None = None, experiment_name: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at ``tracking_uri`` ("" / None = default) and ensure the experiment exists.

    The experiment carries the tag ``mlflow.experimentKind = custom_model_development`` (set at creation, and
    added to an existing experiment that lacks it; a kind a user picked in the UI is kept), so the MLflow UI
    opens it on its runs table. Returns the experiment id.
    """
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is not None:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    else:
        try:
            exp_id = client.create_experiment(experiment_name,
                                              artifact_location=_artifact_location(uri, experiment_name),
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:  # created concurrently
            exp_id = client.get_experiment_by_name(experiment_name).experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def ui_base_url(tracking_uri: str | None = None, port: int = 5000) -> str:
    """Where the MLflow UI of ``tracking_uri`` is: the server itself for an http(s) tracking URI, else the
    ``mlflow ui --host 127.0.0.1 --port <port>`` the summary tells users to start."""
    uri = tracking_uri or default_tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{port}"


def experiment_ui_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs table, in the model-training view."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_WORKFLOW_PARAM}"


def compare_ui_url(base_url: str, run_ids: Sequence[str], experiment_id: str) -> str:
    """The MLflow UI comparison of ``run_ids`` (parameters and metrics side by side), in the model-training view."""
    from urllib.parse import quote

    runs = quote(json.dumps(list(run_ids), separators=(",", ":")))
    return (f"{base_url.rstrip('/')}/#/compare-runs?runs={runs}"
            f"&experiments={quote(json.dumps([str(experiment_id)]))}&{UI_WORKFLOW_PARAM}")


def client(tracking_uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri or mlflow.get_tracking_uri())


# ---------------------------------------------------------------------------------------------
# params / tags helpers
def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists/tuples become JSON strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        v = json.dumps([str(x) if isinstance(x, Path) else x for x in v])
    elif v is None:
        v = "None"
    return str(v)[:_MAX_PARAM_LEN]


def git_commit(root: Path | None = None) -> str:
    """``<sha>`` of HEAD, with ``-dirty`` when tracked files differ; ``"unknown"`` outside git."""
    root = root or repo_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_params(params: Mapping[str, Any], run_id: str | None = None, prefix: str = "") -> None:
    """Log a (nested) dict as flat params; keys already logged with the same value are skipped."""
    from mlflow.entities import Param

    run_id = run_id or _active_run_id()
    c = client()
    existing = c.get_run(run_id).data.params
    flat = {k: _param_value(v) for k, v in flatten(params, prefix).items()}
    new = [Param(k, v) for k, v in flat.items() if existing.get(k) != v]
    for i in range(0, len(new), 100):
        c.log_batch(run_id, params=new[i:i + 100])


def log_metrics(metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None,
                prefix: str = "") -> None:
    """Log finite numeric values of ``metrics`` (others are skipped) at ``step``."""
    import time

    from mlflow.entities import Metric

    run_id = run_id or _active_run_id()
    ts = int(time.time() * 1000)
    ms = []
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(f):
            ms.append(Metric(_metric_key(prefix + k), f, ts, step or 0))
    if ms:
        client().log_batch(run_id, metrics=ms)


def _metric_key(k: str) -> str:
    # MLflow accepts alphanumerics, _ - . space / ; "R@1" must be renamed.
    return k.replace("@", "_at_")


def set_tags(tags: Mapping[str, Any], run_id: str | None = None) -> None:
    run_id = run_id or _active_run_id()
    c = client()
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def _active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: pass run_id= or start one with tracking.start_notebook_run")
    return run.info.run_id


# ---------------------------------------------------------------------------------------------
# runs
def start_pipeline_run(run_name: str, params: Mapping[str, Any], tracking_uri: str | None = None,
                       experiment_name: str = DEFAULT_EXPERIMENT, tags: Mapping[str, Any] | None = None) -> str:
    """Create the parent run of a pipeline (not left active in this process); returns its id.

    ``params`` (nested dict = the whole experiment config) are logged flat, plus tags
    ``git_commit`` and ``ciap.pipeline``.
    """
    exp_id = setup(tracking_uri, experiment_name)
    c = client()
    run = c.create_run(exp_id, run_name=run_name,
                       tags={PIPELINE_TAG: "1", "git_commit": git_commit(), **{k: str(v) for k, v in (tags or {}).items()}})
    log_params(params, run_id=run.info.run_id)
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Mark ``run_id`` terminated with ``status`` ("FINISHED", "FAILED", "KILLED")."""
    client().set_terminated(run_id, status)


def start_notebook_run(notebook: str, parent_run_id: str = "", tracking_uri: str = "",
                       experiment_name: str = DEFAULT_EXPERIMENT, params: Mapping[str, Any] | None = None,
                       tags: Mapping[str, Any] | None = None) -> mlflow.ActiveRun:
    """Open (and make active) the nested run of ``notebook`` under ``parent_run_id``.

    With ``parent_run_id == ""`` (a notebook run by hand) a top-level run is opened instead.
    ``params`` are logged flat. The run carries tags ``ciap.notebook`` and ``git_commit``.
    """
    setup(tracking_uri, experiment_name)
    while mlflow.active_run() is not None:  # a rerun of the notebook's first cell
        mlflow.end_run()
    all_tags = {NOTEBOOK_TAG: notebook, "git_commit": git_commit(), **(tags or {})}
    run = mlflow.start_run(run_name=notebook, parent_run_id=parent_run_id or None, nested=bool(parent_run_id),
                           tags={k: str(v) for k, v in all_tags.items()})
    if params:
        log_params(params)
    return run


def end_notebook_run(status: str = "FINISHED") -> None:
    """End the active notebook run."""
    mlflow.end_run(status=status)


@contextlib.contextmanager
def notebook_run(notebook: str, **kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """Context-manager form of :func:`start_notebook_run`; FAILED on exception."""
    run = start_notebook_run(notebook, **kwargs)
    try:
        yield run
    except BaseException:
        end_notebook_run("FAILED")
        raise
    end_notebook_run("FINISHED")


def find_notebook_run(parent_run_id: str, notebook: str, tracking_uri: str | None = None) -> str | None:
    """The id of the latest nested run of ``notebook`` under ``parent_run_id`` (None if none)."""
    c = client(tracking_uri)
    parent = c.get_run(parent_run_id)
    runs = c.search_runs([parent.info.experiment_id],
                         filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{NOTEBOOK_TAG}` = '{notebook}'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def child_runs(parent_run_id: str, tracking_uri: str | None = None) -> list:
    """All nested runs of ``parent_run_id`` (``mlflow.entities.Run``), oldest first."""
    c = client(tracking_uri)
    parent = c.get_run(parent_run_id)
    return c.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                         order_by=["attributes.start_time ASC"])


@dataclasses.dataclass
class LoggedPipelineRun:
    """What a pipeline parent run recorded, for rerunning it (:func:`logged_pipeline_run`).

    ``experiment_yaml``: the text of its ``experiment.yaml`` artifact (the validated experiment as run);
    ``git_commits``: ``{"pipeline" or notebook name: git_commit tag}``; ``data_fingerprints``:
    ``{split: {notebook: data_fingerprint.<split> tag}}`` from its nested runs."""

    run_id: str
    run_name: str
    experiment_name: str
    experiment_yaml: str
    git_commits: dict[str, str]
    data_fingerprints: dict[str, dict[str, str]]


def logged_pipeline_run(run_id: str, tracking_uri: str | None = None) -> LoggedPipelineRun:
    """Read back the pipeline run ``run_id`` (a notebook's nested run id means its pipeline run).

    LookupError naming the run and the store when there is no such run, when it is not a pipeline run, or
    when it has no ``experiment.yaml`` artifact.
    """
    uri = tracking_uri or default_tracking_uri()
    c = client(uri)
    try:
        run = c.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise LookupError(f"no MLflow run {run_id!r} in {uri}") from e
    parent_id = run.data.tags.get(PARENT_TAG)
    if parent_id and NOTEBOOK_TAG in run.data.tags:  # a notebook's nested run: rerun its pipeline
        run = c.get_run(parent_id)
    rid = run.info.run_id
    if run.data.tags.get(PIPELINE_TAG) != "1":
        raise LookupError(f"MLflow run {rid} ({run.info.run_name}) is not a pipeline run "
                          f"(no tag {PIPELINE_TAG}; pipeline runs are made by `python -m ciap_lib run`)")
    try:
        text = read_artifact_text(rid, "experiment.yaml", uri)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise LookupError(f"MLflow run {rid} ({run.info.run_name}) has no experiment.yaml artifact "
                          f"to rerun: {e}") from e
    commits = {"pipeline": run.data.tags.get("git_commit", "")}
    fingerprints: dict[str, dict[str, str]] = {}
    for child in child_runs(rid, uri):
        name = child.data.tags.get(NOTEBOOK_TAG, child.info.run_name)
        if child.data.tags.get("git_commit"):
            commits[name] = child.data.tags["git_commit"]
        for k, v in child.data.tags.items():
            if k.startswith("data_fingerprint."):
                fingerprints.setdefault(k[len("data_fingerprint."):], {})[name] = v
    exp = c.get_experiment(run.info.experiment_id)
    return LoggedPipelineRun(run_id=rid, run_name=run.info.run_name, experiment_name=exp.name,
                             experiment_yaml=text, git_commits=commits, data_fingerprints=fingerprints)


def read_artifact_text(run_id: str, artifact_path: str, tracking_uri: str | None = None) -> str:
    """The text of one artifact file of ``run_id`` (downloaded to a temporary folder, without a progress bar)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp,
                                                        tracking_uri=tracking_uri or mlflow.get_tracking_uri())
            return Path(local).read_text(encoding="utf-8")
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def run_metrics(run_id: str, tracking_uri: str | None = None) -> dict[str, float]:
    """The latest value of every metric of ``run_id``."""
    return dict(client(tracking_uri).get_run(run_id).data.metrics)


# ---------------------------------------------------------------------------------------------
# artifacts
def log_figure(fig, artifact_file: str, run_id: str | None = None) -> None:
    """Log a matplotlib Figure as ``artifact_file`` (e.g. ``figures/loss.png``)."""
    if run_id is None:
        mlflow.log_figure(fig, artifact_file)
    else:
        client().log_figure(run_id, fig, artifact_file)


def log_artifact(path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Log a local file (or a folder, recursively) into the run."""
    path = Path(path)
    run_id = run_id or _active_run_id()
    if path.is_dir():
        client().log_artifacts(run_id, str(path), artifact_path)
    else:
        client().log_artifact(run_id, str(path), artifact_path)


def log_wav(waveform: np.ndarray, sample_rate: int, artifact_file: str, run_id: str | None = None) -> None:
    """Write ``waveform`` ((T,) or (C,T) float in [-1, 1]) as a 16-bit WAV and log it as ``artifact_file``.

    ``artifact_file`` like ``wavs/cat.wav``; the MLflow UI plays it.
    """
    import soundfile as sf

    wav = np.asarray(waveform, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.T  # soundfile wants (T, C)
    elif wav.ndim != 1:
        raise ValueError(f"log_wav: waveform must be (T,) or (C,T), got shape {wav.shape}")
    art = Path(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / art.name
        sf.write(str(p), np.clip(wav, -1.0, 1.0), int(sample_rate), subtype="PCM_16")
        log_artifact(p, str(art.parent) if str(art.parent) != "." else None, run_id=run_id)


def notebook_to_html(ipynb: str | Path, html: str | Path | None = None) -> Path:
    """Convert an executed notebook to a standalone HTML file (next to it by default)."""
    import nbformat
    from nbconvert import HTMLExporter

    ipynb = Path(ipynb)
    html = Path(html) if html else ipynb.with_suffix(".html")
    nb = nbformat.read(str(ipynb), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    html.write_text(body, encoding="utf-8")
    return html


def log_notebook(ipynb: str | Path, run_id: str | None = None, artifact_path: str = "notebooks") -> Path:
    """Log an executed notebook both as ``.ipynb`` and as HTML (the UI previews HTML, not notebooks).

    Returns the HTML path written next to the notebook.
    """
    html = notebook_to_html(ipynb)
    log_artifact(ipynb, artifact_path, run_id=run_id)
    log_artifact(html, artifact_path, run_id=run_id)
    return html


def list_artifacts(run_id: str, path: str | None = None, tracking_uri: str | None = None) -> list[str]:
    """All artifact file paths of a run (recursive), e.g. ``["figures/loss.png", ...]``."""
    c = client(tracking_uri)
    out: list[str] = []
    stack = [path]
    while stack:
        for f in c.list_artifacts(run_id, stack.pop()):
            (stack.append(f.path) if f.is_dir else out.append(f.path))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# data
def log_dataset(root: str | Path, split: str, pairs: Sequence[Any] | None = None, context: str | None = None,
                run_id: str | None = None) -> str:
    """``mlflow.log_input`` the split ``<root>/<split>`` so its digest is part of the run.

    The dataset is a table of (image, audio, label) paths relative to the split folder; its digest
    is the data fingerprint (``ciap_lib.data.dataset_fingerprint``: names, sizes and mtimes/contents),
    also set as tag ``data_fingerprint.<split>``. ``pairs`` (``data.Pair`` list) defaults to
    ``scan_pairs(<root>/<split>, skip_bad=True)``. Returns the fingerprint.
    """
    import pandas as pd

    from ciap_lib.pairs import dataset_fingerprint, scan_pairs

    split_dir = Path(root) / split
    if pairs is None:
        pairs, _ = scan_pairs(split_dir, skip_bad=True)

    def rel(p: Path) -> str:
        p = Path(p)
        try:
            return str(p.resolve().relative_to(split_dir.resolve()))
        except ValueError:
            return str(p)

    df = pd.DataFrame({"image": [rel(p.image) for p in pairs], "audio": [rel(p.audio) for p in pairs],
                       "label": [p.label if p.label is not None else "" for p in pairs]})
    fp = dataset_fingerprint(split_dir)
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways" (both local)
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(df, source=str(split_dir.resolve()), name=f"{Path(root).name}/{split}",
                                     digest=fp[:32])
    ctx = context or split
    active = mlflow.active_run()
    if run_id is None or (active is not None and active.info.run_id == run_id):
        mlflow.log_input(ds, context=ctx)
        run_id = _active_run_id()
    else:
        from mlflow.entities import DatasetInput, InputTag

        client().log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(),
                                                           tags=[InputTag("mlflow.data.context", ctx)])])
    set_tags({f"data_fingerprint.{split}": fp}, run_id=run_id)
    return fp


# ---------------------------------------------------------------------------------------------
# comparison
def compare_runs(experiment_name: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None,
                 notebook: str | None = "02_training", max_results: int = 50):
    """Earlier runs as a pandas DataFrame (``mlflow.search_runs``), newest first.

    ``notebook`` filters nested runs of that notebook (None = every run). Columns: run_id,
    run_name, start_time, status, ``params.*``, ``metrics.*``, ``tags.*``.
    """
    import pandas as pd

    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    flt = f"tags.`{NOTEBOOK_TAG}` = '{notebook}'" if notebook else ""
    df = mlflow.search_runs(experiment_names=[experiment_name], filter_string=flt, max_results=max_results,
                            order_by=["attributes.start_time DESC"])
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    if len(df) and f"tags.{PARENT_TAG}" in df.columns:  # nested runs: show the pipeline run's name
        c = client(uri)
        names: dict[str, str] = {}
        for pid in df[f"tags.{PARENT_TAG}"].dropna().unique():
            try:
                names[pid] = c.get_run(pid).info.run_name
            except mlflow.exceptions.MlflowException:
                names[pid] = ""
        df.insert(1, "pipeline_run", df[f"tags.{PARENT_TAG}"].map(names))
    if "tags.mlflow.runName" in df.columns:
        df.insert(1, "run_name", df["tags.mlflow.runName"])
    return df


# ---------------------------------------------------------------------------------------------
# training callback
class MLflowCallback(Callback):
    """Logs a training run to MLflow: all TrainConfig params, per-epoch metrics, the checkpoint (``last.pt`` and
    ``best.pt``, with ``best_epoch`` and ``best_<select_metric>`` metrics).

    ``run_id`` None = the active run (a notebook's nested run). ``log_checkpoint``: "final"
    (only the last checkpoint, at train end), "every" (each epoch) or "none".
    Metric names with ``@`` are stored with ``_at_`` (``i2a_R@1`` -> ``i2a_R_at_1``): MLflow
    rejects ``@`` in keys.
    """

    def __init__(self, run_id: str | None = None, log_checkpoint: str = "final",
                 checkpoint_artifact_path: str = "checkpoint") -> None:
        if log_checkpoint not in ("final", "every", "none"):
            raise ValueError(f"MLflowCallback: log_checkpoint must be 'final', 'every' or 'none', got {log_checkpoint!r}")
        self.run_id = run_id
        self.log_checkpoint = log_checkpoint
        self.checkpoint_artifact_path = checkpoint_artifact_path
        self.last_checkpoint: Path | None = None

    def _rid(self) -> str:
        if self.run_id is None:
            self.run_id = _active_run_id()
        return self.run_id

    def on_train_start(self, cfg, model) -> None:
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
        log_params(d, run_id=self._rid())
        if hasattr(model, "summary"):  # the resolved image side: backbone, weights digest, head, preprocessing
            log_params(model.summary(), run_id=self._rid(), prefix="model.")
        tags = {}
        if model is not None:
            n = sum(p.numel() for p in model.parameters())
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            tags = {"model.n_params": n, "model.n_trainable": n_train}
        set_tags(tags, run_id=self._rid())

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float], checkpoint: Path | None = None) -> None:
        log_metrics(metrics, step=int(epoch), run_id=self._rid())
        if checkpoint is not None:
            self.last_checkpoint = Path(checkpoint)
            if self.log_checkpoint == "every":
                log_artifact(checkpoint, f"{self.checkpoint_artifact_path}/epoch_{int(epoch):03d}", run_id=self._rid())

    def on_train_end(self, result) -> None:
        final = {f"final_{k}": v for k, v in (getattr(result, "metrics", None) or {}).items()}
        extra = getattr(result, "extra", None) or {}
        best = extra.get("best") or {}
        if best.get("epoch") is not None:  # best.pt: its epoch and the value of the metric that chose it
            final.update({"best_epoch": best["epoch"], f"best_{best['metric']}": best["value"]})
            set_tags({"select_metric": best["metric"], "stopped_early": bool(extra.get("stopped_early"))},
                     run_id=self._rid())
        log_metrics(final, run_id=self._rid())
        ckpt = getattr(result, "checkpoint", None) or self.last_checkpoint
        if self.log_checkpoint != "none" and ckpt is not None and Path(ckpt).exists():
            log_artifact(ckpt, self.checkpoint_artifact_path, run_id=self._rid())
            if best.get("path") and Path(best["path"]).exists():
                log_artifact(best["path"], self.checkpoint_artifact_path, run_id=self._rid())


# ---------------------------------------------------------------------------------------------
# tables
def log_table(table: Any, artifact_file: str, run_id: str | None = None) -> None:
    """Log a table (a pandas DataFrame or a ``{column: [values]}`` dict) as ``artifact_file`` (``.json``), with
    ``mlflow.log_table``: the MLflow UI shows it in the run's artifacts and its evaluation view."""
    if not artifact_file.endswith(".json"):
        raise ValueError(f"log_table: artifact_file must end in .json (mlflow.log_table), got {artifact_file!r}")
    mlflow.log_table(table, artifact_file, run_id=run_id or _active_run_id())
