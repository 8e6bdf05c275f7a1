"""The balancer interface: how the losses of several tasks become one update.

Every balancer declares what it `requires` from the gradient engine (`multitask.autograd`):

- ``"losses"``  (`LossBalancer`): turns per-task losses into one scalar (`combine`); one backward pass.
- ``"gramian"`` (`GramianBalancer`): task weights from the T x T Gramian of per-task gradients (`solve`);
  the update is the weighted sum of the task gradients. Most gradient methods (MGDA, PCGrad, CAGrad,
  Nash-MTL, IMTL-G, Aligned-MTL, UPGrad, GradNorm, ...) only ever need inner products of gradients.
- ``"jacobian"`` (`JacobianBalancer`): a direction from the T x N matrix of per-task gradients (`aggregate`),
  for methods that look at individual coordinates (GradDrop) or keep gradient histories (DB-MTL).

Gradient-based balancers work in two modes: ``"parameters"`` (gradients on the shared parameters) or
``"features"`` (gradients on the shared representation, the MGDA-UB idea of Sener & Koltun 2018), and can
recompute their weights only `every` k steps. State lives in parameters and buffers (or `get_extra_state`),
so a balancer is saved and restored with the checkpoint. The trainer never changes for a new method.
"""
from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from multitask.tasks import Task

MODES = ("parameters", "features")


class Balancer(nn.Module):
    """Base class of every balancing method."""

    name: ClassVar[str] = ""
    requires: ClassVar[str] = "losses"
    # the source of a method's per-step randomness (RLW's weights, PCGrad's and GradVac's orders, GradDrop's
    # thresholds); None: torch's global generator. The trainer sets one seeded by its seed alone, so that
    # every rank of a distributed run draws the same numbers whatever else (dropout) draws from the global one.
    generator: torch.Generator | None = None

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError(f"{type(self).__name__} needs at least one task")
        self.task_names = [t.name for t in tasks]
        self._last_weights: dict[str, float] = {t: 1.0 for t in self.task_names}

    def weights(self) -> dict[str, float]:
        """The task weights of the latest step, for logging."""
        return dict(self._last_weights)

    def epoch_end(self, epoch: int) -> None:
        """Called by the trainer after every epoch (e.g. DWA re-weights per epoch). Default: nothing."""

    def per_task_parameters(self) -> list[nn.Parameter]:
        """Learned parameters whose rows are the tasks (in `task_names` order), e.g. Uncertainty's
        log-variances: on a step without a task's labels the trainer leaves that task's row, and its optimiser
        state, as they were. Default: none."""
        return []

    def _record(self, weights: Sequence[float], index: Sequence[int] | None = None) -> None:
        index = range(len(self.task_names)) if index is None else index
        w = {t: 0.0 for t in self.task_names}
        for i, v in zip(index, weights):
            w[self.task_names[i]] = float(v)
        self._last_weights = w

    def _check(self, losses: Mapping[str, Tensor]) -> None:
        missing = [t for t in self.task_names if t not in losses]
        extra = [t for t in losses if t not in self.task_names]
        if missing or extra:
            raise KeyError(f"{type(self).__name__}: losses for unknown tasks {extra} / missing tasks {missing}; "
                           f"expected {self.task_names}")


class LossBalancer(Balancer):
    """Weights from losses alone: one backward pass of `combine(losses)`."""

    requires = "losses"

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None) -> Tensor:
        """One scalar objective from per-task losses. `present[t]` says task t had labels in the batch."""
        raise NotImplementedError


class WeightedSum(LossBalancer):
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

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None) -> Tensor:
        self._check(losses)
        total = losses[self.task_names[0]] * self.w[0]
        for i, t in enumerate(self.task_names[1:], start=1):
            total = total + losses[t] * self.w[i]
        return total


class GradientBalancer(Balancer):
    """Base of the methods that look at per-task gradients.

    `mode`: ``"parameters"`` or ``"features"``; `every`: recompute the weights every k steps and reuse the
    last ones in between (then a step costs one ordinary backward).
    """

    def __init__(self, tasks: Sequence[Task], mode: str = "parameters", every: int = 1) -> None:
        super().__init__(tasks)
        if mode not in MODES:
            raise ValueError(f"{type(self).__name__}: mode must be one of {MODES}, got {mode!r}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"{type(self).__name__}: every must be an integer >= 1, got {every!r}")
        self.mode = mode
        self.every = every
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("cached_weights", torch.ones(len(tasks), dtype=torch.float64))
        self.register_buffer("solved_for", torch.zeros(len(tasks), dtype=torch.bool))  # tasks of the last solve

    def recompute_now(self, index: np.ndarray) -> bool:
        """True on the steps where the weights are computed afresh: every `every`-th step, and whenever the
        set of tasks with labels differs from the one the cached weights were solved for."""
        present = np.zeros(len(self.task_names), dtype=bool)
        present[index] = True
        return int(self.steps) % self.every == 0 or not np.array_equal(present, self.solved_for.cpu().numpy())

    def head_weights(self, losses: Tensor, index: np.ndarray) -> Tensor | None:
        """Per-task factors for the task-specific parameters' gradients (None: each head gets its plain
        task gradient, as in Sener & Koltun). Methods that re-weight or transform the losses themselves
        (GradNorm's w_i, DB-MTL's log-loss) return them so that heads see the same objective."""
        return None


class GramianBalancer(GradientBalancer):
    """Task weights from the Gramian K = G G^T of the (present) tasks' gradients."""

    requires = "gramian"

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Weights w (float64, one per row of `gramian`) so that the update is sum_i w_i g_i.

        `index[i]` is the position (in `task_names`) of the task of row i: tasks without labels in the
        batch are left out of the Gramian, so methods with per-task state must use it.
        """
        raise NotImplementedError


class JacobianBalancer(GradientBalancer):
    """A direction from the matrix of per-task gradients (rows)."""

    requires = "jacobian"
    # True for methods whose direction depends on the Jacobian only through its column sums S = sum_i g_i
    # and A = sum_i |g_i|; they implement `aggregate_sums`, and the engine may get S and A without forming J.
    column_sums_suffice: ClassVar[bool] = False

    def aggregate(self, jacobian: Tensor, losses: Tensor, index: np.ndarray) -> Tensor:
        """The update direction (length N) from `jacobian` [T', N]; `index` as in `GramianBalancer.solve`."""
        raise NotImplementedError

    def aggregate_sums(self, total: Tensor, absolute: Tensor, index: np.ndarray) -> Tensor:
        """The direction from the column sums of J and of |J| (only where `column_sums_suffice`)."""
        raise NotImplementedError


def importances(tasks: Sequence[Task], given: Mapping[str, float] | None, what: str) -> dict[str, float]:
    """Each task's `importance`, replaced by ``given[task]`` where given (weights, a preference); a KeyError
    names the unknown tasks in `what`."""
    chosen = {t.name: t.importance for t in tasks}
    if given is not None:
        unknown = [k for k in given if k not in chosen]
        if unknown:
            raise KeyError(f"{what} name unknown task(s) {unknown}; tasks are {list(chosen)}")
        chosen.update({k: float(v) for k, v in given.items()})
    return chosen
