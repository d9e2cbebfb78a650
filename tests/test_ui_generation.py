"""The generation UI, driven headlessly: upload real PNG bytes, click Generate, check the WAV in the player.

Runs with the labelled retrieval fallback and with the tiny AudioLDM (real original-checkpoint format, loaded
through the bridge's real loading path).
"""
from __future__ import annotations

import inspect
import io

import numpy as np
import pytest
import soundfile as sf

from ciap_lib.checkpoint import load_ciap
from ciap_lib.fallback import NearestNeighbourGenerator
from ciap_lib.ui import batch, generators as gens
from ciap_lib.ui import generation as G
from fixtures.generation import make_workspace, upload_value

SR = 16000


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("uigen"))


@pytest.fixture(scope="module")
def ciap(ws):
    model, _ = load_ciap(ws["checkpoint"])
    return model


@pytest.fixture(scope="module")
def fallback(ciap, ws):
    return NearestNeighbourGenerator.from_dataset(ciap, ws["data"], "train")


def png_bytes(ws, i: int = 0) -> bytes:
    return sorted((ws["data"] / "val").glob("*.png"))[i].read_bytes()


def wav_of(ui: G.GenerationUI) -> tuple[np.ndarray, int]:
    """Decode the WAV embedded in the audio widget's ``<audio>`` tag."""
    assert "<audio" in ui.audio.value and "controls" in ui.audio.value
    assert "autoplay" not in ui.audio.value
    data, sr = sf.read(io.BytesIO(G.wav_from_html(ui.audio.value)), dtype="float32")
    return data, sr


def drive(ui: G.GenerationUI, png: bytes, duration: float) -> None:
    ui.upload.value = upload_value(png)  # what the browser sends
    ui.duration.value = duration
    ui.button.click()


@pytest.mark.parametrize("duration", [2.5, 3.5])
def test_fallback_ui_click_gives_wav_of_chosen_duration(ws, fallback, duration):
    ui = G.build_generation_ui(fallback)
    drive(ui, png_bytes(ws), duration)
    assert ui.error is None, ui.error
    assert ui.image_name == "query.png" and ui.preview.value  # preview shown
    data, sr = wav_of(ui)
    assert sr == SR and data.shape == (int(round(duration * SR)),)
    assert ui.waveform.shape == data.shape
    np.testing.assert_allclose(data, np.clip(ui.waveform, -1, 1), atol=1 / 32767 + 1e-6)  # 16-bit WAV
    assert ui.progress.value == ui.progress.max and ui.progress.bar_style == "success"
    # never presented as diffusion
    assert "NOT diffusion" in ui.status.value and "not diffusion" in ui.message.value
    assert ui.steps.disabled and ui.guidance.disabled and ui.sampler.disabled and ui.seed.disabled
    assert ui.n_candidates.disabled
    assert ui.negative_text.disabled and ui.negative_upload.disabled and ui.mix_text.disabled and ui.mix_weight.disabled
    assert ui.mix_upload.disabled and ui.mix_clip_weight.disabled
    assert not ui.upload.disabled and not ui.duration.disabled and not ui.button.disabled


def test_ui_errors_are_shown_not_raised(ws, fallback):
    ui = G.build_generation_ui(fallback)
    ui.button.click()  # nothing uploaded
    assert "upload an image first" in ui.error and ui.audio.value == ""
    ui.upload.value = upload_value(b"this is not an image", name="notes.png")
    assert "cannot read the uploaded image 'notes.png'" in ui.error
    ui.button.click()
    assert "upload an image first" in ui.error
    ui.upload.value = upload_value(png_bytes(ws, 1))
    assert ui.error is None
    ui.button.click()
    assert ui.error is None and ui.wav_bytes


def test_ui_controls_and_defaults(fallback):
    ui = G.build_generation_ui(fallback, duration=7.5, steps=12, guidance_scale=3.0, seed=4, n_candidates=3)
    assert (ui.duration.min, ui.duration.max, ui.duration.value) == (2.5, 10.0, 7.5)
    assert (ui.steps.value, ui.guidance.value, ui.seed.value, ui.n_candidates.value) == (12, 3.0, 4, 3)
    assert ui.button.description == "Generate"
    with pytest.raises(ValueError, match="duration"):
        G.build_generation_ui(fallback, duration=12.0)
    with pytest.raises(ValueError, match="n_candidates"):
        G.build_generation_ui(fallback, n_candidates=0)


