"""Per-task convergence: tasks that stop improving at different times stop one by one.

Every epoch each task's validation metric (its first metric, e.g. auc for a binary task) is compared with its
best so far. After `patience` epochs without improvement task k *stops*: its own parameters (its head, from
``model.task_parameters(k)``) are set back to their values at k's best epoch and frozen (their `.grad` is
dropped at every later step, so neither the optimiser, momentum nor weight decay moves them), while the shared
parameters keep training for the tasks still running. What happens to k's loss then (`protect`):

- ``"none"``: k has no loss any more (it counts as absent, as a task without labels does);
- ``"distill"``: k's loss becomes the distillation of the whole model *as it was at k's best epoch* on every
  row of the batch (`multitask.training.distillation.distill_loss`, T = 1), so the shared trunk is held to
  what k's frozen head expects while it keeps training for the others.

Training ends when every task has stopped (or at `epochs`). When every task has stopped, the epochs after the
last improvement of any task only waited out the patience: the model is then set back to its state at that
epoch E* (each stopped head being, as before, its own best). When training ends at `epochs` with tasks still
running, the trunk is the last epoch's. This differs from whole-model early stopping, which keeps one epoch's
weights for everything: here each task's head is its best, and the trunk is the one of E* (or the last).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from multitask.metrics import HIGHER_IS_BETTER
from multitask.models.base import MultiTaskModel
from multitask.tasks import Task
from multitask.training.distillation import LossTerm, _frozen_copy, _run, distill_loss
from multitask.training.early_stopping import improves

PROTECT = ("none", "distill")


class TaskConvergence:
    """Per-task patience on each task's first validation metric, with frozen heads (see the module docstring)."""

    def __init__(self, model: MultiTaskModel, tasks: Mapping[str, Task], patience: int, protect: str = "none") -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"per_task_patience must be an integer >= 1, got {patience!r}")
        if protect not in PROTECT:
            raise ValueError(f"protect must be one of {PROTECT}, got {protect!r}")
        names = {id(p): n for n, p in model.named_parameters()}
        try:
            self.own = {t: [names[id(p)] for p in model.task_parameters(t)] for t in tasks}
        except NotImplementedError:
            raise ValueError(f"{type(model).__name__} does not say which parameters are a task's own "
                             "(task_parameters): per-task convergence freezes them") from None
        self.model, self.tasks, self.patience, self.protect = model, dict(tasks), patience, protect
        self.metric = {t: task.metrics[0] for t, task in tasks.items()}
        self.best = {t: math.nan for t in tasks}
        self.best_epoch = {t: -1 for t in tasks}
        self.bad = {t: 0 for t in tasks}
        self.stopped: dict[str, int] = {}  # task -> the epoch (1-based) at whose end it stopped
        self.best_heads: dict[str, dict[str, Tensor]] = {}  # task -> its own parameters at its best epoch
        self.best_models: dict[str, dict[str, Tensor]] = {}  # protect: task -> the whole model at its best epoch
        self.teachers: dict[str, torch.nn.Module] = {}  # protect: stopped task -> that model, frozen
        self.last_improved = -1  # E*: the last epoch in which any task improved
        self.last_improved_state: dict[str, Tensor] | None = None  # the whole model then

    @property
    def all_stopped(self) -> bool:
        return len(self.stopped) == len(self.tasks)

    def _improved(self, t: str, value: float) -> bool:
        return improves(value, self.best[t], HIGHER_IS_BETTER[self.metric[t]])

    @torch.no_grad()
    def update(self, epoch: int, metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
        """Record epoch `epoch`'s validation metrics; returns the tasks that stop now (heads restored, frozen)."""
        params = dict(self.model.named_parameters())
        snapshot: dict[str, Tensor] | None = None
        newly = []
        for t in self.tasks:
            if t in self.stopped:
                continue
            value = float(metrics[t][self.metric[t]])
            if self._improved(t, value):
                self.best[t], self.best_epoch[t], self.bad[t] = value, epoch, 0
                self.best_heads[t] = {n: params[n].detach().clone() for n in self.own[t]}
                if self.protect == "distill":
                    if snapshot is None:  # tasks improving in the same epoch share one copy
                        snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    self.best_models[t] = snapshot
            else:
                self.bad[t] += 1
            if self.bad[t] >= self.patience:
                newly.append(t)
        if any(self.best_epoch[t] == epoch for t in self.tasks):
            self.last_improved = epoch
            self.last_improved_state = snapshot or {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        for t in newly:
            self._stop(t, epoch)
        if newly and self.all_stopped and self.last_improved_state is not None:
            self.model.load_state_dict(self.last_improved_state)  # back to E*, then every head to its best
            for t in self.stopped:
                for n, v in self.best_heads.get(t, {}).items():
                    params[n].copy_(v)
        return newly

    @torch.no_grad()
    def _stop(self, t: str, epoch: int) -> None:
        params = dict(self.model.named_parameters())
        for n, v in self.best_heads.get(t, {}).items():
            params[n].copy_(v)
        self.stopped[t] = epoch
        if self.protect == "distill" and t in self.best_models:
            self.teachers[t] = self._teacher(self.best_models[t])

    def _teacher(self, state: Mapping[str, Tensor]) -> torch.nn.Module:
        twin = _frozen_copy(self.model)
        twin.load_state_dict(state)
        return twin

    def terms(self, inputs: Any, masks: Mapping[str, Tensor]) -> dict[str, "LossTerm"]:
        """This step's loss of every stopped task: distillation from its best model (protect) or nothing."""
        out: dict[str, LossTerm] = {}
        for t in self.stopped:
            task = self.tasks[t]
            if t in self.teachers:
                soft = _run(self.teachers[t], inputs, [t])[t]
                out[t] = LossTerm(lambda o, task=task, soft=soft: distill_loss(task, o, soft).mean(), replace=True)
            else:
                out[t] = LossTerm(lambda o: (o * 0.0).sum(), replace=True, present=False)
        return out

    def drop_grads(self) -> None:
        """The stopped tasks' own parameters take no step: their `.grad` is dropped after the backward pass."""
        if not self.stopped:
            return
        params = dict(self.model.named_parameters())
        for t in self.stopped:
            for n in self.own[t]:
                params[n].grad = None

    def to(self, device: torch.device) -> "TaskConvergence":
        for m in self.teachers.values():
            m.to(device)
        return self

    def summary(self, end: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
        """Per task: the metric, its best epoch, the epoch it stopped (None: ran to the end), its value at its
        best epoch (what its frozen head was kept for) and at the end (`end`: validation metrics now)."""
        return {t: {"metric": self.metric[t], "stop_epoch": self.stopped.get(t), "best_epoch": self.best_epoch[t],
                    "at_stop": self.best[t] if t in self.stopped else None,
                    "at_end": float(end[t][self.metric[t]])} for t in self.tasks}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "best_epoch": dict(self.best_epoch), "bad": dict(self.bad),
                "stopped": dict(self.stopped), "best_heads": self.best_heads, "best_models": self.best_models,
                "last_improved": self.last_improved, "last_improved_state": self.last_improved_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = dict(state["best"]), dict(state["best_epoch"])
        self.bad, self.stopped = dict(state["bad"]), dict(state["stopped"])
        self.best_heads = dict(state["best_heads"])
        self.best_models = dict(state["best_models"])
        self.last_improved = int(state.get("last_improved", -1))
        self.last_improved_state = state.get("last_improved_state")
        self.teachers = {t: self._teacher(self.best_models[t]) for t in self.stopped if t in self.best_models}


__all__ = ["TaskConvergence", "PROTECT"]
