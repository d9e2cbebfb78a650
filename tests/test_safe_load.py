"""The one safe loader: crafted files are refused by name without running anything; the trusted opt-in
is explicit and logged; plain files and allowlisted classes load."""
import argparse
import logging
import pickle

import numpy as np
import pytest
import torch

from ciap_lib.safe_load import UnsafeCheckpointError, safe_load, unsafe_globals
from fixtures.crafted import RunsShell, WritesMarker, crafted_file


@pytest.mark.parametrize("payload, global_name", [(WritesMarker, "io.open"), (RunsShell, "posix.system")])
@pytest.mark.parametrize("zip_format", [True, False])
def test_crafted_file_is_refused_by_name_and_runs_nothing(tmp_path, payload, global_name, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": payload(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as e:
        safe_load(path, hint="Do the documented thing.")
    assert not marker.exists()
    msg = str(e.value)
    assert str(path) in msg and global_name in msg and "refused" in msg and "Do the documented thing." in msg
    assert e.value.unsafe_globals == [global_name] and e.value.path == path


def test_all_unsafe_globals_are_listed_statically(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"a": WritesMarker(marker), "rng": np.random.get_state()}, path)
    found = unsafe_globals(path)
    assert "io.open" in found and any(g.startswith("numpy.") for g in found)
    with pytest.raises(UnsafeCheckpointError) as e:
        safe_load(path)
    assert set(e.value.unsafe_globals) == set(found)
    assert not marker.exists()


def test_plain_weights_and_containers_load(tmp_path):
    obj = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "names": ["a", "b"],
           "pair": (1, 2.5), "none": None, "flag": True}
    torch.save(obj, tmp_path / "ok.pt")
    got = safe_load(tmp_path / "ok.pt", mmap=True)
    assert torch.equal(got["state_dict"]["w"], obj["state_dict"]["w"])
    assert {k: v for k, v in got.items() if k != "state_dict"} == {k: v for k, v in obj.items() if k != "state_dict"}


def test_allowlist_admits_exactly_the_given_classes(tmp_path):
    path = tmp_path / "ns.pt"
    torch.save({"hparams": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        safe_load(path)
    assert safe_load(path, allow=[argparse.Namespace])["hparams"].lr == 0.1
    with pytest.raises(UnsafeCheckpointError):  # the allowance does not leak past the call
        safe_load(path)


def test_trusted_opt_in_loads_and_warns(tmp_path, caplog):
    path = tmp_path / "numpy.pt"
    torch.save({"arr": np.arange(4)}, path)
    with pytest.raises(UnsafeCheckpointError):
        safe_load(path)
    with caplog.at_level(logging.WARNING, logger="ciap_lib.safe_load"):
        got = safe_load(path, trusted=True)
    assert np.array_equal(got["arr"], np.arange(4))
    assert any(str(path) in r.getMessage() and "arbitrary code" in r.getMessage() for r in caplog.records)


def test_the_crafted_payload_really_runs_when_trusted(tmp_path):
    """What the refusals above prevent: the trusted opt-in unpickles the crafted file and writes the marker."""
    marker = tmp_path / "pwned"
    path = crafted_file(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError):
        safe_load(path)
    assert not marker.exists()
    got = safe_load(path, trusted=True)
    got["payload"].close()
    assert marker.exists()


def test_junk_is_an_unpickling_error_naming_the_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(pickle.UnpicklingError) as e:
        safe_load(path)
    assert str(path) in str(e.value) and "weights_only set to False" not in str(e.value)