def test_generator_signatures_match():
    d = inspect.signature(gens.DiffusionGenerator.generate).parameters
    n = inspect.signature(NearestNeighbourGenerator.generate).parameters
    assert list(d) == list(n)
    assert all(d[k].default == n[k].default for k in d)


def test_batch_files_are_labelled_and_exact(ws, fallback, tmp_path):
    images = batch.default_images(ws["data"], 2)
    recs = batch.generate_files(fallback, images, tmp_path / "wavs", duration=2.5)
    assert [r["wav"].name for r in recs] == [f"{p.stem}.nn-retrieval.wav" for p in images]
    for r in recs:
        data, sr = sf.read(r["wav"])
        assert sr == SR and data.shape == (40000,) and r["kind"] == "retrieval"
        assert "retrieved training clip" in r["note"]
    with pytest.raises(ValueError, match="generation.images"):
        batch.generate_files(fallback, [tmp_path / "missing.png"], tmp_path / "wavs")


def test_load_generator_without_checkpoint_falls_back_with_clear_notice(ciap, ws, tmp_path):
    gen, notice = gens.load_generator(ciap, audioldm=str(tmp_path / "nope.ckpt"), ckpt_dir=tmp_path, data=ws["data"])
    assert isinstance(gen, NearestNeighbourGenerator)
    assert "python -m ciap_lib download" in notice and "NOT diffusion" in notice
    md = gens.generator_markdown(gen, notice)
    assert "RETRIEVAL fallback (not diffusion)" in md


def test_refused_audioldm_checkpoint_falls_back_and_says_why(ciap, ws, tmp_path):
    from fixtures.crafted import crafted_file

    marker = tmp_path / "pwned"
    evil = crafted_file(tmp_path / "evil.ckpt", marker)
    gen, notice = gens.load_generator(ciap, audioldm=str(evil), data=ws["data"])
    assert isinstance(gen, NearestNeighbourGenerator) and not marker.exists()
    assert "refused to load" in notice and "evil.ckpt" in notice and "NOT diffusion" in notice


