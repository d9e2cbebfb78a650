"""GPU diagnostics: seed-contract variants on the tiny model, and where batch-8 time goes on the full-size one."""
import sys, time, statistics
from pathlib import Path
import torch
sys.path.insert(0, "."); sys.path.insert(0, "bench")
from ciap_lib.bridge import generate, load_audioldm, build_tiny_audioldm_checkpoint
from ciap_lib.bridge import sampling as S, devices as D

print("tf32 matmul", torch.backends.cuda.matmul.allow_tf32, "cudnn tf32", torch.backends.cudnn.allow_tf32,
      "cudnn.benchmark", torch.backends.cudnn.benchmark, flush=True)
dev = torch.device("cuda", 0)
ck = build_tiny_audioldm_checkpoint(Path("/tmp/tiny/audioldm-tiny.ckpt"), verify=False) if not Path("/tmp/tiny/audioldm-tiny.ckpt").exists() else Path("/tmp/tiny/audioldm-tiny.ckpt")
a = load_audioldm(ck, cache_uncond=False).to(dev)
g = torch.Generator().manual_seed(0)
emb = torch.nn.functional.normalize(torch.randn(8, 1, 512, generator=g), dim=-1)
frames = S.latent_frames(2.5)
noise = S.initial_noise(a, frames, [7 + j for j in range(8)])
bf = torch.bfloat16

def lat(n, autocast=True):
    return S.sample_latents(a, emb[:n], noise[:n], steps=3, autocast=autocast, half=bf)

def dec(z, autocast=True, per_clip=False):
    if per_clip:
        return torch.cat([S.decode_latents(a, zz[None], autocast=autocast, half=bf) for zz in z])
    return S.decode_latents(a, z, autocast=autocast, half=bf)

def md(x, y):
    return float((x - y).abs().max())

z8, z1 = lat(8), lat(1)
print(f"[tiny] bf16 UNet latents b8 vs b1: max abs {md(z8[:1], z1):.3e}, |z| max {float(z1.abs().max()):.3f}")
z8f, z1f = lat(8, False), lat(1, False)
print(f"[tiny] fp32 UNet latents b8 vs b1: max abs {md(z8f[:1], z1f):.3e}")
for name, kw in [("bf16 decode batched", {}), ("bf16 decode per clip", {"per_clip": True}),
                 ("fp32 decode batched", {"autocast": False}), ("fp32 decode per clip", {"autocast": False, "per_clip": True})]:
    w8, w1 = dec(z8, **kw), dec(z1, **kw)
    same8 = dec(z1.expand(8, -1, -1, -1).contiguous(), **kw)
    print(f"[tiny] bf16 UNet + {name}: wave b8 vs b1 max abs {md(w8[:1], w1):.3e} (|w| max {float(w1.abs().max()):.3f}); "
          f"decoder alone (same latent x8 vs x1) {md(same8[:1], w1):.3e}", flush=True)
w8, w1 = dec(z8f, autocast=False), dec(z1f, autocast=False)
print(f"[tiny] fp32 UNet + fp32 decode: {md(w8[:1], w1):.3e}")
for nb in (3, 4, 5):
    zb = lat(nb)
    print(f"[tiny] bf16 UNet b{nb} vs b1 latents {md(zb[:1], z1):.3e}; fp32 decode wave {md(dec(zb, autocast=False)[:1], dec(z1, autocast=False)):.3e}")

# ---- full size
from generation import full_size_model
t0 = time.perf_counter()
f = full_size_model()
f.to(dev)
print(f"[full] built+moved in {time.perf_counter() - t0:.1f} s", flush=True)
E = torch.nn.functional.normalize(torch.randn(64, 1, 512), dim=-1)

def tgen(b, reps=3, **kw):
    generate(f, image_embeds=E[:b], duration=5.0, batch_size=b, verify_frozen=False, **kw)  # warm-up at this shape
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize(); t = time.perf_counter()
        generate(f, image_embeds=E[:b], duration=5.0, batch_size=b, verify_frozen=False, **kw)
        torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)

for b in (1, 8, 16, 32):
    s = tgen(b)
    print(f"[full] warm generate 5 s bf16 batch {b}: {s:.3f} s = {b / s:.1f} clips/s", flush=True)

def tpart(fn, reps=3):
    fn(); torch.cuda.synchronize(); ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)

fr = S.latent_frames(5.0)
nz = S.initial_noise(f, fr, list(range(8)))
zz = S.sample_latents(f, E[:8], nz, autocast=True, half=bf)
print(f"[full] b8 sample_latents (6 steps) {tpart(lambda: S.sample_latents(f, E[:8], nz, autocast=True, half=bf)):.3f} s")
print(f"[full] b8 one guided UNet step {tpart(lambda: S.predict_noise(f, zz, torch.tensor(500), E[:8].to(dev), 2.5, autocast=True, half=bf)):.4f} s")
print(f"[full] b1 one guided UNet step {tpart(lambda: S.predict_noise(f, zz[:1], torch.tensor(500), E[:1].to(dev), 2.5, autocast=True, half=bf)):.4f} s")
for name, ac in (("bf16", True), ("fp32(tf32 convs)", False)):
    print(f"[full] b8 decode {name} {tpart(lambda: S.decode_latents(f, zz, autocast=ac, half=bf)):.3f} s; "
          f"b1 {tpart(lambda: S.decode_latents(f, zz[:1], autocast=ac, half=bf)):.3f} s", flush=True)
    _, vae = D.sampling_modules(f, bf if ac else None)
    with torch.inference_mode(), D.autocast(dev, bf if ac else None):
        mel = vae.decode(zz / f.ldm.scale_factor)
        print(f"[full]   of which VAE decode b8 {tpart(lambda: vae.decode(zz / f.ldm.scale_factor)):.3f} s, vocoder b8 "
              f"{tpart(lambda: vae.vocoder(mel.squeeze(1).permute(0, 2, 1))):.3f} s", flush=True)

from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    generate(f, image_embeds=E[:8], duration=5.0, batch_size=8, verify_frozen=False)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=60))
torch.backends.cudnn.benchmark = True
for b in (8, 32):
    s = tgen(b)
    print(f"[full] cudnn.benchmark=True: warm generate 5 s bf16 batch {b}: {s:.3f} s = {b / s:.1f} clips/s", flush=True)
