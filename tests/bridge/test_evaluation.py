"""``python -m ciap_lib evaluate-generation`` end to end on the tiny AudioLDM, a tiny synthetic split and random-weight
metric models saved in the released formats: every figure computed and finite, the HTML report (one row per clip,
thumbnails, players whose WAVs exist; checked in headless chromium), MLflow (table, report, metrics, tags);
resuming generates nothing; changed settings are refused without --overwrite and never mixed with it; without an
AudioLDM checkpoint the retrieval fallback is evaluated alone, labelled so, and missing weights skip their metrics
with the reason."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import soundfile as sf

from ciap_lib import tracking
from ciap_lib.bridge.evaluation import EVAL_BATCH_SIZE, METRICS, evaluate_generation, reconcile_manifest
from ciap_lib.bridge.metric_weights import CNN14_16K, VGGISH
from ciap_lib.bridge.params import GenerationParams
from ciap_lib.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
N = 3
GEN = ["--duration", "2.5", "--steps", "2", "--batch-size", "2"]
PARAMS = GenerationParams(duration=2.5, steps=2, batch_size=2, device="cpu")  # the shared tiny model stays put


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def no_weight_caches(tmp_path_factory):
    """The original tools' weight caches point at empty folders (only the folders the tests give count)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home / "torch"))
        mp.setenv("HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory, ciap_workspace, tiny_audioldm_ckpt, metric_weights, no_weight_caches):
    """One CLI run: diffusion (tiny AudioLDM) + retrieval baseline, all metric weights, MLflow in a temp store."""
    tmp = tmp_path_factory.mktemp("gen_eval")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        rc, text = _cli(["evaluate-generation", "--checkpoint", str(ciap_workspace["checkpoint"]),
                         "--data", str(ciap_workspace["data"]), "--n", str(N), "--audioldm", str(tiny_audioldm_ckpt),
                         "--out", str(out), "--metrics-dir", str(metric_weights["dir"]), "--is-splits", "2", *GEN])
    assert rc == 0, text
    return {"out": out, "uri": uri, "stdout": text}


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _run_id(stdout: str) -> str:
    return re.search(r"MLflow run ([0-9a-f]{32})", stdout).group(1)


def test_every_figure_is_computed_and_finite(diffusion_run):
    s = _summary(diffusion_run["out"])
    assert s["skipped"] == {} and s["n_clips"] == N and not s["retrieval_only"]
    for system in ("diffusion", "retrieval"):
        for m in METRICS:
            v = s["metrics"][f"{system}.{m}"]
            assert math.isfinite(v), (system, m, v)
        assert -1 <= s["metrics"][f"{system}.clap_score"] <= 1 and s["metrics"][f"{system}.is_panns"] >= 1
    text = diffusion_run["stdout"]
    for m in METRICS:  # the CLI prints every figure, named by its space
        assert re.search(rf"^  {m} ", text, re.M), m
    assert "CLAP (not comparable)" in text and "VGGish (comparable with published tables)" in text


def test_report_has_one_row_per_clip_with_thumbnail_and_players(diffusion_run):
    out = diffusion_run["out"]
    html = (out / "report.html").read_text()
    assert "guidance against the CLAP text embedding of \"\" (no negative, nothing mixed in)" in html
    rows = re.findall(r"<tr class='clip' data-index='(\d+)'>(.*?)</tr>", html, re.S)
    assert [int(i) for i, _ in rows] == list(range(N))
    for _, row in rows:
        imgs = re.findall(r"<img src='([^']+)'", row)
        players = re.findall(r"<audio controls[^>]*src='([^']+)'", row)
        assert len(imgs) == 1 and (out / imgs[0]).is_file()
        assert len(players) == 3  # real clip, diffusion, retrieval
        for src in players:
            data, sr = sf.read(out / src)
            assert sr == 16000 and data.ndim == 1
        assert any(src.endswith(".nn-retrieval.wav") for src in players)
    assert "autoplay" not in html
    for m in ("clap_score", "clap_fd", "fad_vggish", "fd_panns", "kl_panns", "is_panns"):
        assert f"data-metric='{m}'" in html
    assert "NOT a VGGish FAD" in html  # clap_fd is never mistaken for a published FAD


def test_mlflow_run_has_table_report_metrics_and_tags(diffusion_run):
    uri = diffusion_run["uri"]
    client = tracking.client(uri)
    run = client.get_run(_run_id(diffusion_run["stdout"]))
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["n_clips"] == N
    for system in ("diffusion", "retrieval"):
        assert {f"{system}.{k}" for k in METRICS} <= set(m)
    assert run.data.tags["generator"] == "diffusion"
    assert run.data.tags["generation_eval.systems"] == "diffusion,retrieval"
    arts = set(tracking.list_artifacts(run.info.run_id, tracking_uri=uri))
    assert {"generation_eval/clips.json", "report.html", "summary.json", "manifest.json"} <= arts
    assert len([a for a in arts if a.startswith("wavs/")]) == 2 * N
    assert len([a for a in arts if a.startswith("thumbs/")]) == N
    assert "table" in run.data.tags["mlflow.loggedArtifacts"]
    local = client.download_artifacts(run.info.run_id, "generation_eval/clips.json", str(diffusion_run["out"].parent))
    table = json.loads(Path(local).read_text())
    cols = table["columns"]
    assert len(table["data"]) == N
    assert {"image", "thumbnail", "reference", "diffusion.wav", "diffusion.clap_score", "diffusion.kl_panns",
            "retrieval.wav", "retrieval.note"} <= set(cols)
    for col in ("thumbnail", "reference", "diffusion.wav", "retrieval.wav"):  # artifact paths of the same run
        assert {row[cols.index(col)] for row in table["data"]} <= arts, col


def test_report_plays_in_chromium(diffusion_run):
    """One page load: the thumbnails decode and every player reads its WAV's header (duration known)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: run `make browser` (this test never skips)")
    shots = REPO / "test-artifacts" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto((diffusion_run["out"] / "report.html").as_uri())
            page.wait_for_function("[...document.querySelectorAll('audio')].every(a => a.readyState >= 1)",
                                   timeout=30_000)
            durations = page.eval_on_selector_all("audio", "els => els.map(a => a.duration)")
            widths = page.eval_on_selector_all("img", "els => els.map(i => i.naturalWidth)")
            page.screenshot(path=str(shots / "generation_report.png"), full_page=True)
        finally:
            browser.close()
    assert len(durations) == 3 * N and all(d > 1.0 for d in durations)
    assert widths == [128] * N


def test_resume_generates_nothing_and_changed_settings_are_refused(diffusion_run, ciap_workspace, tiny_audioldm,
                                                                     tmp_path, monkeypatch):
    import importlib

    generate_module = importlib.import_module("ciap_lib.bridge.generate")  # the module, not the function
    out = tmp_path / "out"
    shutil.copytree(diffusion_run["out"], out)
    wavs = sorted((out / "wavs").glob("*.wav"))
    mtimes = {w: w.stat().st_mtime_ns for w in wavs}

    def no_generation(*_a, **_k):
        raise AssertionError("a resumed evaluation generated a clip")

    monkeypatch.setattr(generate_module, "generate", no_generation)
    args = (ciap_workspace["checkpoint"], ciap_workspace["data"], "val", N)
    # the AudioLDM object (loaded from the same file) and another batch size: the same clips, kept
    ev = evaluate_generation(*args, out=out, audioldm=tiny_audioldm, params=GenerationParams(duration=2.5, steps=2,
                             batch_size=3), metrics_dir=None)
    assert ev.systems["diffusion"].generated == 0 and ev.systems["retrieval"].generated == 0
    assert {w: w.stat().st_mtime_ns for w in wavs} == mtimes
    assert ev.systems["diffusion"].metrics["clap_score"] == pytest.approx(
        _summary(diffusion_run["out"])["metrics"]["diffusion.clap_score"], abs=1e-5)
    assert set(ev.systems["diffusion"].skipped) == {"fad_vggish", "fd_panns", "kl_panns", "is_panns"}

    with pytest.raises(ValueError, match=r"manifest\.json.*diffusion clips were made with other settings "
                                         r"\(guidance_scale: 2\.5 before, 4\.0 now\).*--overwrite"):
        evaluate_generation(*args, out=out, audioldm=tiny_audioldm, params=GenerationParams(
            duration=2.5, steps=2, guidance_scale=4.0), metrics_dir=None)
    assert {w: w.stat().st_mtime_ns for w in wavs} == mtimes

    # --overwrite: the retrieval clips are made again at the new duration; diffusion (not in this run) untouched
    new = GenerationParams(duration=3.0)
    with pytest.raises(ValueError, match="retrieval clips were made with other settings"):
        evaluate_generation(*args, out=out, audioldm=None, params=new, metrics_dir=None)
    ev = evaluate_generation(*args, out=out, audioldm=None, params=new, metrics_dir=None, overwrite=True)
    assert ev.retrieval_only and ev.systems["retrieval"].generated == N
    assert all(sf.info(w).frames == 48000 for w in ev.systems["retrieval"].wavs)
    assert {w: w.stat().st_mtime_ns for w in wavs if not w.name.endswith(".nn-retrieval.wav")} == \
        {w: t for w, t in mtimes.items() if not w.name.endswith(".nn-retrieval.wav")}


def test_an_interrupted_evaluation_resumes_with_the_clips_an_uninterrupted_one_makes(diffusion_run, ciap_workspace,
                                                                                   tiny_audioldm, tmp_path):
    """The state a stop leaves (the manifest lists the clips written so far; here clip 1, made in a batch beside
    clip 0, is missing): a rerun makes only that clip, bitwise the clip of the uninterrupted run."""
    out = tmp_path / "out"
    shutil.copytree(diffusion_run["out"], out)
    manifest = json.loads((out / "manifest.json").read_text())
    lost = out / manifest["systems"]["diffusion"]["clips"].pop("1")
    (out / "manifest.json").write_text(json.dumps(manifest))
    original = sf.read(lost)[0]
    lost.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "wavs").glob("*.wav")}
    ev = evaluate_generation(ciap_workspace["checkpoint"], ciap_workspace["data"], "val", N, out=out,
                             audioldm=tiny_audioldm, params=PARAMS, metrics_dir=None)
    assert ev.systems["diffusion"].generated == 1 and ev.systems["retrieval"].generated == 0
    assert (sf.read(lost)[0] == original).all()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the others are kept, not rewritten


def test_retrieval_only_without_audioldm_and_missing_weights_are_skipped(ciap_workspace, metric_weights, tmp_path,
                                                                       monkeypatch, no_weight_caches):
    only_vggish = tmp_path / "weights"
    only_vggish.mkdir()
    (only_vggish / VGGISH.filename).symlink_to(metric_weights["dir"] / VGGISH.filename)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "out"
    rc, text = _cli(["evaluate-generation", "--checkpoint", str(ciap_workspace["checkpoint"]), "--data",
                     str(ciap_workspace["data"]), "--n", str(N), "--audioldm", str(tmp_path / "missing.ckpt"),
                     "--out", str(out), "--metrics-dir", str(only_vggish), "--duration", "2.5"])
    assert rc == 0, text
    assert text.startswith("Generation evaluation: RETRIEVAL FALLBACK ONLY, not diffusion")
    s = _summary(out)
    assert s["retrieval_only"] and set(s["metrics"]) == {"n_clips", "retrieval.fad_vggish"}
    skipped = s["skipped"]
    assert set(skipped) == {f"retrieval.{m}" for m in ("clap_score", "clap_fd", "fd_panns", "kl_panns", "is_panns")}
    assert "no AudioLDM checkpoint" in skipped["retrieval.clap_fd"]
    for m in ("fd_panns", "kl_panns", "is_panns"):
        reason = skipped[f"retrieval.{m}"]
        assert reason.startswith(f"{m} skipped") and CNN14_16K.filename in reason and CNN14_16K.url in reason
        assert f"  {m} (retrieval): {reason}" in text  # listed, with the reason, in the CLI output
    html = (out / "report.html").read_text()
    assert "RETRIEVAL FALLBACK ONLY" in html.split("</title>")[0] and "id='retrieval-only'" in html
    assert "diffusion (AudioLDM)" not in html  # no diffusion column
    assert html.count(CNN14_16K.url) == 3 and "<h2>Skipped figures</h2>" in html
    assert sorted(p.name for p in (out / "wavs").iterdir()) == [
        f"{i:04d}_val_{i:05d}.nn-retrieval.wav" for i in range(N)]
    client = tracking.client(uri)
    run = client.get_run(_run_id(text))
    assert run.data.tags["generator"] == "retrieval" and run.data.tags["generation_eval.systems"] == "retrieval"
    assert "RETRIEVAL FALLBACK ONLY" in run.data.tags["generation_eval.title"]
    assert "retrieval.fd_panns" in run.data.tags["generation_eval.skipped"]


def test_manifest_refuses_other_pairs(tmp_path):
    out = tmp_path
    old = {"format": "ciap.generation-eval/1", "pairs": [{"image": "a.png", "audio": "a.wav"}],
           "systems": {"retrieval": {"settings": {"duration": 5.0}, "clips": {"0": "wavs/x.wav"}, "notes": {}}}}
    for f in ("wavs/x.wav", "reference/0000_a.wav", "thumbs/0000_a.png"):
        (out / f).parent.mkdir(exist_ok=True)
        (out / f).write_bytes(b"stale")
    new_pairs = [{"image": "b.png", "audio": "b.wav"}]
    with pytest.raises(ValueError, match=r"the split's pairs differ \(pair 0: .*a\.png.*b\.png"):
        reconcile_manifest(out, json.loads(json.dumps(old)), new_pairs, {"retrieval": {"duration": 5.0}}, False)
    m = reconcile_manifest(out, json.loads(json.dumps(old)), new_pairs, {"retrieval": {"duration": 5.0}}, True)
    assert m["pairs"] == new_pairs and m["systems"]["retrieval"]["clips"] == {}
    assert not [f for f in out.rglob("*") if f.is_file()]  # clips, reference copies, thumbnails of the old pair


def test_a_manifest_that_recorded_the_device_still_resumes(tmp_path):
    """Manifests written when the device was a setting (``"device": "auto"``) keep their clips."""
    pairs = [{"image": "a.png", "audio": "a.wav"}]
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "x.wav").write_bytes(b"kept")
    old = {"format": "ciap.generation-eval/1", "pairs": pairs, "systems": {"diffusion": {
        "settings": {"duration": 5.0, "device": "auto"}, "clips": {"0": "wavs/x.wav"}, "notes": {}}}}
    m = reconcile_manifest(tmp_path, old, pairs, {"diffusion": {"duration": 5.0}}, False)
    assert m["systems"]["diffusion"] == {"settings": {"duration": 5.0}, "clips": {"0": "wavs/x.wav"}, "notes": {}}
    assert (tmp_path / "wavs" / "x.wav").read_bytes() == b"kept"


def test_default_batch_size_follows_the_device(monkeypatch):
    from ciap_lib.bridge.evaluation import EVAL_BATCH_SIZE_CUDA, default_batch_size
    from ciap_lib.cli.evaluate_generation import generation_params

    def flags(*extra):
        return generation_params(build_parser("evaluate-generation").parse_args(
            ["evaluate-generation", "--checkpoint", "c.pt", "--data", "d", *extra]))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_batch_size("auto") == default_batch_size("cpu") == EVAL_BATCH_SIZE
    assert flags().batch_size == EVAL_BATCH_SIZE
    with pytest.raises(ValueError, match="CUDA is not available"):
        default_batch_size("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)       # what torch reports with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert EVAL_BATCH_SIZE_CUDA != EVAL_BATCH_SIZE
    assert default_batch_size("auto") == default_batch_size("cuda:0") == EVAL_BATCH_SIZE_CUDA
    assert default_batch_size("cpu") == EVAL_BATCH_SIZE
    assert flags().batch_size == EVAL_BATCH_SIZE_CUDA                  # --device auto: the GPU
    assert flags("--device", "cpu").batch_size == EVAL_BATCH_SIZE
    assert flags("--device", "cuda", "--batch-size", "3").batch_size == 3
    assert flags("--device", "cuda:5").batch_size == EVAL_BATCH_SIZE      # no such GPU: an error when it runs
    with pytest.raises(ValueError, match="--device: 'tpu' is not a device"):
        flags("--device", "tpu")


def test_cli_defaults_and_bad_input(ciap_workspace, tmp_path, capsys):
    args = build_parser("evaluate-generation").parse_args(
        ["evaluate-generation", "--checkpoint", "c.pt", "--data", "d"])
    from ciap_lib.cli.evaluate_generation import generation_params

    p = generation_params(args)
    assert p.batch_size == EVAL_BATCH_SIZE and p.duration == GenerationParams().duration and args.n == 200
    base = ["evaluate-generation", "--checkpoint", str(ciap_workspace["checkpoint"]), "--data",
            str(ciap_workspace["data"]), "--out", str(tmp_path / "o"), "--no-mlflow"]
    assert main(base + ["--duration", "12"]) == 2
    assert "--duration" in capsys.readouterr().err
    assert main(base + ["--steps", "many"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(base + ["--split", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_images_are_prepared_as_the_checkpoint_stores(tmp_path, tiny_audioldm, no_weight_caches):
    """A timm-backbone checkpoint with stored CLIP mean/std and a squash crop (and no ``image_size`` of its own):
    the AudioLDM condition and the retrieval baseline's queries are the images prepared that way, as
    ``CIAPCondStage.load_images`` and the fallback's own search prepare them."""
    from fixtures.preprocess import STORED, stored_preprocess_checkpoint

    from ciap_lib.bridge import CIAPCondStage
    from ciap_lib.bridge.metrics import clap_audio_embeddings, clap_score_of_embeddings
    from ciap_lib.checkpoint import load_ciap
    from ciap_lib.fallback import NearestNeighbourGenerator
    from ciap_lib.images import load_image
    from ciap_lib.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "syn", n_train=6, n_val=2, image_size=40)
    ck = stored_preprocess_checkpoint(tmp_path, data, audio_encoder="clap")
    model, _ = load_ciap(ck)
    model.config.image_size = None  # as experiments/clip_mapper.yaml leaves it: the backbone's own size
    ev = evaluate_generation(ck, data, "val", 2, out=tmp_path / "out", audioldm=tiny_audioldm, model=model,
                             params=PARAMS, metrics_dir=tmp_path / "no-weights")
    stage = CIAPCondStage(model)
    assert stage.preprocess == STORED
    images = stage.load_images(ev.images)
    with torch.no_grad():
        expected = clap_score_of_embeddings(clap_audio_embeddings(tiny_audioldm, ev.references), stage(images))
        imagenet = clap_score_of_embeddings(clap_audio_embeddings(tiny_audioldm, ev.references),
                                            stage(torch.stack([load_image(p, 32) for p in ev.images])))
    assert ev.reference_clap_score == pytest.approx([float(v) for v in expected], abs=1e-6)
    assert not ev.reference_clap_score == pytest.approx([float(v) for v in imagenet], abs=1e-6)
    g = NearestNeighbourGenerator.from_dataset(model, data / "train", None)
    notes = g.describe(g.search(torch.stack([load_image(p, g.preprocess) for p in ev.images])))
    assert ev.systems["retrieval"].notes == notes  # the same clips, at the same cosine


