"""Image-to-audio generation widget (notebook 04).

>>> gen, notice = load_generator(ciap_model, audioldm="audioldm-s-full", data="data/synthetic")  # ui.generators
>>> ui = build_generation_ui(gen)     # in a notebook: display(ui) (or leave it last in a cell)
>>> ui.set_image(png_bytes)           # what the FileUpload does
>>> ui.duration.value = 4.0
>>> ui.negative_text.value = "speech" # steer away from speech (needs the generator's local RoBERTa tokenizer)
>>> ui.button.click()                 # what a click does; ui.waveform / ui.wav_bytes hold the result

Inline audio is ``IPython.display.Audio`` HTML (an embedded WAV, ``<audio controls>``, no autoplay), which
survives papermill and HTML export. Widget callbacks never fire under papermill: notebook 04 has a batch path
(:mod:`ciap_lib.ui.batch`).
"""
from __future__ import annotations

import base64
import html as _html
import io
import re
import time
from typing import Any

import ipywidgets as widgets
import numpy as np

from ciap_lib.bridge.guidance import TEXT_PREFIX, parse_mix
from ciap_lib.bridge.params import GenerationParams
from ciap_lib.bridge.sampling import DEFAULT_STEPS
from ciap_lib.constants import MAX_DURATION, MIN_DURATION, SAMPLE_RATE, check_duration
from ciap_lib.ui.generators import Generator

#: the steps slider's upper end (AudioLDM's DDIM default is 200)
MAX_STEPS = 500


