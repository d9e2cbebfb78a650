"""ciap_lib.video: videos made here with PyAV, whose frame colour and tone pitch both change every second,
so that frame/audio alignment can be checked; bad inputs; resume and idempotence."""
from __future__ import annotations

import csv
import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from ciap_lib.data import PairDataset
from ciap_lib.video import (MANIFEST_NAME, VideoError, VideoItem, audio_window, choose_timestamps,
                            extract_pairs, import_videos, probe_video, read_audio_window, read_frame)

#: segment k (the k-th second) shows COLOURS[k] and plays a tone of FREQS[k] Hz
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 40), (200, 40, 200), (40, 210, 210)]
FREQS = [300.0, 700.0, 1500.0, 3100.0, 500.0, 1100.0]


def make_video(path: Path, seconds: float = 4.0, fps: int = 10, audio: bool = True, video: bool = True,
               rate: int = 44100, channels: int = 2, size: tuple[int, int] = (64, 48),
               vcodec: str = "libx264", acodec: str = "aac") -> Path:
    """A small video: second k is a solid COLOURS[k] frame and a FREQS[k] sine tone (stereo by default)."""
    with av.open(str(path), "w") as c:
        if video:
            vs = c.add_stream(vcodec, rate=fps)
            vs.width, vs.height = size
            vs.pix_fmt = "yuv420p"
        if audio:
            st = c.add_stream(acodec, rate=rate)
            st.layout = "stereo" if channels == 2 else "mono"
        if video:
            for i in range(int(round(seconds * fps))):
                k = int(i / fps)
                arr = np.zeros((size[1], size[0], 3), np.uint8)
                arr[:] = COLOURS[k % len(COLOURS)]
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for pkt in vs.encode(frame):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
        if audio:
            n = int(round(seconds * rate))
            t = np.arange(n) / rate
            seg = np.minimum((t).astype(int), len(FREQS) - 1)
            phase = np.cumsum(2 * np.pi * np.array(FREQS)[seg] / rate)
            wave = (0.5 * np.sin(phase)).astype(np.float32)
            block = 1024
            for s in range(0, n, block):
                chunk = wave[s:s + block]
                data = np.stack([chunk] * channels) if channels > 1 else chunk[None]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp",
                                                   layout="stereo" if channels == 2 else "mono")
                frame.sample_rate = rate
                frame.pts = s
                frame.time_base = Fraction(1, rate)
                for pkt in st.encode(frame):
                    c.mux(pkt)
            for pkt in st.encode():
                c.mux(pkt)
    return path


def colour_index(rgb) -> int:
    arr = np.asarray(rgb, dtype=np.float32).reshape(-1, 3).mean(0)
    return int(np.argmin([np.sum((arr - np.array(c)) ** 2) for c in COLOURS]))


def tone_power(x: np.ndarray, freq: float, sr: int = 16000) -> float:
    t = np.arange(len(x)) / sr
    return float(abs(np.dot(x, np.exp(-2j * np.pi * freq * t))) / len(x))


def dominant(x: np.ndarray, sr: int = 16000) -> int:
    return int(np.argmax([tone_power(x, f, sr) for f in FREQS]))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("vid") / "clip.mp4", seconds=4.0)


# ------------------------------------------------------------------------------------------- alignment
def test_probe(clip):
    info = probe_video(clip)
    assert info.has_video and info.has_audio
    assert info.audio_rate == 44100 and info.audio_channels == 2
    assert abs(info.duration - 4.0) < 0.1


@pytest.mark.parametrize("t,seg", [(0.0, 0), (0.55, 0), (1.0, 1), (1.95, 1), (2.0, 2), (2.05, 2), (3.9, 3)])
def test_frame_at_timestamp_matches_colour(clip, t, seg):
    assert colour_index(read_frame(clip, t)) == seg


def test_audio_window_is_aligned_and_resampled(clip):
    # window [1.75, 2.75): 0.25 s of the 700 Hz second, then 0.75 s of the 1500 Hz second
    x = read_audio_window(clip, 1.75, 1.0, 16000)
    assert x.dtype == np.float32 and x.shape == (16000,)
    assert dominant(x[400:3600]) == 1 and dominant(x[4400:15600]) == 2
    # the switch is at sample 4000 (+- 5 ms): find where the 1500 Hz tone takes over, in 2.5 ms steps
    hop, win = 40, 160
    ratio = [tone_power(x[s:s + win], 1500.0) - tone_power(x[s:s + win], 700.0) for s in range(0, 8000, hop)]
    switch = (int(np.argmax(np.array(ratio) > 0)) * hop) + win // 2
    assert abs(switch - 4000) <= 80, switch
    # mono mix of a 0.5-amplitude tone: RMS ~ 0.354 (AAC keeps it within a few percent)
    assert 0.3 < float(np.sqrt(np.mean(x[4400:15600] ** 2))) < 0.4


