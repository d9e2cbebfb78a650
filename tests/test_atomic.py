"""Atomic writes: complete file or nothing, normal permissions, no temp file left behind."""
import os
import stat

import pytest

from ciap_lib.atomic import atomic_path, atomic_write_text


def test_moves_into_place_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    finally:
        os.umask(old)
    assert out.read_text() == "hello"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644          # not mkstemp's 0600
    assert [p.name for p in out.parent.iterdir()] == ["a.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    dst = tmp_path / "x.npy"
    dst.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dst) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".npy"   # writers that check suffixes work
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert dst.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]
