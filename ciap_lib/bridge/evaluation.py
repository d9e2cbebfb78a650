"""Evaluation of generated audio on a split with paired clips: one clip per image, its paired clip as the
reference, scored in CLAP space and with the standard metrics, for the diffusion generator and for the
nearest-neighbour retrieval baseline (:class:`ciap_lib.fallback.NearestNeighbourGenerator`).

What ``python -m ciap_lib evaluate-generation`` and notebook 04's batch mode compute (through
:func:`ciap_lib.workflows.evaluate_generation`, which adds the HTML report and MLflow).

Figures, per system (``diffusion``, ``retrieval``), named by the space they live in:

* ``clap_score``: mean over clips of cosine(condition embedding of the image, CLAP audio embedding of the
  clip) (:func:`ciap_lib.bridge.metrics.clap_score`); per clip too. CLAP space.
* ``clap_fd``: Fréchet distance between CLAP audio embeddings of the clips and of the references. CLAP space:
  NOT a published FAD.
* ``fad_vggish``, ``fd_panns``, ``kl_panns`` (+ ``kl_panns_sigmoid``, per clip too), ``is_panns``
  (+ ``is_panns_std``): audioldm_eval's definitions (:mod:`ciap_lib.bridge.audio_metrics`), the figures set
  beside published tables. Skipped, with the reason, when their weights are absent.

Both CLAP figures need the CLAP audio tower, which is part of the AudioLDM checkpoint: without one they are
skipped (with the reason) and only the retrieval system runs.

Layout of ``out`` (relative paths, so the folder can be moved or logged as a whole)::

    manifest.json              what was generated with which settings (see below)
    wavs/<NNNN>_<stem>.wav                  diffusion clip of pair NNNN (16 kHz, `duration` s)
    wavs/<NNNN>_<stem>.nn-retrieval.wav     retrieval clip (the nearest training clip, cropped/padded)
    reference/<NNNN>_<stem>.wav             the paired real clip (16 kHz mono, whole), for the players
    thumbs/<NNNN>_<stem>.png                the image, 128 px

Resuming: ``manifest.json`` records the pairs (image, audio of each index) and, per system, the settings its
clips were made with (generation parameters except ``batch_size``, which changes no clip, and ``device``; the
SHA-256 of each steering clip (``negative``, audio ``mix`` entries); the CIAP checkpoint's SHA-256; the AudioLDM
weights' fingerprint; for retrieval the index split's fingerprint: file names, sizes, mtimes). A clip whose WAV exists
and is listed is kept. Settings or pairs that differ from the manifest's are refused (``ValueError`` naming
each difference) unless ``overwrite=True``, which deletes that system's clips and makes them again: clips of
two settings are never mixed. Clip ``i`` starts from the noise of seed ``seed + i * n_candidates`` whatever was
generated before, so a resumed set equals an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ciap_lib.atomic import atomic_path, atomic_write_text
from ciap_lib.bridge.audio_metrics import IS_SPLITS, STANDARD_METRICS, StandardMetricModels, metrics_from_features
from ciap_lib.bridge.checkpoint_io import DEFAULT_MODEL, AudioLDMNotFoundError, sha256_file
from ciap_lib.bridge.frozen import FrozenAudioLDM
from ciap_lib.bridge.loading import load_audioldm
from ciap_lib.bridge.metric_weights import DEFAULT_WEIGHTS_DIR
from ciap_lib.bridge.params import GenerationParams
from ciap_lib.constants import SAMPLE_RATE

#: The batch size ``evaluate-generation`` samples with by default: the one with the best clips/s whose peak RSS
#: stays under 4 GB on the 2-core CPU machine (full-size audioldm-s-full, random weights, bf16, 5 s clips, 6
#: DPM-Solver++ steps; ``bench/generation.py --throughput-only --batch-sizes 1 4 8``, then ``1 2``; 2026-12-02).
#: Clips/s against batch 1 of the same run, and peak RSS: batch 2 x1.59, 3.87 GB; batch 4 x1.87, 4.10 GB;
#: batch 8 x2.29, 4.53 GB (batch 1: 3.68-3.72 GB). Measured while other jobs loaded the machine (load average
#: 10-15 on 2 cores, bf16 matmul at 48 GFLOP/s instead of ~370): the speed-ups are likely smaller on an idle
#: machine; the peaks do not depend on load. clips/s grew with the batch in every run, so the largest batch
#: under 4 GB wins. On an idle 2-core AMX Xeon, with the oneDNN-prepacked copies (2026-12-03, two runs): batch 2
#: x1.05 (3.76 GB), batch 4 x1.15-1.18 (3.78-3.96 GB), batch 8 x0.85-0.91 (4.13-4.17 GB): batch 4 would win
#: there, but it peaked at 4.10 GB on the EPYC, so 2 stays, under 4 GB on both. On an idle 2-core Xeon without
#: AMX, where ``precision="auto"`` computes in float32 (2026-12-05, two runs): batch 2 x1.01-1.04, batch 4
#: x1.02-1.06, batch 8 x1.04-1.08, every peak 3.28-3.72 GB; a few per cent is not worth a batch that breaks 4 GB
#: on the other two CPUs.
EVAL_BATCH_SIZE = 2
#: The same on CUDA. On one H200 (full-size audioldm-s-full, random weights, bf16 UNet replayed from CUDA graphs,
#: 5 s clips, 6 DPM-Solver++ steps; ``bench/gpu_check.sh``, 2026-12-04, ``bench/results/h200-2026-12-04/``):
#: 22.8 clips/s at batch 1, 65.4 at batch 8 with 3.2 GB of GPU memory at the peak, 76.6 at batch 32 with 6.3 GB
#: (10.4 GB for 10 s clips). Batch 8 keeps most of the gain within the memory of a small GPU.
EVAL_BATCH_SIZE_CUDA = 8


def default_batch_size(device: str | torch.device = "auto") -> int:
    """The batch size ``evaluate-generation`` samples with when none is given: :data:`EVAL_BATCH_SIZE` where
    ``device`` (``auto``, ``cpu``, ``cuda[:N]``) resolves to the CPU, :data:`EVAL_BATCH_SIZE_CUDA` on CUDA. A device
    that does not resolve is a ``ValueError`` (``ciap_lib.bridge.devices.generation_device``)."""
    from ciap_lib.bridge.devices import generation_device

    return EVAL_BATCH_SIZE_CUDA if generation_device(device).type == "cuda" else EVAL_BATCH_SIZE

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ciap.generation-eval/1"
#: the systems a report can hold, in display order
SYSTEMS: tuple[str, ...] = ("diffusion", "retrieval")
#: every figure a system can have, in display order (``*_std`` / ``*_sigmoid`` come with their metric)
METRICS: tuple[str, ...] = ("clap_score", "clap_fd", "fad_vggish", "fd_panns", "kl_panns", "kl_panns_sigmoid",
                            "is_panns", "is_panns_std")
THUMB_SIZE = 128


# ----------------------------------------------------------------------------------------------------- results
@dataclass
class SystemEvaluation:
    """One system's clips and figures.

    Attributes:
        name: ``"diffusion"`` or ``"retrieval"``.
        label: one line saying what the system is (the retrieval one says it is not diffusion).
        wavs: the N clips (paths under ``out``), in pair order.
        metrics: ``{metric: value}`` of the figures computed (names of :data:`METRICS`).
        skipped: ``{metric: reason}`` of the figures not computed.
        per_clip: ``{"clap_score" | "kl_panns" | "kl_panns_sigmoid": [N floats]}`` when computed.
        notes: per clip, what the clip is (retrieval: the training clip returned and its cosine), or "".
        generated: clips made by this call (the rest were kept from an earlier run).
        seconds: wall time spent making them.
    """

    name: str
    label: str
    wavs: list[Path]
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    per_clip: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    generated: int = 0
    seconds: float = 0.0

    @property
    def is_diffusion(self) -> bool:
        return self.name == "diffusion"


@dataclass
class GenerationEvaluation:
    """The outcome of :func:`evaluate_generation` (all paths absolute or as given; files under ``out``).

    Attributes:
        out: the output folder (see the module docstring for its layout).
        checkpoint: the CIAP checkpoint evaluated; ``clap_aligned``: it was trained against AudioLDM's CLAP tower.
        split_dir: the split folder the N images and their reference clips come from.
        images, references: the N image / audio files of the pairs; ``labels``: their labels (or None).
        reference_wavs: 16 kHz copies of the references under ``out`` (for players); ``thumbs``: thumbnails.
        reference_clap_score: per pair, cosine(condition, CLAP embedding of the real clip) (None without AudioLDM).
        systems: ``{"diffusion": ..., "retrieval": ...}`` (diffusion absent without an AudioLDM checkpoint).
        params: the generation parameters used.
        audioldm: the AudioLDM checkpoint's name/path, or None; ``audioldm_missing``: why it is not used ("" if it is).
        manifest: path of ``manifest.json``.
    """

    out: Path
    checkpoint: Path
    clap_aligned: bool
    split_dir: Path
    images: list[Path]
    references: list[Path]
    labels: list[str | None]
    reference_wavs: list[Path]
    thumbs: list[Path]
    reference_clap_score: list[float] | None
    systems: dict[str, SystemEvaluation]
    params: GenerationParams
    audioldm: str | None
    audioldm_missing: str
    manifest: Path
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def retrieval_only(self) -> bool:
        """No diffusion system: every clip is a training clip returned by retrieval."""
        return "diffusion" not in self.systems

    def summary_metrics(self) -> dict[str, float]:
        """Flat ``{"<system>.<metric>": value}`` of every figure computed, plus ``n_clips``."""
        out: dict[str, float] = {"n_clips": float(self.n)}
        for s in self.systems.values():
            out.update({f"{s.name}.{k}": float(v) for k, v in s.metrics.items()})
        return out

    def skipped(self) -> dict[str, str]:
        """``{"<system>.<metric>": reason}`` of every figure not computed."""
        return {f"{s.name}.{k}": r for s in self.systems.values() for k, r in s.skipped.items()}


# ---------------------------------------------------------------------------------------------------- manifest
def clip_stem(index: int, image: str | os.PathLike) -> str:
    """``<NNNN>_<safe image stem>``: the name every file of pair ``index`` shares under ``out``."""
    from ciap_lib.pairs import safe_stem

    return f"{index:04d}_{safe_stem(image)}"


def clip_path(out: Path, system: str, index: int, image: str | os.PathLike) -> Path:
    """Where ``system``'s clip of pair ``index`` goes (retrieval clips are named ``*.nn-retrieval.wav``)."""
    suffix = ".nn-retrieval.wav" if system == "retrieval" else ".wav"
    return out / "wavs" / f"{clip_stem(index, image)}{suffix}"