def test_negative_text_mix_and_device_reach_generation(ciap_workspace, tiny_audioldm_ckpt, tiny_audioldm, tmp_path,
                                                       no_weight_caches):
    """``--negative-text`` with ``--tokenizer-dir``, ``--mix`` and ``--device`` reach the sampler: each clip equals
    ``generate``'s with the same steering, seed and condition; the device recorded is the one that ran."""
    from fixtures.tokenizer import make_tiny_tokenizer

    from ciap_lib.bridge import CIAPCondStage, generate, write_wavs
    from ciap_lib.checkpoint import load_ciap

    tok = make_tiny_tokenizer(tmp_path / "tok")
    mix_clip = sorted((ciap_workspace["data"] / "train").glob("*.wav"))[0]
    out = tmp_path / "out"
    rc, text = _cli(["evaluate-generation", "--checkpoint", str(ciap_workspace["checkpoint"]), "--data",
                     str(ciap_workspace["data"]), "--n", "2", "--audioldm", str(tiny_audioldm_ckpt), "--out", str(out),
                     "--metrics-dir", str(tmp_path / "no-weights"), "--no-baseline", "--no-mlflow", *GEN,
                     "--negative-text", "speech", "--tokenizer-dir", str(tok), "--mix", f"{mix_clip}:0.3",
                     "text:rain:0.2", "--device", "cpu"])
    assert rc == 0, text
    s = _summary(out)
    assert s["params"]["negative_text"] == "speech" and s["params"]["mix"] == [f"{mix_clip}:0.3", "text:rain:0.2"]
    assert s["params"]["device"] == "cpu"
    head = (out / "report.html").read_text().split("<table")[0]  # the report says how its clips were steered
    assert "device cpu" in head and "steered away from the text &#x27;speech&#x27;" in head
    assert f"mixed in: {mix_clip}:0.3, text:rain:0.2" in head
    model, _ = load_ciap(ciap_workspace["checkpoint"])
    stage = CIAPCondStage(model)
    images = sorted((ciap_workspace["data"] / "val").glob("*.png"))[:2]
    with torch.no_grad():
        cond = stage(stage.load_images(images))
    kw = dict(image_embeds=cond, duration=2.5, steps=2, seed=0, batch_size=2, device="cpu")
    steered = write_wavs(generate(tiny_audioldm, negative_text="speech", tokenizer_dir=tok,
                                  mix=[f"{mix_clip}:0.3", "text:rain:0.2"], **kw),
                         [tmp_path / "steered0.wav", tmp_path / "steered1.wav"])
    plain = generate(tiny_audioldm, **kw)
    made = sorted(p for p in (out / "wavs").glob("*.wav") if not p.name.endswith(".nn-retrieval.wav"))
    assert len(made) == 2
    for m, e, p in zip(made, steered, plain):
        assert (sf.read(m)[0] == sf.read(e)[0]).all()
        # steered, not plain: apart by more than the WAV's 16-bit rounding (3e-5); on the tiny model at 2 steps the
        # steering moves a clip by ~7e-4 in float32 (what precision auto picks on some CPUs)
        assert not torch.allclose(torch.as_tensor(sf.read(m)[0], dtype=torch.float32), torch.as_tensor(p), atol=1e-4)
    # a CUDA device that is not there: a clear error before anything is written
    rc = main(["evaluate-generation", "--checkpoint", str(ciap_workspace["checkpoint"]), "--data",
               str(ciap_workspace["data"]), "--n", "2", "--out", str(tmp_path / "cuda"), "--no-mlflow",
               "--device", "cuda:99"])
    assert rc == 2 and not (tmp_path / "cuda").exists()
    # the default, GenerationParams.device "auto", is recorded as what it resolves to here
    from ciap_lib.distributed import resolve_device

    ev = evaluate_generation(ciap_workspace["checkpoint"], ciap_workspace["data"], "val", 1, out=tmp_path / "auto",
                             audioldm=None, params=GenerationParams(duration=2.5), metrics_dir=None)
    assert ev.params.device == str(resolve_device("auto"))


