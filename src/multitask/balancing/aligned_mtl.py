"""Aligned-MTL (Senushkin et al., CVPR 2023): align the principal components of the gradient system.

With the Gramian K = G G^T = V diag(lambda) V^T (lambda: squared singular values of G), the aligned
gradients are G_hat = sigma_min V diag(1/sigma) V^T G: the same singular vectors, every singular value set
to the smallest one (sigma = sqrt(lambda), over the non-degenerate ones). The update is G_hat^T 1, so the
task weights are sigma_min V diag(1/sigma) V^T 1: a condition number of one, no dominating task.
"""
from __future__ import annotations

import numpy as np

from multitask.balancing.base import GramianBalancer


class AlignedMTL(GramianBalancer):
    """Stable gradient system: weights from the eigen-decomposition of the Gramian."""

    name = "aligned_mtl"
    # its weights rest on the smallest eigenvalues: the engine forms the Gramian with float64 products as soon
    # as its correlation matrix has lambda_min / lambda_max < 1e-3 (the default is 1e-6; see autograd._gram)
    gramian_rcond = 1e-3

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        T = len(gramian)
        lam, V = np.linalg.eigh(gramian)
        top = float(lam.max()) if lam.size else 0.0
        if top <= 1e-30:
            return np.full(T, 1.0)
        keep = lam > 1e-10 * top  # directions with no gradient in them are left out
        sigma = np.sqrt(lam[keep])
        Vk = V[:, keep]
        B = sigma.min() * (Vk / sigma) @ Vk.T
        return B @ np.ones(T)
