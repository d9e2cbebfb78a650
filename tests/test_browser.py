"""A real browser (Debian's chromium, driven by Playwright) against real JupyterLab and MLflow servers.

1. A pipeline run is created in a temporary SQLite MLflow store (``ciap_lib.tracking.start_pipeline_run``).
2. ``jupyter lab`` and ``mlflow server`` start on free 127.0.0.1 ports (tokens set, no browser opened),
   the lab on a temporary root holding a copy of ``notebooks/04_generation.ipynb`` parameterised by papermill
   to a tiny dataset, an untrained ``debug`` CIAP checkpoint and a missing AudioLDM checkpoint (so the
   labelled retrieval fallback runs).
3. Chromium opens the notebook, runs all cells, and the test checks that the generation widgets render
   (the upload, the duration slider, the Generate button) and that the fallback is labelled as such; then it
   uploads a PNG through the file chooser, clicks Generate and waits for the inline player (live kernel).
4. The MLflow REST API lists the pipeline run and the nested ``04_generation`` run the notebook logged,
   and the rendered runs page shows the pipeline run.
Screenshots go to ``test-artifacts/browser/`` (gitignored). Both servers are shut down (process groups).

If ``chromium`` is missing the test FAILS (run ``make browser``); it never skips.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from fixtures.generation import make_workspace

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "browser"
NOTEBOOK = REPO / "notebooks" / "04_generation.ipynb"
BIN = Path(sys.executable).parent
#: chromium runs as root here (--no-sandbox) and must not try to reach any network service
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-default-apps",
                 "--disable-extensions"]
TOKEN = "ciap-browser-test-token"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


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


def parameterised_notebook(dest: Path, params: dict) -> Path:
    """``notebooks/04_generation.ipynb`` with papermill's injected-parameters cell, written to ``dest``."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(NOTEBOOK))
    nb = parameterize_notebook(nb, params, kernel_name="ciap", language="python")
    nbformat.write(nb, str(dest))
    return dest


