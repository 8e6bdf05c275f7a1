"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

With s_t = log sigma_t^2 learned per task, the paper's objective is
  regression:      L = 1/(2 sigma^2) L_t + log sigma   = 0.5 exp(-s_t) L_t + 0.5 s_t
  classification:  L = 1/sigma^2 L_t + log sigma       =     exp(-s_t) L_t + 0.5 s_t
Learning s (not sigma) keeps the weight positive and the optimisation stable (the paper's own advice).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from multitask.balancing.base import LossBalancer
from multitask.tasks import Task


class Uncertainty(LossBalancer):
    """Homoscedastic-uncertainty weights; `log_vars` are trained with the model and kept in the checkpoint."""

    name = "uncertainty"

    def __init__(self, tasks: Sequence[Task], init_log_var: float = 0.0) -> None:
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.full((len(tasks),), float(init_log_var)))
        # 0.5 for regression (Gaussian likelihood), 1 for classification (scaled softmax / sigmoid)
        self.register_buffer(
            "scale", torch.tensor([0.5 if t.kind == "regression" else 1.0 for t in tasks])
        )

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None) -> Tensor:
        self._check(losses)
        loss_vec = torch.stack([losses[t] for t in self.task_names])
        weights = self.scale * torch.exp(-self.log_vars)
        terms = weights * loss_vec + 0.5 * self.log_vars
        if present is not None:  # a task without labels in this batch must not push its sigma towards 0
            keep = torch.tensor([bool(present[t]) for t in self.task_names], device=terms.device)
            terms = torch.where(keep, terms, torch.zeros_like(terms))
        return terms.sum()

    def per_task_parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def weights(self) -> dict[str, float]:
        w = (self.scale * torch.exp(-self.log_vars)).detach().cpu().tolist()
        return dict(zip(self.task_names, w))
