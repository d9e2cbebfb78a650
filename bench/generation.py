"""Generation speed on CPU with the FULL-SIZE audioldm-s-full architecture (random weights: same cost).

    python bench/generation.py [--durations 5 10] [--ddim-steps 200] [--fast-steps 10] [--quick]
                               [--precision auto|bf16|fp32] [--contiguous] [--no-prepack] [--threads N] [--json out.json]
                               [--device cpu|cuda[:N]|auto] [--batch-sizes 1 4 8] [--throughput-durations 5]
                               [--throughput-only] [--no-cuda-graphs]

Prints, per clip length: seconds per clip (end to end: sampling + VAE + HiFi-GAN, batch 1) for DDIM
(``--ddim-steps``, AudioLDM's 200 by default) and the fast solver (DPM-Solver++ at its default steps),
their ratio (fast-solver figures: the median of ``--repeats`` runs), the peak RSS during each run, and achieved GFLOP/s (FLOPs counted with torch's
FlopCounterMode on one guided UNet step, the VAE decode and the vocoder) as a share of a matmul in the dtype
generation computes in, measured in the same run; the guided UNet step and the decode (>= 78%) are also printed on
their own. ``--precision auto`` (the default, as in ``generate``) computes in bf16 on CUDA and on CPUs where bf16 is
measured faster than float32, else in float32 (``ciap_lib.bridge.devices.resolve_precision``). The CPU target, a
guided UNet step at >= 75% of the bf16 matmul, is judged against a bf16 matmul measured beside each step whatever the
step computes in (against the float32 matmul on a CPU without native bf16). ``--quick``: 5 s only, DDIM timed over ``--ddim-steps 10`` and extrapolated
to 200 steps (marked "extrapolated"). The fingerprint check after generation (a full SHA-256 of the
weights) is timed separately. Target: a 5 s clip in <= 5 s end to end with peak < 4 GB on 2 cores.
On a shared machine, other processes' load inflates every figure: the script prints the load average.

Throughput: clips/s for a batch of ``--batch-sizes`` clips (``--throughput-durations``, default 5 s; the fast
solver, ``generate(..., batch_size=B)``) with the peak RSS of each (on CUDA also the peak GPU memory allocated),
baseline batch 1 in the same run, and whether clip 0 comes out bitwise as at batch 1 (the
seed contract on the CPU: ``ciap_lib.bridge.invariance``); the batch with the best clips/s whose peak stays under
4 GB is what ``evaluate-generation`` samples with by default (``ciap_lib.bridge.evaluation.EVAL_BATCH_SIZE``).
``--throughput-only`` skips the per-clip-length figures above. ``--no-prepack``: the bf16 weight copies without
oneDNN weight prepacking (``ciap_lib.bridge.prepack``; generation packs them on CPUs with native bf16), for an A/B.
``--device cuda``: the same on a GPU (a bf16 UNet copy there, replayed from CUDA graphs: ``--no-cuda-graphs`` for the
eager A/B; the decoder in float32: ``devices.decode_dtype``; each batch size warmed up once before it is timed);
goals on one H200: a 5 s clip in <= 0.3 s at batch 1, >= 20 clips/s batched (``bench/gpu_check.sh`` runs
``--batch-sizes 1 8 32 --throughput-durations 5 10``). The matmul shares are
printed there too, but a GPU step at these sizes is bound by kernel launches, not by the matmul rate.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ciap_lib.bridge import generate  # noqa: E402
from ciap_lib.bridge import sampling as S  # noqa: E402
from ciap_lib.bridge.architecture import build_latent_diffusion  # noqa: E402
from ciap_lib.bridge.frozen import FrozenAudioLDM  # noqa: E402
from ciap_lib.bridge.prepack import PackedLinear  # noqa: E402
from ciap_lib.bridge.tiny import full_size_spec  # noqa: E402
from ciap_lib.hardware import cpu_has_bf16, matmul_gflops  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak resident memory while the block runs (sampled every 10 ms)."""

    def __enter__(self):
        self.peak, self._stop = rss_bytes(), False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


