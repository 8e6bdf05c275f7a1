"""The contract every architecture keeps: one output per task, and a named split into shared and task parts."""
from __future__ import annotations

from typing import Any, ClassVar, Iterator, Sequence

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

    Families without such a split (cross-stitch columns, a task-conditioned network, ...) set
    ``shares_representation = False`` and override `forward`; the gradient engine then takes every task's
    gradient on the shared parameters from the whole model (parameters mode), and features mode is refused.
    ``skips_work = False`` says that ``forward(tasks=[t])`` still computes every task's path (the outputs
    are the asked ones only).
    """

    task_names: list[str]
    shares_representation: ClassVar[bool] = True
    skips_work: ClassVar[bool] = True

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

    def group_parameters(self) -> dict[tuple[str, ...], list[nn.Parameter]]:
        """Parameters that several tasks depend on but that are not in `shared_parameters()`, keyed by those
        tasks: a branch of a tree that some tasks share, or an earlier task's head that a cascade feeds into
        later ones (in the heads, after the shared representation). They get the plain sum of their tasks'
        (head-weighted) gradients; only `shared_parameters()` receive the balanced direction. Empty by
        default."""
        return {}

    def penalties(self, tasks: Sequence[str]) -> dict[str, Tensor]:
        """Extra training-loss terms, one per task that has one (e.g. a parameter-distance penalty between
        task columns), added to that task's loss before balancing, so a balancer sees each as part of its
        task's loss. A task's term may depend only on parameters that task's loss depends on anyway (or on a
        group that includes the task). The engine asks once per step, after the step's forward pass (for
        ``forward(inputs)``: the whole model's), so a term may read what that forward computed. Empty by
        default; not part of evaluation losses."""
        return {}

    @classmethod
    def feature_mode_error(cls) -> str | None:
        """Why balancing in features mode is impossible for this family (None when it is possible)."""
        if cls.shares_representation:
            return None
        return (f"{cls.__name__} has no representation that every task reads, so a balancer cannot work in "
                "mode 'features' on it; use mode: parameters")

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
