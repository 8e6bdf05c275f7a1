"""UPGrad (Quinton & Rey, 2024): unconflicting projection of gradients.

Each task gradient g_i is projected onto the dual cone {d : G d >= 0} (the directions that conflict with no
task); the update is the mean of the projections. In weights: the projection of g_i is G^T v_i with
v_i = argmin_{v >= e_i} v^T K v, a non-negative QP on the Gramian (solved exactly by an active-set method);
the update's weights are mean_i v_i. The result conflicts with no task and does not depend on task order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from multitask.balancing.base import GramianBalancer
from multitask.balancing.solvers import nonneg_qp_many
from multitask.tasks import Task


class UPGrad(GramianBalancer):
    """Mean of the task gradients, each projected onto the cone of non-conflicting directions."""

    name = "upgrad"

    def __init__(self, tasks: Sequence[Task], mode: str = "parameters", every: int = 1) -> None:
        super().__init__(tasks, mode, every)
        # which constraints were active in each task's projection last step: the next solve starts there
        self.register_buffer("active", torch.zeros(len(tasks), len(tasks), dtype=torch.bool))

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        T = len(gramian)
        scale = max(float(np.trace(gramian)) / T, 1e-300)
        K = gramian / scale
        previous = self.active.cpu().numpy()[np.ix_(index, index)]
        # row i: v_i = argmin_{v >= e_i} v^T K v = e_i + argmin_{x >= 0} 1/2 x^T K x + (K e_i)^T x
        V = nonneg_qp_many(K, K.T.copy(), previous) + np.eye(T)
        support = V - np.eye(T) > 0
        active = self.active.cpu().numpy().copy()
        active[np.ix_(index, index)] = support
        self.active.copy_(torch.as_tensor(active))
        return V.mean(axis=0)