def read_manifest(out: Path) -> dict[str, Any]:
    """``out/manifest.json`` (an empty manifest when absent); ``ValueError`` naming the file when unreadable."""
    path = out / MANIFEST
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "pairs": [], "systems": {}}
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the generation manifest ({type(e).__name__}: {e}); delete it "
                         "(and the clips beside it) or pass --overwrite") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a generation-evaluation manifest (format {MANIFEST_FORMAT!r} expected); "
                         "choose another --out or pass --overwrite")
    m.setdefault("pairs", [])
    m.setdefault("systems", {})
    return m


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} before, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


def _forget(out: Path, entry: dict[str, Any]) -> None:
    for rel in entry.get("clips", {}).values():
        (out / rel).unlink(missing_ok=True)


#: generation parameters no clip depends on, so never resume settings: the batch size (the seed contract) and the
#: device (a run begun on a CPU may finish on a GPU: within 1e-3 there, bitwise on the CPU). Manifests written
#: when the device was a setting still resume.
NOT_SETTINGS = ("batch_size", "device")


def _settings(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.get("settings", {}).items() if k not in NOT_SETTINGS}


def reconcile_manifest(out: Path, manifest: dict[str, Any], pairs: list[dict[str, str]],
                       settings: dict[str, dict[str, Any]], overwrite: bool) -> dict[str, Any]:
    """Check the manifest against this run's ``pairs`` and per-system ``settings``; returns the manifest to
    continue from. Differences raise ``ValueError`` (naming the manifest and each difference) unless
    ``overwrite``, which deletes the clips made with other settings (or for other pairs)."""
    old_pairs = manifest["pairs"]
    changed = [i for i, (o, p) in enumerate(zip(old_pairs, pairs)) if o != p]
    clash = [f"pair {i}: {old_pairs[i]} before, {pairs[i]} now" for i in changed]
    problems = []
    if clash:
        problems.append("the split's pairs differ (" + "; ".join(clash[:3]) + (" ..." if len(clash) > 3 else "") + ")")
    for name, new in settings.items():
        old = manifest["systems"].get(name)
        if old is not None:
            diff = _differences(_settings(old), new)
            if diff:
                problems.append(f"{name} clips were made with other settings ({'; '.join(diff)})")
    if problems and not overwrite:
        raise ValueError(f"{out / MANIFEST}: " + " and ".join(problems) + ". Pass --overwrite (overwrite=True) to "
                         "delete those clips and make them again, or choose another --out: clips made with "
                         "different settings are never mixed")
    if clash:  # overwrite: nothing made for other pairs is kept
        for entry in manifest["systems"].values():
            _forget(out, entry)
        manifest["systems"] = {}
        for i in changed:  # the old pairs' thumbnails and reference copies
            stem = clip_stem(i, old_pairs[i]["image"])
            (out / "thumbs" / f"{stem}.png").unlink(missing_ok=True)
            (out / "reference" / f"{stem}.wav").unlink(missing_ok=True)
    for name, new in settings.items():
        old = manifest["systems"].get(name)
        if old is not None and _settings(old) != new:
            _forget(out, old)
            old = None
        if old is not None:
            old["settings"] = new
        else:
            manifest["systems"][name] = {"settings": new, "clips": {}, "notes": {}}
    manifest["pairs"] = pairs if len(pairs) >= len(old_pairs) else pairs + old_pairs[len(pairs):]
    return manifest


