"""GradNorm (Chen et al., ICML 2018): learn task weights that equalise the tasks' training rates.

With learnable w_i (renormalised to sum to T), gradient norms G_i = w_i ||g_i||, their mean G_bar,
relative inverse training rates r_i = L~_i / mean(L~) with L~_i = L_i(t) / L_i(0), the weights follow the
gradient of L_grad = sum_i |G_i - G_bar r_i^alpha| with the target G_bar r_i^alpha held constant; the model
follows sum_i w_i g_i. The norms are taken on what the engine differentiates: all shared parameters
("parameters" mode) or the shared representation ("features" mode; the paper uses the last shared layer).
`w` is a parameter: the trainer's optimizer updates it, and it is saved in checkpoints.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from multitask.balancing.base import GramianBalancer
from multitask.tasks import Task


class GradNorm(GramianBalancer):
    """Gradient normalisation with asymmetry `alpha` (the paper's 0.12 for its toy, 1.5 for NYUv2)."""

    name = "gradnorm"

    def __init__(self, tasks: Sequence[Task], mode: str = "parameters", every: int = 1, alpha: float = 1.5) -> None:
        super().__init__(tasks, mode, every)
        if not alpha >= 0:
            raise ValueError(f"gradnorm: alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.w = nn.Parameter(torch.ones(len(tasks)))
        self.register_buffer("initial_losses", torch.full((len(tasks),), float("nan"), dtype=torch.float64))

    def head_weights(self, losses: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """Heads learn from sum_i w_i L_i as well (the paper's objective), with w normalised to sum to T."""
        w = self.w.detach().clamp_min(1e-6)
        return (len(self.task_names) * w / w.sum())[torch.as_tensor(index, device=w.device)].to(losses.device)

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        T_all = len(self.task_names)
        with torch.no_grad():  # keep sum_i w_i = T (and w > 0) after every optimiser step
            self.w.clamp_(min=1e-6)
            self.w.mul_(T_all / self.w.sum())
        init = self.initial_losses.cpu().numpy().copy()
        first = np.isnan(init[index])
        init[index[first]] = losses[first]
        self.initial_losses.copy_(torch.as_tensor(init))
        w = self.w.detach().double().cpu().numpy()[index]
        norms = np.sqrt(np.maximum(np.diag(gramian), 0.0))
        G = w * norms
        ratio = losses / np.where(init[index] > 0, init[index], 1.0)
        r = ratio / max(ratio.mean(), 1e-30)
        target = G.mean() * r ** self.alpha
        grad = np.zeros(T_all)
        grad[index] = np.sign(G - target) * norms
        g = torch.as_tensor(grad, dtype=self.w.dtype, device=self.w.device)
        self.w.grad = g if self.w.grad is None else self.w.grad + g
        return w
