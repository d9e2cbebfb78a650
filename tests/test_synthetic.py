"""ciap_lib.synthetic: deterministic, idempotent, held-out combinations, readable labels, loadable."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from ciap_lib.data import PairDataset
from ciap_lib.synthetic import (COLOURS, COUNTS, MANIFEST, PITCHES_HZ, SHAPES, combo_name, is_held_out,
                                make_synthetic_dataset, render_audio)

KW = dict(n_train=40, n_val=24, image_size=32, seconds=1.2)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _rows(root, split):
    with open(root / split / "pairs.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("s") / "synthetic", **KW)


def test_layout_and_loading(synth):
    assert (synth / MANIFEST).is_file()
    for split, n in (("train", 40), ("val", 24)):
        rows = _rows(synth, split)
        assert len(rows) == n
        assert set(rows[0]) == {"image", "audio", "label", "shape", "colour", "count", "held_out"}
        ds = PairDataset(synth, split, 32, train=split == "train")
        assert len(ds) == n and ds.skipped == []
        item = ds[0]
        assert item["image"].shape == (3, 32, 32) and item["audio"].shape == (16000,)
        assert item["label"].item() >= 0


def test_labels_are_readable_combos(synth):
    rows = _rows(synth, "val")
    for r in rows:
        assert r["label"] == f"{r['colour']}-{r['shape']}-x{r['count']}"
    assert combo_name(0, 0, 1) == "red-circle-x2"


def test_val_has_unseen_combinations(synth):
    train = {r["label"] for r in _rows(synth, "train")}
    val_rows = _rows(synth, "val")
    held = [r for r in val_rows if r["held_out"] == "1"]
    assert held and all(r["label"] not in train for r in held)
    n_held = sum(is_held_out(s, c, k) for s in range(4) for c in range(4) for k in range(3))
    assert n_held == 12
    # every single attribute value still occurs in train
    rows = _rows(synth, "train")
    assert {r["shape"] for r in rows} == set(SHAPES) and {r["colour"] for r in rows} == set(COLOURS)
    assert {int(r["count"]) for r in rows} == set(COUNTS)


def test_deterministic_and_idempotent(synth, tmp_path):
    other = make_synthetic_dataset(tmp_path / "again", **KW)
    assert _digest(other) == _digest(synth)
    mtime = (synth / MANIFEST).stat().st_mtime_ns
    assert make_synthetic_dataset(synth, **KW) == synth
    assert (synth / MANIFEST).stat().st_mtime_ns == mtime  # nothing rewritten


def test_half_written_and_changed_params_rebuild(tmp_path):
    root = make_synthetic_dataset(tmp_path / "s", **KW)
    (root / MANIFEST).unlink()                 # as if interrupted before the marker was written
    (root / "val" / "pairs.csv").unlink()
    make_synthetic_dataset(root, **KW)
    assert (root / MANIFEST).is_file() and len(_rows(root, "val")) == 24
    make_synthetic_dataset(root, **{**KW, "n_val": 12})
    assert len(_rows(root, "val")) == 12 and json.loads((root / MANIFEST).read_text())["n_val"] == 12
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        make_synthetic_dataset(tmp_path / "mine", **KW)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="n_train"):
        make_synthetic_dataset(tmp_path / "x", n_train=0)


def test_audio_encodes_pitch_and_rate():
    rng = np.random.default_rng(0)
    for colour, f0 in enumerate(PITCHES_HZ):
        x = render_audio(0, colour, 0, 2.0, 16000, rng)           # sine timbre
        spec = np.abs(np.fft.rfft(x))
        assert abs(np.argmax(spec) / 2.0 - f0) < 0.05 * f0
    for count, rate in enumerate((2, 4, 6)):
        env = np.abs(render_audio(0, 0, count, 4.0, 16000, rng)).reshape(-1, 160).max(1)  # 10 ms frames
        onsets = np.sum((env[1:] > 0.1) & (env[:-1] <= 0.1))
        assert abs(onsets / 4.0 - rate) <= 0.75


def test_held_out_conditions(tmp_path):
    """Val is rendered under conditions that never occur in train; without the option both splits share them."""
    from ciap_lib.synthetic import HELD_OUT_STYLES, condition_table

    kw = dict(n_train=24, n_val=24, image_size=48, seconds=1.2)
    plain = make_synthetic_dataset(tmp_path / "plain", **kw)
    shifted = make_synthetic_dataset(tmp_path / "shifted", held_out_conditions=True, **kw)
    assert json.loads((shifted / MANIFEST).read_text())["held_out_conditions"] is True
    assert json.loads((plain / MANIFEST).read_text())["held_out_conditions"] is False
    assert _rows(plain, "val") == _rows(shifted, "val")      # same labels and attributes, other renderings
    tr, va = HELD_OUT_STYLES["train"], HELD_OUT_STYLES["val"]
    for a, b in ((tr.radius, va.radius), (tr.pixel_noise, va.pixel_noise), (tr.audio_noise, va.audio_noise),
                 (tr.rolloff, va.rolloff), (tr.fm_index, va.fm_index)):
        assert max(a) < min(b) or max(b) < min(a)               # ranges never overlap
    assert tr.envelope != va.envelope and not tr.outline_px[1] and va.outline_px[0] > 0
    assert {row["factor"] for row in condition_table()} >= {"pulse envelope", "tempo factor", "pixel noise std (grey levels)"}

    def noise_floor(root, split):   # quietest 10 ms frame of each clip: the background noise level
        ds = PairDataset(root, split, image_size=48, train=False, segment_seconds=1.0)
        return np.median([np.sort(np.abs(ds[i]["audio"].numpy()).reshape(-1, 160).max(1))[2] for i in range(len(ds))])

    assert noise_floor(shifted, "val") > 2 * noise_floor(shifted, "train")
    assert noise_floor(plain, "val") < 2 * noise_floor(plain, "train")

    def roughness(root, split):     # pixel noise: mean absolute difference of neighbouring pixels
        from PIL import Image
        ims = [np.asarray(Image.open(root / split / r["image"]), dtype=np.float32) for r in _rows(root, split)]
        return np.mean([np.abs(np.diff(im, axis=1)).mean() for im in ims])

    assert roughness(shifted, "val") > 1.5 * roughness(shifted, "train")


def test_shift_variants_take_the_held_out_shift_apart(tmp_path):
    """One val style per factor (the train style with that factor as in val); write_split renders any of them, and
    the whole shift ("all") reproduces make_synthetic_dataset's held-out val split file for file."""
    import dataclasses

    from ciap_lib.synthetic import HELD_OUT_STYLES, SHIFT_FACTORS, shift_variants, write_split

    tr, va = HELD_OUT_STYLES["train"], HELD_OUT_STYLES["val"]
    variants = shift_variants()
    assert variants["none"] == tr and variants["all"] == va
    assert list(variants)[1:-1] == [key for _, _, key in SHIFT_FACTORS]
    for key in list(variants)[1:-1]:
        differs = [f.name for f in dataclasses.fields(tr) if getattr(variants[key], f.name) != getattr(tr, f.name)]
        assert differs == [key] and getattr(variants[key], key) == getattr(va, key)
    kw = dict(image_size=32, seconds=1.2)
    root = make_synthetic_dataset(tmp_path / "shifted", n_train=8, n_val=12, held_out_conditions=True, **kw)
    out = write_split(tmp_path / "all" / "val", "val", 12, variants["all"], **kw)
    assert _digest(out) == _digest(root / "val")
    out = write_split(tmp_path / "none" / "val", "val", 12, variants["none"], **kw)
    assert _rows(out.parent, "val") == _rows(root, "val") and _digest(out) != _digest(root / "val")
    with pytest.raises(ValueError, match="n: must be >= 1"):
        write_split(tmp_path / "x", "val", 0, **kw)
    with pytest.raises(ValueError, match="split must be"):
        write_split(tmp_path / "y", "test", 4, **kw)
