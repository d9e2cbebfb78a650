"""ciap_lib.audio_io: decoding any format/rate/channel count to mono 16 kHz, clear errors, atomic writes."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from ciap_lib.audio_io import (AudioInfo, BadFileError, audio_info, load_audio, load_audio_segment, resample,
                               resampled_length, write_wav)
from fixtures.odd_files import make_bad_case, odd_audio, tone


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    return odd_audio(tmp_path_factory.mktemp("audio"))


@pytest.mark.parametrize("kind,seconds", [("wav_8k_mono", 1.5), ("flac_44k_stereo", 1.5), ("ogg_48k_5ch", 1.5),
                                          ("mp3_44k_stereo", 1.5), ("wav_48k_5ch", 1.5), ("short_0.1s", 0.1),
                                          ("long_30s", 30.0)])
def test_load_audio_mono_16k(audio_files, kind, seconds):
    x = load_audio(audio_files[kind], 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    tol = 0.08 * 16000 if kind.startswith("mp3") else 2  # mp3 decoders add/trim a few frames
    assert abs(len(x) - seconds * 16000) <= tol
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0


def test_multichannel_is_averaged(audio_files):
    # channel c of the fixture is (c+1)/C * 0.5 sin: the mean of 5 channels is 0.3 sin.
    mono = load_audio(audio_files["wav_48k_5ch"], 48000)
    ref = tone(1.5, 48000, 1)[:, 0] * 0.6
    np.testing.assert_allclose(mono, ref, atol=1e-3)
    stereo = load_audio(audio_files["wav_48k_5ch"], 48000, mono=False)
    assert stereo.shape == (5, 72000)


def test_resample_keeps_frequency():
    sr = 44100
    x = np.sin(2 * np.pi * 1000 * np.arange(sr) / sr).astype(np.float32)
    y = resample(x, sr, 16000)
    assert y.shape == (16000,)
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) - 1000) <= 1  # 1 Hz bins for a 1 s signal
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 16000)


def test_audio_info(audio_files):
    info = audio_info(audio_files["flac_44k_stereo"])
    assert isinstance(info, AudioInfo)
    assert (info.sample_rate, info.channels, info.format) == (44100, 2, "FLAC")
    assert info.duration == pytest.approx(1.5, abs=1e-3)


@pytest.mark.parametrize("case,reason", [("zero_byte_wav", "empty"), ("text_as_wav", "not a readable audio"),
                                         ("truncated_flac", "decoding failed")])
def test_bad_audio_errors_name_file_and_problem(tmp_path, case, reason):
    bad = make_bad_case(tmp_path, case)
    with pytest.raises(BadFileError, match=reason) as ei:
        load_audio(bad)
    assert str(bad) in str(ei.value) and ei.value.path == bad
    assert isinstance(ei.value, ValueError)


def test_missing_audio(tmp_path):
    with pytest.raises(BadFileError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_write_wav_roundtrip_and_atomic(tmp_path):
    x = (0.5 * np.sin(np.linspace(0, 100, 16000))).astype(np.float32)
    p = write_wav(tmp_path / "sub" / "a.wav", torch.from_numpy(x))
    assert p.is_file() and not list(p.parent.glob(".*tmp"))
    y = load_audio(p)
    np.testing.assert_allclose(y, x, atol=1e-4)
    p2 = write_wav(tmp_path / "st.wav", np.stack([x, -x]), 22050, subtype="FLOAT")
    info = sf.info(str(p2))
    assert (info.channels, info.samplerate, info.subtype) == (2, 22050, "FLOAT")
    with pytest.raises(ValueError, match="shape"):
        write_wav(tmp_path / "bad.wav", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "nan.wav", np.array([0.0, np.nan]))
    assert not (tmp_path / "nan.wav").exists()


@pytest.mark.parametrize("sr,ext", [(16000, ".wav"), (44100, ".flac"), (8000, ".wav"), (48000, ".ogg"),
                                    (22050, ".mp3")])
def test_load_audio_segment_matches_full_decode(tmp_path, sr, ext):
    from fixtures.odd_files import write_audio
    p = write_audio(tmp_path / f"x{ext}", 4.0, sr, 2)
    full = load_audio(p)
    for start in (0, 1, 777, 16000 * 2 + 5, len(full) - 16000):
        seg = load_audio_segment(p, start, 16000)
        assert seg.shape == (16000,) and seg.dtype == np.float32
        np.testing.assert_allclose(seg, full[start:start + 16000], atol=1e-4, err_msg=f"start={start}")
        if sr == 16000:
            np.testing.assert_array_equal(seg, full[start:start + 16000])
    tail = load_audio_segment(p, len(full) - 100, 16000)   # runs past the end: zero padded
    assert (tail[200:] == 0).all()
    with pytest.raises(ValueError, match="start"):
        load_audio_segment(p, -1, 10)


def test_resampled_length_matches_decoder(audio_files):
    for kind in ("wav_8k_mono", "flac_44k_stereo", "wav_48k_5ch"):
        info = audio_info(audio_files[kind])
        assert len(load_audio(audio_files[kind])) == resampled_length(info.frames, info.sample_rate, 16000)