def test_jupyterlab_renders_generation_widgets_and_mlflow_lists_the_run(tmp_path):
    from playwright.sync_api import sync_playwright

    from ciap_lib import tracking

    chromium = chromium_path()
    t_start = time.monotonic()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    root = tmp_path / "lab"
    root.mkdir()
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    # JupyterLab user state stays in the temporary folder; no news / update checks (closed network).
    settings = tmp_path / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ, "TQDM_DISABLE": "1", "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"), "MLFLOW_TRACKING_URI": uri,
           "PYTHONUNBUFFERED": "1"}
    lab_port, ml_port = free_port(), free_port()
    lab_url, ml_url = f"http://127.0.0.1:{lab_port}", f"http://127.0.0.1:{ml_port}"
    lab_log, ml_log = tmp_path / "jupyterlab.log", tmp_path / "mlflow.log"
    lab = ml = None
    try:
        # JupyterLab boots while the workspace is built (it reads the notebook only when it is opened).
        lab = start([str(BIN / "jupyter"), "lab", "--ip", "127.0.0.1", "--port", str(lab_port), "--no-browser",
                     "--allow-root", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
                     "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
                     "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"], lab_log, env, root)
        ws = make_workspace(tmp_path / "ws", n_train=8, n_val=2)
        run_name = f"browser-test-{int(time.time())}"
        experiment = "ciap-browser-test"
        parent = tracking.start_pipeline_run(run_name, {"name": "browser-test", "generation": {"duration": 2.5}},
                                             tracking_uri=uri, experiment_name=experiment)
        # the MLflow server starts once the store exists (no two processes creating its tables at once)
        ml = start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(ml_port),
                    "--backend-store-uri", uri, "--default-artifact-root", (tmp_path / "mlartifacts").as_uri(),
                    "--workers", "1"], ml_log, env, tmp_path)
        nb_name = "04_generation.ipynb"
        parameterised_notebook(root / nb_name, {
            "tracking_uri": uri, "experiment_name": experiment, "parent_run_id": parent, "run_name": run_name,
            "run_dir": str(tmp_path / "run"), "checkpoint": str(ws["checkpoint"]),
            "data": {"root": str(ws["data"])},
            "generation": {"images": [], "n_images": 1, "duration": 2.5, "steps": 2, "sampler": "dpmpp",
                           "guidance_scale": 2.5, "seed": 0, "n_candidates": 1,
                           "audioldm": str(tmp_path / "no-such-audioldm.ckpt"), "ckpt_dir": str(tmp_path / "ckpt"),
                           "fallback_split": "train"},
        })
        phase("workspace + pipeline run", t_start)
        wait_http(f"{lab_url}/api/status?token={TOKEN}", lab, lab_log, 60)
        phase("jupyter lab up", t_start)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                # --- JupyterLab: open the notebook, run all cells, widgets render -----------------------
                page.goto(f"{lab_url}/lab/tree/{nb_name}?token={TOKEN}")
                page.wait_for_function(
                    "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                    " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                    " return !!k && k.status === 'idle'; }", timeout=60_000)
                phase("kernel idle", t_start)
                ok = page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
                phase("all cells ran", t_start)
                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'],"
                                      " .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
                if not ok:
                    page.screenshot(path=str(ARTIFACTS / "jupyterlab_generation_failed.png"), full_page=True)
                    pytest.fail("running all cells of 04_generation.ipynb in JupyterLab failed: "
                                + " | ".join(errors.all_text_contents())[-3000:])
                tracking.end_run(parent)  # the pipeline ends its parent run once the notebooks ran
                upload = page.locator(".widget-upload").first
                slider = page.locator(".widget-slider", has_text="Duration (s)").first
                button = page.locator(".widget-button", has_text="Generate").first
                for what, loc in (("upload", upload), ("duration slider", slider), ("Generate button", button)):
                    try:
                        loc.wait_for(state="visible", timeout=30_000)
                    except Exception:
                        page.screenshot(path=str(ARTIFACTS / "jupyterlab_generation_failed.png"))
                        raise AssertionError(f"the {what} widget did not render in JupyterLab")
                assert page.get_by_text("NOT diffusion output").first.is_visible()  # fallback is labelled
                # the batch path rendered an inline (non-autoplaying) player
                n_players = page.locator("audio[controls]").count()
                assert n_players >= 1
                button.scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / "jupyterlab_generation.png"))
                phase("widgets rendered", t_start)

                # --- a user's round trip: upload a PNG through the file chooser, click Generate, a player appears
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
                page.screenshot(path=str(ARTIFACTS / "jupyterlab_generation_clicked.png"))
                phase("upload + Generate round trip", t_start)

                # --- MLflow: REST API lists the pipeline run (and the nested run of the notebook) ---------
                wait_http(f"{ml_url}/health", ml, ml_log, 90)
                phase("mlflow up", t_start)
                exp = rest(ml_url, f"experiments/get-by-name?experiment_name={experiment}")["experiment"]
                runs = rest(ml_url, "runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                    "max_results": 100})["runs"]
                by_id = {r["info"]["run_id"]: r for r in runs}
                assert parent in by_id and by_id[parent]["info"]["run_name"] == run_name
                children = [r for r in runs if any(t["key"] == "mlflow.parentRunId" and t["value"] == parent
                                                   for t in r["data"].get("tags", []))]
                assert [c["info"]["run_name"] for c in children] == ["04_generation"]
                tags = {t["key"]: t["value"] for t in children[0]["data"]["tags"]}
                assert tags["generator"] == "retrieval"
                page.goto(f"{ml_url}/#/experiments/{exp['experiment_id']}/runs")
                page.get_by_text(run_name).first.wait_for(state="visible", timeout=60_000)
                close = page.get_by_role("button", name="Close")  # the assistant side panel
                if close.count():
                    close.first.click()
                # expand the pipeline run: its nested notebook run is listed under it
                page.locator("[role='row']", has_text=run_name).first.get_by_role("button").first.click()
                page.get_by_text("04_generation").first.wait_for(state="visible", timeout=20_000)
                page.screenshot(path=str(ARTIFACTS / "mlflow_runs.png"))
                phase("mlflow page rendered", t_start)
            finally:
                browser.close()
    finally:
        stop(lab)
        stop(ml)
    assert lab.poll() is not None and ml.poll() is not None, "a server is still running"
    print(f"browser test took {time.monotonic() - t_start:.1f} s; screenshots in {ARTIFACTS}")