def test_resolve_checkpoint(ws, tmp_path):
    from ciap_lib.checkpoint import pick_checkpoint

    import shutil

    picked = pick_checkpoint(ws["checkpoint"])  # the run's best.pt when it has one
    assert batch.resolve_checkpoint(picked) == (picked, "")
    run = tmp_path / "ckpt" / "run"                 # a run with both files
    run.mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        shutil.copyfile(ws["checkpoint"], run / name)
    path, note = batch.resolve_checkpoint(run / "last.pt")
    assert path == run / "best.pt" and f"using {run / 'best.pt'}" in note and "best epoch" in note  # said
    path, note = batch.resolve_checkpoint(tmp_path / "missing.pt", ckpt_dir=ws["checkpoint"].parent.parent)
    assert path == picked and "newest" in note
    with pytest.raises(ValueError, match="checkpoint"):
        batch.resolve_checkpoint(tmp_path / "missing.pt", ckpt_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- tiny AudioLDM
@pytest.fixture(scope="module")
def diffusion(ciap, ws, tiny_audioldm_ckpt):
    """The tiny AudioLDM (original checkpoint format) through the notebook's own loading path."""
    gen, notice = gens.load_generator(ciap, audioldm=str(tiny_audioldm_ckpt), data=ws["data"])
    assert notice == ""
    return gen


def test_load_generator_picks_diffusion_when_the_checkpoint_loads(diffusion):
    assert isinstance(diffusion, gens.DiffusionGenerator)
    assert diffusion.is_diffusion and diffusion.kind == "diffusion"
    md = gens.generator_markdown(diffusion)
    assert md.startswith("**Generator: diffusion.**") and "not CLAP's" in md  # a logmel_cnn checkpoint
    assert set(diffusion.samplers) >= {"dpmpp", "ddim"}


def test_diffusion_ui_click_gives_wav_of_chosen_duration(ws, diffusion):
    fingerprint = diffusion.audioldm.fingerprint()
    ui = G.build_generation_ui(diffusion, steps=2)
    assert "Diffusion" in ui.status.value and "NOT diffusion" not in ui.status.value
    assert not ui.steps.disabled and not ui.sampler.disabled and not ui.seed.disabled
    seen = []
    ui.progress.observe(lambda ch: seen.append(ch["new"]), names="value")
    drive(ui, png_bytes(ws), 2.5)
    assert ui.error is None, ui.error
    data, sr = wav_of(ui)
    assert sr == SR and data.shape == (40000,)
    assert np.isfinite(data).all() and np.abs(data).max() > 0
    assert "generated (diffusion)" in ui.message.value
    # the progress bar followed the sampler's callback step by step up to its total
    assert ui.progress.value == ui.progress.max >= 3 and len(set(seen)) >= 3
    assert diffusion.audioldm.fingerprint() == fingerprint  # still frozen


class Recorder:
    """The real generator; keeps the keyword arguments of every ``generate`` call (what the UI sent)."""

    def __init__(self, generator):
        self._generator, self.calls = generator, []

    def __getattr__(self, name):
        return getattr(self._generator, name)

    def generate(self, **kw):
        self.calls.append(kw)
        return self._generator.generate(**kw)


def test_steps_show_and_follow_the_samplers_own_count(diffusion, fallback):
    from ciap_lib.bridge import DEFAULT_STEPS

    ui = G.build_generation_ui(diffusion)
    assert ui.sampler.value == "dpmpp" and ui.steps.value == DEFAULT_STEPS["dpmpp"] == 6
    ui.sampler.value = "ddim"
    assert ui.steps.value == DEFAULT_STEPS["ddim"] == 200          # AudioLDM's own 200, not 20
    ui.sampler.value = "unipc"
    assert ui.steps.value == DEFAULT_STEPS["unipc"]
    ui.steps.value = 3                                              # the user's choice survives a sampler change
    ui.sampler.value = "ddim"
    assert ui.steps.value == 3
    assert G.build_generation_ui(diffusion, sampler="ddim").steps.value == 200
    assert G.build_generation_ui(diffusion, steps=12).steps.value == 12
    ui.steps.value = 0  # below the slider's minimum: clamped to 1 by the widget
    assert ui.steps.value == 1


# (widget attribute, value to set, generate() keyword it must reach); each control alone
CONTROLS = [("seed", 3, "seed"), ("steps", 2, "steps"), ("guidance", 4.0, "guidance_scale"),
            ("sampler", "ddim", "sampler"), ("n_candidates", 2, "n_candidates"), ("duration", 3.0, "duration")]


@pytest.fixture(scope="module")
def baseline(ws, diffusion):
    """The clip and the generate() arguments of a click with every control at its default (1 step, 2.5 s)."""
    rec = Recorder(diffusion)
    ui = G.build_generation_ui(rec, duration=2.5, steps=1)
    ui.upload.value = upload_value(png_bytes(ws))
    wave = ui.generate()
    assert ui.error is None, ui.error
    return wave, rec.calls[-1]


@pytest.mark.parametrize("control, value, keyword", CONTROLS, ids=[c[0] for c in CONTROLS])
def test_each_control_reaches_the_generator(ws, diffusion, baseline, control, value, keyword):
    base_wave, base_kw = baseline
    rec = Recorder(diffusion)
    ui = G.build_generation_ui(rec, duration=2.5, steps=1)
    ui.upload.value = upload_value(png_bytes(ws))
    getattr(ui, control).value = value
    wave = ui.generate()
    assert ui.error is None, ui.error
    kw = rec.calls[-1]
    assert kw[keyword] == value, f"the {control} control did not reach generate({keyword}=...)"
    changed = {k for k in base_kw if k not in ("images", "callback") and kw[k] != base_kw[k]}
    assert changed == {keyword}, changed
    if control != "n_candidates":  # the best of 2 candidates may be the first one, i.e. the default clip
        assert wave.shape != base_wave.shape or not np.array_equal(wave, base_wave)


def test_batch_files_with_diffusion(ws, diffusion, tmp_path):
    [rec] = batch.generate_files(diffusion, batch.default_images(ws["data"], 1), tmp_path / "wavs", duration=2.5,
                                 steps=1)
    assert rec["wav"].name == "val_00000.wav" and rec["kind"] == "diffusion"
    info = sf.info(rec["wav"])
    assert info.samplerate == SR and info.frames == 40000
    assert -1.0 <= rec["clap_score"] <= 1.0 and "CLAP score" in rec["note"]
    # images of the user's own have no paired clip: the CLAP score is their only figure, named by its system
    m = batch.records_metrics([rec])
    assert m == {"n_clips": 1.0, "diffusion.seconds_per_clip": rec["seconds"], "diffusion.clap_score": rec["clap_score"]}


# ---------------------------------------------------------------------------------------------- guidance controls
@pytest.fixture(scope="module")
def diffusion_tok(diffusion, ciap, tiny_tokenizer_dir):
    """The same tiny AudioLDM, with the tiny RoBERTa tokenizer for text negatives and mixes."""
    return gens.DiffusionGenerator(diffusion.audioldm, ciap, name="tiny", tokenizer_dir=tiny_tokenizer_dir)


def click(ws, generator, **set_controls):
    """Build the UI (2.5 s, 1 step), set the controls (``name=value``; callables are called with the UI), click;
    returns (waveform, the generate() keywords, ui)."""
    rec = Recorder(generator)
    ui = G.build_generation_ui(rec, duration=2.5, steps=1)
    ui.upload.value = upload_value(png_bytes(ws))
    for name, value in set_controls.items():
        value(ui) if callable(value) else setattr(getattr(ui, name), "value", value)
    wave = ui.generate()
    assert ui.error is None, ui.error
    return wave, rec.calls[-1], ui


def changed_keywords(kw, base_kw) -> set:
    return {k for k in base_kw if k not in ("images", "callback") and kw[k] != base_kw[k]}


def test_negative_text_control_reaches_the_generator(ws, diffusion_tok, baseline):
    base_wave, base_kw = baseline
    assert base_kw["negative_text"] is None and base_kw["negative"] == [] and base_kw["mix"] == []
    wave, kw, _ = click(ws, diffusion_tok, negative_text="speech")
    assert kw["negative_text"] == "speech", "the negative text control did not reach generate(negative_text=...)"
    assert changed_keywords(kw, base_kw) == {"negative_text"}
    assert not np.array_equal(wave, base_wave)


def test_negative_clip_upload_reaches_the_generator(ws, diffusion_tok, baseline, tmp_path):
    base_wave, base_kw = baseline
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.random.default_rng(0).standard_normal(16000).astype(np.float32), SR, format="WAV")
    data = buf.getvalue()
    wave, kw, ui = click(ws, diffusion_tok,
                         negative_upload=upload_value(data, name="talking.wav", mime="audio/wav"))
    assert len(kw["negative"]) == 1, "the uploaded clip did not reach generate(negative=...)"
    path = kw["negative"][0]
    assert path.endswith("talking.wav") and open(path, "rb").read() == data
    assert "talking.wav" in ui.negative_files.value
    assert changed_keywords(kw, base_kw) == {"negative"}
    assert not np.array_equal(wave, base_wave)
    ui.negative_clear.click()
    assert ui.params().negative == [] and ui.negative_files.value == ""