def _done(out: Path, entry: dict[str, Any], index: int) -> bool:
    rel = entry["clips"].get(str(index))
    return rel is not None and (out / rel).is_file()


# ----------------------------------------------------------------------------------------------------- helpers
def _contiguous(indices: Sequence[int], size: int) -> list[list[int]]:
    """Runs of consecutive indices, each cut into pieces of at most ``size``."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < size:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _write_thumb(image: Path, dest: Path) -> None:
    from PIL import Image

    from ciap_lib.images import load_image_uint8

    with atomic_path(dest) as tmp:
        Image.fromarray(load_image_uint8(image, THUMB_SIZE)).save(tmp, format="PNG")


def _ignore(*_a: Any, **_k: Any) -> None:
    return None


# -------------------------------------------------------------------------------------------------- evaluation
def evaluate_generation(checkpoint: str | os.PathLike, data: str | os.PathLike, split: str = "val", n: int = 200,
                        *, out: str | os.PathLike, audioldm: str | os.PathLike | FrozenAudioLDM | None = DEFAULT_MODEL,
                        ckpt_dir: str | os.PathLike = "ckpt", params: GenerationParams | None = None,
                        device: str | None = None, tokenizer_dir: str | os.PathLike | None = None,
                        overwrite: bool = False, baseline: bool = True,
                        baseline_split: str = "train", retrieval: Any = None, model: torch.nn.Module | None = None,
                        metrics_dir: str | os.PathLike | None = DEFAULT_WEIGHTS_DIR, is_splits: int = IS_SPLITS,
                        progress: bool = False, echo: Callable[[str], None] = _ignore) -> GenerationEvaluation:
    """Generate one clip per image of the first ``n`` pairs of ``<data>/<split>`` and score them against the
    paired clips (see the module docstring for the figures, the folder layout and resuming).

    Args:
        checkpoint: the trained CIAP checkpoint (``.pt``) whose image embeddings condition AudioLDM.
        data, split: the dataset root and the split whose pairs are evaluated (``<data>/<split>``).
        n: pairs evaluated (the first ``n`` in the split's order; fewer when the split is smaller).
        out: output folder (WAVs, references, thumbnails, manifest).
        audioldm: AudioLDM checkpoint name (under ``ckpt_dir``) or path, an already loaded ``FrozenAudioLDM``,
            or None. When it is None or the file is missing, only the retrieval system runs (labelled so).
        params: generation parameters (default: ``GenerationParams`` with :func:`default_batch_size` for
            ``device``); ``params.batch_size`` clips are sampled together.
        device: where the CIAP model, AudioLDM and the metric networks run (``cpu``, ``cuda[:N]``, ``auto``;
            default ``params.device``). The device it resolves to is the ``device`` the summary and MLflow record
            (not a resume setting: see :data:`NOT_SETTINGS`). ``precision="auto"`` is recorded, and resumed, as what
            it resolves to on that device (``devices.resolve_precision``).
        tokenizer_dir: local RoBERTa tokenizer for ``negative_text`` / ``text:`` mix entries (default:
            ``roberta-base/`` beside the AudioLDM checkpoint).
        overwrite: regenerate clips whose manifest settings differ, instead of refusing.
        baseline: also score the retrieval baseline (always on without AudioLDM: it is then the only system).
        baseline_split: the split the retrieval baseline returns clips from.
        retrieval: an already built ``NearestNeighbourGenerator`` to use as the baseline (else built from
            ``<data>/<baseline_split>`` when a retrieval clip is missing).
        model: the CIAP model already loaded from ``checkpoint`` (else loaded here).
        metrics_dir: folder of the VGGish / PANNs weights (absent files: those metrics are skipped).
        is_splits: inception-score splits (audioldm_eval: 10; ``is_panns`` is skipped below that many clips).
        progress: show a tqdm bar (stderr) while generating; ``echo``: called with one line per phase.

    Returns:
        :class:`GenerationEvaluation`.

    Raises:
        ValueError: bad parameters, a missing split or checkpoint, no pairs, or settings that differ from the
            manifest's without ``overwrite``. ``AudioLDMCheckpointError``: an AudioLDM file that is not a
            matching checkpoint (a missing one is not an error: the retrieval system runs alone).
    """
    from ciap_lib.bridge.devices import resolve_precision
    from ciap_lib.checkpoint import load_ciap
    from ciap_lib.distributed import resolve_device
    from ciap_lib.pairs import scan_pairs

    if params is None:
        params = GenerationParams(batch_size=default_batch_size("auto" if device is None else device))
    params = params.check()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be an integer >= 1, got {n!r}")
    if isinstance(is_splits, bool) or not isinstance(is_splits, int) or is_splits < 1:
        raise ValueError(f"is_splits: must be an integer >= 1, got {is_splits!r}")
    out = Path(out)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"checkpoint {str(checkpoint)!r}: file does not exist")
    split_dir = Path(data) / split
    if not split_dir.is_dir():
        raise ValueError(f"data: split folder {str(split_dir)!r} does not exist (evaluate-generation needs a split "
                         "of image/audio pairs: the paired clips are the references)")
    pairs_found, skipped_files = scan_pairs(split_dir, skip_bad=True)
    if not pairs_found:
        raise ValueError(f"data: split folder {str(split_dir)!r} holds no usable image/audio pairs")
    if skipped_files:
        echo(f"{split_dir}: {len(skipped_files)} bad or unpaired file(s) skipped, e.g. {skipped_files[0][0]}: "
             f"{skipped_files[0][1]}")
    pairs = pairs_found[:n]
    dev = resolve_device(params.device if device is None else device)
    # what runs is what is recorded: the device, and the precision ``auto`` picks on it (a resume setting: the two
    # precisions give different clips)
    params = replace(params, device=str(dev), precision=resolve_precision(params.precision, dev)).check()

    # ---- models
    if model is None:
        model, _cfg = load_ciap(checkpoint, map_location=dev)
    model = model.eval()
    clap_aligned = getattr(model.config, "audio_encoder", None) == "clap"
    ldm: FrozenAudioLDM | None
    missing = ""
    if isinstance(audioldm, FrozenAudioLDM):
        ldm = audioldm
    elif audioldm is None:
        ldm, missing = None, "no AudioLDM checkpoint was asked for (audioldm=None)"
    else:
        try:
            ldm = load_audioldm(audioldm, ckpt_dir=ckpt_dir, device=dev)
        except AudioLDMNotFoundError as e:
            ldm, missing = None, str(e)
    if ldm is not None:
        echo(f"AudioLDM {ldm.name} ({ldm.path}), fingerprint {ldm.reference_fingerprint[:12]}")
    else:
        echo(f"no AudioLDM checkpoint: the retrieval fallback is evaluated alone ({missing.splitlines()[0]})")
    names = (["diffusion"] if ldm is not None else []) + (["retrieval"] if baseline or ldm is None else [])
    stage = None
    if ldm is not None:
        from ciap_lib.bridge.condition import CIAPCondStage

        stage = CIAPCondStage(model, source=f"CIAP checkpoint {str(checkpoint)!r}")  # checks the 512-d embedding

    # ---- settings and manifest (before anything heavy)
    ckpt_sha = sha256_file(checkpoint)
    gen_settings = {k: v for k, v in params.to_dict().items() if k not in NOT_SETTINGS}
    settings: dict[str, dict[str, Any]] = {}
    if "diffusion" in names:
        from ciap_lib.bridge.guidance import check_files, clip_paths

        check_files(params.negative, params.mix)
        # the steering clips' contents, not only their paths: a clip edited in place means new clips
        steering = {str(p): sha256_file(p) for _, p in clip_paths(params.negative, params.mix)}
        settings["diffusion"] = {**gen_settings, "steps": params.resolved_steps, "checkpoint_sha256": ckpt_sha,
                                 "audioldm_fingerprint": ldm.reference_fingerprint,
                                 **({"steering_clips_sha256": steering} if steering else {})}
    if "retrieval" in names:
        index_dir = (Path(retrieval.source) if retrieval is not None and retrieval.source
                     else Path(data) / baseline_split)
        from ciap_lib.pairs import dataset_fingerprint

        if not index_dir.exists():
            raise ValueError(f"the retrieval baseline needs the training pairs: folder {str(index_dir)!r} does not "
                             "exist (set baseline_split / --baseline-split, or --no-baseline with an AudioLDM "
                             "checkpoint)")
        settings["retrieval"] = {"duration": params.duration, "checkpoint_sha256": ckpt_sha,
                                 "index_fingerprint": dataset_fingerprint(index_dir)}
    # pairs relative to the split folder: the same split reached by another path is the same split
    pair_list = [{"image": Path(os.path.relpath(p.image, split_dir)).as_posix(),
                  "audio": Path(os.path.relpath(p.audio, split_dir)).as_posix()} for p in pairs]
    manifest = reconcile_manifest(out, read_manifest(out), pair_list, settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, manifest)

    # ---- images, thumbnails, reference copies
    from ciap_lib.audio_io import load_audio, write_wav
    from ciap_lib.images import load_image

    # (N, 3, S, S), prepared as the checkpoint stores (size, mean/std, crop): what the condition stage and the
    # retrieval baseline's index expect
    images = torch.stack([load_image(p.image, model.preprocess) for p in pairs])
    thumbs, ref_wavs = [], []
    for i, p in enumerate(pairs):
        stem = clip_stem(i, p.image)
        t, r = out / "thumbs" / f"{stem}.png", out / "reference" / f"{stem}.wav"
        if not t.is_file():
            _write_thumb(p.image, t)
        if not r.is_file():
            write_wav(r, load_audio(p.audio, SAMPLE_RATE), SAMPLE_RATE)
        thumbs.append(t)
        ref_wavs.append(r)

    cond = None
    if stage is not None:
        cond = torch.cat([stage(images[i:i + 64]).cpu() for i in range(0, len(pairs), 64)])  # (N, 1, 512)

    # ---- generation (only the clips that are missing)
    systems: dict[str, SystemEvaluation] = {}
    for name in names:
        entry = manifest["systems"][name]
        todo = [i for i in range(len(pairs)) if not _done(out, entry, i)]
        t0 = time.perf_counter()
        label = ""
        if name == "diffusion":
            label = (f"Diffusion: frozen AudioLDM ({ldm.name}) conditioned on the CIAP image embedding "
                     f"({model.config.audio_encoder} mode)")
            if todo:
                echo(f"diffusion: generating {len(todo)} of {len(pairs)} clips (batch {params.batch_size})")
                _generate_diffusion(ldm, cond, todo, pairs, params, out, manifest, progress, tokenizer_dir)
        else:
            if todo:
                if retrieval is None:
                    from ciap_lib.fallback import NearestNeighbourGenerator

                    echo(f"retrieval: indexing {index_dir}")
                    retrieval = NearestNeighbourGenerator.from_dataset(model, index_dir, None)
                echo(f"retrieval: returning the nearest training clip for {len(todo)} of {len(pairs)} images")
                entry["label"] = retrieval.label
                _generate_retrieval(retrieval, images, todo, pairs, params, out, manifest)
            label = entry.get("label") or ("Nearest-neighbour RETRIEVAL (not diffusion): the training clip closest "
                                           f"to each image's embedding, from {index_dir}")
        seconds = time.perf_counter() - t0 if todo else 0.0
        wavs = [out / entry["clips"][str(i)] for i in range(len(pairs))]
        notes = [entry.get("notes", {}).get(str(i), "") for i in range(len(pairs))]
        systems[name] = SystemEvaluation(name, label, wavs, notes=notes, generated=len(todo), seconds=seconds)

    # ---- figures
    echo("scoring the clips against their references")
    ref_clap = _score(systems, ldm, cond, [p.audio for p in pairs], metrics_dir, dev, is_splits)
    return GenerationEvaluation(
        out=out, checkpoint=checkpoint, clap_aligned=clap_aligned, split_dir=split_dir,
        images=[p.image for p in pairs], references=[p.audio for p in pairs], labels=[p.label for p in pairs],
        reference_wavs=ref_wavs, thumbs=thumbs, reference_clap_score=ref_clap, systems=systems, params=params,
        audioldm=(str(ldm.path) if ldm is not None else (None if audioldm is None else str(audioldm))),
        audioldm_missing=missing, manifest=out / MANIFEST,
        fingerprints={"checkpoint_sha256": ckpt_sha,
                      **({"audioldm_fingerprint": ldm.reference_fingerprint} if ldm is not None else {})})


def _generate_diffusion(ldm: FrozenAudioLDM, cond: torch.Tensor, todo: list[int], pairs: list, params: GenerationParams,
                        out: Path, manifest: dict[str, Any], progress: bool,
                        tokenizer_dir: str | os.PathLike | None = None) -> None:
    """Generate the clips ``todo`` in runs of consecutive indices (clip i: seed ``seed + i * n_candidates``),
    ``batch_size`` at a time; each batch's WAVs and manifest entries are written before the next starts."""
    from tqdm import tqdm

    from ciap_lib.bridge.generate import generate, write_wavs

    entry = manifest["systems"]["diffusion"]
    bar = tqdm(total=len(todo), desc="generate", unit="clip", disable=not progress, mininterval=1.0)
    for run in _contiguous(todo, params.batch_size):
        a = run[0]
        waves = generate(ldm, image_embeds=cond[a:a + len(run)], duration=params.duration, steps=params.steps,
                         sampler=params.sampler, guidance_scale=params.guidance_scale,
                         seed=params.seed + a * params.n_candidates, n_candidates=params.n_candidates,
                         batch_size=params.batch_size, precision=params.precision, negative=params.negative,
                         negative_text=params.negative_text, mix=params.mix, tokenizer_dir=tokenizer_dir,
                         device=params.device)
        paths = [clip_path(out, "diffusion", i, pairs[i].image) for i in run]
        write_wavs(waves, paths)
        entry["clips"].update({str(i): p.relative_to(out).as_posix() for i, p in zip(run, paths)})
        _write_manifest(out, manifest)
        bar.update(len(run))
    bar.close()


def _generate_retrieval(retrieval: Any, images: torch.Tensor, todo: list[int], pairs: list, params: GenerationParams,
                        out: Path, manifest: dict[str, Any]) -> None:
    from ciap_lib.audio_io import write_wav

    entry = manifest["systems"]["retrieval"]
    model = retrieval.model
    device = next(model.parameters()).device
    for run in _contiguous(todo, 64):
        with torch.no_grad():  # the query embeddings, as the fallback's own search makes them from images
            query = model.encode_image(images[run].to(device)).float().cpu()          # (B, D)
        waves = retrieval.generate(image_embeds=query, duration=params.duration)
        for i, w, note in zip(run, waves, retrieval.describe()):
            p = write_wav(clip_path(out, "retrieval", i, pairs[i].image), w, SAMPLE_RATE)
            entry["clips"][str(i)] = p.relative_to(out).as_posix()
            entry["notes"][str(i)] = note
        _write_manifest(out, manifest)


def _score(systems: dict[str, SystemEvaluation], ldm: FrozenAudioLDM | None, cond: torch.Tensor | None,
           references: list[Path], metrics_dir: str | os.PathLike | None, device: torch.device,
           is_splits: int) -> list[float] | None:
    """Fill each system's ``metrics`` / ``skipped`` / ``per_clip``; returns the references' CLAP scores."""
    from ciap_lib.bridge.frechet import frechet_distance
    from ciap_lib.bridge.metrics import clap_audio_embeddings, clap_score_of_embeddings

    n = len(references)
    ref_clap = None
    if ldm is not None:
        ref_emb = clap_audio_embeddings(ldm, references)
        ref_clap = [float(v) for v in clap_score_of_embeddings(ref_emb, cond)]
    for s in systems.values():
        if ldm is None:
            why = "skipped: no AudioLDM checkpoint (the CLAP audio tower that embeds the clips is part of it)"
            s.skipped.update({"clap_score": f"clap_score {why}", "clap_fd": f"clap_fd {why}"})
            continue
        emb = clap_audio_embeddings(ldm, s.wavs)
        scores = clap_score_of_embeddings(emb, cond)
        s.per_clip["clap_score"] = [float(v) for v in scores]
        s.metrics["clap_score"] = float(scores.mean())
        if n >= 2:
            s.metrics["clap_fd"] = frechet_distance(emb, ref_emb)
        else:
            s.skipped["clap_fd"] = f"clap_fd skipped: a Fréchet distance needs at least 2 clips, got {n}"

    if metrics_dir is None:
        for s in systems.values():
            s.skipped.update({m: f"{m} skipped: no metric weights folder given (metrics_dir=None)"
                              for m in STANDARD_METRICS})
        return ref_clap
    if n < 2:
        for s in systems.values():
            s.skipped.update({m: f"{m} skipped: the standard metrics need at least 2 clips, got {n}"
                              for m in STANDARD_METRICS})
        return ref_clap
    models = StandardMetricModels(metrics_dir, device)
    ref_feats = models.features(references) if models.vggish is not None or models.cnn14 is not None else None
    for s in systems.values():
        if ref_feats is None:
            s.skipped.update(models.skipped)
            continue
        r = metrics_from_features(models.features(s.wavs), ref_feats, is_splits=is_splits, skipped=models.skipped)
        s.metrics.update({k: float(r[k]) for k in METRICS if k in r})
        s.skipped.update(r["skipped"])
        s.per_clip.update(r["per_clip"])
    return ref_clap
