"""The balancer interface: how the losses of several tasks become one update.

A balancer declares what it `requires` from the gradient engine (`multitask.autograd`):
- ``"losses"``: it turns per-task losses into one scalar to differentiate (`combine`); one backward pass.
Gradient-based methods (per-task gradients, their Gramian, or gradients on the shared representation)
declare other requirements and receive them from the engine; the trainer never changes for a new method.
State lives in parameters and buffers, so a balancer is saved and restored with the checkpoint.
"""
from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from multitask.tasks import Task


class Balancer(nn.Module):
    """Base class of every balancing method."""

    name: ClassVar[str] = ""
    requires: ClassVar[str] = "losses"

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError(f"{type(self).__name__} needs at least one task")
        self.task_names = [t.name for t in tasks]
        self._last_weights: dict[str, float] = {t: 1.0 for t in self.task_names}

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None) -> Tensor:
        """One scalar objective from per-task losses. `present[t]` (0-dim bool) says task t had labels."""
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """The task weights of the latest step, for logging."""
        return dict(self._last_weights)

    def _check(self, losses: Mapping[str, Tensor]) -> None:
        missing = [t for t in self.task_names if t not in losses]
        extra = [t for t in losses if t not in self.task_names]
        if missing or extra:
            raise KeyError(f"{type(self).__name__}: losses for unknown tasks {extra} / missing tasks {missing}; "
                           f"expected {self.task_names}")


class WeightedSum(Balancer):
    """Fixed weights: sum_t w_t L_t."""

    def __init__(self, tasks: Sequence[Task], weights: Mapping[str, float]) -> None:
        super().__init__(tasks)
        for t in self.task_names:
            if t not in weights:
                raise KeyError(f"no weight for task {t!r}")
        unknown = [t for t in weights if t not in self.task_names]
        if unknown:
            raise KeyError(f"weights name unknown task(s) {unknown}; tasks are {self.task_names}")
        self.register_buffer("w", torch.tensor([float(weights[t]) for t in self.task_names]))
        self._last_weights = {t: float(weights[t]) for t in self.task_names}

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None) -> Tensor:
        self._check(losses)
        total = losses[self.task_names[0]] * self.w[0]
        for i, t in enumerate(self.task_names[1:], start=1):
            total = total + losses[t] * self.w[i]
        return total
