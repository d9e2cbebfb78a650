"""The notebook pipeline: ``python -m ciap_lib run experiments/<name>.yaml [-p key=value ...]``.

1. Load the experiment YAML, apply ``-p`` overrides and validate **every** parameter
   (unknown key, wrong type, missing data folder, unknown kernel) before any heavy work.
2. Open one MLflow parent run (all parameters, git commit).
3. Execute ``notebooks/01..04`` in order through papermill with the ``ciap`` kernel, one at a
   time (SQLite takes no parallel writers), passing the parent run id and each notebook's section.
4. Log each executed notebook (``.ipynb`` + HTML) into its nested run and the parent run, and copy the
   headline figures of the nested runs onto the parent run (:data:`HEADLINE_METRICS`), so MLflow's
   "compare runs" on parent runs shows them side by side.

``--from-run <run id>`` reruns a logged pipeline run from its ``experiment.yaml`` artifact
(:func:`experiment_from_run`, :func:`rerun_warnings`).

The parameter convention is documented in ``notebooks/README.md``.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import datetime as _dt
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from ciap_lib.paths import repo_root

NOTEBOOKS: tuple[str, ...] = ("01_data_exploration", "02_training", "03_retrieval_evaluation", "04_generation")
KERNEL_NAME = "ciap"
TOP_LEVEL = {"name": "default", "experiment_name": "ciap", "run_name": ""}

#: Built-in schema of each dict section (key -> default; the default's type is the key's type,
#: None = any type). Keys found in the notebooks' ``parameters`` cells are added (see section_schema). The
#: ``generation`` section also holds every field of ``ciap_lib.bridge.GenerationParams`` (its defaults and types).
SECTIONS: dict[str, dict[str, Any]] = {
    "data": {"root": "data/synthetic", "synthetic": True, "n_train": 384, "n_val": 96, "seed": 0,
             "image_size": 96, "seconds": 1.5, "held_out_conditions": False, "n_examples": 4},
    "evaluate": {"split": "val", "top_k": 5, "heatmap_size": 32, "max_points": 1000, "explore_index": 0,
                 "batch_size": 64},
    "generation": {"images": [], "n_images": 2, "audioldm": "audioldm-s-full"},
}
#: which notebook's ``parameters`` cell may extend which section's schema
SECTION_NOTEBOOK = {"data": "01_data_exploration", "evaluate": "03_retrieval_evaluation",
                    "generation": "04_generation"}
#: notebook -> the sections it receives as parameters
NOTEBOOK_SECTIONS: dict[str, tuple[str, ...]] = {
    "01_data_exploration": ("data",),
    "02_training": ("data", "train"),
    "03_retrieval_evaluation": ("data", "evaluate"),
    "04_generation": ("data", "generation"),
}
#: the headline figures copied from the nested runs onto the parent run (run_pipeline does it after each
#: notebook): (notebook, name on the parent run) -> the nested run's metrics it is taken from (the first logged)
HEADLINE_METRICS: dict[tuple[str, str], tuple[str, ...]] = {
    ("02_training", "val_i2a_R_at_1"): ("final_i2a_R_at_1",),
    ("02_training", "val_a2i_R_at_1"): ("final_a2i_R_at_1",),
    ("02_training", "val_i2a_class_R_at_1"): ("final_i2a_class_R_at_1",),
    ("02_training", "val_a2i_class_R_at_1"): ("final_a2i_class_R_at_1",),
    ("03_retrieval_evaluation", "clap_mean_cosine"): ("clap_mean_cosine",),
    # 04: diffusion's figures (the evaluation of val pairs, or images of the user's own); never the retrieval
    # baseline's, which is not generation
    ("04_generation", "clap_score"): ("diffusion.clap_score",),
    ("04_generation", "seconds_per_clip"): ("diffusion.seconds_per_clip",),
}
#: TrainConfig fields logged on the parent run as ``resolved.<key>`` (their value in force, see resolved_params)
RESOLVED_TRAIN_KEYS = ("loss", "epochs", "batch_size", "lr")


class ConfigError(ValueError):
    """A bad experiment parameter; the message names it."""


class PipelineError(RuntimeError):
    """A notebook failed; the message holds the failing cell's error and the executed notebook's path."""

    def __init__(self, message: str, notebook: str, executed_path: Path) -> None:
        super().__init__(message)
        self.notebook = notebook
        self.executed_path = executed_path


@dataclasses.dataclass
class Experiment:
    """A validated experiment: plain dict sections, ready to be passed to notebooks."""

    source: str
    name: str
    experiment_name: str
    run_name: str
    data: dict[str, Any]
    train: dict[str, Any]
    evaluate: dict[str, Any]
    generation: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "experiment_name": self.experiment_name, "run_name": self.run_name,
                "data": self.data, "train": self.train, "evaluate": self.evaluate, "generation": self.generation}


@dataclasses.dataclass
class PipelineResult:
    run_name: str
    run_dir: Path
    parent_run_id: str
    tracking_uri: str
    checkpoint: Path
    executed: dict[str, Path]
    seconds: dict[str, float]
    wav_dir: Path



# ---------------------------------------------------------------------------------------------
# parsing and validation
def _train_hints() -> dict[str, Any]:
    from ciap_lib.config import TrainConfig

    return TrainConfig.hints()


def _notebook_defaults(notebook: str, var: str, notebooks_dir: Path) -> dict[str, Any]:
    """The literal dict default of ``var`` in ``notebook``'s parameters cell ({} if none/not literal)."""
    path = notebooks_dir / f"{notebook}.ipynb"
    if not path.exists():
        return {}
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            try:
                tree = ast.parse(src)
            except SyntaxError:
                return {}
            for node in tree.body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(isinstance(t, ast.Name) and t.id == var for t in targets):
                        try:
                            v = ast.literal_eval(node.value)
                        except ValueError:
                            return {}
                        return v if isinstance(v, dict) else {}
    return {}


