"""ciap_lib.data_stats: header-only DataFrames of files, counts per split/label and bad files."""
from __future__ import annotations

import csv

import pandas as pd
import pytest

from ciap_lib.data_stats import bad_files, file_stats, label_counts, split_counts, split_names, summary
from fixtures.odd_files import good_pair, make_bad_case, rgb_image, write_audio


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("stats")
    tr = r / "train"
    tr.mkdir()
    rgb_image(40, 30).convert("L").save(tr / "a.png")
    write_audio(tr / "a.wav", 1.5, 8000, 1)
    rgb_image(20, 60).convert("CMYK").save(tr / "b.jpg")
    write_audio(tr / "b.flac", 2.0, 44100, 2)
    rgb_image().save(tr / "c.png")
    write_audio(tr / "c.mp3", 1.0, 44100, 2)
    make_bad_case(r / "train", "text_as_wav")       # adds ok.png/ok.wav + bad.png/bad.wav
    va = r / "val"
    good_pair(va, "x")
    good_pair(va, "y", seed=1)
    with open(va / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["image", "audio", "label"], ["x.png", "x.wav", "dog"], ["y.png", "y.wav", "cat"],
                     ["y.png", "y.wav", "cat"], ["x.png", "missing.wav", "dog"]])
    (r / ".hidden").mkdir()
    return r


def test_file_stats(root):
    df = file_stats(root, "train")
    assert isinstance(df, pd.DataFrame) and len(df) == 4
    a = df.set_index("image").loc["a.png"]
    assert (a.sample_rate, a.channels, a.image_mode, a.width, a.height) == (8000, 1, "L", 40, 30)
    assert a.duration_s == pytest.approx(1.5)
    b = df.set_index("image").loc["b.jpg"]
    assert (b.audio_format, b.sample_rate, b.channels, b.image_mode, b.image_format) == \
        ("FLAC", 44100, 2, "CMYK", "JPEG")
    assert df.set_index("image").loc["c.png"].audio_format == "MP3"


def test_counts_and_bad(root):
    assert split_names(root) == ["train", "val"]
    c = split_counts(root)
    assert c.loc["train", "pairs"] == 4 and c.loc["train", "skipped"] == 1
    assert c.loc["val", "pairs"] == 3 and c.loc["val", "skipped"] == 1 and c.loc["val", "labels"] == 2
    lc = label_counts(root)
    assert lc.loc["cat", "val"] == 2 and lc.loc["dog", "val"] == 1 and lc.loc["<none>", "train"] == 4
    bad = bad_files(root)
    assert list(bad.columns) == ["split", "path", "reason"] and len(bad) == 2
    assert bad.iloc[0].path.endswith("bad.wav") and "not a readable audio" in bad.iloc[0].reason
    assert "missing.wav" in bad.iloc[1].reason


def test_summary(root):
    s = summary(root)
    assert set(s) == {"files", "counts", "labels", "bad"} and len(s["files"]) == 7
    with pytest.raises(FileNotFoundError):
        split_names(root / "nope")


def test_example_pairs(tmp_path):
    from ciap_lib.data_stats import example_pairs
    from ciap_lib.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "s", n_train=12, n_val=48, image_size=32, seconds=1.0)
    train = example_pairs(root, "train", 3)
    assert len(train) == 3 and len({p.label for p in train}) == 3
    val = example_pairs(root, "val", 3, labels=[p.label for p in train])
    assert [p.label for p in val] == [p.label for p in train] and all(p.image.parent.name == "val" for p in val)
