"""The generation-evaluation report: the per-clip table (image thumbnail, real clip, generated clips, scores,
each clip with an inline player), the summary figures with what each one is, and the skipped figures with
their reasons; as HTML (a file beside the WAVs, or one self-contained page), a DataFrame (for MLflow) and
text lines (for the command line).

Renders a ``ciap_lib.bridge.evaluation.GenerationEvaluation`` (read through its attributes only: this module
is core and imports neither the bridge nor MLflow).
"""
from __future__ import annotations

import base64
import html
import mimetypes
import os
from pathlib import Path
from typing import Any, Callable

#: metric -> (embedding space, what it is, comparable with published tables?)
METRIC_INFO: dict[str, tuple[str, str, str]] = {
    "clap_score": ("CLAP", "mean cosine between each image's condition embedding and its clip's CLAP audio "
                           "embedding (the AudioLDM checkpoint's own CLAP tower); higher = closer to the image",
                   "no: CLAP space of this checkpoint, not a published CLIP/CLAP score"),
    "clap_fd": ("CLAP", "Fréchet distance between the CLAP audio embeddings of the clips and of the real clips; "
                        "lower = closer", "no: CLAP space, NOT a VGGish FAD"),
    "fad_vggish": ("VGGish", "FAD: Fréchet distance of VGGish embeddings (audioldm_eval); lower = better",
                   "yes (audioldm_eval's definition)"),
    "fd_panns": ("PANNs Cnn14", "FD: Fréchet distance of Cnn14 2048-d clip embeddings (audioldm_eval); "
                                "lower = better", "yes (audioldm_eval's definition)"),
    "kl_panns": ("PANNs Cnn14", "KL(real clip || generated clip) of Cnn14 class probabilities (softmax), mean "
                                "over pairs (audioldm_eval 'KL'); lower = better", "yes (audioldm_eval's definition)"),
    "kl_panns_sigmoid": ("PANNs Cnn14", "the same KL with sigmoid probabilities (audioldm_eval 'KL_Sigmoid')",
                         "yes (audioldm_eval's definition)"),
    "is_panns": ("PANNs Cnn14", "inception score of the generated clips over 10 splits (audioldm_eval; "
                                "--is-splits); higher = more varied, confident classes",
                 "yes, for sets of similar size"),
    "is_panns_std": ("PANNs Cnn14", "standard deviation of the inception score over its splits", "yes"),
}
SYSTEM_TITLES = {"diffusion": "diffusion (AudioLDM)", "retrieval": "retrieval baseline (not diffusion)"}

_CSS = """
.ciap-report { font-family: system-ui, sans-serif; color: #222; }
.ciap-report h1 { font-size: 1.4em; } .ciap-report h2 { font-size: 1.15em; margin-top: 1.6em; }
.ciap-report table { border-collapse: collapse; }
.ciap-report table td, .ciap-report table th { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top;
  text-align: left; }
.ciap-report table th { background: #f3f3f3; }
.ciap-report table td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ciap-report .warn { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em 0.9em; }
.ciap-report .note { color: #555; font-size: 0.9em; } .ciap-report audio { width: 220px; display: block; }
.ciap-report .clips img { width: 96px; height: 96px; } .ciap-report .score { font-size: 0.9em; margin-top: 2px; }
.ciap-report ul.skipped li { margin-bottom: 0.3em; }
"""


def fmt(v: Any) -> str:
    """A figure for display: 4 significant digits, or '—' when absent."""
    return "—" if v is None else f"{float(v):.4g}"


def report_title(ev: Any) -> str:
    """One line saying what was evaluated; retrieval-only reports say so first."""
    where = f"{ev.split_dir} ({ev.n} clips)"
    if ev.retrieval_only:
        return f"Generation evaluation: RETRIEVAL FALLBACK ONLY, not diffusion (no AudioLDM checkpoint), {where}"
    base = " vs retrieval baseline" if "retrieval" in ev.systems else ""
    return f"Generation evaluation: diffusion (AudioLDM {Path(str(ev.audioldm)).stem}){base}, {where}"


def grouped_skipped(ev: Any) -> list[tuple[str, list[str], str]]:
    """``[(metric, [systems], reason), ...]``: skipped figures, one entry per metric and distinct reason."""
    out: dict[tuple[str, str], list[str]] = {}
    for s in ev.systems.values():
        for m, reason in s.skipped.items():
            out.setdefault((m, reason), []).append(s.name)
    order = {m: i for i, m in enumerate(METRIC_INFO)}
    return [(m, systems, reason) for (m, reason), systems in sorted(out.items(), key=lambda x: order.get(x[0][0], 99))]


