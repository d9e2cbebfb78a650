"""Image-to-audio generation UI (notebook 04) and the generator objects it drives.

>>> gen, notice = load_generator(ciap_model, audioldm="audioldm-s-full", data="data/synthetic")
>>> ui = build_generation_ui(gen)     # in a notebook: display(ui) (or leave it last in a cell)
>>> ui.set_image(png_bytes)           # what the FileUpload does
>>> ui.duration.value = 4.0
>>> ui.button.click()                 # what a click does; ui.waveform / ui.wav_bytes hold the result

Two generators share one ``generate(images=None, image_embeds=None, cond_stage=None, duration=5.0, steps=None,
guidance_scale=2.5, seed=0, n_candidates=1, sampler="dpmpp", callback=None) -> (B, T)`` signature:

* :class:`DiffusionGenerator`: the frozen AudioLDM (``ciap_lib.bridge``) conditioned on CIAP image embeddings;
* :class:`ciap_lib.fallback.NearestNeighbourGenerator`: retrieval of the closest training clip, used when no
  AudioLDM checkpoint exists. It is labelled as retrieval everywhere (status line, batch file names, MLflow tags).

Inline audio is ``IPython.display.Audio`` HTML (an embedded WAV, ``<audio controls>``, no autoplay), which
survives papermill and HTML export. Widget callbacks never fire under papermill: notebook 04 has a batch path.
"""
from __future__ import annotations

import base64
import html as _html
import io
import re
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import ipywidgets as widgets
import numpy as np
import torch

from ciap_lib.fallback import MAX_DURATION, MIN_DURATION, SAMPLE_RATE, NearestNeighbourGenerator, check_duration

DEFAULT_SAMPLERS: tuple[str, ...] = ("dpmpp", "ddim")


class Generator(Protocol):
    """What the UI needs from a generator (see the module docstring)."""

    kind: str              # "diffusion" | "retrieval"
    is_diffusion: bool
    samplers: tuple[str, ...]

    @property
    def label(self) -> str: ...

    @property
    def image_size(self) -> int: ...

    def generate(self, images: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                 cond_stage: Any = None, duration: float = 5.0, steps: int | None = None,
                 guidance_scale: float = 2.5, seed: int = 0, n_candidates: int = 1, sampler: str = "dpmpp",
                 callback: Callable[..., Any] | None = None) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------- generators
class DiffusionGenerator:
    """The frozen AudioLDM conditioned on a CIAP model's image embeddings (``ciap_lib.bridge.generate``).

    Args:
        audioldm: a loaded ``FrozenAudioLDM`` (``ciap_lib.bridge.load_audioldm``).
        ciap_model: the CIAP model whose image tower conditions AudioLDM (``CIAPCondStage``).
        name: what to call the checkpoint in the label (its name or path).
    """

    kind = "diffusion"
    is_diffusion = True

    def __init__(self, audioldm: Any, ciap_model: torch.nn.Module, name: str = "") -> None:
        from ciap_lib import bridge  # lazy: imports audioldm / diffusers

        self.audioldm = audioldm
        self.model = ciap_model.eval()
        self.cond_stage = bridge.CIAPCondStage(ciap_model)
        self.name = str(name)
        self.samplers = _bridge_samplers()

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def label(self) -> str:
        return (f"Diffusion: frozen AudioLDM ({self.name or 'checkpoint'}) conditioned on the CIAP image "
                f"embedding ({self.model.config.audio_encoder} mode).")

    def __repr__(self) -> str:
        return f"DiffusionGenerator(audioldm={self.name!r})"

    def generate(self, images: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                 cond_stage: Any = None, duration: float = 5.0, steps: int | None = None,
                 guidance_scale: float = 2.5, seed: int = 0, n_candidates: int = 1, sampler: str = "dpmpp",
                 callback: Callable[..., Any] | None = None) -> np.ndarray:
        """(B, T) float32 16 kHz waveforms, T = round(duration * 16000); see ``ciap_lib.bridge.generate``."""
        from ciap_lib import bridge

        return np.asarray(bridge.generate(
            self.audioldm, images=images, image_embeds=image_embeds,
            cond_stage=cond_stage if cond_stage is not None else (self.cond_stage if image_embeds is None else None),
            duration=duration, steps=steps, guidance_scale=guidance_scale, seed=seed, n_candidates=n_candidates,
            sampler=sampler, callback=callback), dtype=np.float32)

    def clap_score(self, waveforms: np.ndarray, images: torch.Tensor) -> np.ndarray:
        """(B,) cosine between each image's condition embedding and its clip's CLAP audio embedding
        (``ciap_lib.bridge.clap_score``; a CLAP-space figure, meaningful for ``clap``-mode checkpoints)."""
        from ciap_lib import bridge

        with torch.no_grad():
            cond = self.cond_stage(images)
        return bridge.clap_score(self.audioldm, np.asarray(waveforms, dtype=np.float32), cond).numpy()


