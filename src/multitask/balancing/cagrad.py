"""CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent.

With g0 the average gradient and g_w = sum_i w_i g_i, solve min_{w in simplex} g_w . g0 + sqrt(phi) ||g_w||,
phi = c^2 ||g0||^2; the update is d = g0 + (sqrt(phi) / ||g_w||) g_w (divided by 1 + c^2 when `rescale`,
as the authors' code does). It stays within a ball around g0 while maximising the worst task's improvement.
The T-dimensional problem is solved directly on the Gramian (accelerated projected gradient, warm-started),
never by building a generic convex program.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from multitask.balancing.base import GramianBalancer
from multitask.balancing.solvers import minimize_on_simplex
from multitask.tasks import Task


def cagrad_objective(w: np.ndarray, K: np.ndarray, c: float) -> float:
    T = len(K)
    g0_sq = float(K.sum()) / T ** 2
    return float(w @ K.sum(1) / T + c * np.sqrt(g0_sq) * np.sqrt(max(w @ K @ w, 0.0)))


class CAGrad(GramianBalancer):
    """Conflict-averse direction in a ball of radius c ||g0|| around the average gradient."""

    name = "cagrad"

    def __init__(self, tasks: Sequence[Task], mode: str = "parameters", every: int = 1, c: float = 0.4,
                 rescale: bool = True) -> None:
        super().__init__(tasks, mode, every)
        if not c >= 0:
            raise ValueError(f"cagrad: c must be >= 0, got {c}")
        self.c, self.rescale = float(c), bool(rescale)
        # the last solution on the simplex (a warm start; kept in checkpoints so resumed runs match)
        self.register_buffer("last_w", torch.full((len(tasks),), float("nan"), dtype=torch.float64))

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        T = len(gramian)
        scale = max(float(np.trace(gramian)) / T, 1e-30)
        K = gramian / scale  # the solution does not depend on the scale; this keeps the solver well-posed
        b = K.sum(1) / T
        sqrt_phi = self.c * np.sqrt(max(float(K.sum()) / T ** 2, 0.0))

        def f_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            Kw = K @ w
            norm = np.sqrt(max(float(w @ Kw), 1e-30))
            return float(w @ b) + sqrt_phi * norm, b + sqrt_phi * Kw / norm

        w0 = self.last_w.cpu().numpy()[index]
        w = minimize_on_simplex(f_and_grad, w0 if np.all(np.isfinite(w0)) else np.full(T, 1.0 / T))
        self.last_w[torch.as_tensor(index, device=self.last_w.device)] = torch.as_tensor(w, device=self.last_w.device)
        gw_norm = np.sqrt(max(float(w @ K @ w), 1e-30))
        weights = np.full(T, 1.0 / T) + (sqrt_phi / gw_norm) * w
        return weights / (1 + self.c ** 2) if self.rescale else weights