def test_a_negative_clip_edited_in_place_means_new_clips(ciap_workspace, tiny_audioldm, tmp_path):
    """Resuming compares the steering clips' contents, not only their paths."""
    clips = sorted((ciap_workspace["data"] / "train").glob("*.wav"))
    negative = tmp_path / "negative.wav"
    shutil.copy(clips[0], negative)
    params = GenerationParams(duration=2.5, steps=1, batch_size=1, negative=[str(negative)],
                              device="cpu")
    args = (ciap_workspace["checkpoint"], ciap_workspace["data"], "val", 1)
    kw = dict(out=tmp_path / "out", audioldm=tiny_audioldm, params=params, metrics_dir=None, baseline=False)
    assert evaluate_generation(*args, **kw).systems["diffusion"].generated == 1
    assert evaluate_generation(*args, **kw).systems["diffusion"].generated == 0  # the same clip: kept
    shutil.copy(clips[1], negative)  # same path, other sound
    with pytest.raises(ValueError, match="diffusion clips were made with other settings.*steering_clips_sha256"):
        evaluate_generation(*args, **kw)
    assert evaluate_generation(*args, **kw, overwrite=True).systems["diffusion"].generated == 1
    with pytest.raises(ValueError, match="nothere.wav"):  # a missing clip: named before anything else
        evaluate_generation(*args, **{**kw, "params": GenerationParams(negative=[str(tmp_path / "nothere.wav")])})


