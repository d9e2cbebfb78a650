"""ciap_lib.pairs: both layouts, every bad file of a split reported at once, the data fingerprint."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from ciap_lib.audio_io import BadFileError
from ciap_lib.pairs import BadFilesError, dataset_fingerprint, scan_pairs
from fixtures.odd_files import good_pair, make_bad_case


def _write_csv(path: Path, rows: list[dict], fields=("image", "audio", "label")) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)


def test_csv_wins_over_folder_layout(tmp_path):
    d = tmp_path / "train"
    for k in range(3):
        good_pair(d, f"p{k}", seed=k)
    _write_csv(d / "pairs.csv", [{"image": "p1.png", "audio": "p1.wav", "label": "x"}])
    pairs, skipped = scan_pairs(d)
    assert [p.image.name for p in pairs] == ["p1.png"] and pairs[0].label == "x" and skipped == []


def test_error_messages_say_what_is_wrong(tmp_path):
    make_bad_case(tmp_path / "a", "image_without_audio")
    with pytest.raises(BadFileError, match="without an audio partner"):
        scan_pairs(tmp_path / "a")
    make_bad_case(tmp_path / "b", "zero_byte_wav")
    with pytest.raises(BadFileError, match="empty"):
        scan_pairs(tmp_path / "b")
    make_bad_case(tmp_path / "c", "text_as_wav")
    with pytest.raises(BadFileError, match="not a readable audio"):
        scan_pairs(tmp_path / "c")


def test_every_bad_file_is_listed_at_once_with_the_skip_hint(tmp_path):
    d = tmp_path / "split"
    make_bad_case(d, "zero_byte_wav")                      # ok.png/ok.wav + bad.png/bad.wav (empty)
    (d / "lonely.png").write_bytes((d / "ok.png").read_bytes())   # image without audio
    (d / "text.png").write_bytes((d / "ok.png").read_bytes())
    (d / "text.wav").write_text("not audio")              # unreadable audio
    with pytest.raises(BadFilesError) as ei:
        scan_pairs(d)
    err = ei.value
    assert isinstance(err, BadFileError)
    assert sorted(p.name for p, _ in err.problems) == ["bad.wav", "lonely.png", "text.wav"]
    msg = str(err)
    assert msg.startswith(f"3 bad file(s) in {d}")
    for name, why in (("bad.wav", "empty"), ("lonely.png", "without an audio partner"),
                      ("text.wav", "not a readable audio")):
        line = next(x for x in msg.splitlines() if name in x)
        assert why in line, line
    assert "--set skip_bad=true" in msg
    pairs, skipped = scan_pairs(d, skip_bad=True)
    assert [p.image.name for p in pairs] == ["ok.png"] and len(skipped) == 3


def test_fingerprint_changes_with_content(tmp_path):
    for k in range(2):
        good_pair(tmp_path / "train", f"x{k}", seed=k)
    f0 = dataset_fingerprint(tmp_path)
    assert f0 == dataset_fingerprint(tmp_path) and len(f0) == 16
    p = tmp_path / "train" / "x0.wav"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    assert dataset_fingerprint(tmp_path) != f0
    with pytest.raises(FileNotFoundError):
        dataset_fingerprint(tmp_path / "nope")
