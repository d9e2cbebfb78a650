"""The shared Fréchet distance: equal to torchaudio's formula and to torcheval's FrechetAudioDistance, exact
for known cases, on both of its paths (fewer clips than dimensions, and more)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchaudio.functional import frechet_distance as torchaudio_fd

from ciap_lib.bridge.frechet import frechet_distance


def _stats(x: torch.Tensor):
    x = x.double()
    return x.mean(0), torch.cov(x.T)


def _sets(n_a: int, n_b: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_a, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, dim, generator=g, dtype=torch.float64)
    b = torch.randn(n_b, dim, generator=g, dtype=torch.float64) * 2 + 0.5
    return a, b


@pytest.mark.parametrize("n_a,n_b,dim", [(40, 50, 8),    # more clips than dimensions: torchaudio's path
                                         (5, 7, 32),     # fewer: the nuclear-norm path
                                         (40, 6, 16)])   # mixed
def test_equals_torchaudio_formula(n_a, n_b, dim):
    a, b = _sets(n_a, n_b, dim)
    mu_a, s_a = _stats(a)
    mu_b, s_b = _stats(b)
    ref = float(torchaudio_fd(mu_a, s_a, mu_b, s_b))
    # rel 1e-7: with fewer clips than dimensions S_a S_b is singular, and torchaudio's eigvals returns its
    # zero eigenvalues as ~1e-13, whose square roots each add ~1e-7 to Tr sqrt
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-7)
    assert frechet_distance(b, a) == pytest.approx(ref, rel=1e-7)
    assert frechet_distance(a.numpy(), b.float()) == pytest.approx(ref, rel=1e-5)  # numpy / float32 inputs


def test_equals_torcheval_frechet_audio_distance():
    from torcheval.metrics import FrechetAudioDistance

    a, b = _sets(30, 25, 6, seed=1)
    fad = FrechetAudioDistance(preproc=lambda x: x, model=torch.nn.Identity(), embedding_dim=6)
    fad.update(a.float().unsqueeze(0), torch.empty(0, 1))   # one "clip" whose model output is the (n, D) rows
    fad.update(torch.empty(0, 1), b.float().unsqueeze(0))
    assert frechet_distance(a, b) == pytest.approx(float(fad.compute()), rel=1e-4)


@pytest.mark.parametrize("n,dim", [(6, 2048), (300, 16)])
def test_self_zero_and_mean_shift_exact(n, dim):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64).relu()   # PANNs-like: non-negative, un-normalised
    assert abs(frechet_distance(x, x)) < 1e-9 * float(x.var(0).sum())
    shift = torch.full((dim,), 0.05, dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)
    y = x.clone()
    y[:, : dim // 2] *= 3.0                                             # same mean shape, wider spread
    assert frechet_distance(x, y) > frechet_distance(x, x + shift * 0)


def test_bad_inputs_are_named():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="at least 2 second embeddings"):
        frechet_distance(x, x[:1])
    with pytest.raises(ValueError, match="sizes differ"):
        frechet_distance(x, torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        frechet_distance(x[0], x)
    bad = x.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(bad, x)
    assert np.isfinite(frechet_distance(x, x + 1))
