"""Fréchet distance between two sets of embeddings: the one implementation used by every generation metric
(CLAP-space ``clap_fd``, VGGish ``fad_vggish``, PANNs ``fd_panns``).

Definition (Heusel et al. 2017; FAD, Kilgour et al. 2019; ``audioldm_eval/metrics/fad.py`` and ``fid.py``)::

    FD = ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))

with mu the mean and S the unbiased covariance (divisor n - 1, as ``np.cov``) of each set's embeddings.

How it is computed, all in float64:

* ``n_a > D`` and ``n_b > D`` (more embeddings than dimensions on both sides): the covariances go to
  ``torchaudio.functional.frechet_distance``, the function torcheval's ``FrechetAudioDistance.compute`` ends
  with (``Tr sqrt`` as the sum of square roots of the eigenvalues of ``S_a S_b``).
* otherwise: with ``A`` (n_a, D) and ``B`` (n_b, D) the centred embeddings divided by ``sqrt(n - 1)`` (so
  ``S_a = A^T A``, ``S_b = B^T B``), the non-zero eigenvalues of ``S_a S_b`` are the squared singular values
  of ``A B^T``, so ``Tr((S_a S_b)^(1/2))`` is the nuclear norm of the (n_a, n_b) matrix ``A B^T``. Equal in
  exact arithmetic; it avoids the non-symmetric (D, D) eigendecomposition (PANNs: D = 2048, about 30 s on
  2 cores) when there are fewer clips than dimensions. Checked against both torchaudio's function and
  torcheval's ``FrechetAudioDistance`` in ``tests/bridge/test_frechet.py``.

torcheval's ``FrechetAudioDistance`` itself is not called: it keeps float32 running moments (its covariance
``E[xx^T] - mu mu^T`` cancels badly for un-normalised embeddings) and runs the embedding model inside its
``update``, which would run PANNs Cnn14 twice (FD embeddings, then KL/IS logits).
"""
from __future__ import annotations

import numpy as np
import torch


def _as_embeddings(x: np.ndarray | torch.Tensor, side: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() != 2:
        raise ValueError(f"frechet_distance: {side} embeddings must be (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"frechet_distance: need at least 2 {side} embeddings for a covariance, got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ValueError(f"frechet_distance: {side} embeddings contain NaN or infinite values")
    return t


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to embeddings ``a`` (N_a, D) and ``b`` (N_b, D).

    Needs N >= 2 on each side and the same D. Returns a float >= 0 (up to round-off: about -1e-9 relative).
    """
    a, b = _as_embeddings(a, "first"), _as_embeddings(b, "second")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: embedding sizes differ ({a.shape[1]} vs {b.shape[1]})")
    dim = a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = (a - mu_a) / (a.shape[0] - 1) ** 0.5            # S_a = ca^T ca
    cb = (b - mu_b) / (b.shape[0] - 1) ** 0.5
    if a.shape[0] > dim and b.shape[0] > dim:
        from torchaudio.functional import frechet_distance as _torchaudio_fd

        return float(_torchaudio_fd(mu_a, ca.T @ ca, mu_b, cb.T @ cb))
    mean_term = (mu_a - mu_b).square().sum()
    trace_term = ca.square().sum() + cb.square().sum()
    cross = torch.linalg.svdvals(ca @ cb.T).sum()        # Tr((S_a S_b)^(1/2)) = ||A B^T||_*
    return float(mean_term + trace_term - 2 * cross)