def test_mix_weight_control_reaches_the_generator(ws, diffusion_tok, baseline):
    base_wave, base_kw = baseline
    wave0, kw0, _ = click(ws, diffusion_tok, mix_text="rain")          # weight 0: nothing is mixed in
    assert kw0["mix"] == [] and np.array_equal(wave0, base_wave)
    wave, kw, _ = click(ws, diffusion_tok, mix_text="rain", mix_weight=0.5)
    assert kw["mix"] == ["text:rain:0.5"], "the mix weight control did not reach generate(mix=...)"
    assert changed_keywords(kw, base_kw) == {"mix"}
    assert not np.array_equal(wave, base_wave)


def test_mix_clip_upload_reaches_the_generator(ws, diffusion_tok, baseline):
    base_wave, base_kw = baseline
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.random.default_rng(1).standard_normal(16000).astype(np.float32), SR, format="WAV")
    data = buf.getvalue()
    up = upload_value(data, name="rain.wav", mime="audio/wav")
    wave0, kw0, _ = click(ws, diffusion_tok, mix_upload=up)                 # weight 0: nothing is mixed in
    assert kw0["mix"] == [] and np.array_equal(wave0, base_wave)
    wave, kw, ui = click(ws, diffusion_tok, mix_upload=up, mix_clip_weight=0.3)
    [entry] = kw["mix"]
    path, weight = entry.rsplit(":", 1)
    assert weight == "0.3" and path.endswith("rain.wav") and open(path, "rb").read() == data, \
        "the uploaded clip did not reach generate(mix=...)"
    assert "rain.wav" in ui.mix_file.value and changed_keywords(kw, base_kw) == {"mix"}
    assert not np.array_equal(wave, base_wave)


