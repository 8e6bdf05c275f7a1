"""Distillation for tasks without labels: on a row that has no label for task k, the student's output for k is
pulled towards a teacher's output for k, so the rows of one source keep teaching the tasks of another.

Teachers (one class each, all run in eval mode under ``no_grad`` on the step's own batch, before its forward):

- `PreviousSelf` (Kim et al., WACV 2018, "Disjoint multi-task learning"): a snapshot of the student itself,
  refreshed every `refresh` steps or at every epoch's end, or an exponential moving average of its weights
  (``ema``: teacher <- ema * teacher + (1 - ema) * student after every step);
- `FixedTeachers`: trained models that never change, e.g. one single-task (`Independent`) run per task
  ("pretend the label is there when it is not"); teacher k's output for k is the soft target of task k.

Losses (`distill_loss`, per entry; `Distillation.term` averages them over the entries without a label):

- multiclass: softened cross-entropy, T^2 * sum_c -softmax(t / T)_c log softmax(s / T)_c (Hinton et al. 2015:
  the T^2 keeps the gradient's scale independent of T). It differs from KL(teacher || student) by the
  teacher's entropy, a constant for the student, so the gradients are the same;
- binary / multilabel: binary cross-entropy of the student's logit against the soft target sigmoid(t);
- regression: squared error (s - t)^2 (in the task's training units).

Task k's loss on a batch is then ``supervised mean over labelled entries + lambda_k * distillation mean over
unlabelled entries``; the balancer sees that sum as task k's loss, so every balancing method works unchanged.
A task with lambda_k = 0 (or no weight in a per-task mapping) is not distilled at all: training is exactly
that of masking.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from multitask.models.base import MultiTaskModel
from multitask.tasks import Task


# ------------------------------------------------------------------------------------------ losses
def distill_loss(task: Task, student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """The element-wise distillation loss of `task` (no reduction): one value per row (multiclass, binary,
    single regression) or per entry (multilabel, wide regression), shaped like the task's label mask."""
    student, teacher = task._squeeze(student), task._squeeze(teacher.detach()).to(student.dtype)
    if student.shape != teacher.shape:
        raise ValueError(f"task {task.name!r}: teacher output {tuple(teacher.shape)} does not match the student's "
                         f"{tuple(student.shape)}")
    if task.kind == "multiclass":
        T = float(temperature)
        soft = torch.softmax(teacher / T, dim=-1)
        return -(soft * torch.log_softmax(student / T, dim=-1)).sum(-1) * (T * T)
    if task.kind in ("binary", "multilabel"):
        return F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher), reduction="none")
    return (student - teacher) ** 2


def masked_mean(per_entry: Tensor, where: Tensor) -> Tensor:
    """Mean of `per_entry` over the entries where `where` is True; exactly 0 (with a graph) where none is."""
    w = where.to(per_entry.dtype)
    return (per_entry * w).sum() / w.sum().clamp(min=1.0)


# ------------------------------------------------------------------------------------------ teachers
class Teacher:
    """Gives soft targets for a step's batch; never receives gradient. Subclasses say how it evolves."""

    def bind(self, student: MultiTaskModel) -> None:
        """Called once when the trainer is built (before any resume loads this teacher's state)."""

    def start(self, student: MultiTaskModel) -> None:
        """Called when a fresh `fit` starts (not on resume), with the student as it is then."""

    def ready(self) -> bool:
        """False while the teacher has nothing worth distilling (a snapshot not taken yet)."""
        return True

    def outputs(self, inputs: Any, tasks: Sequence[str]) -> dict[str, Tensor]:
        """The teacher's raw outputs for `tasks` on `inputs` (eval mode, no gradient)."""
        raise NotImplementedError

    def after_step(self, student: MultiTaskModel, step: int) -> None:
        """After the student's optimiser step number `step` (1-based, counting the whole run)."""

    def after_epoch(self, student: MultiTaskModel, epoch: int) -> None:
        """After epoch number `epoch` (1-based) is trained."""

    def to(self, device: torch.device) -> "Teacher":
        return self

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (on resume)."""


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode whose parameters never require gradient."""
    twin = copy.deepcopy(model)
    twin.eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def _run(model: torch.nn.Module, inputs: Any, tasks: Sequence[str]) -> dict[str, Tensor]:
    model.eval()
    return {t: o.detach() for t, o in model(inputs, list(tasks)).items()}