def _bridge_samplers() -> tuple[str, ...]:
    """The sampler names the bridge accepts (``ciap_lib.bridge.SAMPLERS``)."""
    from ciap_lib import bridge

    return tuple(bridge.SAMPLERS) or DEFAULT_SAMPLERS


def missing_audioldm_notice(error: BaseException | str, name: str) -> str:
    """The notebook's message when the AudioLDM checkpoint is missing (names where to put it, how to get it)."""
    text = str(error)
    target = name if "/" not in name and not name.endswith(".ckpt") else "audioldm-s-full"
    if "python -m ciap_lib download" not in text:
        text += f"\nWith a network, download it with: python -m ciap_lib download {target}"
    return (f"No usable AudioLDM checkpoint ({name}):\n{text}\n\n"
            "Until then this notebook uses the NEAREST-NEIGHBOUR RETRIEVAL fallback: every sound below is a "
            "clip copied from the training set, NOT diffusion output.")


def load_generator(ciap_model: torch.nn.Module, audioldm: str = "audioldm-s-full", ckpt_dir: str | Path = "ckpt",
                   data: str | Path = "data/synthetic", split: str = "train",
                   allow_fallback: bool = True) -> tuple[Any, str]:
    """The diffusion generator when the AudioLDM checkpoint loads, else the labelled retrieval fallback.

    Returns ``(generator, notice)``; ``notice`` is "" for diffusion, else the explanation to show (where to put
    the checkpoint, how to download it, that the fallback is retrieval). With ``allow_fallback=False`` the
    ``AudioLDMNotFoundError`` is raised instead.
    """
    try:
        from ciap_lib import bridge  # imports audioldm / diffusers
    except ImportError as e:  # the generation stack itself is unusable here: say so, then fall back
        if not allow_fallback:
            raise
        error: BaseException = ImportError(f"the AudioLDM bridge cannot be imported ({type(e).__name__}: {e})")
    else:
        try:
            ldm = bridge.load_audioldm(audioldm, ckpt_dir=str(ckpt_dir))
        except bridge.AudioLDMNotFoundError as e:
            if not allow_fallback:
                raise
            error = e
        else:
            return DiffusionGenerator(ldm, ciap_model, name=audioldm), ""
    notice = missing_audioldm_notice(error, audioldm)
    return NearestNeighbourGenerator.from_dataset(ciap_model, data, split), notice


