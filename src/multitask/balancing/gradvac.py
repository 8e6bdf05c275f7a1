"""GradVac (Wang et al., ICLR 2021): gradient vaccine.

Like PCGrad, but instead of only removing conflicts it pulls each pair's cosine similarity up to an
adaptive target phi_ij (an EMA of the observed similarities, rate `beta`): when cos(g_i', g_j) < phi_ij,
g_i' <- g_i' + ||g_i'|| (phi_ij sqrt(1 - cos^2) - cos sqrt(1 - phi_ij^2)) / (||g_j|| sqrt(1 - phi_ij^2)) g_j.
Applied to the whole shared gradient (the paper also tries per-layer groups). Runs on the Gramian.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from multitask.balancing.base import GramianBalancer
from multitask.tasks import Task


class GradVac(GramianBalancer):
    """Adaptive gradient-similarity targets per task pair; the targets live in a checkpointed buffer."""

    name = "gradvac"

    def __init__(self, tasks: Sequence[Task], mode: str = "parameters", every: int = 1, beta: float = 0.01) -> None:
        super().__init__(tasks, mode, every)
        if not 0 < beta <= 1:
            raise ValueError(f"gradvac: beta must be in (0, 1], got {beta}")
        self.beta = beta
        self.register_buffer("targets", torch.zeros(len(tasks), len(tasks), dtype=torch.float64))

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        T = len(gramian)
        phi = self.targets.cpu().numpy().copy()
        K = gramian.tolist()  # T is small: plain floats beat NumPy's per-call overhead in this double loop
        norms = [math.sqrt(max(K[j][j], 0.0)) for j in range(T)]
        total = np.zeros(T)
        for i in range(T):
            c = [0.0] * T
            c[i] = 1.0
            Kc = list(K[i])  # K c, kept up to date, so that g_i' . g_j = Kc[j]
            cKc = K[i][i]  # ||g_i'||^2
            for j in [j for j in torch.randperm(T, generator=self.generator).tolist() if j != i]:
                if norms[j] <= 0:
                    continue
                gi_norm = math.sqrt(max(cKc, 0.0))
                if gi_norm <= 0:
                    break
                cos = Kc[j] / (gi_norm * norms[j])
                a, b = index[i], index[j]
                target = float(phi[a, b])
                if cos < target:
                    coef = gi_norm * (target * math.sqrt(max(1 - cos * cos, 0.0))
                                      - cos * math.sqrt(max(1 - target * target, 0.0)))
                    coef /= norms[j] * math.sqrt(max(1 - target * target, 1e-12))
                    c[j] += coef
                    cKc += 2 * coef * Kc[j] + coef * coef * K[j][j]
                    Kc = [x + coef * y for x, y in zip(Kc, K[j])]
                phi[a, b] = (1 - self.beta) * phi[a, b] + self.beta * cos
            total += c
        self.targets.copy_(torch.as_tensor(phi))
        return total
