"""Architecture read off the checkpoint's shapes; a layout it does not know is a clear error."""
from __future__ import annotations

import pytest
import torch

from ciap_lib.bridge import AudioLDMCheckpointError, load_audioldm
from ciap_lib.bridge.architecture import infer_architecture
from ciap_lib.bridge.checkpoint_io import read_state_dict
from ciap_lib.bridge.tiny import TINY_SPEC


def test_tiny_architecture_is_read_off_the_shapes(tiny_audioldm_ckpt):
    assert infer_architecture(read_state_dict(tiny_audioldm_ckpt)) == TINY_SPEC


def test_wrong_layout_names_the_missing_key(tmp_path):
    p = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, p)
    with pytest.raises(AudioLDMCheckpointError, match="x.ckpt.*missing"):
        load_audioldm(p)
