"""CLAP audio features from the frozen tower: unit vectors, cached by content + checkpoint, reused."""
from __future__ import annotations

import shutil

import numpy as np
import torch

from ciap_lib.bridge import clap_audio_features, clap_frechet_distance, clap_score
from ciap_lib.bridge.clap import cache_folder


def test_features_cached_and_reused(tiny_audioldm, ciap_workspace, tmp_path):
    audio = sorted((ciap_workspace["data"] / "val").glob("*.wav"))[:3]
    assert audio
    cache = tmp_path / "cache"
    r1, r2 = {}, {}
    f1 = clap_audio_features(tiny_audioldm, audio, cache, report=r1)
    assert r1 == {"computed": 3, "cached": 0}
    assert set(f1) == {str(p.resolve()) for p in audio}
    for v in f1.values():
        assert v.shape == (512,) and abs(float(v.norm()) - 1) < 1e-4
    assert len(list(cache_folder(tiny_audioldm, cache).glob("*.npy"))) == 3
    f2 = clap_audio_features(tiny_audioldm, audio, cache, report=r2)
    assert r2 == {"computed": 0, "cached": 3}
    for k in f1:
        assert torch.equal(f1[k], f2[k])
    # keyed by content: a copy under another name hits the cache
    copy = tmp_path / "renamed.wav"
    shutil.copy(audio[0], copy)
    r3 = {}
    f3 = clap_audio_features(tiny_audioldm, [copy], cache, report=r3)
    assert r3 == {"cached": 1, "computed": 0} and torch.equal(f3[str(copy.resolve())], f1[str(audio[0].resolve())])
    tiny_audioldm.assert_unchanged()


def test_clap_score_and_frechet(tiny_audioldm):
    g = torch.Generator().manual_seed(0)
    waves = torch.randn(3, 16000, generator=g) * 0.1
    emb = tiny_audioldm.clap_audio_embed(waves)
    s = clap_score(tiny_audioldm, waves.numpy(), emb.unsqueeze(1))
    assert torch.allclose(s, torch.ones(3), atol=1e-4)
    ref = torch.sin(torch.linspace(0, 2000, 16000)).repeat(3, 1) * torch.tensor([[0.1], [0.2], [0.3]])
    d_same = clap_frechet_distance(tiny_audioldm, waves, waves)
    d_diff = clap_frechet_distance(tiny_audioldm, waves, ref)
    assert np.isfinite(d_diff) and d_diff > d_same
    assert abs(d_same) < 1e-3


def test_features_stream_in_batches_and_bad_files_are_skipped_when_asked(tiny_audioldm, ciap_workspace, tmp_path,
                                                                          monkeypatch):
    """Clips are embedded a batch at a time as they are read (not all decoded first), with the same embeddings
    as one clip at a time; an unreadable file stops the run naming it, or is skipped and reported."""
    import ciap_lib.audio_io as audio_io
    from ciap_lib.audio_io import BadFileError

    audio = sorted((ciap_workspace["data"] / "train").glob("*.wav"))[:5]
    alone = {}
    for p in audio:
        alone.update(clap_audio_features(tiny_audioldm, [p], tmp_path / "alone", batch_size=1))
    reads, at_embed = [], []
    real_load, real_embed = audio_io.load_audio, tiny_audioldm.clap_audio_embed
    monkeypatch.setattr(audio_io, "load_audio", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(tiny_audioldm, "clap_audio_embed", lambda w: at_embed.append((len(reads), len(w)))
                        or real_embed(w))
    report = {}
    got = clap_audio_features(tiny_audioldm, audio, tmp_path / "cache", batch_size=2, report=report)
    monkeypatch.undo()
    assert at_embed == [(2, 2), (4, 2), (5, 1)]  # each batch as soon as it is full: at most 2 clips held
    assert report == {"computed": 5, "cached": 0}
    for k, v in got.items():
        assert torch.allclose(v, alone[k], atol=1e-5), k
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    missing = tmp_path / "missing.wav"
    for broken in (bad, missing):
        try:
            clap_audio_features(tiny_audioldm, [audio[0], broken], tmp_path / "cache")
        except BadFileError as e:
            assert broken.name in str(e)
        else:
            raise AssertionError(f"{broken.name} was not refused")
    report = {}
    got = clap_audio_features(tiny_audioldm, [bad, *audio[:2], missing], tmp_path / "cache", report=report,
                              skip_bad=True)
    assert list(got) == [str(p.resolve()) for p in audio[:2]]
    assert [p for p, _ in report["skipped"]] == [str(bad.resolve()), str(missing.resolve())]
    assert report["cached"] == 2 and report["computed"] == 0 and all(why for _, why in report["skipped"])
    tiny_audioldm.assert_unchanged()


def test_clips_longer_than_the_window_batch_together_with_the_same_embeddings(tiny_audioldm, tmp_path, monkeypatch):
    """CLAP sees the first 10 s: clips of 10.5 s and 11 s are embedded in one batch, exactly as each whole clip."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate((10.5, 11.0, 12.25)):
        paths.append(tmp_path / f"long{i}.wav")
        sf.write(paths[-1], 0.1 * rng.standard_normal(int(seconds * 16000)).astype(np.float32), 16000)
    calls = []
    real = tiny_audioldm.clap_audio_embed
    monkeypatch.setattr(tiny_audioldm, "clap_audio_embed", lambda w: calls.append(tuple(w.shape)) or real(w))
    got = clap_audio_features(tiny_audioldm, paths, tmp_path / "cache", batch_size=8)
    monkeypatch.undo()
    assert calls == [(3, tiny_audioldm.clap_window_samples)]  # one batch
    from ciap_lib.audio_io import load_audio

    for p in paths:
        whole = real(torch.from_numpy(load_audio(p, 16000))[None])[0]
        assert torch.allclose(got[str(p.resolve())], whole.cpu(), atol=1e-6), p.name
