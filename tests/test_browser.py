"""A real browser (Debian's chromium, driven by Playwright) against real JupyterLab and MLflow servers.

Shared by the three tests (module fixtures): one ``jupyter lab`` and one ``mlflow server`` on free 127.0.0.1 ports
(tokens set, no browser opened; the lab's kernels import this checkout's ``ciap_lib``), the MLflow server on the
store of the session's real pipeline runs (tests/fixtures/pipeline.py), and one headless Chromium.

1. Notebook 04 in JupyterLab, parameterised by papermill to a tiny dataset, an untrained ``debug`` CIAP checkpoint
   and a missing AudioLDM checkpoint (so the labelled retrieval fallback runs): all cells run, the generation
   widgets render and say it is the fallback; a PNG uploaded through the file chooser + Generate gives an inline
   player (live kernel). The MLflow REST API lists the notebook's nested run; the runs page shows it.
2. Notebook 03 in JupyterLab, parameterised like the default pipeline run's 03 (its checkpoint and data), run
   live: picking an item in the explorer's dropdown shows that query and its top-k neighbours with their audio
   players; switching the direction shows image neighbours.
3. The MLflow UI on the two real pipeline runs (``default_pipeline_run``, ``clap_pipeline_run``): the experiment
   link the pipeline prints opens the runs table (model-training view, not the GenAI overview) listing both, and
   the comparison of the two parent runs shows their headline metrics and resolved parameters side by side.

Screenshots go to ``test-artifacts/browser/`` (gitignored). Both servers are shut down (process groups).
If ``chromium`` is missing the tests FAIL (run ``make browser``); they never skip.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import nbformat
import pytest

from fixtures.generation import make_workspace

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "browser"
NOTEBOOKS = REPO / "notebooks"
BIN = Path(sys.executable).parent
#: chromium runs as root here (--no-sandbox) and must not try to reach any network service
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-default-apps",
                 "--disable-extensions"]
TOKEN = "ciap-browser-test-token"
#: the experiment the notebooks opened in JupyterLab log to (the pipeline runs are in "ciap")
LAB_EXPERIMENT = "ciap-browser-test"

pytestmark = [pytest.mark.slow]


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed, so the browser test cannot run: run `make browser` "
                    "(apt-get install -y chromium). This test never skips.")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so it and its children are stopped together)."""
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process group, SIGKILL it after 15 s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before answering {url}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def rest(base: str, endpoint: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.load(r)


def phase(name: str, t0: float) -> None:
    print(f"[browser test] {name}: {time.monotonic() - t0:.1f} s", flush=True)


def parameterised_notebook(notebook: str, dest: Path, params: dict) -> Path:
    """``notebooks/<notebook>.ipynb`` with papermill's injected-parameters cell, written to ``dest``."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(NOTEBOOKS / f"{notebook}.ipynb"))
    nb = parameterize_notebook(nb, params, kernel_name="ciap", language="python")
    nbformat.write(nb, str(dest))
    return dest


#: The metrics of MLflow's "compare runs" page as ``{metric: [cell text per run]}``: two virtualized grids (names,
#: values) whose cells share a ``top`` offset per row; scrolled through so that every row gets rendered once.
COMPARE_METRICS_JS = """async () => {
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
  const names = grids.find(g => g.querySelector('a[title="Plot chart"]'));
  if (!names) return null;
  const values = grids[grids.indexOf(names) + 1];
  const rows = {};
  const read = () => {
    const byTop = {};
    for (const d of values.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div'))
      (byTop[d.style.top] = byTop[d.style.top] || []).push([parseFloat(d.style.left), d.innerText.trim()]);
    for (const d of names.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div')) {
      const cells = byTop[d.style.top];
      if (cells) rows[d.innerText.trim()] = cells.sort((a, b) => a[0] - b[0]).map(c => c[1]);
    }
  };
  for (let y = 0; y <= values.scrollHeight; y += 135) {
    values.scrollTop = y;
    values.dispatchEvent(new Event('scroll'));
    await new Promise(r => setTimeout(r, 150));
    read();
  }
  values.scrollTop = 0;
  values.dispatchEvent(new Event('scroll'));
  return rows;
}"""


def shot(page, name: str, **kw) -> Path:
    path = ARTIFACTS / name
    page.screenshot(path=str(path), **kw)
    return path


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    p = sync_playwright().start()
    b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()
        p.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pipeline_store):
    """A JupyterLab server on an empty temporary root; its kernels import this checkout's ``ciap_lib``."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    root.mkdir()
    # JupyterLab user state stays in the temporary folder; no news / update checks (closed network).
    settings = tmp / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ, "TQDM_DISABLE": "1", "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"), "MLFLOW_TRACKING_URI": pipeline_store.uri,
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    port = free_port()
    log = tmp / "jupyterlab.log"
    proc = start([str(BIN / "jupyter"), "lab", "--ip", "127.0.0.1", "--port", str(port), "--no-browser",
                  "--allow-root", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
                  "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
                  "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"], log, env, root)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/api/status?token={TOKEN}", proc, log, 90)
        yield types.SimpleNamespace(url=url, root=root, tmp=tmp, log=log)
    finally:
        stop(proc)
    assert proc.poll() is not None, "jupyter lab is still running"


@pytest.fixture(scope="module")
def mlflow_ui(pipeline_store):
    """``mlflow server`` on the pipeline runs' store; its URL."""
    from ciap_lib import tracking

    tracking.setup(pipeline_store.uri, "ciap")  # the store's tables exist before a second process opens it
    port = free_port()
    log = pipeline_store.tmp / "mlflow-server.log"
    proc = start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", pipeline_store.uri,
                  "--default-artifact-root", (pipeline_store.tmp / "mlartifacts").as_uri(), "--workers", "1"],
                 log, {**os.environ, "PYTHONUNBUFFERED": "1"}, pipeline_store.tmp)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log, 90)
        yield url
    finally:
        stop(proc)
    assert proc.poll() is not None, "mlflow server is still running"