def find_latest_checkpoint(ckpt_dir: str | Path = "ckpt", name: str = "last.pt") -> Path | None:
    """The newest ``<ckpt_dir>/*/<name>`` (a run's CIAP checkpoint), or None."""
    found = sorted(Path(ckpt_dir).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_checkpoint(checkpoint: str | Path, ckpt_dir: str | Path = "ckpt") -> tuple[Path, str]:
    """``checkpoint`` when it exists; else (a notebook opened by hand) the newest ``<ckpt_dir>/*/last.pt``.

    Returns ``(path, note)``; ``note`` says when another checkpoint than the requested one is used.
    ``ValueError`` naming ``checkpoint`` when there is none at all.
    """
    if checkpoint and Path(checkpoint).is_file():
        return Path(checkpoint), ""
    latest = find_latest_checkpoint(ckpt_dir)
    if latest is None:
        raise ValueError(f"checkpoint {str(checkpoint)!r} not found and no {ckpt_dir}/*/last.pt exists: train a CIAP "
                         "model first (notebooks/02_training.ipynb or `python -m ciap_lib train`) or set "
                         "the `checkpoint` parameter")
    return latest, f"checkpoint {str(checkpoint)!r} not found; using the newest one, {latest}"


def default_images(data_root: str | Path, n: int, split: str = "val") -> list[Path]:
    """The images of the first ``n`` pairs of ``<data_root>/<split>`` (the batch default)."""
    from ciap_lib.pairs import scan_pairs

    split_dir = Path(data_root) / split
    if not split_dir.is_dir():
        raise ValueError(f"generation.images is empty and the data folder {str(split_dir)!r} does not exist: "
                         "pass image paths in generation.images")
    pairs, _ = scan_pairs(split_dir, skip_bad=True)
    return [p.image for p in pairs[:max(int(n), 0)]]


def generator_markdown(generator: Any, notice: str = "") -> str:
    """Markdown saying which generator is in use; for the fallback, the notice in a warning block."""
    if generator.is_diffusion:
        text = f"**Generator: diffusion.** {generator.label}"
        encoder = getattr(getattr(getattr(generator, "model", None), "config", None), "audio_encoder", "clap")
        if encoder != "clap":
            text += (f"\n\n> **Note:** this CIAP checkpoint was trained with the `{encoder}` audio encoder, whose "
                     "embedding space is not CLAP's: AudioLDM receives an embedding it was not trained on. "
                     "Train in `clap` mode (experiments/clap_aligned.yaml) for sounds that follow the image.")
        return text
    body = "\n".join(f"> {line}" if line else ">" for line in (notice or generator.label).splitlines())
    return (f"**Generator: nearest-neighbour RETRIEVAL fallback (not diffusion).** {generator.label}\n\n"
            f"> **No AudioLDM checkpoint**\n>\n{body}")


# ---------------------------------------------------------------------------------------------- helpers
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


def safe_stem(name: str) -> str:
    """A file-name-safe stem of ``name`` (for WAV file names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem).strip("._") or "image"


def output_name(image_name: str, generator: Any) -> str:
    """WAV file name for ``image_name``: ``<stem>.wav`` for diffusion, ``<stem>.nn-retrieval.wav`` for the fallback."""
    return f"{safe_stem(image_name)}{'' if generator.is_diffusion else '.nn-retrieval'}.wav"


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

    Widgets: ``upload`` (FileUpload), ``preview`` (Image), ``duration`` (FloatSlider 2.5–10 s), ``steps``,
    ``guidance``, ``seed``, ``sampler``, ``button`` (Generate), ``progress`` (IntProgress, driven by the
    sampler's callback), ``status`` (HTML: which generator, diffusion or retrieval), ``audio`` (HTML holding
    the ``IPython.display.Audio`` player).

    Results of the latest click: ``waveform`` ((T,) float32, 16 kHz), ``wav_bytes`` (the WAV in the player),
    ``error`` (the exception text, or None), ``seconds``.
    """

    def __init__(self, generator: Generator, duration: float = 5.0, steps: int = 20, guidance_scale: float = 2.5,
                 seed: int = 0, sampler: str = "dpmpp", n_candidates: int = 1) -> None:
        self.generator = generator
        self.n_candidates = int(n_candidates)
        self.image_bytes: bytes | None = None
        self.image_name = ""
        self.waveform: np.ndarray | None = None
        self.wav_bytes: bytes | None = None
        self.error: str | None = None
        self.seconds = 0.0

        diffusion = bool(generator.is_diffusion)
        style = {"description_width": "110px"}
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="Image")
        self.preview = widgets.Image(format="png", width=128, height=128)
        self.preview.layout.display = "none"
        self.duration = widgets.FloatSlider(value=check_duration(duration), min=MIN_DURATION, max=MAX_DURATION,
                                            step=0.5, description="Duration (s)", style=style, readout_format=".1f")
        self.steps = widgets.IntSlider(value=int(steps), min=1, max=200, description="Steps", style=style,
                                       disabled=not diffusion)
        self.guidance = widgets.FloatSlider(value=float(guidance_scale), min=1.0, max=10.0, step=0.5,
                                            description="Guidance", style=style, disabled=not diffusion)
        self.seed = widgets.IntText(value=int(seed), description="Seed", style=style, disabled=not diffusion)
        samplers = tuple(generator.samplers) or (sampler,)
        self.sampler = widgets.Dropdown(options=samplers, value=sampler if sampler in samplers else samplers[0],
                                        description="Sampler", style=style, disabled=not diffusion)
        self.button = widgets.Button(description="Generate", button_style="primary", icon="play",
                                     tooltip="Generate audio for the uploaded image")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="Progress", style=style)
        kind = ("<b>Diffusion</b>" if diffusion else
                "<b style='color:#b35900'>Retrieval fallback &mdash; NOT diffusion output</b>")
        self.status = widgets.HTML(f"{kind}: {_html.escape(generator.label)}")
        self.message = widgets.HTML("Upload an image, then press <i>Generate</i>.")
        self.audio = widgets.HTML()

        self.upload.observe(self._on_upload, names="value")
        self.button.on_click(self.generate)
        controls = widgets.VBox([self.duration, self.steps, self.guidance, self.seed, self.sampler])
        super().__init__([self.status, widgets.HBox([widgets.VBox([self.upload, self.preview]), controls]),
                          widgets.HBox([self.button, self.progress]), self.message, self.audio])

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
            image = load_image(self.image_bytes, self.generator.image_size)[None]
            out = self.generator.generate(
                images=image, duration=float(self.duration.value), steps=int(self.steps.value),
                guidance_scale=float(self.guidance.value), seed=int(self.seed.value), sampler=self.sampler.value,
                n_candidates=self.n_candidates, callback=self._callback)
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