def test_guidance_controls_start_from_the_params_and_errors_are_shown(ws, diffusion):
    ui = G.build_generation_ui(diffusion, negative_text="speech", mix=["clip.wav:0.2", "text:rain:0.3"])
    assert (ui.negative_text.value, ui.mix_text.value, ui.mix_weight.value) == ("speech", "rain", 0.3)
    assert (ui.mix_clip, ui.mix_clip_weight.value) == ("clip.wav", 0.2) and "clip.wav" in ui.mix_file.value
    assert ui.params().mix == ["clip.wav:0.2", "text:rain:0.3"]
    ui = G.build_generation_ui(diffusion, mix=["text:rain:0.3", "a.wav:0.1", "clip.wav:0.2"])  # the order is kept
    assert ui.params().mix == ["text:rain:0.3", "a.wav:0.1", "clip.wav:0.2"]
    with pytest.raises(ValueError, match="mix"):
        G.build_generation_ui(diffusion, mix=["text:rain:2"])
    ui = G.build_generation_ui(diffusion, duration=2.5, steps=1)
    ui.upload.value = upload_value(png_bytes(ws))
    ui.negative_text.value = "speech"           # the generator has no tokenizer: a clear error in the UI
    assert ui.generate() is None
    assert "roberta-base" in ui.error and "save_pretrained" in ui.error


def test_split_batch_mode_takes_the_tokenizer_for_text_steering(ws, ciap, diffusion_tok, tmp_path):
    """Notebook 04's batch mode on val pairs (``batch.evaluate_split``) with ``negative_text``: the generator's
    tokenizer reaches ``evaluate-generation``'s sampler (it had stopped with "no tokenizer folder")."""
    from ciap_lib.bridge.params import GenerationParams

    params = GenerationParams(duration=2.5, steps=1, batch_size=2, negative_text="speech", device="cpu")
    generation = {"n_images": 2, "fallback_split": "train", "metrics_dir": str(tmp_path / "no-weights")}
    rep = batch.evaluate_split(diffusion_tok, ciap, ws["checkpoint"], ws["data"], generation, params,
                               tmp_path / "run", None)
    ev = rep.evaluation
    assert ev.params.negative_text == "speech" and ev.systems["diffusion"].generated == 2
    # and a tokenizer folder named in the notebook's parameters wins over the generator's
    generation["tokenizer_dir"] = str(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="nothing-here"):
        batch.evaluate_split(diffusion_tok, ciap, ws["checkpoint"], ws["data"], generation, params,
                             tmp_path / "run2", None)


def test_batch_files_and_the_ui_prepare_images_as_the_checkpoint_stores(ws, tmp_path):
    """A checkpoint with stored CLIP mean/std and a squash crop: notebook 04's batch files and an upload in the UI
    query the fallback with the images prepared that way (the same scores, to the last bit, as its own search)."""
    from fixtures.preprocess import STORED, stored_preprocess_checkpoint

    from ciap_lib.images import load_image

    model, _ = load_ciap(stored_preprocess_checkpoint(tmp_path, ws["data"]))
    g = NearestNeighbourGenerator.from_dataset(model, ws["data"], "train")
    assert g.preprocess == STORED
    images = batch.default_images(ws["data"], 2)

    def scores(preprocess) -> list[float]:
        return [g.search(load_image(p, preprocess)[None])[0].score for p in images]

    expected = scores(STORED)
    assert scores(32) != expected  # ImageNet's preparation gives other scores: the checks below tell them apart
    got = []
    for p in images:
        batch.generate_files(g, [p], tmp_path / "wavs", duration=2.5)
        got.append(g.last_matches[0].score)
    assert got == expected
    ui = G.build_generation_ui(g)
    drive(ui, images[1].read_bytes(), 2.5)
    assert ui.error is None, ui.error
    assert g.last_matches[0].score == expected[1]


def test_the_precision_parameter_reaches_the_generator(ws, diffusion, tmp_path):
    """Notebook 04's ``precision`` (a GenerationParams field with no control of its own) reaches generate() from the
    widget and from the batch path, and the clip is the one that precision gives."""
    from ciap_lib import bridge

    rec = Recorder(diffusion)
    ui = G.build_generation_ui(rec, duration=2.5, steps=1, precision="fp32")
    ui.upload.value = upload_value(png_bytes(ws))
    wave = ui.generate()
    assert ui.error is None, ui.error
    assert rec.calls[-1]["precision"] == "fp32"
    rec = Recorder(diffusion)
    [out] = batch.generate_files(rec, batch.default_images(ws["data"], 1), tmp_path / "wavs", duration=2.5, steps=1,
                                 precision="fp32")
    assert rec.calls[-1]["precision"] == "fp32"
    img = rec.calls[-1]["images"]
    want = bridge.generate(diffusion.audioldm, images=img, cond_stage=diffusion.cond_stage, duration=2.5, steps=1,
                           precision="fp32")[0]
    np.testing.assert_array_equal(out["waveform"], want)
    assert wave.shape == want.shape