def test_auto_precision_is_recorded_and_resumed_as_what_it_resolved_to(diffusion_run, ciap_workspace, tiny_audioldm,
                                                                      tmp_path, monkeypatch):
    """The CLI run asked for ``precision auto``; the summary, MLflow and the manifest hold what it resolved to on this
    CPU. Where ``auto`` resolves to the other precision (another CPU), the clips are refused as made with other
    settings, not mixed."""
    from ciap_lib import hardware
    from ciap_lib.bridge import devices

    resolved = devices.resolve_precision("auto", torch.device("cpu"))
    assert _summary(diffusion_run["out"])["params"]["precision"] == resolved
    run = tracking.client(diffusion_run["uri"]).get_run(_run_id(diffusion_run["stdout"]))
    assert run.data.params["generation_eval.precision"] == resolved
    manifest = json.loads((diffusion_run["out"] / "manifest.json").read_text())
    assert manifest["systems"]["diffusion"]["settings"]["precision"] == resolved

    out = tmp_path / "out"
    shutil.copytree(diffusion_run["out"], out)
    other = "fp32" if resolved == "bf16" else "bf16"
    monkeypatch.setattr(hardware, "cpu_prefers_bf16", lambda: other == "bf16")
    with pytest.raises(ValueError, match=rf"diffusion clips were made with other settings \(precision: "
                                         rf"'{resolved}' before, '{other}' now\)"):
        evaluate_generation(ciap_workspace["checkpoint"], ciap_workspace["data"], "val", N, out=out,
                            audioldm=tiny_audioldm, params=GenerationParams(duration=2.5, steps=2), metrics_dir=None)
