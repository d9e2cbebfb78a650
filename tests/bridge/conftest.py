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


@pytest.fixture
def unit_embeds():
    def make(n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.nn.functional.normalize(torch.randn(n, 1, 512, generator=g), dim=-1)
    return make