def section_schema(section: str, notebooks_dir: Path | None = None) -> dict[str, tuple[Any, Any]]:
    """``{key: (default, type)}`` of a dict section: the built-in keys, ``GenerationParams``' fields for
    ``generation``, then the keys of the owning notebook's ``parameters`` cell (type of their default;
    ``Any`` for None)."""
    notebooks_dir = Path(notebooks_dir or repo_root() / "notebooks")
    schema: dict[str, tuple[Any, Any]] = {}
    if section == "generation":
        from ciap_lib.bridge.params import GenerationParams

        defaults = GenerationParams().to_dict()
        schema.update({k: (defaults[k], tp) for k, tp in GenerationParams.hints().items()})
    found = _notebook_defaults(SECTION_NOTEBOOK[section], section, notebooks_dir)
    for k, v in {**SECTIONS[section], **found}.items():
        schema.setdefault(k, (v, Any if v is None else type(v)))
    return schema


def _param_type(parts: list[str], notebooks_dir: Path | None) -> Any:
    """The type the parameter ``parts`` (``["train", "epochs"]``, ``["run_name"]``) takes; ConfigError if unknown."""
    key = ".".join(parts)
    if len(parts) == 1:
        if parts[0] in TOP_LEVEL:
            return str
        raise ConfigError(f"-p {key}: unknown parameter (use section.key: {', '.join(sorted(['train', *SECTIONS]))}, "
                          f"or one of {sorted(TOP_LEVEL)})")
    sec, name = parts
    if sec == "train":
        hints = _train_hints()
        if name not in hints:
            raise ConfigError(f"-p {key}: unknown parameter train.{name} (known: {', '.join(sorted(hints))})")
        return hints[name]
    if sec not in SECTIONS:
        raise ConfigError(f"-p {key}: unknown section {sec!r} (known: {', '.join(sorted(['train', *SECTIONS]))})")
    schema = section_schema(sec, notebooks_dir)
    if name not in schema:
        raise ConfigError(f"-p {key}: unknown parameter {key} (known: {', '.join(sorted(schema))})")
    return schema[name][1]


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], notebooks_dir: Path | None = None
                    ) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys; a bare TrainConfig field means ``train.<key>``). Each value is
    parsed as the type its parameter takes (``ciap_lib.config.parse_value``), so ``run_name=007`` stays a string."""
    from ciap_lib.config import parse_value

    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"-p {item!r}: expected key=value (e.g. -p train.epochs=5)")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if len(parts) == 1 and parts[0] not in TOP_LEVEL and parts[0] in _train_hints():
            parts = ["train", parts[0]]
        if len(parts) > 2:
            raise ConfigError(f"-p {key}: too many dots (expected section.key)")
        tp = _param_type(parts, notebooks_dir)
        try:
            value = parse_value(text, tp, ".".join(parts))
        except ValueError as e:
            raise ConfigError(f"-p {e}") from None
        if len(parts) == 1:
            raw[parts[0]] = value
        else:
            sec = raw.setdefault(parts[0], {})
            if not isinstance(sec, dict):
                raise ConfigError(f"-p {key}: {parts[0]} is not a section")
            sec[parts[1]] = value
    return raw


def _resolve(p: str | Path) -> Path:
    pp = Path(p)
    return pp if pp.is_absolute() else repo_root() / pp


def _audioldm_problems(cfg: Any) -> list[str]:
    """With ``audio_encoder: clap`` the image side trains against the frozen CLAP audio tower inside the AudioLDM
    checkpoint ``train.audioldm``: it must be there (``--check`` says so before anything heavy starts)."""
    from ciap_lib.bridge.checkpoint_io import download_hint, resolve_checkpoint
    from ciap_lib.workflows import resolved_audio_encoder

    try:
        if resolved_audio_encoder(cfg) != "clap":
            return []
    except ValueError:  # an unknown model: train.check reports it
        return []
    try:
        path, name = resolve_checkpoint(cfg.audioldm)
    except ValueError as e:
        return [f"train.{e}"]
    if _resolve(path).is_file():
        return []
    return [f"train.audioldm: AudioLDM checkpoint not found: {path} (audio_encoder 'clap' trains the image side "
            f"against its frozen CLAP audio tower). " + download_hint(path, name)
            + "; or set train.audioldm to the file's path"]


def _section_problems(sections: dict[str, dict[str, Any]], train: dict[str, Any], check_paths: bool) -> list[str]:
    """Value problems of the data / evaluate / generation sections, each ``"<section>.<key>: <problem>"``."""
    from ciap_lib.bridge.params import GenerationParams
    from ciap_lib.synthetic import check_params

    out: list[str] = []
    data, ev, gen = sections["data"], sections["evaluate"], sections["generation"]
    if data["synthetic"]:
        out += [f"data.{p}" for p in check_params(data["n_train"], data["n_val"], data["image_size"], data["seconds"])]
    if data["n_examples"] < 0:
        out.append(f"data.n_examples: must be >= 0, got {data['n_examples']}")
    if ev["split"] not in (train.get("train_split"), train.get("val_split")):
        out.append(f"evaluate.split: must be train.train_split or train.val_split, got {ev['split']!r}")
    for key, low in (("top_k", 1), ("heatmap_size", 1), ("max_points", 2), ("explore_index", 0), ("batch_size", 1)):
        if ev[key] < low:
            out.append(f"evaluate.{key}: must be >= {low}, got {ev[key]!r}")
    params = GenerationParams.from_dict({k: gen[k] for k in GenerationParams.hints()}, prefix="generation.")
    out += [f"generation.{k}: {msg}" for k, msg in params.problems()]
    if gen["n_images"] < 0:
        out.append(f"generation.n_images: must be >= 0, got {gen['n_images']}")
    if check_paths:
        root = Path(data["root"])
        if not data["synthetic"]:
            if not _resolve(root).is_dir():
                out.append(f"data.root: folder {root} does not exist (set data.synthetic=true to build the "
                           "synthetic set there)")
            else:
                for split_key in ("train_split", "val_split"):
                    split = train.get(split_key)
                    if split and not (_resolve(root) / split).is_dir():
                        out.append(f"data.root: split folder {root / split} does not exist "
                                   f"(train.{split_key}={split!r})")
        for p in gen.get("images") or []:
            if not _resolve(p).is_file():
                out.append(f"generation.images: file {p} does not exist")
        if not any(k == "mix" for k, _ in params.problems()):  # unparseable mix entries are reported above
            from ciap_lib.bridge.guidance import clip_paths

            for what, p in clip_paths(params.negative, params.mix):
                if not _resolve(p).is_file():
                    out.append(f"generation.{what}: audio file {p} does not exist")
    return out


def validate(raw: Mapping[str, Any], source: str = "<config>", notebooks_dir: Path | None = None,
             check_paths: bool = True) -> Experiment:
    """Check every parameter, its type and its value, before any heavy work; one ConfigError lists every
    problem, each naming the parameter, the rejected value and what is allowed. ``check_paths``: the data
    folders, the generation images and pretrained weights asked for must exist."""
    from ciap_lib.config import TrainConfig, check_type

    notebooks_dir = Path(notebooks_dir or repo_root() / "notebooks")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping at top level, got {type(raw).__name__}")
    known = set(TOP_LEVEL) | set(SECTIONS) | {"train"}
    for k in raw:
        if k not in known:
            raise ConfigError(f"{source}: unknown parameter {k!r} (known: {', '.join(sorted(known))})")
    try:
        top = {k: check_type(k, raw.get(k, d), str) for k, d in TOP_LEVEL.items()}
        sections: dict[str, dict[str, Any]] = {}
        for sec in SECTIONS:
            given = raw.get(sec) or {}
            if not isinstance(given, Mapping):
                raise ConfigError(f"{source}: {sec} must be a mapping, got {type(given).__name__}")
            schema = section_schema(sec, notebooks_dir)
            for k in given:
                if k not in schema:
                    raise ConfigError(f"{source}: unknown parameter {sec}.{k} (known: {', '.join(sorted(schema))})")
            sections[sec] = {k: check_type(f"{sec}.{k}", given.get(k, d), tp) for k, (d, tp) in schema.items()}
        train = dict(raw.get("train") or {})
        if "data" in train:
            raise ConfigError(f"{source}: train.data: set the dataset with data.root instead")
        train["data"] = sections["data"]["root"]
        cfg = TrainConfig.from_dict(train, prefix="train.")
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    problems = []
    try:
        cfg.check(prefix="train.", check_paths=False, check_weights=check_paths)
    except ValueError as e:
        problems += str(e).splitlines()
    if check_paths:
        problems += _audioldm_problems(cfg)
    train = cfg.to_dict()
    problems += _section_problems(sections, train, check_paths)
    if top["run_name"] and not re.fullmatch(r"[A-Za-z0-9._-]+", top["run_name"]):
        problems.append(f"run_name: {top['run_name']!r} may only hold letters, digits, '.', '_', '-'")
    if problems:
        raise ConfigError(f"{source}: " + problems[0] if len(problems) == 1 else
                          f"{source}: {len(problems)} bad parameters:\n" + "\n".join(f"  {p}" for p in problems))
    return Experiment(source=source, name=top["name"], experiment_name=top["experiment_name"],
                      run_name=top["run_name"], data=sections["data"], train=train, evaluate=sections["evaluate"],
                      generation=sections["generation"])


def load_experiment(path: str | Path, overrides: Sequence[str] = (), notebooks_dir: Path | None = None,
                    check_paths: bool = True) -> Experiment:
    """Read ``experiments/<name>.yaml``, apply ``-p`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    raw = apply_overrides(raw, overrides, notebooks_dir)
    return validate(raw, source=str(path), notebooks_dir=notebooks_dir, check_paths=check_paths)


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    """ConfigError unless a Jupyter kernel named ``kernel_name`` is registered."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as e:
        raise ConfigError(f"kernel_name: no Jupyter kernel named {kernel_name!r}; register this environment with "
                          f"`.venv/bin/python -m ipykernel install --sys-prefix --name {kernel_name}` "
                          "(make setup does it)") from e


# ---------------------------------------------------------------------------------------------
# rerunning a logged run (python -m ciap_lib run --from-run <run id>)
def experiment_from_run(run_id: str, overrides: Sequence[str] = (), tracking_uri: str | None = None,
                        notebooks_dir: Path | None = None, check_paths: bool = True):
    """The experiment a logged pipeline run ran (its ``experiment.yaml`` artifact), with ``overrides`` applied
    and validated like an experiment file. Returns ``(Experiment, tracking.LoggedPipelineRun)``.

    The logged run's name and the keys the pipeline derives (``train.data`` = ``data.root``,
    ``train.run_name`` = ``run_name``) are dropped, so the rerun gets a fresh run name (or ``-p run_name=...``).
    A run id that is not in the store, or not a pipeline run, is a ConfigError naming it.
    """
    from ciap_lib import tracking

    try:
        logged = tracking.logged_pipeline_run(run_id, tracking_uri)
    except LookupError as e:
        raise ConfigError(f"--from-run: {e}") from e
    source = f"MLflow run {logged.run_id} ({logged.run_name}) experiment.yaml"
    try:
        raw = yaml.safe_load(logged.experiment_yaml) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at top level, got {type(raw).__name__}")
    raw.pop("run_name", None)
    if isinstance(raw.get("train"), dict):
        raw["train"] = {k: v for k, v in raw["train"].items() if k not in ("data", "run_name")}
    raw = apply_overrides(raw, overrides)
    exp = validate(raw, source=source, notebooks_dir=notebooks_dir, check_paths=check_paths)
    return exp, logged


def rerun_warnings(logged: Any, exp: Experiment, git_commit: str | None = None) -> list[str]:
    """What differs between the logged run ``logged`` (``tracking.LoggedPipelineRun``) and a rerun of ``exp``
    today: the git commit recorded on its runs vs this checkout's (``git_commit``, default HEAD), and each
    split's ``data_fingerprint.<split>`` recorded on its nested runs vs the fingerprint of ``exp``'s data now.
    One plain sentence per difference; [] when nothing differs."""
    from ciap_lib import tracking
    from ciap_lib.pairs import dataset_fingerprint

    now = git_commit or tracking.git_commit()
    where = f"run {logged.run_id} ({logged.run_name})"
    out: list[str] = []
    recorded = sorted({c for c in logged.git_commits.values() if c})
    if not recorded or "unknown" in recorded or now == "unknown":
        out.append(f"the code cannot be compared: {where} recorded git commit {', '.join(recorded) or 'none'}, "
                   f"this checkout is at {now}")
    elif recorded != [now]:
        shas = " ".join(sorted({c.removesuffix('-dirty') for c in recorded}))
        out.append(f"the code differs: {where} ran at git commit {', '.join(recorded)}, this checkout is at {now} "
                   f"(see `git diff {shas} --stat`)")
    elif now.endswith("-dirty"):
        out.append(f"the code may differ: {where} and this checkout both have uncommitted changes on {now}")
    root = Path(exp.data["root"])
    root_abs = root if root.is_absolute() else repo_root() / root
    for split, by_notebook in sorted(logged.data_fingerprints.items()):
        then = sorted(set(by_notebook.values()))
        folder = root_abs / split
        if not folder.is_dir():
            rebuilt = " (notebook 01 rebuilds the synthetic set there)" if exp.data.get("synthetic") else ""
            out.append(f"the data differs: {root / split} does not exist now; {where} read data with fingerprint "
                       f"{', '.join(then)}{rebuilt}")
            continue
        fp = dataset_fingerprint(folder)
        if any(f != fp for f in then):
            out.append(f"the data differs: {root / split} has fingerprint {fp} now, {where} recorded "
                       f"{', '.join(then)} (files added, removed or modified since)")
    return out


# ---------------------------------------------------------------------------------------------
# running
def kernel_manager_config(kernel_name: str = KERNEL_NAME):
    """traitlets Config for the kernel managers papermill starts (passed through papermill to nbclient).

    Without it ipykernel warns on every kernel start "Kernel is running over TCP without encryption"
    (ipykernel/kernelapp.py). Kernels whose kernelspec declares CurveZMQ support (``metadata.supported_encryption``,
    written by ``ipykernel install`` since ipykernel 7) get manager-provisioned CurveZMQ keys
    (jupyter_client's ``KernelManager.transport_encryption = "auto"``); others use the IPC transport (local
    socket files) instead of TCP. Either way the warning no longer applies."""
    import zmq
    from jupyter_client.kernelspec import KernelSpecManager
    from traitlets.config import Config

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    declared = (spec.metadata or {}).get("supported_encryption") or []
    declared = [declared] if isinstance(declared, str) else list(declared)
    if zmq.has("curve") and "curve" in [str(d).strip().lower() for d in declared]:
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    return Config({"KernelManager": {"transport": "ipc"}})


def resolved_params(exp: Experiment) -> dict[str, Any]:
    """The key parameters as they take effect: the named model config with the ``train`` overrides applied
    (``ciap_lib.models.get_model_config(model, **overrides)``; e.g. ``image_backbone`` is the backbone
    actually built, where ``train.image_backbone`` says ``None`` = the model's own) plus
    :data:`RESOLVED_TRAIN_KEYS`. Logged on the parent run as ``resolved.<key>``."""
    from ciap_lib.config import TrainConfig
    from ciap_lib.models import get_model_config

    cfg = TrainConfig.from_dict(exp.train)
    try:
        mc = get_model_config(cfg.model, **cfg.model_overrides())
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{exp.source}: train.model: {e}") from e
    out = {"model": cfg.model, "image_backbone": mc.image_backbone, "image_size": mc.image_size,
           "image_pretrained": mc.image_pretrained, "freeze_backbone": mc.freeze_backbone,
           "audio_encoder": mc.audio_encoder, "embed_dim": mc.embed_dim}
    out.update({k: getattr(cfg, k) for k in RESOLVED_TRAIN_KEYS})
    return out


def headline_metrics(parent_run_id: str, notebook: str, tracking_uri: str | None = None) -> dict[str, float]:
    """The :data:`HEADLINE_METRICS` of ``notebook``'s nested run under ``parent_run_id``, renamed for the
    parent run ({} when the notebook has no nested run or logged none of them)."""
    from ciap_lib import tracking

    wanted = {dst: srcs for (nb, dst), srcs in HEADLINE_METRICS.items() if nb == notebook}
    if not wanted:
        return {}
    child = tracking.find_notebook_run(parent_run_id, notebook, tracking_uri)
    if child is None:
        return {}
    metrics = tracking.run_metrics(child, tracking_uri)
    return {dst: next(metrics[s] for s in srcs if s in metrics) for dst, srcs in wanted.items()
            if any(s in metrics for s in srcs)}


def notebook_parameters(exp: Experiment, notebook: str, *, parent_run_id: str, tracking_uri: str,
                        run_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """The papermill parameters of ``notebook`` (common ones + its sections)."""
    params: dict[str, Any] = {
        "tracking_uri": tracking_uri, "experiment_name": exp.experiment_name, "parent_run_id": parent_run_id,
        "run_name": exp.run_name, "run_dir": str(run_dir), "checkpoint": str(checkpoint),
    }
    for sec in NOTEBOOK_SECTIONS.get(notebook, ()):
        params[sec] = copy.deepcopy(getattr(exp, sec))
    return params


def _rel(p: Path) -> Path:
    try:
        return p.resolve().relative_to(repo_root())
    except ValueError:
        return p


def _failure_message(notebook: str, executed: Path, err: Exception) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        tb = "\n".join(err.traceback[-8:]) if err.traceback else ""
        tb = re.sub(r"\x1b\[[0-9;]*m", "", tb)  # strip ANSI colours
        src = "\n".join("    " + line for line in (err.source or "").splitlines()[:12])
        return (f"notebook {notebook} failed in cell {err.cell_index} of the executed notebook "
                f"(0-based, execution count {err.exec_count}):\n"
                f"{src}\n{err.ename}: {err.evalue}\n{tb}\n"
                f"executed notebook: {executed}")
    return f"notebook {notebook} failed: {type(err).__name__}: {err}\nexecuted notebook: {executed}"


def run_pipeline(exp: Experiment, *, tracking_uri: str | None = None, notebooks: Sequence[str] = NOTEBOOKS,
                 notebooks_dir: Path | None = None, runs_dir: Path | None = None, kernel_name: str = KERNEL_NAME,
                 log_output: bool = False, echo: Callable[[str], None] = print,
                 from_run: str = "") -> PipelineResult:
    """Execute ``notebooks`` in order for the validated ``exp``; see the module docstring.

    ``from_run``: the id of the logged run this one reruns (tag ``ciap.from_run`` on the parent run).
    """
    import papermill as pm

    from ciap_lib import tracking

    root = repo_root()
    notebooks_dir = Path(notebooks_dir or root / "notebooks")
    runs_dir = Path(runs_dir or root / "experiments" / "runs")
    for nb in notebooks:
        if nb not in NOTEBOOKS:
            raise ConfigError(f"notebooks: unknown notebook {nb!r} (known: {', '.join(NOTEBOOKS)})")
        if not (notebooks_dir / f"{nb}.ipynb").is_file():
            raise ConfigError(f"notebooks: {notebooks_dir / (nb + '.ipynb')} does not exist")
    check_kernel(kernel_name)
    kernel_config = kernel_manager_config(kernel_name)
    resolved = resolved_params(exp)

    if not exp.run_name:
        exp.run_name = f"{exp.name}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    uri = tracking_uri or tracking.default_tracking_uri()
    run_dir = runs_dir / exp.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    # TrainConfig writes <ckpt_dir>/<run_name>/last.pt (and best.pt): 02 writes them, 03 and 04 read best.pt when
    # it is there (ciap_lib.checkpoint.pick_checkpoint).
    exp.train["run_name"] = exp.run_name
    checkpoint = Path(exp.train["ckpt_dir"]) / exp.run_name / "last.pt"
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False), encoding="utf-8")

    tags = {"ciap.experiment_file": exp.source, "ciap.run_dir": str(_rel(run_dir))}
    if from_run:
        tags[tracking.FROM_RUN_TAG] = from_run
    parent = tracking.start_pipeline_run(exp.run_name, {**exp.to_dict(), "resolved": resolved}, tracking_uri=uri,
                                         experiment_name=exp.experiment_name, tags=tags)
    tracking.log_artifact(run_dir / "experiment.yaml", run_id=parent)
    echo(f"[ciap run] {exp.run_name}: parent MLflow run {parent} ({uri})")

    env_backup = dict(os.environ)
    if not os.environ.get("TQDM_DISABLE"):
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    # Loading AudioLDM needs no network; offline, audioldm's import-time tokenizer lookup fails fast instead of
    # retrying the hub for minutes (set HF_HUB_OFFLINE=0 to allow downloads).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.pop("MLFLOW_RUN_ID", None)

    executed: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    status = "FAILED"
    try:
        for nb in notebooks:
            out = run_dir / f"{nb}.ipynb"
            params = notebook_parameters(exp, nb, parent_run_id=parent, tracking_uri=uri,
                                         run_dir=_rel(run_dir), checkpoint=checkpoint)
            echo(f"[ciap run] {nb} ...")
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(str(notebooks_dir / f"{nb}.ipynb"), str(out), parameters=params,
                                    kernel_name=kernel_name, cwd=str(root), progress_bar=False,
                                    log_output=log_output, config=kernel_config)
            except Exception as err:  # noqa: BLE001 - re-raised as PipelineError with context
                seconds[nb] = time.perf_counter() - t0
                _log_executed(tracking, parent, nb, out, failed=True)
                raise PipelineError(_failure_message(nb, _rel(out), err), nb, out) from err
            seconds[nb] = time.perf_counter() - t0
            executed[nb] = out
            _log_executed(tracking, parent, nb, out, failed=False)
            tracking.log_metrics(headline_metrics(parent, nb, uri), run_id=parent)
            echo(f"[ciap run] {nb} done in {seconds[nb]:.1f} s -> {_rel(out)}")
        status = "FINISHED"
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
        try:
            # "wall_seconds.*" sorts after the headline metrics: MLflow's comparison lists metrics alphabetically
            # and shows about seven rows before its grid must be scrolled
            tracking.log_metrics({f"wall_seconds.{k}": v for k, v in seconds.items()}, run_id=parent)
        finally:
            tracking.end_run(parent, status)
    return PipelineResult(run_name=exp.run_name, run_dir=run_dir, parent_run_id=parent, tracking_uri=uri,
                          checkpoint=checkpoint, executed=executed, seconds=seconds, wav_dir=run_dir / "wavs")


def _log_executed(tracking, parent: str, nb: str, out: Path, failed: bool) -> None:
    """Log the executed notebook (.ipynb + .html) into its nested run and the parent run."""
    if not out.exists():
        return
    child = tracking.find_notebook_run(parent, nb)
    tracking.log_notebook(out, run_id=parent, artifact_path="notebooks")
    if child is not None:
        tracking.log_notebook(out, run_id=child, artifact_path="notebook")
        if failed:  # the kernel's MLflow atexit hook may have ended it as FINISHED on shutdown
            tracking.end_run(child, "FAILED")


def _best_note(checkpoint: Path) -> str:
    from ciap_lib.checkpoint import pick_checkpoint

    picked = pick_checkpoint(checkpoint)
    return "" if picked == Path(checkpoint) else f" (03 and 04 used {picked.name}: {picked})"


def _metric_lines(checkpoint: Path) -> list[str]:
    """The validation metrics stored in the checkpoint 03 and 04 use (``best.pt`` when there is one)."""
    from ciap_lib.checkpoint import load_checkpoint, pick_checkpoint

    checkpoint = pick_checkpoint(checkpoint)
    if not Path(checkpoint).is_file():
        return []
    m = load_checkpoint(checkpoint)["metrics"]
    keys = [k for k in ("i2a_R@1", "i2a_R@5", "i2a_R@10", "a2i_R@1", "a2i_R@5", "a2i_R@10",
                        "i2a_median_rank", "a2i_median_rank", "i2a_class_R@1", "a2i_class_R@1") if k in m]
    if not keys:
        return []
    lines = [f"validation metrics of {Path(checkpoint).name} (after epoch {int(m.get('epoch', 0))}):"]
    lines += [f"  {k:<26s} {m[k]:7.3f}" for k in keys]
    return lines


def _headline_lines(result: PipelineResult) -> list[str]:
    """The CLAP and generation figures of the parent run (the retrieval ones come from the checkpoint)."""
    from ciap_lib import tracking

    m = tracking.run_metrics(result.parent_run_id, result.tracking_uri)
    keys = [k for k in ("clap_mean_cosine", "clap_score", "seconds_per_clip") if k in m]
    return ["generation and CLAP alignment:"] + [f"  {k:<26s} {m[k]:7.3f}" for k in keys] if keys else []


def _mlflow_ui_lines(result: PipelineResult) -> list[str]:
    """How to open this run in the MLflow UI: the command (for a local store) and the runs-table link."""
    from ciap_lib import tracking

    uri = result.tracking_uri
    base = tracking.ui_base_url(uri)
    exp_id = tracking.client(uri).get_run(result.parent_run_id).info.experiment_id
    lines = ["open the MLflow UI (select parent runs and press Compare to see them side by side):"]
    if not uri.startswith(("http://", "https://")):
        lines.append(f"  .venv/bin/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri {uri}")
    lines.append(f"  {tracking.experiment_ui_url(base, exp_id)}")
    return lines


def summary(result: PipelineResult) -> str:
    """What to open next: the MLflow UI, JupyterLab, the WAVs; how to rerun it."""
    uri = result.tracking_uri
    lines = [f"pipeline run {result.run_name} finished; parent MLflow run {result.parent_run_id}"]
    for nb, s in result.seconds.items():
        lines.append(f"  {nb:<26s} {s:7.1f} s")
    lines.append(f"  {'total':<26s} {sum(result.seconds.values()):7.1f} s")
    lines += _metric_lines(result.checkpoint)
    lines += _headline_lines(result)
    lines += [
        f"executed notebooks (.ipynb + .html): {_rel(result.run_dir)}/",
        f"checkpoint: {result.checkpoint}" + _best_note(result.checkpoint),
        f"WAVs: {_rel(result.wav_dir)}/ (and in MLflow, run 04_generation, artifacts wavs/)",
        *_mlflow_ui_lines(result),
        "open the notebooks:",
        "  .venv/bin/jupyter lab --ip 127.0.0.1 --no-browser notebooks/",
        "rerun it (same parameters, -p to change some):",
        f"  .venv/bin/python -m ciap_lib run --from-run {result.parent_run_id}"
        + (f" --tracking-uri {uri}" if uri != f"sqlite:///{repo_root() / 'mlflow.db'}" else ""),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# notebook steps (entry-point wiring the notebooks call, so no logic lives only in a notebook)
@dataclasses.dataclass
class EmbeddedSplit:
    """A checkpoint's embeddings of one split. ``image_emb``/``audio_emb`` (N, D) unit-norm, ``labels`` (N,)
    long (-1 = none); ``pairs`` the N ``data.Pair``s in order; ``clap_mode``: the audio side is AudioLDM's
    frozen CLAP tower (then ``audio_emb`` rows are the paired CLAP audio embeddings)."""

    model: Any
    config: Any
    dataset: Any
    image_emb: Any
    audio_emb: Any
    labels: Any
    pairs: list
    classes: list[str]
    clap_mode: bool


def embed_split(checkpoint: str | Path, data_root: str | Path, split: str = "val", batch_size: int = 64,
                skip_bad: bool = True) -> EmbeddedSplit:
    """Load a CIAP checkpoint and embed ``<data_root>/<split>`` in both modalities
    (``ciap_lib.workflows.load_eval_split``, then ``ciap_lib.embedding.embed_dataset``)."""
    from ciap_lib.embedding import embed_dataset
    from ciap_lib.workflows import load_eval_split

    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (run notebooks/02_training.ipynb first)")
    ev = load_eval_split(ckpt, data_root, split, skip_bad=skip_bad)
    ds = ev.dataset
    img, aud, labels = embed_dataset(ev.model, ds, batch_size=batch_size)
    return EmbeddedSplit(model=ev.model, config=ev.config, dataset=ds, image_emb=img, audio_emb=aud, labels=labels,
                         pairs=list(ds.pairs), classes=list(getattr(ds, "classes", []) or []), clap_mode=ev.clap_mode)


def paired_cosine(image_emb: Any, audio_emb: Any) -> float:
    """Mean cosine between row i of ``image_emb`` and row i of ``audio_emb`` ((N, D) each; normalised here).

    In CLAP-aligned mode ``audio_emb`` rows are the paired CLAP audio embeddings, so this says whether the
    image embedding lands where AudioLDM expects its condition (1 = on top, 0 = unrelated)."""
    import torch

    a = torch.nn.functional.normalize(torch.as_tensor(image_emb, dtype=torch.float32), dim=-1)
    b = torch.nn.functional.normalize(torch.as_tensor(audio_emb, dtype=torch.float32), dim=-1)
    if a.shape != b.shape:
        raise ValueError(f"paired_cosine: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a * b).sum(-1).mean())


def verify_frozen_audioldm(generator: Any) -> dict[str, str]:
    """After generating with ``generator`` (``ciap_lib.ui.generation``): for diffusion, check the whole frozen
    AudioLDM (every weight frozen, eval mode, state-dict fingerprint as taken at load:
    ``FrozenAudioLDM.assert_unchanged``, which raises otherwise) and return the MLflow tags recording it
    (``audioldm.frozen_check``, ``audioldm.fingerprint``); {} for the retrieval fallback."""
    audioldm = getattr(generator, "audioldm", None)
    if not getattr(generator, "is_diffusion", False) or audioldm is None:
        return {}
    audioldm.assert_unchanged()
    return {"audioldm.frozen_check": "passed", "audioldm.fingerprint": audioldm.reference_fingerprint}