def summary_lines(ev: Any) -> list[str]:
    """The summary as text: title, one row per figure (a column per system), the skipped figures and reasons."""
    names = list(ev.systems)
    lines = [report_title(ev)]
    if ev.retrieval_only:
        lines.append("  every clip is a TRAINING clip returned by nearest-neighbour retrieval, not diffusion output")
        if ev.audioldm_missing:
            lines.append(f"  ({ev.audioldm_missing.splitlines()[0]})")
    if not ev.clap_aligned and not ev.retrieval_only:
        lines.append("  note: the CIAP checkpoint is not CLAP-aligned (audio_encoder != 'clap'); its condition is "
                     "not in CLAP space, so clap_score says little")
    width = max(len(m) for m in METRIC_INFO)
    lines.append(f"  {'metric':<{width}}  " + "  ".join(f"{n:>10}" for n in names) + "  space")
    for m, (space, _what, comparable) in METRIC_INFO.items():
        vals = [ev.systems[n].metrics.get(m) for n in names]
        if all(v is None for v in vals):
            continue
        published = "comparable with published tables" if comparable.startswith("yes") else "not comparable"
        lines.append(f"  {m:<{width}}  " + "  ".join(f"{fmt(v):>10}" for v in vals) + f"  {space} ({published})")
    skipped = grouped_skipped(ev)
    if skipped:
        lines.append("skipped:")
        lines += [f"  {m} ({', '.join(systems)}): {reason}" for m, systems, reason in skipped]
    return lines