def full_size_model(name: str = "audioldm-s-full") -> FrozenAudioLDM:
    """audioldm's real s-full architecture, random N(0, 0.02) weights, loaded like a checkpoint."""
    spec = full_size_spec(name)
    ldm = build_latent_diffusion(spec, init_weights=False)
    with torch.no_grad():
        for p in ldm.parameters():
            p.normal_(0.0, 0.02)
    if getattr(ldm, "model_ema", None) is not None:
        del ldm.model_ema
        ldm.use_ema = False
    return FrozenAudioLDM(ldm, Path(f"{name}-random.ckpt"), name, spec, cache_uncond=False)


def count_flops(audioldm: FrozenAudioLDM, duration: float) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    frames = S.latent_frames(duration)
    z = torch.randn(1, audioldm.latent_channels, frames, audioldm.latent_f_size, device=audioldm.device)
    cond = torch.nn.functional.normalize(torch.randn(1, 1, 512, device=audioldm.device), dim=-1)
    out = {}
    with torch.inference_mode():
        # the guided step's math as audioldm writes it (its own attention: FlopCounterMode does not count the fused
        # SDPA kernel that sampling runs), on the (2, ...) batch predict_noise builds
        x_in, c_in = torch.cat([z, z]), torch.cat([audioldm.uncond_embedding.to(cond), cond])
        with FlopCounterMode(display=False) as fc:
            audioldm.unet(x_in, torch.full((2,), 500, device=z.device), c_film=[c_in])
        out["unet_step"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            mel = audioldm.ldm.decode_first_stage(z)
        out["vae"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            audioldm.vocoder(mel.squeeze(1).permute(0, 2, 1))
        out["vocoder"] = fc.get_total_flops()
    return out


def unet_step_share(audioldm: FrozenAudioLDM, duration: float, precision: str, dtype: torch.dtype,
                    flops: float, rounds: int = 5, target_dtype: torch.dtype | None = None) -> dict[str, float]:
    """One guided UNet step (``predict_noise``, as sampling runs it) timed alternately with the matmul baseline,
    ``rounds`` times: this VM's speed drifts by 20-40% within minutes, so each step is set beside a matmul measured
    seconds from it. ``target_dtype`` (when not ``dtype``): a matmul in it is measured in each round too (the CPU
    target's yardstick, bf16, when the step computes in float32). Returns the medians of the step time, the matmul
    rate(s) and the per-round share(s)."""
    frames = S.latent_frames(duration)
    z = torch.randn(1, audioldm.latent_channels, frames, audioldm.latent_f_size, device=audioldm.device)
    cond = torch.nn.functional.normalize(torch.randn(1, 1, 512, device=audioldm.device), dim=-1)
    half = dtype if precision == "bf16" else torch.bfloat16
    sync = torch.cuda.synchronize if audioldm.device.type == "cuda" else (lambda: None)
    yardsticks = {"": dtype, "target_": target_dtype if target_dtype is not None else dtype}
    times, rates = [], {k: [] for k in yardsticks}
    with torch.inference_mode():
        S.predict_noise(audioldm, z, torch.tensor(500), cond, 2.5, autocast=precision == "bf16", half=half)
        for _ in range(rounds):
            measured = {}   # one matmul per dtype and round: the target shares the step's when it is the same dtype
            for k, d in yardsticks.items():
                if d not in measured:
                    measured[d] = matmul_gflops(seconds=0.5, device=audioldm.device, dtype=d)
                rates[k].append(measured[d])
            sync()
            t0 = time.perf_counter()
            S.predict_noise(audioldm, z, torch.tensor(500), cond, 2.5, autocast=precision == "bf16", half=half)
            sync()
            times.append(time.perf_counter() - t0)
    out: dict = {"seconds": statistics.median(times)}
    for k, r in rates.items():
        shares = [flops / t / 1e9 / rate for t, rate in zip(times, r)]
        out.update({f"{k}matmul_gflops": statistics.median(r), f"{k}share": statistics.median(shares),
                    f"{k}shares": shares})
    return out


def time_clip(audioldm, duration, sampler, steps, precision, repeats: int = 1, batch: int = 1) -> tuple[float, int]:
    """Seconds for one clip, or for ``batch`` clips sampled together (the median of ``repeats`` runs: this VM's
    speed drifts by ~10%), and peak RSS."""
    emb = torch.nn.functional.normalize(torch.randn(batch, 1, 512), dim=-1)
    times = []
    with PeakRSS() as mem:
        for _ in range(repeats):
            t0 = time.perf_counter()
            generate(audioldm, image_embeds=emb, duration=duration, steps=steps, sampler=sampler,
                     precision=precision, verify_frozen=False, batch_size=batch)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), mem.peak


def throughput(audioldm, batch_sizes, steps: int, precision: str, duration: float = 5.0,
               limit_gb: float = 4.0) -> list[dict]:
    """clips/s and peak RSS for one ``generate`` call per batch size (ascending, so a peak is never the
    leftover of a larger batch); the speed-up is against batch 1 measured in the same run. On CUDA each batch size
    is first run once untimed: the first call at a new shape picks and loads its kernels (on the H200, 0.91 s cold
    against 0.28 s warm for 8 clips)."""
    rows, first = [], None
    cuda = audioldm.device.type == "cuda"
    emb = torch.nn.functional.normalize(torch.randn(max(batch_sizes), 1, 512), dim=-1)
    for b in sorted(batch_sizes):
        if cuda:
            generate(audioldm, image_embeds=emb[:b], duration=duration, steps=steps, sampler=S.DEFAULT_SAMPLER,
                     precision=precision, batch_size=b, verify_frozen=False)          # warm-up at this shape
            torch.cuda.synchronize(audioldm.device)
            torch.cuda.reset_peak_memory_stats(audioldm.device)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            w = generate(audioldm, image_embeds=emb[:b], duration=duration, steps=steps, sampler=S.DEFAULT_SAMPLER,
                         precision=precision, batch_size=b, verify_frozen=False)    # returns on the CPU: synced
            dt = time.perf_counter() - t0
        first = w[0] if first is None else first        # the seed contract: clip 0 is clip 0 at every batch size
        rows.append({"duration": duration, "batch_size": b, "seconds": dt, "clips_per_s": b / dt,
                     "peak_rss_gb": mem.peak / 2**30, "load_average": os.getloadavg(),
                     "clip0_max_abs_diff": float(abs(w[0] - first).max())})
        if cuda:  # what the GPU held at its peak: weights, their bf16 copies, activations
            rows[-1]["peak_gpu_gb"] = torch.cuda.max_memory_allocated(audioldm.device) / 2**30
    base = rows[0]["clips_per_s"]
    ok = [r for r in rows if r["peak_rss_gb"] < limit_gb]
    best = max(ok, key=lambda r: r["clips_per_s"])["batch_size"] if ok else None
    print(f"\nthroughput, {duration:g} s clips, {S.DEFAULT_SAMPLER} {steps} steps, {precision} "
          f"(one generate() call per batch size; speed-up against batch {rows[0]['batch_size']} in this run)")
    for r in rows:
        diff = r["clip0_max_abs_diff"]
        same = "bitwise equal" if diff == 0 else f"max abs diff {diff:.1e}"
        gpu = f"  peak GPU {r['peak_gpu_gb']:.2f} GB" if "peak_gpu_gb" in r else ""
        print(f"  batch {r['batch_size']:>2}: {r['seconds']:7.2f} s  {r['clips_per_s']:.3f} clips/s  "
              f"x{r['clips_per_s'] / base:.2f}  peak {r['peak_rss_gb']:.2f} GB{gpu}  "
              f"clip 0 against batch {rows[0]['batch_size']}: {same}  (load average {r['load_average'][0]:.1f})")
    print(f"  best clips/s with peak < {limit_gb:g} GB: batch {best}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--durations", type=float, nargs="+", default=[5.0, 10.0])
    ap.add_argument("--ddim-steps", type=int, default=200)
    ap.add_argument("--fast-steps", type=int, default=S.DEFAULT_STEPS[S.DEFAULT_SAMPLER])
    ap.add_argument("--quick", action="store_true", help="5 s only; DDIM over 10 steps, extrapolated to 200")
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                    help="auto (generation's default): bf16 on CUDA and on CPUs where bf16 is measured faster than "
                         "float32, else fp32 (ciap_lib.bridge.devices.resolve_precision)")
    ap.add_argument("--contiguous", action="store_true",
                    help="UNet/VAE weights in the plain (NCHW) layout instead of load_audioldm's channels_last")
    ap.add_argument("--no-prepack", action="store_true",
                    help="bf16 weight copies without oneDNN prepacking (ciap_lib.bridge.prepack), for an A/B")
    ap.add_argument("--no-cuda-graphs", action="store_true",
                    help="on CUDA, run the UNet calls eagerly instead of replaying CUDA graphs "
                         "(ciap_lib.bridge.cuda_graphs), for an A/B")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3, help="fast-solver timings are the median of this many runs")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8],
                    help="throughput: clips/s and peak RSS at each of these batch sizes")
    ap.add_argument("--throughput-durations", type=float, nargs="+", default=[5.0],
                    help="throughput: clip lengths in seconds, each at every --batch-sizes (default: 5)")
    ap.add_argument("--throughput-only", action="store_true", help="skip the per-clip-length figures")
    args = ap.parse_args(argv)
    if args.quick:
        args.durations, args.ddim_steps = [5.0], 10
    torch.set_num_threads(args.threads)
    print(f"threads={torch.get_num_threads()} load average={os.getloadavg()} precision={args.precision}"
          f"{' (no prepacking)' if args.no_prepack else ''}{' (no CUDA graphs)' if args.no_cuda_graphs else ''}")

    t0 = time.perf_counter()
    with PeakRSS() as build_mem:
        audioldm = full_size_model()
    audioldm.prepack = not args.no_prepack
    audioldm.cuda_graphs = not args.no_cuda_graphs
    print(f"built full-size audioldm-s-full (random weights) in {time.perf_counter() - t0:.1f} s, "
          f"RSS {build_mem.peak / 2**30:.2f} GB")
    from ciap_lib.bridge.devices import generation_device, half_dtype, resolve_precision
    from ciap_lib.hardware import cpu_bf16_speedup

    device = generation_device(args.device)
    asked, args.precision = args.precision, resolve_precision(args.precision, device)
    audioldm.to(device)
    cuda = device.type == "cuda"
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""))
    if args.contiguous:
        for m in (audioldm.unet, audioldm.vae):
            m.to(memory_format=torch.contiguous_format)
    t0 = time.perf_counter()
    audioldm.assert_unchanged()
    t_fp = time.perf_counter() - t0
    # the baseline: a matmul in the dtype generation computes in (bf16 falls back to float32 on CPUs without
    # native bf16: ciap_lib.bridge.devices.half_dtype); the bf16 rate is printed beside it. The CPU target (a guided
    # UNet step at >= 75% of the bf16 matmul) is judged against the bf16 matmul where bf16 is native, whatever the
    # step computes in; where it is emulated (~1 GFLOP/s), against the float32 matmul
    compute = half_dtype(device) if args.precision == "bf16" else torch.float32
    peak_matmul = matmul_gflops(device=device, dtype=compute)
    name = str(compute).replace("torch.", "")
    native_bf16 = device.type == "cuda" or cpu_has_bf16()
    bf16_rate = peak_matmul if compute == torch.bfloat16 else matmul_gflops(device=device, dtype=torch.bfloat16)
    target_dtype = torch.bfloat16 if native_bf16 else compute
    target_name = str(target_dtype).replace("torch.", "")
    why = ""
    if asked == "auto" and not cuda:
        why = (f" (bf16 matmul measured at {cpu_bf16_speedup():.2f}x float32's here)" if cpu_has_bf16() else
               " (no native bf16 on this CPU)")
    print(f"precision {asked} -> {args.precision}{why}: computing in {name}; {name} matmul: {peak_matmul:.0f} GFLOP/s "
          f"(the baseline of every share below), bf16 matmul: {bf16_rate:.1f} GFLOP/s"
          f"{'' if native_bf16 else ' (no native bf16 on this CPU)'}; fingerprint check: {t_fp:.2f} s")
    if compute != torch.float32:
        rss0, t0 = rss_bytes(), time.perf_counter()
        unet, _ = audioldm.sampling_modules("bf16")     # made once, on first use; timed here rather than in a clip
        packed = any(isinstance(m, PackedLinear) for m in unet.modules())
        parts = "UNet" if cuda else "UNet, VAE decoder, vocoder"     # CUDA decodes in float32: no decoder copy
        print(f"bf16 weight copies ({parts}){', oneDNN-prepacked' if packed else ''}: "
              f"{time.perf_counter() - t0:.2f} s, +{(rss_bytes() - rss0) / 2**30:.2f} GB")

    results = []
    if args.throughput_only:
        args.durations = []
        time_clip(audioldm, 5.0, "dpmpp", 1, args.precision)  # warm-up
    for duration in args.durations:
        flops = count_flops(audioldm, duration)
        time_clip(audioldm, duration, "dpmpp", 1, args.precision)  # warm-up
        row = {"duration": duration, "gflop": {k: v / 1e9 for k, v in flops.items()}}
        for label, sampler, steps in (("fast", S.DEFAULT_SAMPLER, args.fast_steps), ("ddim", "ddim", args.ddim_steps)):
            dt, peak = time_clip(audioldm, duration, sampler, steps, args.precision,
                                 repeats=args.repeats if label == "fast" else 1)
            total = flops["unet_step"] * steps + flops["vae"] + flops["vocoder"]
            entry = {"sampler": sampler, "steps": steps, "seconds": dt, "peak_rss_gb": peak / 2**30,
                     "gflops_per_s": total / dt / 1e9, "share_of_matmul": total / dt / 1e9 / peak_matmul}
            if label == "ddim" and steps != 200:
                decode_s = row["fast"]["decode_and_one_step_s"] - row["fast"]["unet_step_s"]
                entry["extrapolated_200_steps_seconds"] = decode_s + (dt - decode_s) / steps * 200
            if label == "fast":
                # per-step cost from a second, shorter run: separates solver steps from decoding
                dt1, _ = time_clip(audioldm, duration, sampler, 1, args.precision, repeats=args.repeats)
                entry["unet_step_s"] = (dt - dt1) / max(steps - 1, 1)
                entry["decode_and_one_step_s"] = dt1
                entry["decode_s"] = dt1 - entry["unet_step_s"]
                entry["unet_step_share_of_matmul"] = flops["unet_step"] / entry["unet_step_s"] / 1e9 / peak_matmul
                # a difference of two timings: on a GPU the decode (~10 ms) can drown in their noise (None then)
                entry["decode_share_of_matmul"] = ((flops["vae"] + flops["vocoder"]) / entry["decode_s"] / 1e9
                                                   / peak_matmul) if entry["decode_s"] > 2e-3 else None
            row[label] = entry
        ddim_s = row["ddim"].get("extrapolated_200_steps_seconds", row["ddim"]["seconds"])
        row["ratio_ddim200_over_fast"] = ddim_s / row["fast"]["seconds"]
        results.append(row)
        f, d = row["fast"], row["ddim"]
        print(f"\n{duration:g} s clip  (GFLOP: guided UNet step {row['gflop']['unet_step']:.1f}, VAE {row['gflop']['vae']:.1f}, "
              f"vocoder {row['gflop']['vocoder']:.1f})")
        print(f"  fast  {f['sampler']:>5} {f['steps']:>3} steps: {f['seconds']:7.2f} s/clip  peak {f['peak_rss_gb']:.2f} GB  "
              f"{f['gflops_per_s']:6.0f} GFLOP/s = {100 * f['share_of_matmul']:.0f}% of {name} matmul")
        u = row["unet_step_alternating"] = unet_step_share(audioldm, duration, args.precision, compute,
                                                           flops["unet_step"], target_dtype=target_dtype)
        # the same against the targets' yardstick (the bf16 matmul) when the clip computes in another dtype
        rescale = peak_matmul / bf16_rate if (target_dtype != compute and not cuda) else None
        also = (lambda share: f" ({100 * share * rescale:.0f}% of the bf16 matmul)") if rescale else (lambda share: "")
        print(f"    from the clip timings: guided UNet step {f['unet_step_s']:.2f} s = "
              f"{100 * f['unet_step_share_of_matmul']:.0f}% of the start's {name} matmul"
              f"{also(f['unet_step_share_of_matmul'])};  decode {f['decode_s']:.2f} s = "
              + (f"{100 * f['decode_share_of_matmul']:.0f}%{also(f['decode_share_of_matmul'])}"
                 if f["decode_share_of_matmul"] is not None else "n/a (within the timing noise)")
              + (" (float32 on CUDA)" if cuda else " (must stay >= 78%)"))
        print(f"    guided UNet step alone, alternating with the matmul ({len(u['shares'])} rounds): {u['seconds']:.2f} s, "
              f"{name} matmul {u['matmul_gflops']:.0f} GFLOP/s, share {100 * u['share']:.0f}% "
              f"(rounds {', '.join(f'{100 * x:.0f}%' for x in u['shares'])}"
              + ("; the 75% target is the CPU's: on the GPU a step is launch-bound)" if cuda else ")"))
        if not cuda:
            print(f"    the CPU target, the step against the {target_name} matmul measured beside it "
                  f"({u['target_matmul_gflops']:.0f} GFLOP/s): {100 * u['target_share']:.0f}% "
                  f"(rounds {', '.join(f'{100 * x:.0f}%' for x in u['target_shares'])}; "
                  f"target >= 75%: {'met' if u['target_share'] >= 0.75 else 'NOT met'})")
        extra = (f"  -> 200 steps extrapolated: {d['extrapolated_200_steps_seconds']:.1f} s"
                 if "extrapolated_200_steps_seconds" in d else "")
        print(f"  ddim  {d['steps']:>3} steps:       {d['seconds']:7.2f} s/clip  peak {d['peak_rss_gb']:.2f} GB  "
              f"{d['gflops_per_s']:6.0f} GFLOP/s = {100 * d['share_of_matmul']:.0f}% of {name} matmul{extra}")
        goal = 0.3 if cuda else 5.0
        print(f"  ratio DDIM-200 / fast: {row['ratio_ddim200_over_fast']:.1f}x   target 5 s clip <= {goal:g} s: "
              f"{'n/a' if duration != 5 else 'met' if f['seconds'] <= goal else 'NOT met'}")
    batches = [row for d in args.throughput_durations
               for row in throughput(audioldm, args.batch_sizes, args.fast_steps, args.precision, duration=d)
               ] if args.batch_sizes else []
    five = [r for r in batches if r["duration"] == 5.0]
    if cuda and five:
        best = max(r["clips_per_s"] for r in five)
        print(f"  target >= 20 clips/s batched on the GPU (5 s clips): {'met' if best >= 20 else 'NOT met'} "
              f"({best:.1f})")
    peak_after = matmul_gflops(device=device, dtype=compute)
    print(f"\n{name} matmul at the end: {peak_after:.0f} GFLOP/s (start {peak_matmul:.0f}): the shares above use the start")
    if args.json:
        Path(args.json).write_text(json.dumps({"precision_asked": asked, "precision": args.precision,
                                               "compute_dtype": name, "matmul_gflops": peak_matmul,
                                               "target_dtype": target_name,
                                               "bf16_matmul_gflops": bf16_rate, "fingerprint_check_s": t_fp,
                                               "threads": args.threads, "load_average": os.getloadavg(),
                                               "device": str(device),
                                               "device_name": torch.cuda.get_device_name(device) if cuda else None,
                                               "torch": torch.__version__,
                                               "results": results, "throughput": batches}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