def audio_widget_html(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """``IPython.display.Audio`` HTML (embedded 16-bit WAV, controls, no autoplay) of a (T,) waveform."""
    from IPython.display import Audio

    w = np.clip(np.nan_to_num(np.asarray(waveform, dtype=np.float32).reshape(-1)), -1.0, 1.0)
    return Audio(w, rate=int(sample_rate), normalize=False, autoplay=False)._repr_html_()


def wav_from_html(html: str) -> bytes:
    """The WAV bytes embedded in an ``<audio>`` tag made by :func:`audio_widget_html` (for tests)."""
    m = re.search(r'src="data:audio/(?:x-)?wav;base64,([A-Za-z0-9+/=\s]+)"', html)
    if not m:
        raise ValueError("no embedded WAV (data:audio/wav;base64,...) found in the HTML")
    return base64.b64decode(m.group(1))


def wav_bytes(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A (T,) waveform as 16-bit WAV file bytes."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(waveform, dtype=np.float32).reshape(-1), -1, 1), sample_rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _progress_fraction(args: tuple, kwargs: dict) -> tuple[int, int] | None:
    """``(step, total)`` from a sampler callback's arguments (``callback(step, total)`` or keywords)."""
    step = kwargs.get("step", args[0] if args else None)
    total = kwargs.get("total", args[1] if len(args) > 1 else None)
    try:
        return int(step), int(total)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- the UI
class GenerationUI(widgets.VBox):
    """The generation widget (a ``VBox``). See :func:`build_generation_ui`.

    Widgets: ``upload`` (FileUpload), ``preview`` (Image), ``duration`` (FloatSlider 2.5–10 s), ``steps`` (shows the
    sampler's own count, and follows it when the sampler changes unless the user set another), ``guidance``,
    ``seed``, ``sampler``, ``n_candidates``, ``button`` (Generate), ``progress`` (IntProgress, driven by the
    sampler's callback), ``status`` (HTML: which generator, diffusion or retrieval), ``audio`` (HTML holding the
    ``IPython.display.Audio`` player).

    Guidance (``GenerationParams.negative`` / ``negative_text`` / ``mix``): ``negative_text`` (Text: what to steer
    away from, e.g. "speech"), ``negative_upload`` (FileUpload of audio clips to steer away from; kept in a
    temporary folder, listed in ``negative_files``, emptied by ``negative_clear``), ``mix_text`` (Text) and
    ``mix_weight`` (FloatSlider 0–1): the condition becomes ``normalize((1 - w) * image + w * text)``;
    ``mix_upload`` (FileUpload of one audio clip, kept in the same temporary folder and named in ``mix_file``) and
    ``mix_clip_weight``: the same with the clip's CLAP audio embedding. The params' first text and first clip
    entries of ``mix`` start these controls; their other mix entries are kept as they are.

    Results of the latest click: ``waveform`` ((T,) float32, 16 kHz), ``wav_bytes`` (the WAV in the player),
    ``error`` (the exception text, or None), ``seconds``.
    """

    def __init__(self, generator: Generator, params: GenerationParams | None = None, **overrides: Any) -> None:
        p = GenerationParams.from_dict({**(params.to_dict() if params is not None else {}), **overrides}).check()
        self.generator = generator
        self.image_bytes: bytes | None = None
        self.image_name = ""
        self.waveform: np.ndarray | None = None
        self.wav_bytes: bytes | None = None
        self.error: str | None = None
        self.seconds = 0.0
        self._base = p

        diffusion = bool(generator.is_diffusion)
        style = {"description_width": "110px"}
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="Image")
        self.preview = widgets.Image(format="png", width=128, height=128)
        self.preview.layout.display = "none"
        self.duration = widgets.FloatSlider(value=check_duration(p.duration), min=MIN_DURATION, max=MAX_DURATION,
                                            step=0.5, description="Duration (s)", style=style, readout_format=".1f")
        samplers = tuple(generator.samplers) or (p.sampler,)
        self.sampler = widgets.Dropdown(options=samplers, value=p.sampler if p.sampler in samplers else samplers[0],
                                        description="Sampler", style=style, disabled=not diffusion)
        steps = p.steps if p.steps is not None else DEFAULT_STEPS[self.sampler.value]
        self.steps = widgets.IntSlider(value=steps, min=1, max=max(MAX_STEPS, steps), description="Steps",
                                       style=style, disabled=not diffusion,
                                       tooltip="solver steps; set to the sampler's own count when it changes")
        self.guidance = widgets.FloatSlider(value=float(p.guidance_scale), min=0.0, max=10.0, step=0.5,
                                            description="Guidance", style=style, disabled=not diffusion)
        self.seed = widgets.IntText(value=int(p.seed), description="Seed", style=style, disabled=not diffusion)
        self.n_candidates = widgets.IntSlider(value=int(p.n_candidates), min=1, max=max(8, p.n_candidates),
                                              description="Candidates", style=style, disabled=not diffusion,
                                              tooltip="clips per image; the closest to the image in CLAP space is kept")
        # guidance: what to steer away from, what to mix in
        self.negative_clips: list[str] = list(p.negative)
        self._upload_dir: str | None = None
        self._mix_uploads = 0
        self.negative_text = widgets.Text(value=p.negative_text or "", placeholder="e.g. speech",
                                          description="Avoid (text)", style=style, disabled=not diffusion,
                                          tooltip="guidance steers away from this text's CLAP embedding instead of ''")
        self.negative_upload = widgets.FileUpload(accept="audio/*", multiple=True, description="Avoid (clips)",
                                                  disabled=not diffusion,
                                                  tooltip="guidance steers away from these clips' CLAP embedding")
        self.negative_clear = widgets.Button(description="Clear clips", disabled=not diffusion,
                                             tooltip="forget the clips to avoid")
        self.negative_files = widgets.HTML()
        at = next((i for i, m in enumerate(p.mix) if m.startswith(TEXT_PREFIX)), None)  # shown in the controls
        first = parse_mix(p.mix[at]) if at is not None else None
        at_clip = next((i for i, m in enumerate(p.mix) if parse_mix(m).kind == "audio"), None)
        clip = parse_mix(p.mix[at_clip]) if at_clip is not None else None
        # the params' order, with the two controlled entries in their places (a new one goes last)
        self._mix_layout = [{at: "text", at_clip: "clip"}.get(i, m) for i, m in enumerate(p.mix)]
        self._mix_layout += [c for c in ("clip", "text") if c not in self._mix_layout]
        self.mix_clip: str | None = clip.value if clip else None
        self.mix_text = widgets.Text(value=first.value if first else "", placeholder="e.g. rain",
                                     description="Mix in (text)", style=style, disabled=not diffusion)
        self.mix_weight = widgets.FloatSlider(value=first.weight if first else 0.0, min=0.0, max=1.0, step=0.05,
                                              description="Mix weight", style=style, disabled=not diffusion,
                                              tooltip="condition = normalize((1 - w) * image + w * text)")
        self.mix_upload = widgets.FileUpload(accept="audio/*", multiple=False, description="Mix in (clip)",
                                             disabled=not diffusion,
                                             tooltip="mix this clip's CLAP audio embedding into the condition")
        self.mix_file = widgets.HTML(f"Mixing in: {_html.escape(clip.value)}" if clip else "")
        self.mix_clip_weight = widgets.FloatSlider(value=clip.weight if clip else 0.0, min=0.0, max=1.0, step=0.05,
                                                   description="Clip weight", style=style, disabled=not diffusion,
                                                   tooltip="condition = normalize((1 - w) * image + w * clip)")
        self.button = widgets.Button(description="Generate", button_style="primary", icon="play",
                                     tooltip="Generate audio for the uploaded image")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="Progress", style=style)
        kind = ("<b>Diffusion</b>" if diffusion else
                "<b style='color:#b35900'>Retrieval fallback &mdash; NOT diffusion output</b>")
        self.status = widgets.HTML(f"{kind}: {_html.escape(generator.label)}")
        self.message = widgets.HTML("Upload an image, then press <i>Generate</i>.")
        self.audio = widgets.HTML()

        self.upload.observe(self._on_upload, names="value")
        self.sampler.observe(self._on_sampler, names="value")
        self.button.on_click(self.generate)
        self.negative_upload.observe(self._on_negative_upload, names="value")
        self.negative_clear.on_click(self._on_negative_clear)
        self.mix_upload.observe(self._on_mix_upload, names="value")
        self._show_negative_files()
        controls = widgets.VBox([self.duration, self.sampler, self.steps, self.guidance, self.seed, self.n_candidates])
        steer = widgets.VBox([self.negative_text, widgets.HBox([self.negative_upload, self.negative_clear]),
                              self.negative_files, self.mix_text, self.mix_weight, self.mix_upload, self.mix_file,
                              self.mix_clip_weight])
        super().__init__([self.status, widgets.HBox([widgets.VBox([self.upload, self.preview]), controls, steer]),
                          widgets.HBox([self.button, self.progress]), self.message, self.audio])

    def params(self) -> GenerationParams:
        """The generation parameters the controls show now (checked)."""
        controlled = {}
        if self.mix_clip and float(self.mix_clip_weight.value) > 0:
            controlled["clip"] = f"{self.mix_clip}:{float(self.mix_clip_weight.value):g}"
        if self.mix_text.value and float(self.mix_weight.value) > 0:
            controlled["text"] = f"{TEXT_PREFIX}{self.mix_text.value}:{float(self.mix_weight.value):g}"
        mix = [controlled.get(m) if m in ("clip", "text") else m for m in self._mix_layout]
        mix = [m for m in mix if m]
        return GenerationParams.from_dict({
            **self._base.to_dict(), "duration": float(self.duration.value), "steps": int(self.steps.value),
            "sampler": self.sampler.value, "guidance_scale": float(self.guidance.value), "seed": int(self.seed.value),
            "n_candidates": int(self.n_candidates.value), "negative": list(self.negative_clips),
            "negative_text": self.negative_text.value or None, "mix": mix}).check()

    # -- clips to steer away from --------------------------------------------------------------------------
    def _save_upload(self, f: dict, stem: str) -> str:
        """An uploaded file's bytes, written atomically into this UI's temporary folder as ``<stem>_<name>``."""
        import tempfile

        from ciap_lib.atomic import atomic_path

        if self._upload_dir is None:
            self._upload_dir = tempfile.mkdtemp(prefix="ciap-clips-")
        content = f["content"]
        data = content.tobytes() if hasattr(content, "tobytes") else bytes(content)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f.get("name") or "clip.wav")
        path = f"{self._upload_dir}/{stem}_{name}"
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return path

    def _on_negative_upload(self, change: dict) -> None:
        """Uploaded clips replace the clips to avoid; their bytes go to a temporary folder (atomic writes)."""
        if not change["new"]:
            return
        self.negative_clips = [self._save_upload(f, f"negative{len(self.negative_clips) + i:03d}")
                               for i, f in enumerate(change["new"])]
        self._show_negative_files()

    def _on_mix_upload(self, change: dict) -> None:
        """An uploaded clip becomes the clip mixed in (at ``mix_clip_weight``)."""
        if not change["new"]:
            return
        self._mix_uploads += 1
        self.mix_clip = self._save_upload(change["new"][0], f"mix{self._mix_uploads:03d}")
        self.mix_file.value = f"Mixing in: {_html.escape(change['new'][0].get('name') or 'clip')}"

    def _on_negative_clear(self, _button: Any = None) -> None:
        self.negative_clips = []
        self._show_negative_files()

    def _show_negative_files(self) -> None:
        import os

        names = ", ".join(_html.escape(os.path.basename(p)) for p in self.negative_clips)
        self.negative_files.value = f"Avoiding: {names}" if names else ""

    def _on_sampler(self, change: dict) -> None:
        """A new sampler brings its own step count, unless the user had set another than the old one's."""
        if self.steps.value == DEFAULT_STEPS.get(change["old"]) and change["new"] in DEFAULT_STEPS:
            self.steps.value = DEFAULT_STEPS[change["new"]]

    def __repr__(self) -> str:  # the text/plain of the widget (what papermill / HTML export keep)
        return (f"<Generation UI ({'diffusion' if self.generator.is_diffusion else 'retrieval fallback, NOT diffusion'}): "
                "interactive in a live kernel: upload an image, press Generate>")

    # -- image ---------------------------------------------------------------------------------------------
    def _on_upload(self, change: dict) -> None:
        value = change["new"]
        if value:
            f = value[0]
            content = f["content"]
            self.set_image(content.tobytes() if hasattr(content, "tobytes") else bytes(content), f.get("name", ""))

    def set_image(self, data: bytes, name: str = "upload.png") -> None:
        """Use ``data`` (encoded image bytes) as the query image, as the upload does; shows a preview."""
        from ciap_lib.images import load_image_uint8

        self.image_bytes, self.image_name = bytes(data), name or "upload.png"
        try:
            arr = load_image_uint8(self.image_bytes, 128)
        except ValueError as e:
            self.image_bytes = None
            self._fail(f"cannot read the uploaded image {self.image_name!r}: {e}")
            return
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        self.preview.value = buf.getvalue()
        self.preview.layout.display = None
        self.error = None
        self.message.value = f"Image: {_html.escape(self.image_name)}. Press <i>Generate</i>."

    # -- generation ----------------------------------------------------------------------------------------
    def _callback(self, *args: Any, **kwargs: Any) -> None:
        frac = _progress_fraction(args, kwargs)
        if frac is not None:
            step, total = frac
            self.progress.max = max(total, 1)
            self.progress.value = min(max(step, 0), self.progress.max)

    def _fail(self, text: str) -> None:
        self.error = text
        self.message.value = f"<span style='color:#c00'>Error: {_html.escape(text)}</span>"

    def generate(self, _button: Any = None) -> np.ndarray | None:
        """The Generate button's handler: generate for the current image and controls; show the player.

        Returns the (T,) waveform, or None after an error (shown in ``message`` and kept in ``error``).
        """
        from ciap_lib.images import load_image

        if self.image_bytes is None:
            self._fail("upload an image first")
            return None
        self.error = None
        self.button.disabled = True
        self.progress.bar_style = ""
        self.progress.value = 0
        self.message.value = "Generating…"
        t0 = time.perf_counter()
        try:
            image = load_image(self.image_bytes, self.generator.preprocess)[None]
            p = self.params()
            out = self.generator.generate(
                images=image, duration=p.duration, steps=p.steps, guidance_scale=p.guidance_scale, seed=p.seed,
                sampler=p.sampler, n_candidates=p.n_candidates, callback=self._callback, negative=p.negative,
                negative_text=p.negative_text, mix=p.mix, device=p.device, precision=p.precision)
        except Exception as e:  # shown in the UI; the notebook keeps running
            self._fail(f"{type(e).__name__}: {e}")
            self.progress.bar_style = "danger"
            return None
        finally:
            self.button.disabled = False
        self.seconds = time.perf_counter() - t0
        self.waveform = np.asarray(out, dtype=np.float32)[0]
        self.audio.value = audio_widget_html(self.waveform)
        self.wav_bytes = wav_from_html(self.audio.value)
        self.progress.value = self.progress.max
        self.progress.bar_style = "success"
        what = "generated (diffusion)" if self.generator.is_diffusion else "RETRIEVED from the training set (not diffusion)"
        extra = ""
        if not self.generator.is_diffusion and hasattr(self.generator, "describe"):
            extra = ": " + "; ".join(self.generator.describe())
        self.message.value = (f"{self.waveform.shape[0] / SAMPLE_RATE:.2f} s {what} in {self.seconds:.1f} s"
                              f"{_html.escape(extra)}")
        return self.waveform


def build_generation_ui(generator: Generator, params: GenerationParams | None = None,
                        **overrides: Any) -> GenerationUI:
    """The generation UI for ``generator`` (diffusion or the retrieval fallback).

    Its controls start at ``params`` (default: :class:`~ciap_lib.bridge.GenerationParams`'s defaults) with
    ``overrides`` (any of its fields: ``duration``, ``steps``, ``guidance_scale``, ``seed``, ``sampler``,
    ``n_candidates``, ``negative``, ``negative_text``, ``mix``, ...) applied; bad values raise a ``ValueError``
    naming them.
    """
    return GenerationUI(generator, params, **overrides)
