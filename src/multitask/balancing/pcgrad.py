"""PCGrad (Yu et al., NeurIPS 2020): "gradient surgery".

For every task i, in a random order of the other tasks j: if g_i' . g_j < 0, remove the conflicting
component, g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j. The update is sum_i g_i'.
Every g_i' stays a combination of the original gradients, so the method runs on the Gramian: it tracks
the coefficients c_i (g_i' = sum_k c_ik g_k), and returns the weights sum_i c_i.
"""
from __future__ import annotations

import numpy as np
import torch

from multitask.balancing.base import GramianBalancer


class PCGrad(GramianBalancer):
    """Project each task gradient off the normal planes of the gradients it conflicts with."""

    name = "pcgrad"

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        T = len(gramian)
        total = np.zeros(T)
        for i in range(T):
            c = np.zeros(T)
            c[i] = 1.0
            Kc = gramian[:, i].copy()  # K c, kept up to date: g_i' . g_j = Kc[j]
            for j in [j for j in torch.randperm(T, generator=self.generator).tolist() if j != i]:
                dot = float(Kc[j])
                if dot < 0 and gramian[j, j] > 0:
                    coef = -dot / gramian[j, j]
                    c[j] += coef
                    Kc += coef * gramian[:, j]
            total += c
        return total
