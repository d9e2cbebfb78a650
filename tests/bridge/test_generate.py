"""generate(): exact durations, seeds, batches, candidates, callback, input checks, frozen weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ciap_lib.bridge import CIAPCondStage, check_inputs, generate


@pytest.mark.parametrize("duration", [2.5, 3.3])  # 5.0 s: test_readme_example
def test_exact_duration_and_shape(tiny_audioldm, unit_embeds, duration):
    w = generate(tiny_audioldm, image_embeds=unit_embeds(2), duration=duration, steps=2, verify_frozen=False)
    assert isinstance(w, np.ndarray) and w.dtype == np.float32
    assert w.shape == (2, round(duration * 16000))
    assert np.isfinite(w).all()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_same_seed_same_audio_whatever_the_batch_size(tiny_audioldm, unit_embeds, precision, native_bf16):
    """The seed contract on the CPU: bitwise, at every batch size (ciap_lib.bridge.invariance)."""
    e = unit_embeds(3, seed=5)
    kw = dict(image_embeds=e, duration=2.5, steps=2, verify_frozen=False, return_latents=True, precision=precision)
    a, za = generate(tiny_audioldm, seed=11, batch_size=3, **kw)
    w, z = generate(tiny_audioldm, seed=11, batch_size=1, **kw)    # each clip alone
    np.testing.assert_array_equal(z.numpy(), za.numpy(), err_msg="latents, batch size 1 against 3")
    np.testing.assert_array_equal(w, a, err_msg="audio, batch size 1 against 3")
    # clip 2 of the batch is clip 0 of its own call at seed + 2
    w, z = generate(tiny_audioldm, seed=13, batch_size=1, **{**kw, "image_embeds": e[2:3]})
    np.testing.assert_array_equal(w[0], a[2])
    assert float((z[0] - za[1]).norm() / za[1].norm()) > 0.1   # clip 1 (seed 12) under clip 2's condition: other


def test_per_clip_linears_make_a_linear_batch_invariant_and_are_removed():
    """A Linear's output for clip 0 does not depend on how many clips are beside it, for 2-D (N, K) inputs and
    3-D (N, tokens, K) ones. The 3-D case is the full-size UNet's feed-forward output at the 16 x 2 latent
    (K = 2560): batched as it is, MKL moved clip 0 by up to 1.2e-6 here, even on one thread."""
    from ciap_lib.bridge.invariance import per_clip_linears

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2560, 640), torch.nn.SiLU(), torch.nn.Linear(640, 256))
    for x in (torch.randn(32, 2560), torch.randn(32, 8, 2560), torch.randn(32, 32, 2560)):
        with torch.no_grad(), per_clip_linears(net):
            one = net(x[:1])
            for n in (2, 4, 8, 16, 32):
                assert torch.equal(net(x[:n])[:1], one), (tuple(x.shape), n)
        with torch.no_grad(), per_clip_linears(net, rows_per_clip=2):
            pair = net(x[:2])
            for n in (4, 8, 16, 32):
                assert torch.equal(net(x[:n])[:2], pair), (tuple(x.shape), n)
    assert all("forward" not in vars(m) for m in net.modules())
    with torch.no_grad(), per_clip_linears(net, enabled=False):
        assert all("forward" not in vars(m) for m in net.modules())


def test_per_clip_linears_never_compute_the_batched_product(monkeypatch):
    from ciap_lib.bridge.invariance import per_clip_linears

    net, shapes, real = torch.nn.Linear(16, 4), [], torch.nn.functional.linear

    def spy(inp, *args, **kwargs):
        shapes.append(tuple(inp.shape))
        return real(inp, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    with torch.no_grad(), per_clip_linears(net):
        net(torch.randn(5, 16))
        net(torch.randn(3, 7, 16))
    assert shapes == [(1, 16)] * 5 + [(1, 7, 16)] * 3    # a clip at a time, and no batched product besides
    shapes.clear()
    with torch.no_grad(), per_clip_linears(net, rows_per_clip=2):
        out = net(torch.randn(6, 7, 16))
        net(torch.randn(2, 16))                           # one clip: as it is
        with pytest.raises(ValueError, match="5 rows are not clips of 2 rows each"):
            net(torch.randn(5, 16))
    assert out.shape == (6, 7, 4) and shapes == [(2, 7, 16)] * 3 + [(2, 16)]


def test_guided_unet_batch_holds_each_clips_rows_side_by_side(tiny_audioldm, unit_embeds, monkeypatch):
    """predict_noise interleaves (u_0, c_0, u_1, c_1, ...) and has the Linears take 2 rows at a time, so a clip's
    two rows are computed together whatever the batch; without guidance 1 row is a clip."""
    import ciap_lib.bridge.sampling as S

    seen = []
    real = S.per_clip_linears
    monkeypatch.setattr(S, "per_clip_linears", lambda m, rows_per_clip=1, enabled=True: seen.append(
        (rows_per_clip, enabled)) or real(m, rows_per_clip, enabled))
    x, c = S.initial_noise(tiny_audioldm, 8, [0, 1, 2]), unit_embeds(3)
    with torch.inference_mode():
        guided = S.predict_noise(tiny_audioldm, x, torch.tensor(500), c, 2.5)
        plain = S.predict_noise(tiny_audioldm, x, torch.tensor(500), c, 1.0)
        for i in range(3):   # each clip alone: bitwise its rows of the batch
            assert torch.equal(S.predict_noise(tiny_audioldm, x[i:i + 1], torch.tensor(500), c[i:i + 1], 2.5),
                               guided[i:i + 1])
    assert seen[:2] == [(2, True), (1, True)] and guided.shape == plain.shape == x.shape


def test_candidates_best_by_clap_and_callback(tiny_audioldm, unit_embeds):
    e = unit_embeds(1, seed=2)
    calls = []
    best = generate(tiny_audioldm, image_embeds=e, duration=2.5, steps=2, n_candidates=3, seed=0, batch_size=3,
                    callback=lambda d, t: calls.append((d, t)), precision="fp32", verify_frozen=False)
    singles = np.concatenate([generate(tiny_audioldm, image_embeds=e, duration=2.5, steps=2, seed=k,
                                       precision="fp32", verify_frozen=False) for k in range(3)])
    sims = (tiny_audioldm.clap_audio_embed(torch.from_numpy(singles)) * e[0]).sum(-1)
    np.testing.assert_array_equal(best[0], singles[int(sims.argmax())])   # batch of 3 = one at a time, bitwise
    assert calls[-1] == (3, 3) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_images_through_cond_stage_and_fingerprint_unchanged(tiny_audioldm, ciap_workspace):
    stage = CIAPCondStage.from_checkpoint(ciap_workspace["checkpoint"])
    images = sorted((ciap_workspace["data"] / "val").glob("*.png"))[:2]
    assert images
    emb = stage(stage.load_images(images))
    assert emb.shape == (2, 1, 512) and torch.allclose(emb.norm(dim=-1), torch.ones(2, 1), atol=1e-5)
    before = tiny_audioldm.fingerprint()
    w = generate(tiny_audioldm, images, cond_stage=stage, duration=2.5, steps=2)  # verify_frozen=True
    assert w.shape == (2, 40000)
    assert tiny_audioldm.fingerprint() == before == tiny_audioldm.reference_fingerprint


def test_bf16_on_a_cpu_without_native_bf16_computes_in_float32(tiny_audioldm, unit_embeds, monkeypatch):
    """Emulated bf16 is ~90x slower than float32 on an AVX2-only CPU: ``bf16`` runs the float32 modules there."""
    from ciap_lib.bridge import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    asked = []
    real = tiny_audioldm.sampling_modules
    monkeypatch.setattr(tiny_audioldm, "sampling_modules", lambda p="fp32": asked.append(p) or real(p))
    kw = dict(image_embeds=unit_embeds(2), duration=2.5, steps=2, verify_frozen=False)
    np.testing.assert_array_equal(generate(tiny_audioldm, precision="bf16", **kw),
                                  generate(tiny_audioldm, precision="fp32", **kw))
    assert asked and set(asked) == {"fp32"}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_weight_changed_during_generation_is_caught(tiny_audioldm_ckpt, unit_embeds, precision, native_bf16):
    """The check after generate() hashes the parts it ran: a UNet weight nudged in place by a forward hook
    (on the module the sampler actually runs, the bf16 copy shares no such weight) raises, naming it."""
    from ciap_lib.bridge import load_audioldm

    a = load_audioldm(tiny_audioldm_ckpt, cache_uncond=False)  # not the shared session model
    target = a.unet.diffusion_model.out[0]                     # a GroupNorm: float32, shared by the bf16 copy
    unet, _ = a.sampling_modules(precision)
    run_module = unet.diffusion_model.out[0]
    assert run_module.weight is target.weight

    def nudge(module, inputs, output) -> None:
        module.weight.data.add_(1e-3)

    hook = run_module.register_forward_hook(nudge)
    try:
        with pytest.raises(RuntimeError, match=r"model\.diffusion_model\.out\.0\.weight"):
            generate(a, image_embeds=unit_embeds(1), duration=2.5, steps=1, precision=precision)
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="parts"):
        a.assert_unchanged(("vocoder",))


def test_bf16_copies_compute_what_autocast_computes_on_the_frozen_modules(tiny_audioldm, unit_embeds, monkeypatch):
    """Casting once computes what autocast computes, bitwise (the copies as cast, without oneDNN prepacking: packed
    against unpacked is tests/bridge/test_prepack.py's)."""
    a = tiny_audioldm
    monkeypatch.setattr(a, "prepack", False)
    monkeypatch.setattr(a, "_half", {})          # copies made here, without packing; the shared model's come back
    x, c = torch.randn(2, 8, 16, 16), unit_embeds(2)
    ts = torch.full((2,), 500)
    unet, vae = a.sampling_modules("bf16")
    assert a.sampling_modules("bf16")[0] is unet                  # made once
    assert a.sampling_modules("fp32") == (a.unet, a.vae)
    assert unet.diffusion_model.input_blocks[0][0].weight.dtype == torch.bfloat16
    assert a.unet.diffusion_model.input_blocks[0][0].weight.dtype == torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(unet(x, ts, c_film=[c]), a.ldm.apply_model(x, ts, c))
        mel = a.ldm.decode_first_stage(x)
        assert torch.equal(vae.decode(1.0 / a.ldm.scale_factor * x), mel)
        assert torch.equal(vae.vocoder(mel.squeeze(1).permute(0, 2, 1)), a.vocoder(mel.squeeze(1).permute(0, 2, 1)))
    assert not any(p.requires_grad for p in list(unet.parameters()) + list(vae.parameters()))
    a.assert_unchanged()


def test_input_checks_are_clear(tiny_audioldm, unit_embeds, ciap_workspace, tmp_path):
    e = unit_embeds(1)
    with pytest.raises(ValueError, match="duration"):
        generate(tiny_audioldm, image_embeds=e, duration=11)
    with pytest.raises(ValueError, match="duration"):
        check_inputs(duration=2.0, image_embeds=e)
    with pytest.raises(ValueError, match="steps"):
        check_inputs(steps=0, image_embeds=e)
    with pytest.raises(ValueError, match="image_embeds"):
        check_inputs(image_embeds=torch.ones(1, 1, 256))
    stage = CIAPCondStage.from_checkpoint(ciap_workspace["checkpoint"])
    with pytest.raises(ValueError, match="does not exist"):
        generate(tiny_audioldm, [tmp_path / "missing.png"], cond_stage=stage)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="junk.png"):
        generate(tiny_audioldm, [junk], cond_stage=stage)


