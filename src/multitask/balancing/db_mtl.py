"""DB-MTL (Lin et al., 2023): dual balancing of loss scales and gradient magnitudes.

Loss scale: each task is trained on log L_t, whose gradient is g_t / L_t. Gradient magnitude: keep an
exponential moving average g^_t of those gradients (rate `beta`) and rescale every one to the largest norm:
d = sum_t (max_s ||g^_s|| / ||g^_t||) g^_t. The moving averages are part of the checkpoint.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from multitask.balancing.base import JacobianBalancer
from multitask.tasks import Task


class DBMTL(JacobianBalancer):
    """Log-loss gradients, averaged over steps and brought to a common norm."""

    name = "db_mtl"

    def __init__(self, tasks: Sequence[Task], mode: str = "parameters", every: int = 1, beta: float = 0.9) -> None:
        super().__init__(tasks, mode, every)
        if every != 1:
            raise ValueError("db_mtl keeps moving averages of every step's gradients: `every` must be 1")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"db_mtl: beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.ema: Tensor | None = None  # [T, N]
        self.seen = torch.zeros(len(tasks), dtype=torch.bool)

    def head_weights(self, losses: Tensor, index: np.ndarray) -> Tensor:
        """Heads are trained on log L_t too: their gradient is grad L_t / L_t."""
        if bool((losses < 0).any()):
            bad = [self.task_names[i] for i, v in zip(index, losses.tolist()) if v < 0]
            raise ValueError(f"db_mtl trains on log-losses and needs positive losses; task(s) {bad} are negative")
        return 1.0 / losses.clamp_min(1e-12)

    def aggregate(self, jacobian: Tensor, losses: Tensor, index: np.ndarray) -> Tensor:
        T, N = len(self.task_names), jacobian.shape[1]
        if self.ema is None or self.ema.shape[1] != N or self.ema.device != jacobian.device:
            # a new width (e.g. feature mode on a smaller last batch) restarts the averages
            self.ema = torch.zeros(T, N, device=jacobian.device, dtype=jacobian.dtype)
            self.seen = torch.zeros(T, dtype=torch.bool, device=jacobian.device)
        self.seen = self.seen.to(jacobian.device)
        inv_loss = 1.0 / losses.to(jacobian.dtype).clamp_min(1e-12)  # log-loss gradients: g_t / L_t
        idx = torch.as_tensor(index, device=jacobian.device)
        # new average: beta * ema + (1 - beta) * g, or g itself for a task seen for the first time
        keep = torch.where(self.seen[idx], self.beta, 0.0).to(jacobian.dtype)
        every_task = len(index) == T  # then the averages are updated in place, with no T x N temporaries
        ema = self.ema if every_task else self.ema[idx]
        ema.mul_(keep[:, None]).addcmul_(jacobian, ((1 - keep) * inv_loss)[:, None])
        if not every_task:
            self.ema[idx] = ema
        self.seen[idx] = True
        norms = torch.linalg.vector_norm(ema, dim=1)
        scale = norms.max() / norms.clamp_min(1e-30)
        scale = torch.where(norms > 0, scale, torch.zeros_like(scale))
        self._record(scale.tolist(), index)
        return scale @ ema

    def get_extra_state(self) -> Any:
        return {"ema": self.ema, "seen": self.seen}

    def set_extra_state(self, state: Any) -> None:
        self.ema, self.seen = state["ema"], state["seen"]
