"""Bridge test fixtures. The tiny AudioLDM (``tiny_audioldm_ckpt`` / ``tiny_audioldm``) comes from
tests/fixtures/audioldm.py (registered in tests/conftest.py) and is built once per pytest session."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def ciap_workspace(tmp_path_factory):
    """A tiny synthetic dataset and an untrained ``debug`` CIAP checkpoint (embed_dim 512)."""
    from fixtures.generation import make_workspace

    return make_workspace(tmp_path_factory.mktemp("ciap_ws"), n_train=6, n_val=4)


@pytest.fixture(scope="session")
def tiny_audioldm_ckpt_numpy(tiny_audioldm_ckpt, tmp_path_factory):
    """The tiny AudioLDM checkpoint plus a numpy array beside its ``state_dict``: harmless, but only full
    unpickling restores it (what a trusted-but-not-allowlisted file looks like)."""
    import numpy as np
    from fixtures.crafted import with_extra_objects

    return with_extra_objects(tiny_audioldm_ckpt, tmp_path_factory.mktemp("audioldm_numpy") / "numpy.ckpt",
                              extra=np.arange(3))


@pytest.fixture
def unit_embeds():
    def make(n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.nn.functional.normalize(torch.randn(n, 1, 512, generator=g), dim=-1)
    return make


@pytest.fixture
def native_bf16(monkeypatch):
    """Generation's ``bf16`` precision runs the bfloat16 weight copies even on a CPU without native bf16 (where it
    would otherwise compute in float32: ``ciap_lib.bridge.devices.half_dtype``), so bf16 tests test bf16 anywhere."""
    from ciap_lib.bridge import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
