"""Negative and mixed conditioning on the tiny AudioLDM, seen where it matters: the UNet's film condition.

A forward pre-hook on the UNet records ``c_film``; with guidance its batch holds each clip's negative and
condition side by side, ``(n_0, c_0, n_1, c_1, ...)`` (``ciap_lib.bridge.sampling.predict_noise``).
"""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from ciap_lib.bridge import clap_text_embedding, generate

KW = dict(duration=2.5, steps=1, precision="fp32", verify_frozen=False)


@pytest.fixture
def film(tiny_audioldm):
    """``film.calls``: the (2N, 1, 512) film condition of every UNet call made while the test runs."""
    class Film:
        calls: list[torch.Tensor] = []

    rec = Film()
    rec.calls = []
    unet, _ = tiny_audioldm.sampling_modules("fp32")
    handle = unet.register_forward_pre_hook(
        lambda _m, _a, kw: rec.calls.append(kw["c_film"][0].detach().cpu().clone()), with_kwargs=True)
    yield rec
    handle.remove()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two 1.5 s 16 kHz clips (a tone, noise) and a file that is not audio."""
    folder = tmp_path_factory.mktemp("clips")
    t = np.arange(24000) / 16000
    sf.write(folder / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 16000)
    sf.write(folder / "noise.wav", 0.3 * np.random.default_rng(0).standard_normal(24000), 16000)
    (folder / "junk.wav").write_bytes(b"RIFF not really a wav")
    return folder


def halves(call: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional and the conditional rows of a guided call's film condition, (n, 1, 512) each."""
    assert call.shape == (2 * n, 1, 512)
    return call[0::2], call[1::2]


def clap_audio(audioldm, *paths) -> torch.Tensor:
    from ciap_lib.audio_io import load_audio

    return torch.cat([audioldm.clap_audio_embed(torch.from_numpy(load_audio(p))[None]).cpu() for p in paths])


def test_default_guidance_vector_is_the_empty_text(tiny_audioldm, unit_embeds, film):
    e = unit_embeds(2)
    generate(tiny_audioldm, image_embeds=e, batch_size=2, **KW)
    u, c = halves(film.calls[0], 2)
    assert torch.equal(u, tiny_audioldm.uncond_embedding.expand(2, 1, 512))
    torch.testing.assert_close(c, e)


def test_negative_clips_take_the_place_of_the_empty_text(tiny_audioldm, unit_embeds, clips, film):
    e = unit_embeds(2, seed=1)
    base = generate(tiny_audioldm, image_embeds=e, batch_size=2, **KW)
    film.calls.clear()
    out = generate(tiny_audioldm, image_embeds=e, batch_size=2, negative=[clips / "tone.wav", clips / "noise.wav"], **KW)
    want = F.normalize(clap_audio(tiny_audioldm, clips / "tone.wav", clips / "noise.wav").mean(0), dim=-1)
    u, c = halves(film.calls[0], 2)
    torch.testing.assert_close(u, want.expand(2, 1, 512), rtol=0, atol=1e-6)
    torch.testing.assert_close(c, e)
    assert (u[0] - tiny_audioldm.uncond_embedding[0]).norm() > 1e-2
    assert not np.array_equal(out, base)                   # the negative changes the audio
    tiny_audioldm.assert_unchanged()                       # and the weights stay frozen


def test_negative_text_and_precomputed_per_image_negatives(tiny_audioldm, unit_embeds, tiny_tokenizer_dir, film):
    e = unit_embeds(2, seed=2)
    generate(tiny_audioldm, image_embeds=e, batch_size=2, negative_text="speech", tokenizer_dir=tiny_tokenizer_dir, **KW)
    u, _ = halves(film.calls[0], 2)
    speech = clap_text_embedding(tiny_audioldm, "speech", tiny_tokenizer_dir)
    torch.testing.assert_close(u, speech.expand(2, 1, 512), rtol=0, atol=1e-6)
    film.calls.clear()
    neg = unit_embeds(2, seed=9)
    generate(tiny_audioldm, image_embeds=e, batch_size=1, negative_embeds=neg, **KW)   # one per image, batch 1
    assert len(film.calls) == 2
    torch.testing.assert_close(halves(film.calls[0], 1)[0], neg[:1])
    torch.testing.assert_close(halves(film.calls[1], 1)[0], neg[1:])


