"""The contract every architecture keeps: one output per task, and a named split into shared and task parts."""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from torch import Tensor, nn

Inputs = Any  # a Tensor, or a dict of Tensors (e.g. {"num": float[N, d], "cat": long[N, c]})
Representation = Any  # a Tensor or a tuple of Tensors


def has_hooks(module: nn.Module) -> bool:
    """True when forward or backward hooks are registered on `module` itself (they may change what it
    computes or the gradients it passes back, so structural shortcuts must not be taken through it)."""
    return bool(module._forward_pre_hooks or module._forward_hooks or module._backward_pre_hooks
                or module._backward_hooks)


class MultiTaskModel(nn.Module):
    """Base class: ``forward(inputs, tasks=None) -> {task: output}``.

    A model is ``heads(shared(inputs), tasks)``. ``shared`` computes the shared representation (what
    feature-level balancing methods differentiate against); ``heads`` runs only the requested tasks.
    """

    task_names: list[str]

    def shared(self, inputs: Inputs) -> Representation:
        raise NotImplementedError

    def heads(self, representation: Representation, tasks: Sequence[str]) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        tasks = self._check_tasks(tasks)
        return self.heads(self.shared(inputs), tasks)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that every task's loss depends on (empty for one-model-per-task)."""
        raise NotImplementedError

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters that only `task`'s loss depends on."""
        raise NotImplementedError

    def head_entries(self) -> dict[str, nn.Linear] | None:
        """Optional. Per task, the `nn.Linear` layer through which alone that task's head reads the shared
        representation, i.e. ``head_t(z) = rest_t(entry_t(z))``; None (the default) when the heads are not of
        that form. It lets the gradient engine take per-task gradients at the entries' outputs, which are
        small when the heads are narrow, instead of on z (see `multitask.autograd.FactoredGradients`)."""
        return None

    def _check_tasks(self, tasks: Sequence[str] | None) -> list[str]:
        if tasks is None:
            return list(self.task_names)
        unknown = [t for t in tasks if t not in self.task_names]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; this model has {self.task_names}")
        return list(tasks)
