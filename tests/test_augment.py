"""ciap_lib.augment: each part changes its input (and a part that is off does not), seeded per item, SNR in range,
SpecAugment only in training mode, off in evaluation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ciap_lib.augment import (AUDIO_PARTS, AudioAugment, ImageAugment, SpecAugment, coloured_noise, from_config,
                              parse_parts, set_spec_augment)
from ciap_lib.config import load_config
from ciap_lib.models import create_model

T = 16000


def _tone(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(T) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(0.2, 1.0, T) + 0.05 * rng.standard_normal(T)
    return wave.astype(np.float32)


def _image(seed: int = 0, s: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
    img[: s // 2] //= 2  # some structure, so crops and shifts differ
    return img


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


# ------------------------------------------------------------------------------------------- parts by name
def test_parse_parts_names_bad_values_and_what_is_allowed():
    assert parse_parts("gain, noise,gain", AUDIO_PARTS) == ["gain", "noise"]
    assert parse_parts("", AUDIO_PARTS) == [] and parse_parts("none", AUDIO_PARTS) == []
    assert parse_parts(["shift"], AUDIO_PARTS) == ["shift"]
    with pytest.raises(ValueError) as e:
        parse_parts("gain,chorus", AUDIO_PARTS, "augment_audio")
    msg = str(e.value)
    assert "augment_audio" in msg and "'chorus'" in msg and "specaugment" in msg and "speed" in msg


# ------------------------------------------------------------------------------------------- audio
@pytest.mark.parametrize("part", ["gain", "shift", "noise", "speed", "tilt", "reverb"])
def test_each_audio_part_changes_the_wave_and_the_others_leave_it(part):
    wave = _tone()
    only = AudioAugment([part]).augment(wave, _rng(1, 2, 3))
    assert only.shape == wave.shape and only.dtype == np.float32
    assert not np.array_equal(only, wave), part
    # every other part on: this part's draw is unchanged by them, and it being off changes the result
    others = [p for p in ("gain", "shift", "noise", "speed", "tilt", "reverb") if p != part]
    a = AudioAugment(others).augment(wave, _rng(1, 2, 3))
    b = AudioAugment(others + [part]).augment(wave, _rng(1, 2, 3))
    assert not np.array_equal(a, b)
    assert np.array_equal(AudioAugment([]).augment(wave, _rng(1, 2, 3)), wave)  # nothing on: unchanged


def test_audio_parts_do_what_they_say():
    wave = _tone()
    aug = AudioAugment(["gain"], gain_db=6.0)
    p = aug.sample(_rng(0), T)
    out = aug.apply(wave, p)
    np.testing.assert_allclose(out, wave * 10 ** (p.gain_db / 20), rtol=1e-5)
    assert -6.0 <= p.gain_db <= 6.0
    aug = AudioAugment(["shift"])
    p = aug.sample(_rng(0), T)
    assert p.shift != 0 and np.array_equal(aug.apply(wave, p), np.roll(wave, p.shift))  # circular
    zero = AudioAugment(["shift"], circular=False)
    z = zero.apply(wave, p)
    if p.shift > 0:
        assert (z[:p.shift] == 0).all() and np.array_equal(z[p.shift:], wave[:-p.shift])
    else:
        assert (z[p.shift:] == 0).all() and np.array_equal(z[:p.shift], wave[-p.shift:])


def test_tilt_darkens_or_brightens_at_the_same_loudness():
    from ciap_lib.augment import AudioParams

    rng = np.random.default_rng(0)
    wave = rng.normal(size=16000).astype(np.float32)         # white: equal power per band
    aug = AudioAugment(["tilt"], tilt_max=0.8)

    def high_share(x):
        spec = np.abs(np.fft.rfft(x)) ** 2
        return spec[len(spec) // 2:].sum() / spec.sum()

    bright, dark = aug.apply(wave, AudioParams(tilt=0.7)), aug.apply(wave, AudioParams(tilt=-0.7))
    assert high_share(bright) > 0.7 > 0.5 > 0.3 > high_share(dark)
    for y in (bright, dark):
        assert np.sqrt(np.mean(y ** 2)) == pytest.approx(np.sqrt(np.mean(wave ** 2)), rel=1e-4)
    draws = [aug.sample(np.random.default_rng(i), T).tilt for i in range(100)]
    assert max(draws) <= 0.8 and min(draws) >= -0.8 and max(draws) > 0.5 and min(draws) < -0.5
    with pytest.raises(ValueError, match="tilt_max"):
        AudioAugment(["tilt"], tilt_max=1.0)


def test_reverb_rings_on_after_each_pulse_at_the_same_loudness():
    from ciap_lib.augment import AudioParams, reverb_wave
    wave = np.zeros(T, dtype=np.float32)
    for onset in (2000, 10000):                      # two 0.1 s tone bursts with hard ends
        wave[onset:onset + 1600] = np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)
    aug = AudioAugment(["reverb"], reverb_rt60_max=0.5)
    p = aug.sample(_rng(5), T)
    assert 0.05 <= p.rt60 <= 0.5 and 0.2 <= p.wet <= 0.8 and p.gain_db == 0.0
    out = aug.apply(wave, p)
    assert out.dtype == np.float32 and out.shape == wave.shape
    np.testing.assert_allclose(np.sqrt(np.mean(out.astype(np.float64) ** 2)), np.sqrt(np.mean(wave ** 2)), rtol=1e-5)
    assert np.abs(out[:2000]).max() < 1e-6          # causal: nothing before the first pulse
    silent_after = slice(3600, 3600 + int(0.05 * 16000))
    assert np.abs(wave[silent_after]).max() == 0 and np.sqrt(np.mean(out[silent_after] ** 2)) > 1e-3  # a tail
    # a longer room rings on longer (0.1-0.25 s after the first pulse ends: nothing left of a 0.05 s room, an
    # audible tail of a 0.3 s one, several times more of a 1 s one); the same generator gives the same room
    late = slice(3600 + 1600, 3600 + 4000)
    short, mid, long = (reverb_wave(wave, rt60, 0.5, _rng(1)) for rt60 in (0.05, 0.3, 1.0))
    tail = [float(np.sqrt(np.mean(w[late].astype(np.float64) ** 2))) for w in (short, mid, long)]
    assert tail[0] < 1e-6 and tail[1] > 0.01 and tail[2] > 3 * tail[1], tail
    assert np.array_equal(long, reverb_wave(wave, 1.0, 0.5, _rng(1)))
    assert not np.array_equal(long, reverb_wave(wave, 1.0, 0.5, _rng(2)))
    assert AudioParams().rt60 == 0.0                 # off by default
    with pytest.raises(ValueError, match="reverb_rt60_max"):
        AudioAugment(["reverb"], reverb_rt60_max=0.01)


def test_speed_perturbation_reads_a_longer_or_shorter_source():
    aug = AudioAugment(["speed"], speed_perturb=0.1)
    speeds = {aug.sample(_rng(0, 0, i), T).speed for i in range(40)}
    assert min(speeds) >= 0.9 and max(speeds) <= 1.1 and len(speeds) > 5
    p = next(q for q in (aug.sample(_rng(0, 0, i), T) for i in range(40)) if q.speed != 1.0)
    src = np.sin(2 * np.pi * 200 * np.arange(aug.source_length(T, p)) / 16000).astype(np.float32)
    out = aug.apply(src, p, T)
    assert out.shape == (T,)
    # the tone's frequency scales with the speed factor
    peak = np.argmax(np.abs(np.fft.rfft(out[:15000]))) * 16000 / 15000
    assert peak == pytest.approx(200 * p.speed, rel=0.02)


@pytest.mark.parametrize("pink", [False, True])
def test_noise_snr_is_within_the_range(pink):
    wave = _tone(3)
    aug = AudioAugment(["noise"], snr_db_min=5.0, snr_db_max=15.0)
    snrs = []
    for i in range(30):
        p = aug.sample(_rng(7, 0, i), T)
        p = type(p)(snr_db=p.snr_db, pink=pink, noise_seed=p.noise_seed)
        noise = aug.apply(wave, p).astype(np.float64) - wave
        snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise ** 2))
        assert snr == pytest.approx(p.snr_db, abs=0.01)
        snrs.append(snr)
    assert 5.0 <= min(snrs) and max(snrs) <= 15.0 and max(snrs) - min(snrs) > 3  # spread over the range
    silent = np.zeros(T, dtype=np.float32)
    assert np.array_equal(aug.augment(silent, _rng(0)), silent)  # no signal, no noise


def test_pink_noise_has_more_low_than_high_frequency_power():
    n = coloured_noise(T, np.random.default_rng(0), pink=True)
    w = coloured_noise(T, np.random.default_rng(0), pink=False)
    assert np.mean(n ** 2) == pytest.approx(1.0) and np.mean(w ** 2) == pytest.approx(1.0)
    spec = np.abs(np.fft.rfft(n)) ** 2
    assert spec[10:200].mean() > 20 * spec[4000:8000].mean()


def test_audio_augment_is_a_function_of_the_generator():
    aug = AudioAugment(["gain", "shift", "noise", "speed"])
    wave = _tone()
    assert np.array_equal(aug.augment(wave, _rng(0, 1, 2)), aug.augment(wave, _rng(0, 1, 2)))
    assert not np.array_equal(aug.augment(wave, _rng(0, 1, 2)), aug.augment(wave, _rng(0, 2, 2)))


# ------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("part", ["crop", "affine", "jitter"])
def test_each_image_part_changes_the_image_and_keeps_its_size(part):
    img = _image()
    out = ImageAugment([part]).augment(img, _rng(4, 0, 1))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img), part
    others = [p for p in ("crop", "affine", "jitter") if p != part]
    a = ImageAugment(others).augment(img, _rng(4, 0, 1))
    b = ImageAugment(others + [part]).augment(img, _rng(4, 0, 1))
    assert not np.array_equal(a, b)
    assert ImageAugment([]).augment(img, _rng(4, 0, 1)) is img


def test_image_augment_is_deterministic_per_generator_and_leaves_the_input():
    aug = ImageAugment(["crop", "affine", "jitter"])
    img = _image(1)
    before = img.copy()
    torch.manual_seed(0)
    a = aug.augment(img, _rng(0, 3, 5))
    torch.manual_seed(123)  # torch's global RNG plays no part
    b = aug.augment(img, _rng(0, 3, 5))
    assert np.array_equal(a, b) and np.array_equal(img, before)
    assert not np.array_equal(a, aug.augment(img, _rng(0, 4, 5)))
    for i in range(20):  # crop boxes stay inside the image with the asked-for area
        top, left, h, w = aug.sample(_rng(i), 32, 32).crop
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 32 and h * w >= 0.4 * 32 * 32


# ------------------------------------------------------------------------------------------- SpecAugment
def test_spec_augment_masks_in_training_mode_only():
    x = torch.randn(4, 1, 32, 51) + 5.0
    m = SpecAugment(freq_mask=8, time_mask=10)
    assert list(m.state_dict()) == []  # nothing new in checkpoints
    m.eval()
    assert torch.equal(m(x), x)
    m.train()
    torch.manual_seed(0)
    y = m(x)
    assert y.shape == x.shape and not torch.equal(y, x) and (y == 0).any()
    torch.manual_seed(0)
    assert torch.equal(m(x), y)  # torch's global RNG: seeded, saved in checkpoints


def test_spec_augment_sits_in_the_log_mel_front_end():
    model = create_model("debug")
    enc = model.audio_encoder
    assert isinstance(enc.spec_augment, torch.nn.Identity)
    keys = set(model.state_dict())
    set_spec_augment(model, SpecAugment(8, 10))
    assert set(model.state_dict()) == keys
    audio = torch.from_numpy(np.stack([_tone(i) for i in range(3)]))
    model.eval()
    ref = model.encode_audio(audio)
    model.train()
    torch.manual_seed(1)
    assert not torch.allclose(model.encode_audio(audio), ref)
    model.eval()
    assert torch.equal(model.encode_audio(audio), ref)
    with pytest.raises(ValueError, match="log-mel"):
        set_spec_augment(create_model("debug", audio_encoder="mlp"), SpecAugment())


def test_from_config_builds_what_is_switched_on():
    aug = from_config(load_config(None, ["augment_audio=gain,specaugment", "augment_image=", "gain_db=3"]))
    assert aug.audio.parts == ("gain",) and aug.audio.gain_db == 3.0
    assert aug.image is None and isinstance(aug.spec, SpecAugment)
    off = from_config(load_config(None))
    assert off.audio is None and off.image is None and off.spec is None
    rot = from_config(load_config(None, ["augment_image=affine", "affine_degrees=30"])).image
    assert rot.degrees == 30.0
    angles = [rot.sample(np.random.default_rng(i), 32, 32).affine[0] for i in range(200)]
    assert max(np.abs(angles)) > 20 and max(np.abs(angles)) <= 30
    zoom = from_config(load_config(None, ["augment_image=affine", "affine_scale=0.3"])).image
    scales = [zoom.sample(np.random.default_rng(i), 32, 32).affine[3] for i in range(200)]
    assert min(scales) < 0.8 and max(scales) > 1.2 and 0.7 <= min(scales) and max(scales) <= 1.3
    with pytest.raises(ValueError, match="scale must be in"):
        ImageAugment(["affine"], scale=1.0)