def test_window_and_timestamp_choice():
    assert audio_window(2.0, 1.0, 4.0) == (1.5, 2.5)
    assert audio_window(0.1, 1.0, 4.0) == (0.0, 1.0)        # shifted inside at the start
    assert audio_window(3.9, 1.0, 4.0) == (3.0, 4.0)        # and at the end
    with pytest.raises(ValueError, match="shorter"):
        audio_window(0.2, 1.0, 0.5)
    assert choose_timestamps(4.0) == [2.0]
    assert choose_timestamps(4.0, 4, 1.0) == [0.5, 1.5, 2.5, 3.5]
    assert choose_timestamps(2.0, 4, 1.0) == [0.5, 0.75, 1.25, 1.5]


def test_extract_pairs_several_per_clip(clip, tmp_path):
    rows = extract_pairs(VideoItem(clip, "clip", "bird"), tmp_path, window=1.0, frames_per_clip=4,
                         image_format="png")
    assert [r["timestamp"] for r in rows] == [0.5, 1.5, 2.5, 3.5]
    for k, r in enumerate(rows):
        assert colour_index(Image.open(tmp_path / r["image"]).convert("RGB")) == k
        wav, sr = sf.read(tmp_path / r["audio"], dtype="float32")
        assert sr == 16000 and wav.ndim == 1 and wav.shape == (16000,)
        assert dominant(wav[800:15200]) == k          # window centred on the frame: same second
        assert r["label"] == "bird"


def test_mkv_pcm_mono_48k(tmp_path):
    p = make_video(tmp_path / "pcm.mkv", seconds=3.0, rate=48000, channels=1, vcodec="mpeg4",
                   acodec="pcm_s16le")
    rows = extract_pairs(VideoItem(p, "pcm", timestamps=(1.25,)), tmp_path / "out")
    wav, sr = sf.read(tmp_path / "out" / rows[0]["audio"], dtype="float32")
    assert sr == 16000 and wav.shape == (16000,)
    assert dominant(wav[400:3600]) == 0 and dominant(wav[4400:15600]) == 1   # [0.75, 1.75)
    assert colour_index(Image.open(tmp_path / "out" / rows[0]["image"])) == 1


