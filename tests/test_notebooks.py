"""Static checks of notebooks/*.ipynb: committed without outputs, exactly one `parameters` cell that
holds the common parameters of the convention (notebooks/README.md), valid nbformat, the `ciap` kernel."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest

from ciap_lib import pipeline

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
COMMON = {"tracking_uri", "experiment_name", "parent_run_id", "run_name", "run_dir", "checkpoint"}


def _notebooks() -> list[Path]:
    return sorted(NB_DIR.glob("*.ipynb"))


def test_all_four_notebooks_exist():
    names = {p.stem for p in _notebooks()}
    assert set(pipeline.NOTEBOOKS) <= names, f"missing notebooks: {set(pipeline.NOTEBOOKS) - names}"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_is_clean_and_parameterised(path: Path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "ciap", f"{path.name}: kernelspec must be 'ciap'"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
            ast.parse(cell.source, filename=f"{path.name}[{i}]")  # every code cell is valid Python
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(params)}"
    assert params[0].cell_type == "code"
    names = set()
    for node in ast.parse(params[0].source).body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), \
            f"{path.name}: the parameters cell must only assign values (line {node.lineno})"
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
        ast.literal_eval(node.value)  # papermill-friendly literal defaults
    assert COMMON <= names, f"{path.name}: parameters cell lacks {COMMON - names}"
    for section in pipeline.NOTEBOOK_SECTIONS.get(path.stem, ()):
        assert section in names, f"{path.name}: parameters cell lacks the {section!r} section"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_rules(path: Path):
    """No tqdm.auto (stalls under papermill), no autoplaying players, MLflow only through ciap_lib.tracking."""
    src = "\n".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                    for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    assert "tqdm.auto" not in src
    assert not re.search(r"autoplay\s*=\s*True", src)
    assert not re.search(r"^\s*(import mlflow|from mlflow)", src, re.M), "notebooks log through ciap_lib.tracking"
    assert "ipywidgets.Audio" not in src and "widgets.Audio(" not in src


def test_section_defaults_in_notebooks_match_pipeline_schema():
    """The dict defaults in the parameters cells are valid experiment sections (the pipeline accepts them)."""
    raw = {}
    for section, nb in pipeline.SECTION_NOTEBOOK.items():
        d = pipeline._notebook_defaults(nb, section, NB_DIR)
        assert d, f"{nb}: no literal dict default for {section!r} in its parameters cell"
        raw[section] = d
    raw["data"]["root"] = "data/synthetic"
    exp = pipeline.validate(raw, source="<notebook defaults>", notebooks_dir=NB_DIR, check_paths=False)
    for key, value in raw["generation"].items():
        assert exp.generation[key] == value, key
    # 04 takes the generation parameters it does not list from their one home, GenerationParams
    from ciap_lib.bridge import GenerationParams

    for key, value in GenerationParams().to_dict().items():
        assert exp.generation[key] == raw["generation"].get(key, value), key


def test_library_has_no_tqdm_auto_and_single_mlflow_importer():
    for py in (ROOT / "ciap_lib").rglob("*.py"):
        text = py.read_text()
        assert "tqdm.auto" not in text, f"{py}: use `from tqdm import tqdm`"
        if py.name != "tracking.py":
            assert not re.search(r"^\s*(import mlflow|from mlflow)", text, re.M), \
                f"{py}: only ciap_lib/tracking.py may import mlflow"
