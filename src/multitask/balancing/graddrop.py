"""GradDrop (Chen et al., NeurIPS 2020): gradient sign dropout.

Per coordinate, the sign purity P = 1/2 (1 + sum_i g_i / sum_i |g_i|); draw U ~ Uniform(0, 1); keep the
positive task gradients where P > U and the negative ones where P < U; the update is the sum of what is
kept. Works on coordinates, so it needs the per-task gradients themselves: the paper applies it to
activations (``mode="features"``); ``"parameters"`` applies it to the shared parameters.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from multitask.balancing.base import JacobianBalancer
from multitask.tasks import Task


class GradDrop(JacobianBalancer):
    """Randomly keep, per coordinate, only the gradients of one sign, with odds set by sign purity."""

    name = "graddrop"
    column_sums_suffice = True

    def __init__(self, tasks: Sequence[Task], mode: str = "features", every: int = 1, leak: float = 0.0) -> None:
        super().__init__(tasks, mode, every)
        if every != 1:
            raise ValueError("graddrop draws a new mask for every step: `every` must be 1")
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"graddrop: leak must be in [0, 1], got {leak}")
        self.leak = float(leak)

    def aggregate(self, jacobian: Tensor, losses: Tensor, index: np.ndarray) -> Tensor:
        return self.aggregate_sums(jacobian.sum(0), jacobian.abs().sum(0), index)

    def aggregate_sums(self, total: Tensor, absolute: Tensor, index: np.ndarray) -> Tensor:
        # Per coordinate with s = P - U: the kept sum is sum_i max(g_i, 0) where s > 0 and sum_i min(g_i, 0)
        # where s < 0, i.e. (A + S) / 2 or (S - A) / 2 with S = sum_i g_i and A = sum_i |g_i|; so the masks
        # never need to be formed task by task: the two column sums of the Jacobian are all it takes.
        purity = 0.5 * (1.0 + total / absolute.clamp_min(1e-30))
        g = self.generator  # the trainer's (shared by every rank: the same thresholds on each), drawn on its device
        u = (torch.rand(purity.shape, device=total.device, dtype=total.dtype) if g is None
             else torch.rand(purity.shape, generator=g, device=g.device, dtype=total.dtype).to(total.device))
        side = torch.sign(purity - u)
        kept = 0.5 * side * (side * total + absolute)  # (S + A)/2 where P > U, (S - A)/2 where P < U, 0 if equal
        if self.leak > 0:
            kept = self.leak * total + (1.0 - self.leak) * kept
        self._record([1.0] * len(index), index)
        return kept
