"""Clip lists for the metrics: arrays, 1-D clips and files (own rate; channel mean or first), bad input named."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from ciap_lib.audio_io import BadFileError
from ciap_lib.bridge.clips import as_batch, clip_list, clips_at


def test_arrays_and_lists(tmp_path):
    arr = np.random.default_rng(0).standard_normal((3, 800)).astype(np.float32)
    got = clip_list(arr, 8000)
    assert [sr for _, sr in got] == [8000] * 3
    assert all(torch.equal(w, torch.from_numpy(a)) for (w, _), a in zip(got, arr))
    mixed = clip_list([arr[0], torch.from_numpy(arr[1][:500])], 22050)
    assert [w.shape[0] for w, _ in mixed] == [800, 500] and {sr for _, sr in mixed} == {22050}
    assert as_batch(arr[0]).shape == (1, 800)
    with pytest.raises(ValueError, match=r"clip 1: expected a 1-D waveform"):
        clip_list([arr[0], arr[:2]])
    with pytest.raises(ValueError, match=r"expected \(B, T\)"):
        as_batch(np.zeros((2, 2, 2)))


def test_files_keep_their_rate_and_pick_the_channel(tmp_path):
    t = np.arange(4410) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.1 * np.ones_like(t)], axis=1).astype(np.float32)
    path = tmp_path / "st.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    (first, sr1), = clip_list([path], 16000, channel="first")
    (mean, sr2), = clip_list([str(path)], 16000, channel="mean")
    assert sr1 == sr2 == 44100
    assert np.allclose(first.numpy(), stereo[:, 0]) and np.allclose(mean.numpy(), stereo.mean(1))
    (res,) = clips_at([path], 16000, 16000, channel="first")
    assert res.shape[0] == 1600                                   # resampled to 16 kHz
    with pytest.raises(BadFileError, match="missing.wav"):
        clip_list([tmp_path / "missing.wav"])
    with pytest.raises(ValueError, match="channel must be"):
        clip_list([path], channel="left")