def build_generation_ui(generator: Generator, **defaults: Any) -> GenerationUI:
    """The generation UI for ``generator`` (diffusion or the retrieval fallback).

    ``defaults``: initial ``duration``, ``steps``, ``guidance_scale``, ``seed``, ``sampler``, ``n_candidates``.
    """
    return GenerationUI(generator, **defaults)


def generate_files(generator: Generator, image_paths: Sequence[str | Path], out_dir: str | Path,
                   duration: float = 5.0, steps: int | None = None, guidance_scale: float = 2.5, seed: int = 0,
                   sampler: str = "dpmpp", n_candidates: int = 1, clap_score: bool = True) -> list[dict[str, Any]]:
    """Batch path: render each image to ``<out_dir>/<name>`` (see :func:`output_name`), one at a time.

    Returns one record per image: ``image``, ``wav`` (Path), ``waveform`` ((T,) float32), ``seconds``
    (generation + WAV writing), ``kind`` ("diffusion" / "retrieval"), ``note`` (for the fallback: which
    training clip was returned) and, for diffusion with ``clap_score``, ``clap_score`` (CLAP-space cosine
    between the condition and the clip, see :meth:`DiffusionGenerator.clap_score`).
    """
    from ciap_lib.audio_io import write_wav
    from ciap_lib.images import load_image

    duration = check_duration(duration)
    paths = [Path(p) for p in image_paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"generation.images: file(s) not found: {missing}")
    out_dir = Path(out_dir)
    records = []
    for p in paths:
        t0 = time.perf_counter()
        img = load_image(p, generator.image_size)[None]
        wave = generator.generate(images=img, duration=duration, steps=steps, guidance_scale=guidance_scale,
                                  seed=seed, sampler=sampler, n_candidates=n_candidates)[0]
        wav = write_wav(out_dir / output_name(p.name, generator), wave, SAMPLE_RATE)
        seconds = time.perf_counter() - t0
        note = "; ".join(generator.describe()) if not generator.is_diffusion and hasattr(generator, "describe") else ""
        rec = {"image": p, "wav": wav, "waveform": np.asarray(wave, dtype=np.float32), "seconds": seconds,
               "kind": generator.kind, "note": note}
        if clap_score and hasattr(generator, "clap_score"):
            rec["clap_score"] = float(generator.clap_score(wave[None], img)[0])
            rec["note"] = f"CLAP score {rec['clap_score']:.3f}"
        records.append(rec)
    return records
