"""Drive the frozen AudioLDM UNet with diffusers' schedulers.

AudioLDM's noise schedule is linear in sqrt(beta) from 0.0015 to 0.0195 over 1000 steps with
epsilon prediction: diffusers' ``scaled_linear``. audioldm 0.1.1's own ``DDIMSampler`` moves its
buffers to CUDA unconditionally, so it is not used.

* ``ddim``: ``DDIMScheduler`` eta 0, AudioLDM's DDIM timesteps (uniform, offset 1, final alpha =
  alphas_cumprod[0]); 200 steps is the reference.
* ``dpmpp`` (default): ``DPMSolverMultistepScheduler``, DPM-Solver++ 2M with Karras sigmas, 6 steps.
* ``unipc``: ``UniPCMultistepScheduler`` (bh2) with Karras sigmas, 6 steps.

Step counts: on the tiny test model, against the converged solution of the sampling ODE (both fast
solvers at 50 steps, which agree to < 0.5%), DPM-Solver++ is 3.8 / 1.9 / 1.2 / 0.7 % off at 4 / 5 / 6 / 8 steps,
while AudioLDM's own 200-step DDIM is ~3 % off: it starts at t=996, not 999 (started at 999, it is 0.2 % off).
``tests/bridge/test_sampling.py`` checks the shipped count against both.

Classifier-free guidance uses the CLAP text embedding of ``""`` as the unconditional vector:
``eps = eps("") + g * (eps(cond) - eps(""))``, as AudioLDM's sampler does; a negative (``uncond``, from
``ciap_lib.bridge.guidance``) takes the place of ``""``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ciap_lib.bridge import cuda_graphs, devices
from ciap_lib.bridge.attention import fused_attention
from ciap_lib.bridge.invariance import per_clip_linears
from ciap_lib.bridge.frozen import FrozenAudioLDM
from ciap_lib.constants import SAMPLE_RATE

#: AudioLDM's training schedule in diffusers' terms.
AUDIOLDM_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                         beta_schedule="scaled_linear", prediction_type="epsilon")
SAMPLERS: tuple[str, ...] = ("dpmpp", "unipc", "ddim")
DEFAULT_SAMPLER = "dpmpp"
#: default step counts; the fast solvers' count is the one tests/bridge/test_sampling.py checks
#: against 200-step DDIM.
DEFAULT_STEPS: dict[str, int] = {"dpmpp": 6, "unipc": 6, "ddim": 200}
HOP = 160                      # mel hop at 16 kHz
MEL_PER_LATENT = 4             # VAE time downsampling
LATENT_MULTIPLE = 8            # UNet downsamples 3 times


def make_scheduler(sampler: str = DEFAULT_SAMPLER, steps: int | None = None):
    """A diffusers scheduler with AudioLDM's betas, ``set_timesteps(steps)`` done."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: {sampler!r} is not one of {SAMPLERS}")
    steps = DEFAULT_STEPS[sampler] if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    if sampler == "ddim":
        sched = DDIMScheduler(**AUDIOLDM_SCHEDULE, clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, timestep_spacing="leading")
    elif sampler == "dpmpp":
        sched = DPMSolverMultistepScheduler(**AUDIOLDM_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2,
                                            lower_order_final=True, use_karras_sigmas=True)
    else:
        sched = UniPCMultistepScheduler(**AUDIOLDM_SCHEDULE, solver_order=2, solver_type="bh2",
                                        lower_order_final=True, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    return sched


def latent_frames(duration: float) -> int:
    """Latent time frames for ``duration`` seconds: enough mel frames (100/s), a multiple of 8.
    (5 s -> 128, 10 s -> 256, as AudioLDM's ``int(duration * 25.6)``.)"""
    need = math.ceil(round(duration * SAMPLE_RATE / HOP, 6) / MEL_PER_LATENT)
    return int(math.ceil(need / LATENT_MULTIPLE) * LATENT_MULTIPLE)


def initial_noise(audioldm: FrozenAudioLDM, n_frames: int, seeds: list[int]) -> torch.Tensor:
    """(len(seeds), 8, n_frames, 16) standard normal noise, one ``torch.Generator`` per seed
    (so a clip's noise does not depend on what else is in the batch)."""
    shape = (audioldm.latent_channels, n_frames, audioldm.latent_f_size)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def predict_noise(audioldm: FrozenAudioLDM, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                  guidance_scale: float, autocast: bool = False, uncond: torch.Tensor | None = None,
                  half: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Guided epsilon for latents ``x`` (N,8,T,16) at timestep ``t`` with ``cond`` (N,1,512).

    ``uncond``: what guidance steers away from, (1,1,512) or (N,1,512); default ``audioldm.uncond_embedding``
    (the CLAP text embedding of ``""``). The UNet's film condition holds each clip's two side by side,
    ``(u_0, c_0, u_1, c_1, ...)`` (2N, 1, 512), and its latents ``(x_0, x_0, x_1, x_1, ...)``.
    ``autocast``: run under autocast to ``half`` (bfloat16, or float16 on GPUs without bf16) with weight copies.
    On CUDA the UNet call is replayed from a CUDA graph captured once per shape (:mod:`ciap_lib.bridge.cuda_graphs`;
    ``audioldm.cuda_graphs = False``: eagerly).
    """
    n, guided = x.shape[0], guidance_scale != 1.0
    if guided:
        u = audioldm.uncond_embedding if uncond is None else uncond
        u = u.to(device=cond.device, dtype=cond.dtype).reshape(-1, 1, cond.shape[-1]).expand(n, 1, cond.shape[-1])
        # each clip's two rows side by side, (u_0, c_0, u_1, c_1, ...): the Linears take them a clip at a time
        x_in, c_in = torch.stack([x, x], 1).flatten(0, 1), torch.stack([u, cond], 1).flatten(0, 1)
    else:
        x_in, c_in = x, cond
    ts = torch.full((x_in.shape[0],), int(t), dtype=torch.long, device=x.device)
    dtype = half if autocast else None
    unet, _ = devices.sampling_modules(audioldm, dtype)

    def unet_call(x_in: torch.Tensor, ts: torch.Tensor, c_in: torch.Tensor) -> torch.Tensor:
        # on the CPU the Linears run one clip (its 1 or 2 rows) at a time: a clip's noise prediction does not
        # depend on its batch (ciap_lib.bridge.invariance); attention runs through torch's fused SDPA kernel
        # (ciap_lib.bridge.attention)
        with devices.autocast(x_in.device, dtype), fused_attention(unet), \
                per_clip_linears(unet, rows_per_clip=2 if guided else 1, enabled=x_in.device.type == "cpu"):
            return unet(x_in, ts, c_film=[c_in])      # what LatentDiffusion.apply_model does for film conditioning

    if x.device.type == "cuda" and audioldm.cuda_graphs:   # launch-bound there: replayed (ciap_lib.bridge.cuda_graphs)
        def captured(x_in: torch.Tensor, ts: torch.Tensor, c_in: torch.Tensor) -> torch.Tensor:
            with cuda_graphs.cached_timestep_frequencies():
                return unet_call(x_in, ts, c_in)

        eps = cuda_graphs.graphed_call(audioldm.graphs, unet, dtype, captured)(x_in, ts, c_in)
    else:
        eps = unet_call(x_in, ts, c_in)
    eps = eps.float()
    if guided:
        eps_u, eps_c = eps.unflatten(0, (n, 2)).unbind(1)
        eps = eps_u + guidance_scale * (eps_c - eps_u)
    return eps


def sample_latents(audioldm: FrozenAudioLDM, cond: torch.Tensor, noise: torch.Tensor, *,
                   sampler: str = DEFAULT_SAMPLER, steps: int | None = None, guidance_scale: float = 2.5,
                   autocast: bool = False, callback: Callable[[int, int], None] | None = None,
                   uncond: torch.Tensor | None = None, half: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Run the solver from ``noise`` (N,8,T,16) under condition ``cond`` (N,1,512) -> latents (N,8,T,16),
    on the model's device.

    ``uncond`` ((1,1,512) or (N,1,512)): the guidance vector in place of ``""`` (see :func:`predict_noise`).
    ``callback(step, total)`` is called after every solver step.
    """
    if cond.dim() != 3 or cond.shape[0] != noise.shape[0] or cond.shape[1] != 1:
        raise ValueError(f"cond: expected ({noise.shape[0]}, 1, 512), got {tuple(cond.shape)}")
    sched = make_scheduler(sampler, steps)
    extra = {"eta": 0.0} if sampler == "ddim" else {}
    device = audioldm.device
    cond = cond.to(device=device, dtype=torch.float32)
    if uncond is not None:
        uncond = uncond.to(device=device, dtype=torch.float32)
    with torch.inference_mode():
        x = noise.to(device=device, dtype=torch.float32) * sched.init_noise_sigma
        total = len(sched.timesteps)
        for i, t in enumerate(sched.timesteps):
            x_in = sched.scale_model_input(x, t)
            eps = predict_noise(audioldm, x_in, t, cond, guidance_scale, autocast=autocast, uncond=uncond, half=half)
            x = sched.step(eps, t, x, **extra).prev_sample
            if callback is not None:
                callback(i + 1, total)
    return x


def decode_latents(audioldm: FrozenAudioLDM, latents: torch.Tensor, autocast: bool = False,
                   half: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Latents (N,8,T,16) -> 16 kHz waveforms (N, T*4*160) via the frozen VAE and HiFi-GAN.

    On the CPU one clip at a time: the decoder's GroupNorms (channels-last under bf16) and its fp32 convolutions
    split their sums by the batch (:mod:`ciap_lib.bridge.invariance`), so a batched decode would depend on the
    other clips in it. (Clipping, as audioldm's ``generate_sample``, is decided per clip too.) On CUDA batched, in
    float32 whatever ``autocast`` says (:func:`ciap_lib.bridge.devices.decode_dtype`: a bf16 decode broke the seed
    contract there)."""
    if latents.device.type == "cpu" and latents.shape[0] > 1:
        return torch.cat([decode_latents(audioldm, z[None], autocast, half) for z in latents])
    dtype = devices.decode_dtype(latents.device, half if autocast else None)
    with torch.inference_mode(), devices.autocast(latents.device, dtype):
        z = latents
        if torch.max(torch.abs(z)) > 1e2:  # as audioldm's generate_sample
            z = torch.clip(z, min=-10, max=10)
        _, vae = devices.sampling_modules(audioldm, dtype)
        mel = vae.decode(1.0 / audioldm.ldm.scale_factor * z)        # as LatentDiffusion.decode_first_stage: (N, 1, T*4, 64)
        wave = vae.vocoder(mel.squeeze(1).permute(0, 2, 1))          # (N, 1, T*4*160)
    return wave.squeeze(1).float()