def open_notebook(page, lab, name: str, t0: float):
    """Open ``name`` in JupyterLab, wait for its kernel, run all cells; fail with the error outputs if one fails.

    Returns a locator of the notebook's panel (JupyterLab keeps notebooks opened earlier as hidden tabs)."""
    # a workspace of its own: JupyterLab would otherwise restore the notebooks opened before as (hidden) tabs
    page.goto(f"{lab.url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={TOKEN}")
    page.wait_for_function(
        "(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " if (!w || !w.context || w.context.path !== name) return false;"
        " const k = w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return !!k && k.status === 'idle'; }", arg=name, timeout=90_000)
    phase(f"{name}: kernel idle", t0)
    ok = page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    phase(f"{name}: all cells ran", t0)
    if not ok:
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'],"
                              " .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
        shot(page, f"jupyterlab_{Path(name).stem}_failed.png", full_page=True)
        pytest.fail(f"running all cells of {name} in JupyterLab failed: "
                    + " | ".join(errors.all_text_contents())[-3000:])
    panel_id = page.evaluate("() => window.jupyterapp.shell.currentWidget.id")
    return page.locator(f"[id='{panel_id}']")


def close_assistant(page) -> None:
    """Close the MLflow UI's assistant side panel (it opens by default)."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.timeout(300)
def test_jupyterlab_renders_generation_widgets_and_mlflow_lists_the_run(tmp_path, browser, lab, mlflow_ui,
                                                                        pipeline_store):
    from ciap_lib import tracking

    t_start = time.monotonic()
    uri = pipeline_store.uri
    ws = make_workspace(tmp_path / "ws", n_train=8, n_val=2)
    run_name = f"browser-test-{int(time.time())}"
    parent = tracking.start_pipeline_run(run_name, {"name": "browser-test", "generation": {"duration": 2.5}},
                                         tracking_uri=uri, experiment_name=LAB_EXPERIMENT)
    nb_name = "04_generation.ipynb"
    parameterised_notebook("04_generation", lab.root / nb_name, {
        "tracking_uri": uri, "experiment_name": LAB_EXPERIMENT, "parent_run_id": parent, "run_name": run_name,
        "run_dir": str(tmp_path / "run"), "checkpoint": str(ws["checkpoint"]),
        "data": {"root": str(ws["data"])},
        "generation": {"images": [], "n_images": 1, "duration": 2.5, "steps": 2, "sampler": "dpmpp",
                       "guidance_scale": 2.5, "seed": 0, "n_candidates": 1,
                       "audioldm": str(tmp_path / "no-such-audioldm.ckpt"), "ckpt_dir": str(tmp_path / "ckpt"),
                       "fallback_split": "train"},
    })
    phase("workspace + pipeline run", t_start)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # --- JupyterLab: open the notebook, run all cells, widgets render ---------------------------------
        nb = open_notebook(page, lab, nb_name, t_start)
        tracking.end_run(parent)  # the pipeline ends its parent run once the notebooks ran
        upload = nb.locator(".widget-upload").first
        slider = nb.locator(".widget-slider", has_text="Duration (s)").first
        button = nb.locator(".widget-button", has_text="Generate").first
        for what, loc in (("upload", upload), ("duration slider", slider), ("Generate button", button)):
            try:
                loc.wait_for(state="visible", timeout=30_000)
            except Exception:
                shot(page, "jupyterlab_generation_failed.png")
                raise AssertionError(f"the {what} widget did not render in JupyterLab")
        assert page.get_by_text("NOT diffusion output").first.is_visible()  # fallback is labelled
        # the batch path rendered an inline (non-autoplaying) player
        n_players = page.locator("audio[controls]").count()
        assert n_players >= 1
        button.scroll_into_view_if_needed()
        shot(page, "jupyterlab_generation.png")
        phase("widgets rendered", t_start)

        # --- a user's round trip: upload a PNG through the file chooser, click Generate, a player appears ---
        image = sorted((ws["data"] / "val").glob("*.png"))[0]
        with page.expect_file_chooser(timeout=20_000) as chooser:
            upload.click()
        chooser.value.set_files(str(image))
        page.get_by_text(f"Image: {image.name}").first.wait_for(state="visible", timeout=30_000)
        button.click()
        page.get_by_text("RETRIEVED from the training set (not diffusion)").first.wait_for(
            state="visible", timeout=60_000)
        page.locator("audio[controls]").nth(n_players).wait_for(state="attached", timeout=10_000)
        assert page.locator("audio[autoplay]").count() == 0
        page.locator(".widget-html", has_text="RETRIEVED").first.scroll_into_view_if_needed()
        shot(page, "jupyterlab_generation_clicked.png")
        phase("upload + Generate round trip", t_start)

        # --- MLflow: REST API lists the pipeline run (and the nested run of the notebook) -----------------
        exp = rest(mlflow_ui, f"experiments/get-by-name?experiment_name={LAB_EXPERIMENT}")["experiment"]
        runs = rest(mlflow_ui, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        by_id = {r["info"]["run_id"]: r for r in runs}
        assert parent in by_id and by_id[parent]["info"]["run_name"] == run_name
        children = [r for r in runs if any(t["key"] == "mlflow.parentRunId" and t["value"] == parent
                                           for t in r["data"].get("tags", []))]
        assert [c["info"]["run_name"] for c in children] == ["04_generation"]
        tags = {t["key"]: t["value"] for t in children[0]["data"]["tags"]}
        assert tags["generator"] == "retrieval"
        page.goto(tracking.experiment_ui_url(mlflow_ui, exp["experiment_id"]))
        page.get_by_text(run_name).first.wait_for(state="visible", timeout=60_000)
        close_assistant(page)
        # expand the pipeline run: its nested notebook run is listed under it
        page.locator("[role='row']", has_text=run_name).first.get_by_role("button").first.click()
        page.get_by_text("04_generation").first.wait_for(state="visible", timeout=20_000)
        shot(page, "mlflow_runs.png")
        phase("mlflow page rendered", t_start)
    finally:
        page.close()


@pytest.mark.timeout(600)  # includes the default pipeline run when this file runs first
def test_jupyterlab_notebook03_explorer_shows_neighbours_and_players(browser, lab, default_pipeline_run,
                                                                     pipeline_store):
    t_start = time.monotonic()
    run = default_pipeline_run
    executed = nbformat.read(str(run.run_dir / "03_retrieval_evaluation.ipynb"), as_version=4)
    # the parameters the pipeline ran 03 with (its checkpoint, data, evaluate section); live, it logs into a
    # top-level run of the lab's experiment instead of adding a nested run to the pipeline run
    params = {**executed.metadata.papermill.parameters, "parent_run_id": "", "experiment_name": LAB_EXPERIMENT}
    k = params["evaluate"]["top_k"]
    nb_name = "03_retrieval_evaluation.ipynb"
    parameterised_notebook("03_retrieval_evaluation", lab.root / nb_name, params)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        nb = open_notebook(page, lab, nb_name, t_start)
        dropdown = nb.locator(".widget-dropdown select").first
        dropdown.wait_for(state="visible", timeout=30_000)
        view = nb.locator(".widget-html", has_text="query (").first
        assert "query (image) 0:" in view.inner_text()  # explore_index 0, before any click
        # pick item 5: the view shows it as the query and its top-k audio neighbours, each with a player
        pick = dropdown.locator("option").nth(5).inner_text()
        dropdown.select_option(index=5)
        view = nb.locator(".widget-html", has_text=f"query (image) {pick}").first
        view.wait_for(state="visible", timeout=20_000)
        assert view.locator("img").count() == 1
        players = view.locator("audio[controls]")
        assert players.count() == k
        assert view.locator("audio[autoplay]").count() == 0
        captions = view.locator("small").all_inner_texts()
        assert [c.split()[0] for c in captions[1:]] == [f"#{i}" for i in range(1, k + 1)]
        assert all(re.search(r"cos -?\d\.\d{3}", c) for c in captions[1:]), captions
        dropdown.scroll_into_view_if_needed()
        shot(page, "jupyterlab_explorer_i2a.png")
        # switch the direction: the query is the clip, the neighbours are images
        nb.locator(".widget-toggle-buttons button", has_text="audio → image").first.click()
        view = nb.locator(".widget-html", has_text=f"query (audio) {pick}").first
        view.wait_for(state="visible", timeout=20_000)
        assert view.locator("audio[controls]").count() == 1 and view.locator("img").count() == k
        dropdown.scroll_into_view_if_needed()
        shot(page, "jupyterlab_explorer_a2i.png")
        phase("explorer clicked", t_start)
    finally:
        page.close()


@pytest.mark.timeout(900)  # includes both pipeline runs when this file runs first
def test_mlflow_opens_runs_table_and_compares_pipeline_runs(browser, mlflow_ui, pipeline_store,
                                                            default_pipeline_run, clap_pipeline_run):
    from ciap_lib import tracking

    t_start = time.monotonic()
    runs = {"test-run": default_pipeline_run, "clap-run": clap_pipeline_run}
    client = pipeline_store.client
    exp_id = client.get_experiment_by_name("ciap").experiment_id
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # fresh browser state: default UI settings
    try:
        # --- the experiment link the pipeline prints: the runs table in the model-training view ------------
        page.goto(tracking.experiment_ui_url(mlflow_ui, exp_id))
        for name in runs:
            page.locator("[role='row']", has_text=name).first.wait_for(state="visible", timeout=60_000)
        close_assistant(page)
        assert "/runs" in page.url and "workflowType=machine_learning" in page.url
        assert page.get_by_role("heading", name="Runs", exact=True).first.is_visible()  # GenAI mode: "Training runs"
        for genai in ("Token Usage", "Tool calls", "Observability"):  # the GenAI overview / side bar
            assert page.get_by_text(genai, exact=True).count() == 0, genai
        shot(page, "mlflow_experiment_runs.png")
        phase("runs table", t_start)

        # --- compare the two parent runs: headline figures and resolved parameters side by side -----------
        parents = {name: client.get_run(r.parent_run_id) for name, r in runs.items()}
        compare_url = tracking.compare_ui_url(mlflow_ui, [r.info.run_id for r in parents.values()], exp_id)
        page.goto(compare_url)
        page.get_by_text("Comparing 2 Runs").first.wait_for(state="visible", timeout=60_000)
        close_assistant(page)
        table = page.evaluate(COMPARE_METRICS_JS)  # {metric: [cell of run 1, cell of run 2]}
        assert table, "the comparison shows no metrics table"
        for key in ("val_i2a_R_at_1", "val_a2i_R_at_1", "val_i2a_class_R_at_1", "val_a2i_class_R_at_1",
                    "clap_score", "seconds_per_clip", "clap_mean_cosine"):
            assert key in table, (key, sorted(table))
            assert len(table[key]) == 2, (key, table[key])
            for cell, p in zip(table[key], parents.values()):
                want = p.data.metrics.get(key)
                if want is None:  # clap_mean_cosine: only the clap run has a CLAP alignment to report
                    assert cell in ("", "-", "NaN"), (key, cell)
                else:  # the UI rounds to 3 significant digits
                    assert float(cell) == pytest.approx(want, rel=5e-3, abs=5e-3), (key, cell, want)
        for key, want in (("resolved.model", ["debug", "clap_aligned"]),
                          ("resolved.audio_encoder", ["logmel_cnn_tc", "clap"]),
                          ("resolved.image_backbone", ["tiny_cnn", "tiny_cnn"])):
            row = page.locator(f"tr:has(th:text-is('{key}'))").first
            assert [c.strip() for c in row.locator("td").all_inner_texts()] == want, key
        # what a person sees: the Metrics section opens on the headline figures (its grid shows about seven
        # rows; the per-notebook wall_seconds.* sort after them), and the resolved parameters
        page.goto("about:blank")
        page.goto(compare_url)
        page.get_by_text("Comparing 2 Runs").first.wait_for(state="visible", timeout=60_000)
        close_assistant(page)
        heading = page.get_by_text("Metrics", exact=True).first
        heading.scroll_into_view_if_needed()
        page.mouse.wheel(0, heading.bounding_box()["y"] - 60)  # the Metrics heading to the top of the window
        first_rows = page.evaluate(COMPARE_METRICS_JS.replace("y += 135", "y += 1e9"))  # rows rendered unscrolled
        assert list(first_rows)[:6] == ["clap_mean_cosine", "clap_score", "seconds_per_clip", "val_a2i_R_at_1",
                                        "val_a2i_class_R_at_1", "val_i2a_R_at_1"], list(first_rows)
        shot(page, "mlflow_compare_metrics.png")
        page.locator("tr:has(th:text-is('resolved.audio_encoder'))").first.scroll_into_view_if_needed()
        shot(page, "mlflow_compare_resolved_params.png")
        phase("comparison", t_start)
    finally:
        page.close()