@pytest.mark.parametrize("w", [0.3, 1.0])
def test_mix_weight_reaches_the_film_condition(tiny_audioldm, unit_embeds, tiny_tokenizer_dir, clips, film, w):
    e = unit_embeds(2, seed=3)
    generate(tiny_audioldm, image_embeds=e, batch_size=2, mix=[f"text:rain:{w}"], tokenizer_dir=tiny_tokenizer_dir, **KW)
    rain = clap_text_embedding(tiny_audioldm, "rain", tiny_tokenizer_dir).reshape(512)
    u, c = halves(film.calls[0], 2)
    torch.testing.assert_close(c, F.normalize((1 - w) * e + w * rain, dim=-1), rtol=0, atol=1e-6)
    assert torch.equal(u, tiny_audioldm.uncond_embedding.expand(2, 1, 512))
    film.calls.clear()
    generate(tiny_audioldm, image_embeds=e, batch_size=2, mix=[f"{clips / 'tone.wav'}:{w}"], **KW)
    tone = clap_audio(tiny_audioldm, clips / "tone.wav")[0]
    torch.testing.assert_close(halves(film.calls[0], 2)[1], F.normalize((1 - w) * e + w * tone, dim=-1),
                               rtol=0, atol=1e-6)
    film.calls.clear()
    generate(tiny_audioldm, image_embeds=e, batch_size=2, mix_embeds=tone[None], mix_weights=[w], **KW)
    torch.testing.assert_close(halves(film.calls[0], 2)[1], F.normalize((1 - w) * e + w * tone, dim=-1),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs, words", [
    (dict(negative=["{clips}/junk.wav"]), ["negative: unreadable audio clip", "junk.wav"]),
    (dict(negative=["{clips}/missing.wav"]), ["negative: audio file", "missing.wav", "does not exist"]),
    (dict(mix=["{clips}/junk.wav:0.5"]), ["mix: unreadable audio clip", "junk.wav"]),
    (dict(negative_text="speech", tokenizer_dir="{clips}/no-tokenizer"),
     ["no tokenizer folder at", "no-tokenizer", "save_pretrained"]),
    (dict(negative_text="speech"), ["roberta-base", "save_pretrained"]),     # default place: beside the checkpoint
    (dict(mix=["text:rain:1.5"]), ["mix: 'text:rain:1.5': weight 1.5 is outside [0, 1]"]),
    (dict(mix=["{clips}/tone.wav:0.6", "text:rain:0.6"]), ["sum to 1.2"]),
    (dict(mix_embeds=torch.ones(1, 512), mix_weights=[-0.1]), ["mix_weights: each must be in [0, 1]"]),
    (dict(negative=["{clips}/tone.wav"], negative_text="speech"), ["not both"]),
    (dict(negative_embeds=torch.ones(3, 512)), ["negative_embeds: 3 rows for 2 images"]),
])
def test_bad_negative_or_mix_fails_before_any_unet_call(tiny_audioldm, unit_embeds, clips, film, kwargs, words):
    kwargs = {k: ([x.format(clips=clips) for x in v] if isinstance(v, list) and v and isinstance(v[0], str)
                  else v.format(clips=clips) if isinstance(v, str) else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError) as e:
        generate(tiny_audioldm, image_embeds=unit_embeds(2), **kwargs, **KW)
    for w in words:
        assert w in str(e.value), str(e.value)
    assert film.calls == [], "the UNet ran before the input was checked"
    tiny_audioldm.assert_unchanged()