class PreviousSelf(Teacher):
    """The student's own earlier weights: a snapshot refreshed every `refresh` steps (an int) or at the end of
    every epoch (``refresh="epoch"``), or an exponential moving average (`ema` in (0, 1)).

    A snapshot teacher is `ready` from its first refresh on (before it, it would be the random initial weights);
    an EMA teacher starts from the student's weights after `warmup` steps (at the start of `fit` without
    warmup), so that the random initial weights do not linger in the average. Neither is ready before the
    student has taken `warmup` steps."""

    def __init__(self, refresh: int | str | None = "epoch", ema: float | None = None, warmup: int = 0) -> None:
        if ema is not None:
            if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 < float(ema) < 1.0:
                raise ValueError(f"ema must be a number in (0, 1), e.g. 0.999; got {ema!r}")
            refresh = None
        elif refresh != "epoch" and (isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 1):
            raise ValueError(f"refresh must be 'epoch' or an integer >= 1 (steps), got {refresh!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0 (steps), got {warmup!r}")
        self.refresh, self.ema, self.warmup = refresh, (None if ema is None else float(ema)), warmup
        self.model: torch.nn.Module | None = None
        self.refreshes = 0  # snapshots taken (snapshot mode) / EMA updates made (ema mode)
        self.steps = 0  # student steps seen since `start`

    def bind(self, student: MultiTaskModel) -> None:
        self.model = _frozen_copy(student)

    def start(self, student: MultiTaskModel) -> None:
        if self.model is None:
            self.bind(student)
        self._copy_from(student)
        self.refreshes = self.steps = 0

    def ready(self) -> bool:
        if self.model is None:
            return False
        return self.steps >= self.warmup and (self.ema is not None or self.refreshes >= 1)

    def outputs(self, inputs: Any, tasks: Sequence[str]) -> dict[str, Tensor]:
        return _run(self.model, inputs, tasks)

    @torch.no_grad()
    def _copy_from(self, student: MultiTaskModel) -> None:
        for mine, theirs in zip(self.model.state_dict().values(), student.state_dict().values()):
            mine.copy_(theirs)

    @torch.no_grad()
    def after_step(self, student: MultiTaskModel, step: int) -> None:
        self.steps += 1
        if self.ema is not None and self.steps <= self.warmup:  # the average starts when warmup ends
            self._copy_from(student)
        elif self.ema is not None:  # theta_T <- a theta_T + (1 - a) theta_S on every float entry; counters copied
            a = self.ema
            for mine, theirs in zip(self.model.state_dict().values(), student.state_dict().values()):
                if mine.is_floating_point():
                    mine.mul_(a).add_(theirs.detach().to(mine.dtype), alpha=1.0 - a)
                else:
                    mine.copy_(theirs)
            self.refreshes += 1
        elif isinstance(self.refresh, int) and step % self.refresh == 0:
            self._copy_from(student)
            self.refreshes += 1

    def after_epoch(self, student: MultiTaskModel, epoch: int) -> None:
        if self.ema is None and self.refresh == "epoch":
            self._copy_from(student)
            self.refreshes += 1

    def to(self, device: torch.device) -> "PreviousSelf":
        if self.model is not None:
            self.model.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"model": None if self.model is None else self.model.state_dict(), "refreshes": self.refreshes,
                "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("model") is not None:
            if self.model is None:
                raise RuntimeError("PreviousSelf.load_state_dict before the teacher was bound to a student")
            self.model.load_state_dict(state["model"])
        self.refreshes = int(state.get("refreshes", 0))
        self.steps = int(state.get("steps", 0))