def test_cond_stage_rejects_wrong_embed_size(tmp_path):
    from fixtures.generation import make_workspace

    ws = make_workspace(tmp_path, n_train=2, n_val=2, embed_dim=64)
    with pytest.raises(ValueError, match="embedding size 64"):
        CIAPCondStage.from_checkpoint(ws["checkpoint"])


@pytest.mark.parametrize("prefers_bf16, resolved", [(False, "fp32"), (True, "bf16")])
def test_auto_precision_gives_the_audio_of_the_precision_it_resolves_to(tiny_audioldm, unit_embeds, monkeypatch,
                                                                        native_bf16, prefers_bf16, resolved):
    from ciap_lib import hardware

    monkeypatch.setattr(hardware, "cpu_prefers_bf16", lambda: prefers_bf16)
    asked = []
    real = tiny_audioldm.sampling_modules
    monkeypatch.setattr(tiny_audioldm, "sampling_modules", lambda p="fp32": asked.append(p) or real(p))
    kw = dict(image_embeds=unit_embeds(2), duration=2.5, steps=2, verify_frozen=False)
    auto = generate(tiny_audioldm, **kw)                                       # the default precision is auto
    assert set(asked) == {resolved}
    np.testing.assert_array_equal(auto, generate(tiny_audioldm, precision=resolved, **kw))
    other = generate(tiny_audioldm, precision="bf16" if resolved == "fp32" else "fp32", **kw)
    assert not np.array_equal(auto, other)                                     # the two precisions do differ