def clip_table(ev: Any, relative_to: str | os.PathLike | None = None) -> "Any":
    """A pandas DataFrame, one row per clip: ``index``, ``image`` (the source image), ``thumbnail`` (its copy
    beside the report), ``label``, ``reference`` (the WAV copy),
    ``reference.clap_score``, then per system ``<system>.wav``, ``<system>.clap_score``, ``<system>.kl_panns``,
    ``<system>.kl_panns_sigmoid`` (when computed) and ``<system>.note``. Paths relative to ``relative_to``
    (default: the evaluation's ``out``)."""
    import pandas as pd

    base = Path(relative_to) if relative_to is not None else Path(ev.out)

    def rel(p: Path) -> str:
        return Path(os.path.relpath(Path(p).resolve(), base.resolve())).as_posix()

    cols: dict[str, list[Any]] = {
        "index": list(range(ev.n)), "image": [str(p) for p in ev.images], "thumbnail": [rel(p) for p in ev.thumbs],
        "label": [lb or "" for lb in ev.labels], "reference": [rel(p) for p in ev.reference_wavs],
    }
    if ev.reference_clap_score is not None:
        cols["reference.clap_score"] = list(ev.reference_clap_score)
    for s in ev.systems.values():
        cols[f"{s.name}.wav"] = [rel(p) for p in s.wavs]
        for key in ("clap_score", "kl_panns", "kl_panns_sigmoid"):
            if key in s.per_clip:
                cols[f"{s.name}.{key}"] = list(s.per_clip[key])
        if any(s.notes):
            cols[f"{s.name}.note"] = list(s.notes)
    return pd.DataFrame(cols)


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    if path.suffix.lower() == ".wav":
        mime = "audio/wav"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def report_html(ev: Any, embed_media: bool = False, report_dir: str | os.PathLike | None = None,
                fragment: bool = False) -> str:
    """The report as one HTML page (``fragment=True``: a ``<div class='ciap-report'>`` with its own scoped
    style, to show inside a notebook).

    ``embed_media=False``: thumbnails and players link to the files under ``ev.out`` by relative paths (from
    ``report_dir``, default ``ev.out``), so ``<out>/report.html`` plays in a browser as long as the folder
    stays whole. ``embed_media=True``: every image and WAV is inlined as a data URI (one self-contained page,
    e.g. for a notebook output; ~43 KB per second of audio)."""
    base = Path(report_dir) if report_dir is not None else Path(ev.out)
    media: Callable[[Path], str] = (_data_uri if embed_media else
                                    (lambda p: Path(os.path.relpath(Path(p).resolve(), base.resolve())).as_posix()))
    e = html.escape
    names = list(ev.systems)
    title = report_title(ev)
    parts = [f"<h1>{e(title)}</h1>"]
    if ev.retrieval_only:
        reason = (ev.audioldm_missing or "").strip()
        parts.append(
            "<p class='warn' id='retrieval-only'><b>No AudioLDM checkpoint: retrieval fallback only.</b> Every clip "
            "below is a <b>training clip returned by nearest-neighbour retrieval, not diffusion output</b>. "
            "The figures say how well retrieval does, nothing about diffusion."
            f"<br><span class='note'>{e(reason)}</span></p>")
    elif not ev.clap_aligned:
        parts.append("<p class='warn'>The CIAP checkpoint is not CLAP-aligned (audio_encoder is not 'clap'): its "
                     "condition embedding is not in CLAP space, so AudioLDM does not follow it and clap_score says "
                     "little.</p>")
    p = ev.params
    if ev.retrieval_only:
        how = f"AudioLDM: none; duration {p.duration} s (retrieval has no sampling parameters)"
    else:
        how = (f"AudioLDM <code>{e(str(ev.audioldm))}</code>; duration {p.duration} s, sampler {e(str(p.sampler))}, "
               f"steps {p.resolved_steps}, guidance {p.guidance_scale}, seed {p.seed}, candidates {p.n_candidates}, "
               f"precision {e(str(p.precision))}, device {e(str(p.device))}")
        steer = ([f"steered away from the clip(s) {', '.join(e(str(x)) for x in p.negative)}"] if p.negative else []) \
            + ([f"steered away from the text {e(repr(p.negative_text))}"] if p.negative_text else []) \
            + ([f"mixed in: {', '.join(e(str(x)) for x in p.mix)}"] if p.mix else [])
        how += "; " + ("; ".join(steer) if steer else "guidance against the CLAP text embedding of \"\" (no negative, "
                                                        "nothing mixed in)")
    parts.append(
        f"<p class='note'>CIAP checkpoint <code>{e(str(ev.checkpoint))}</code>; pairs <code>{e(str(ev.split_dir))}"
        f"</code> (the paired real clip of each image is its reference); {how}.</p>")

    # summary
    head = "".join(f"<th>{e(SYSTEM_TITLES.get(n, n))}</th>" for n in names)
    rows = []
    for m, (space, what, comparable) in METRIC_INFO.items():
        vals = [ev.systems[n].metrics.get(m) for n in names]
        if all(v is None for v in vals) and not any(m in ev.systems[n].skipped for n in names):
            continue
        cells = "".join(f"<td class='num'>{fmt(v) if v is not None else 'skipped'}</td>" for v in vals)
        rows.append(f"<tr data-metric='{m}'><td><code>{m}</code></td>{cells}<td>{e(space)}</td>"
                    f"<td>{e(comparable)}</td><td class='note'>{e(what)}</td></tr>")
    parts.append("<h2>Summary</h2><table class='summary'><tr><th>metric</th>" + head +
                 "<th>space</th><th>comparable with published tables</th><th>what it is</th></tr>" + "".join(rows) +
                 "</table>")
    skipped = grouped_skipped(ev)
    if skipped:
        items = "".join(f"<li><code>{m}</code> ({e(', '.join(s))}): {e(r)}</li>" for m, s, r in skipped)
        parts.append(f"<h2>Skipped figures</h2><ul class='skipped'>{items}</ul>")

    # per clip
    def player(path: Path, scores: list[str], note: str = "") -> str:
        extra = "".join(f"<div class='score'>{e(s)}</div>" for s in scores)
        if note:
            extra += f"<div class='note'>{e(note)}</div>"
        return f"<td><audio controls preload='metadata' src='{media(path)}'></audio>{extra}</td>"

    head = "".join(f"<th>{e(SYSTEM_TITLES.get(n, n))}</th>" for n in names)
    body = []
    for i in range(ev.n):
        label = ev.labels[i]
        cells = [f"<td>{i}</td>",
                 f"<td><img src='{media(ev.thumbs[i])}' alt='{e(Path(ev.images[i]).name)}'>"
                 f"<div class='note'>{e(Path(ev.images[i]).name)}{' (' + e(label) + ')' if label else ''}</div></td>"]
        ref_scores = [f"clap_score {fmt(ev.reference_clap_score[i])}"] if ev.reference_clap_score is not None else []
        cells.append(player(ev.reference_wavs[i], ref_scores))
        for n in names:
            s = ev.systems[n]
            scores = [f"{k} {fmt(s.per_clip[k][i])}" for k in ("clap_score", "kl_panns") if k in s.per_clip]
            cells.append(player(s.wavs[i], scores, s.notes[i] if i < len(s.notes) else ""))
        body.append(f"<tr class='clip' data-index='{i}'>{''.join(cells)}</tr>")
    parts.append("<h2>Clips</h2><table class='clips'><tr><th>#</th><th>image</th><th>real clip (reference)</th>"
                 + head + "</tr>" + "".join(body) + "</table>")
    fps = getattr(ev, "fingerprints", {}) or {}
    if fps:
        parts.append("<p class='note'>" + "; ".join(f"{e(k)} {e(str(v))}" for k, v in fps.items()) + "</p>")
    div = f"<div class='ciap-report'><style>{_CSS}</style>" + "\n".join(parts) + "</div>"
    if fragment:
        return div
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title></head>"
            f"<body style='margin: 1.5em'>{div}</body></html>")


def write_report(ev: Any, path: str | os.PathLike | None = None) -> Path:
    """Write :func:`report_html` (relative links) atomically to ``path`` (default ``<out>/report.html``)."""
    from ciap_lib.atomic import atomic_write_text

    path = Path(path) if path is not None else Path(ev.out) / "report.html"
    return atomic_write_text(path, report_html(ev, embed_media=False, report_dir=path.parent))