class FixedTeachers(Teacher):
    """Trained models that never change: ``{task: model}`` (teacher of task k gives k's soft targets), e.g. one
    single-task run per task, or one `Independent` model (or any model) serving every task it has."""

    def __init__(self, teachers: Mapping[str, torch.nn.Module]) -> None:
        if not teachers:
            raise ValueError("FixedTeachers needs at least one {task: model}")
        copies: dict[int, torch.nn.Module] = {}  # one frozen copy per distinct model, run once per batch
        self._groups: dict[int, tuple[torch.nn.Module, list[str]]] = {}
        self.teachers: dict[str, torch.nn.Module] = {}
        for t, m in teachers.items():
            if id(m) not in copies:
                copies[id(m)] = _frozen_copy(m)
            self.teachers[t] = copies[id(m)]
            self._groups.setdefault(id(m), (copies[id(m)], []))[1].append(t)

    def outputs(self, inputs: Any, tasks: Sequence[str]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for model, ts in self._groups.values():
            wanted = [t for t in ts if t in tasks]
            if wanted:
                out.update(_run(model, inputs, wanted))
        return out

    def to(self, device: torch.device) -> "FixedTeachers":
        for model, _ in self._groups.values():
            model.to(device)
        return self


# ------------------------------------------------------------------------------------------ the trainer's hook
@dataclass
class LossTerm:
    """What a step adds to (or puts in place of) one task's loss. `fn(output)` is a scalar with a graph;
    `replace`: the task's loss is this term alone; `present`: the task counts as having a loss this step."""

    fn: Callable[[Tensor], Tensor]
    replace: bool = False
    present: bool = True


class Distillation:
    """Distil a `teacher` into the student on the rows without labels: task k's loss gains
    ``weight_k * mean over k's unlabelled entries of distill_loss`` (see the module docstring).

    `weight`: lambda for every task (a number) or per task (a mapping; a task left out is not distilled);
    `temperature`: T of the softened cross-entropy of multiclass tasks."""

    def __init__(self, teacher: Teacher, weight: float | Mapping[str, float] = 1.0, temperature: float = 1.0) -> None:
        if not isinstance(teacher, Teacher):
            raise TypeError(f"teacher must be a multitask.training.distillation.Teacher, got {type(teacher).__name__}")
        for what, v in ([("weight", weight)] if not isinstance(weight, Mapping)
                        else [(f"weight.{t}", w) for t, w in weight.items()]):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"distillation {what} must be a finite number >= 0, got {v!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"distillation temperature must be a finite number > 0, got {temperature!r}")
        self.teacher, self.weight, self.temperature = teacher, weight, float(temperature)
        self.seconds = 0.0  # time spent in the teacher's forward passes (its cost, logged per epoch)
        self._sums: dict[str, list[float]] = {}  # task -> [sum of distillation terms, steps] of the epoch

    def weight_of(self, task: str) -> float:
        return float(self.weight.get(task, 0.0)) if isinstance(self.weight, Mapping) else float(self.weight)

    def check_tasks(self, tasks: Mapping[str, Task]) -> None:
        """Per-task weights and fixed teachers must name tasks the trainer has; fixed teachers must cover
        every distilled task."""
        if isinstance(self.weight, Mapping):
            unknown = [t for t in self.weight if t not in tasks]
            if unknown:
                raise ValueError(f"distillation weights name unknown task(s) {unknown}; the tasks are {list(tasks)}")
        if isinstance(self.teacher, FixedTeachers):
            unknown = [t for t in self.teacher.teachers if t not in tasks]
            uncovered = [t for t in tasks if self.weight_of(t) > 0 and t not in self.teacher.teachers]
            if unknown or uncovered:
                raise ValueError(f"teachers are given for {list(self.teacher.teachers)}: "
                                 + (f"unknown task(s) {unknown}" if unknown else f"no teacher for {uncovered}")
                                 + " (give a teacher for every distilled task, or weight 0 to the others)")

    def terms(self, tasks: Mapping[str, Task], inputs: Any, masks: Mapping[str, Tensor]) -> dict[str, LossTerm]:
        """The distillation terms of a step: one for each task with unlabelled entries and lambda > 0."""
        wanted = [t for t, m in masks.items() if m is not None and self.weight_of(t) > 0 and not bool(m.all())]
        if not wanted or not self.teacher.ready():
            return {}
        start = time.perf_counter()
        soft = self.teacher.outputs(inputs, wanted)
        self.seconds += time.perf_counter() - start
        out = {}
        for t in wanted:
            out[t] = LossTerm(self._term(tasks[t], soft[t], ~masks[t], self.weight_of(t)))
        return out

    def _term(self, task: Task, soft: Tensor, missing: Tensor, weight: float) -> Callable[[Tensor], Tensor]:
        def fn(output: Tensor) -> Tensor:
            value = weight * masked_mean(distill_loss(task, output, soft, self.temperature), missing)
            seen = float(value.detach())
            if math.isfinite(seen):  # a step skipped for a non-finite value is left out of the epoch's mean
                total = self._sums.setdefault(task.name, [0.0, 0])
                total[0] += seen
                total[1] += 1
            return value
        return fn

    def epoch_log(self) -> dict[str, Any]:
        """The epoch's mean distillation term per task (over the steps that had one) and the teacher's seconds;
        the sums then restart."""
        out = {"distill_loss": {t: s / max(n, 1) for t, (s, n) in self._sums.items()},
               "teacher_seconds": self.seconds}
        self._sums, self.seconds = {}, 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.teacher.load_state_dict(state.get("teacher") or {})


__all__ = ["Distillation", "Teacher", "PreviousSelf", "FixedTeachers", "LossTerm", "distill_loss", "masked_mean"]
