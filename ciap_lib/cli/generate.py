"""``python -m ciap_lib generate --image x.jpg [more | a folder] --checkpoint ciap.pt --out out.wav|outdir``

Also ``--negative a.wav b.wav`` or ``--negative-text "speech"`` (what guidance steers away from), ``--mix
clip.wav:0.3 text:rain:0.2`` (mixed into the condition), ``--tokenizer-dir DIR`` (a local RoBERTa tokenizer for
texts) and ``--device auto|cpu|cuda[:N]``; see ``ciap_lib.bridge.guidance`` and ``ciap_lib.bridge.devices``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "generate audio for images through the frozen AudioLDM (one 16 kHz WAV per image)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ciap_lib.bridge.params import PRECISIONS, GenerationParams
    from ciap_lib.bridge.sampling import DEFAULT_STEPS, SAMPLERS

    d = GenerationParams()
    own = ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items())
    parser.add_argument("--image", nargs="+", required=True, help="image file(s) or folder(s) of images")
    parser.add_argument("--checkpoint", required=True, help="trained CIAP checkpoint (.pt); use audio_encoder 'clap'")
    parser.add_argument("--audioldm", default="audioldm-s-full", help="AudioLDM checkpoint name (under --ckpt-dir) or path")
    parser.add_argument("--ckpt-dir", default="ckpt", help="folder of named AudioLDM checkpoints (default: ckpt)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle the AudioLDM checkpoint fully even if it asks for globals outside the "
                             "weights-only allowlist (this can run code from the file: only for a trusted source)")
    parser.add_argument("--out", required=True, help="output .wav (one image) or folder (one <image stem>.wav each)")
    parser.add_argument("--duration", type=float, default=d.duration, help=f"seconds, 2.5-10 (default {d.duration})")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"solver steps (default: the sampler's own: {own})")
    parser.add_argument("--sampler", default=d.sampler, choices=SAMPLERS, help=f"default {d.sampler}")
    parser.add_argument("--guidance-scale", type=float, default=d.guidance_scale, help=f"default {d.guidance_scale}")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--n-candidates", type=int, default=d.n_candidates,
                        help="sample N clips per image, keep the one closest to the image in CLAP space")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"clips sampled together (default {d.batch_size})")
    parser.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                        help="auto (default): bf16 on CUDA and on CPUs where bf16 is measured faster than float32, "
                             "else fp32; bf16: half-precision weight copies under autocast (float16 on GPUs without "
                             "bf16); fp32")
    add_steering_arguments(parser, d)
    parser.add_argument("--device", default=d.device, metavar="DEVICE",
                        help=f"auto (CUDA when available), cpu, cuda or cuda:N (default {d.device})")
    parser.add_argument("--clap-score", action="store_true", help="print each clip's CLAP score (CLAP-space cosine)")


def add_steering_arguments(parser: argparse.ArgumentParser, defaults=None, dest_prefix: str = "") -> None:
    """``--negative``, ``--negative-text``, ``--mix`` (into ``<dest_prefix><field>``) and ``--tokenizer-dir``, as
    ``generate`` and ``evaluate-generation`` take them; ``defaults``: a ``GenerationParams`` (None: every flag
    defaults to None, i.e. not given)."""
    d = defaults

    parser.add_argument("--negative", dest=f"{dest_prefix}negative", nargs="+", metavar="AUDIO",
                        default=list(d.negative) if d else None,
                        help="audio clip(s) to steer away from: their averaged CLAP audio embedding replaces the "
                             "'' text embedding in guidance")
    parser.add_argument("--negative-text", dest=f"{dest_prefix}negative_text", metavar="TEXT",
                        default=d.negative_text if d else None,
                        help="a text to steer away from instead, e.g. 'speech' (needs --tokenizer-dir)")
    parser.add_argument("--mix", dest=f"{dest_prefix}mix", nargs="+", metavar="ENTRY",
                        default=list(d.mix) if d else None,
                        help="mix into the image condition: AUDIO:W or text:TEXT:W, 0 <= W <= 1, weights summing "
                             "to <= 1; condition = normalize((1 - sum W) * image + sum W * other)")
    parser.add_argument("--tokenizer-dir", default=None, metavar="DIR",
                        help="local RoBERTa tokenizer for --negative-text / text: mix entries (default: "
                             "roberta-base/ beside the AudioLDM checkpoint); nothing is downloaded")


def _images(items: list[str]) -> list[Path]:
    from ciap_lib.images import IMAGE_EXTS

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise ValueError(f"--image {item!r}: folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"--image {item!r}: no such file or folder")
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ciap_lib.bridge import (AudioLDMCheckpointError, AudioLDMNotFoundError, CIAPCondStage, check_inputs,
                                 clap_score, generate, load_audioldm, write_wavs)
    from ciap_lib.bridge.clap_text import default_tokenizer_dir
    from ciap_lib.bridge.devices import generation_device, resolve_precision
    from ciap_lib.bridge.generate import embed_images
    from ciap_lib.bridge.guidance import uses_text
    from ciap_lib.bridge.checkpoint_io import resolve_checkpoint

    try:
        images = _images(args.image)
        out = Path(args.out)
        if len(images) == 1 and out.suffix.lower() == ".wav":
            targets = [out]
        else:
            if out.suffix.lower() == ".wav":
                raise ValueError(f"--out {args.out!r}: {len(images)} images need an output folder, not a .wav")
            targets = [out / f"{im.stem}.wav" for im in images]
            if len({t.name for t in targets}) != len(targets):
                raise ValueError("--image: two images share a file stem; their WAVs would collide")
        tokenizer_dir = args.tokenizer_dir
        if tokenizer_dir is None and uses_text(args.negative_text, args.mix):
            tokenizer_dir = default_tokenizer_dir(resolve_checkpoint(args.audioldm, args.ckpt_dir)[0])
        guide = dict(negative=args.negative, negative_text=args.negative_text, mix=args.mix,
                     tokenizer_dir=tokenizer_dir, device=args.device)
        check_inputs(args.duration, args.steps, args.guidance_scale, args.n_candidates, args.sampler,
                     args.batch_size, args.precision, images=images, require_cond_stage=False, **guide)
        cond_stage = CIAPCondStage.from_checkpoint(args.checkpoint)
        check_inputs(args.duration, args.steps, args.guidance_scale, args.n_candidates, args.sampler,
                     args.batch_size, args.precision, images=images, cond_stage=cond_stage, **guide)
        if not cond_stage.clap_aligned:
            print("generate: note: this CIAP model was not trained CLAP-aligned (audio_encoder 'clap'); its "
                  "embeddings are not in CLAP space, so AudioLDM will not follow them", file=sys.stderr)
        cond = embed_images(images, cond_stage)
        audioldm = load_audioldm(args.audioldm, ckpt_dir=args.ckpt_dir, trust_checkpoint=args.trust_checkpoint)
        dev = generation_device(args.device)
        precision = resolve_precision(args.precision, dev)
        if precision != args.precision:
            print(f"generate: precision {args.precision} -> {precision} on {dev}", file=sys.stderr)
    except (ValueError, AudioLDMNotFoundError, AudioLDMCheckpointError) as e:
        print(f"generate: error: {e}", file=sys.stderr)
        return 2
    bar = tqdm(total=1, desc="generate", mininterval=1.0, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    # an unreadable negative/mix clip or tokenizer raises ValueError inside generate(), before any sampling;
    # main() prints it as one line (exit 2)
    try:
        waves = generate(audioldm, image_embeds=cond, **guide, duration=args.duration, steps=args.steps,
                         guidance_scale=args.guidance_scale, seed=args.seed, n_candidates=args.n_candidates,
                         sampler=args.sampler, callback=progress, batch_size=args.batch_size,
                         precision=precision)
    finally:
        bar.close()
    paths = write_wavs(waves, targets)
    scores = clap_score(audioldm, waves, cond) if args.clap_score else None
    for i, (im, p) in enumerate(zip(images, paths)):
        extra = f"  clap_score={float(scores[i]):.4f} (CLAP space)" if scores is not None else ""
        print(f"{im} -> {p}{extra}")
    return 0