# ------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def video_dir(tmp_path_factory, clip) -> Path:
    d = tmp_path_factory.mktemp("videos")
    (d / "good.mp4").write_bytes(clip.read_bytes())
    sub = d / "more"
    sub.mkdir()
    make_video(sub / "good2.mkv", seconds=3.0, vcodec="mpeg4", acodec="pcm_s16le", channels=1, rate=22050)
    make_video(d / "silent.mp4", seconds=2.0, audio=False)
    make_video(d / "short.mp4", seconds=0.6)
    data = clip.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "empty.avi").write_bytes(b"")
    mkv = (sub / "good2.mkv").read_bytes()
    (d / "cut.mkv").write_bytes(mkv[: len(mkv) // 2])      # header intact, second half of the data gone
    (d / "notes.txt").write_text("not a video")
    return d


def test_bad_inputs_are_reported_per_file(video_dir, tmp_path):
    out = tmp_path / "ds"
    s = import_videos(video_dir, out, progress=False)
    failed = {Path(v).name: r for v, r in s.failed}
    assert s.videos == 8 and s.done == 2 and len(s.failed) == 6, s.report()
    assert "no audio track" in failed["silent.mp4"]
    assert "shorter than the 1 s window" in failed["short.mp4"]
    assert "cannot open the container" in failed["truncated.mp4"]
    assert "cannot open the container" in failed["garbage.mp4"]
    assert "empty" in failed["empty.avi"]
    assert "truncated or damaged" in failed["cut.mkv"]
    assert s.failed_kinds == {"no_audio": 1, "too_short": 1, "corrupt": 4}
    for name, reason in failed.items():
        assert name in reason                       # every message names its file
    assert "FAILED" in s.report() and "imported now: 2" in s.report()
    # the result is a dataset the foundation reads (flat layout: the folder itself is the split)
    ds = PairDataset(out, None, image_size=32, train=False)
    assert len(ds) == 2 and ds.classes == []
    assert {p.image.name for p in ds.pairs} == {"good_t0002000.jpg", "more__good2_t0001500.jpg"}
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["audio"].shape == (16000,)


def test_failed_video_raises_videoerror_with_kind(video_dir):
    with pytest.raises(VideoError) as e:
        extract_pairs(VideoItem(video_dir / "silent.mp4", "silent"), video_dir / "x")
    assert e.value.kind == "no_audio" and "silent.mp4" in str(e.value)
    with pytest.raises(VideoError, match="beyond the clip's end"):
        extract_pairs(VideoItem(video_dir / "good.mp4", "g", timestamps=(9.0,)), video_dir / "x")


# ------------------------------------------------------------------------------------------- resume
def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in d.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}


def test_second_run_is_a_no_op_and_interrupted_run_resumes(video_dir, tmp_path):
    out = tmp_path / "ds"
    first = import_videos(video_dir, out, frames_per_clip=2, progress=False)
    assert first.done == 2 and first.pairs == 4
    before = _snapshot(out)
    csv_before = (out / "pairs.csv").read_text()
    second = import_videos(video_dir, out, frames_per_clip=2, progress=False)
    assert second.done == 0 and second.skipped_done == 2 and len(second.failed) == 0
    assert len(second.skipped_failed) == 6            # failures are remembered, not retried
    assert _snapshot(out) == before | {"pairs.csv": _snapshot(out)["pairs.csv"]}
    assert (out / "pairs.csv").read_text() == csv_before
    # "interrupt": one video's wav vanished and the manifest's last line is torn
    victim = sorted(out.glob("good_t*.wav"))[0]
    victim.unlink()
    with open(out / MANIFEST_NAME, "a") as f:
        f.write('{"key": "torn')
    third = import_videos(video_dir, out, frames_per_clip=2, progress=False, retry_failed=True)
    assert third.done == 1 and third.skipped_done == 1 and len(third.failed) == 6
    assert victim.is_file() and (out / "pairs.csv").read_text() == csv_before
    again = import_videos(video_dir, out, frames_per_clip=2, progress=False)
    assert again.done == 0 and again.skipped_done == 2
    # other settings are other work: a 0.5 s window redoes the good videos, and the 0.6 s clip now fits
    fourth = import_videos(video_dir, out, frames_per_clip=2, window=0.5, progress=False)
    assert fourth.done == 3 and fourth.failed_kinds == {"no_audio": 1, "corrupt": 4}
    assert not list(out.glob(".*.tmp"))               # atomic writes leave no temp files


# ------------------------------------------------------------------------------------------- csv + workers
def test_csv_with_labels_splits_timestamps_and_workers(video_dir, tmp_path):
    lst = tmp_path / "list.csv"
    with open(lst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "label", "split", "timestamps"])
        w.writerow([str(video_dir / "good.mp4"), "dog", "train", "0.5;2.5"])
        w.writerow([os.path.relpath(video_dir / "more" / "good2.mkv", tmp_path), "cat", "train", ""])
        w.writerow([str(video_dir / "good.mp4"), "dog", "val", "3.5"])
        w.writerow([str(video_dir / "silent.mp4"), "cat", "val", ""])
    out = tmp_path / "ds"
    s = import_videos(lst, out, workers=2, progress=False)
    assert s.done == 3 and len(s.failed) == 1 and s.pairs == 4, s.report()
    train = PairDataset(out, "train", image_size=16, train=True)
    val = PairDataset(out, "val", image_size=16, train=False)
    assert len(train) == 3 and train.classes == ["cat", "dog"] and len(val) == 1
    rows = list(csv.DictReader(open(out / "train" / "pairs.csv")))
    assert sorted(float(r["timestamp"]) for r in rows) == [0.5, 1.5, 2.5]
    assert {r["label"] for r in rows} == {"cat", "dog"}
    for r in rows:   # frame colour tells the second the pair came from
        k = int(float(r["timestamp"]))
        assert colour_index(Image.open(out / "train" / r["image"])) == k
    recs = [json.loads(line) for line in open(out / MANIFEST_NAME)]
    assert {r["status"] for r in recs} == {"done", "failed"}


# ------------------------------------------------------------------------------------------- command line
def test_cli_import_videos(video_dir, tmp_path, capsys):
    from ciap_lib.cli import main

    out = tmp_path / "cli"
    args = ["import-videos", str(video_dir), str(out), "--timestamps", "0.5,1.5", "--workers", "1",
            "--no-progress", "--image-format", "png"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "imported now: 2" in printed and "failed now: 6" in printed and "no audio track" in printed
    rows = list(csv.DictReader(open(out / "pairs.csv")))
    assert len(rows) == 4 and {r["timestamp"] for r in rows} == {"0.5", "1.5"}
    assert main(args) == 0 and "already done: 2" in capsys.readouterr().out
    assert main(["import-videos", str(tmp_path / "nope"), str(out)]) == 2
    assert "neither a folder" in capsys.readouterr().err
