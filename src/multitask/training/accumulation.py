"""UberNet-style gradient accumulation (Kokkinos 2016, "UberNet", section 4): with tasks from different
datasets a batch need not be the same size for every task. The gradients of the shared parameters, of each
group of tasks' parameters and of each task's own parameters are accumulated separately, each weighted by the
samples it came from (all rows of the batch for the shared part, the rows labelled for at least one of its
tasks for a group, the task's labelled rows for its own part), and each part takes an optimiser step with its
sample-weighted mean gradient once its own count reaches its threshold.

A group (`MultiTaskModel.group_parameters()`: a branch that some tasks share, a cascade's earlier head) is a
shared part for its tasks, so it follows the shared rule restricted to them: its threshold is the shared one,
and a step in which none of its tasks has a label adds nothing to it (as for a task's own part).

A step's gradients are those the balancer wrote (so any balancing method works); the accumulation only
decides when which part steps. Parameters in no part (e.g. a balancer's own) step every step.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

SHARED = "shared"


def group_name(tasks: Sequence[str]) -> str:
    """A group's part name: its tasks joined by '+' (as the CLI and the branched family name groups)."""
    return "+".join(tasks)


class PartAccumulator:
    """Accumulates `.grad` per part (shared, each group of tasks, and each task) and releases a part once it
    has seen its threshold of samples (`shared`: rows, for the shared part and each group; `task`: labelled
    rows of that task). A group counts the rows labelled for at least one of its tasks."""

    def __init__(self, model: torch.nn.Module, tasks: Sequence[str], shared: int, task: int) -> None:
        for name, v in (("shared", shared), ("task", task)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"accumulation threshold {name} must be an integer >= 1, got {v!r}")
        try:
            parts = {SHARED: list(model.shared_parameters()), **{t: list(model.task_parameters(t)) for t in tasks}}
        except NotImplementedError:
            raise ValueError(f"{type(model).__name__} does not say which parameters are shared and which are a "
                             "task's own (shared_parameters / task_parameters): accumulation needs both") from None
        group_params = getattr(model, "group_parameters", dict)()
        self.groups: dict[str, tuple[str, ...]] = {}  # a group's part name -> its tasks
        for group, params in group_params.items():
            name = group_name(group)
            if name in parts:
                raise ValueError(f"{type(model).__name__}: the group of tasks {list(group)} would be accumulated "
                                 f"as part {name!r}, which is already a task's or the shared part's name")
            self.groups[name] = tuple(group)
            parts[name] = list(params)
        seen: dict[int, str] = {}
        for part, params in parts.items():
            for p in params:
                if seen.setdefault(id(p), part) != part:
                    raise ValueError(f"{type(model).__name__}: a parameter of shape {tuple(p.shape)} is in both "
                                     f"part {seen[id(p)]!r} and part {part!r}; each may step on one count only")
        self.parts = parts
        self.thresholds = {p: (task if p in tasks else shared) for p in parts}
        self.counts = dict.fromkeys(parts, 0)
        self.sums: dict[str, list[Tensor | None]] = {p: [None] * len(ps) for p, ps in parts.items()}
        self.in_parts = set(seen)
        self.updates = dict.fromkeys(parts, 0)  # optimiser steps taken by each part

    def add(self, rows: int, labelled: Mapping[str, int]) -> bool:
        """Fold this step's `.grad` into the sums; then leave in `.grad` only the mean gradients of the parts
        that reached their threshold (None elsewhere). `labelled`: per task, and per group part name (see
        `groups`), its rows with a label (for a group: with a label for at least one of its tasks). True when
        any part steps now."""
        missing = [g for g in self.groups if g not in labelled]
        if missing:
            raise ValueError(f"labelled row counts lack the group part(s) {missing}")
        ready = []
        for part, params in self.parts.items():
            weight = rows if part == SHARED else int(labelled.get(part, 0))
            if weight > 0:
                sums = self.sums[part]
                for i, p in enumerate(params):
                    if p.grad is not None:
                        g = p.grad.detach() * weight
                        sums[i] = g if sums[i] is None else sums[i].add_(g)
                self.counts[part] += weight
            if self.counts[part] >= self.thresholds[part]:
                ready.append(part)
        for part, params in self.parts.items():
            if part in ready:
                for p, s in zip(params, self.sums[part]):
                    p.grad = None if s is None else s / self.counts[part]
                self.sums[part] = [None] * len(params)
                self.counts[part] = 0
                self.updates[part] += 1
            else:
                for p in params:
                    p.grad = None
        return bool(ready)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "sums": {p: list(s) for p, s in self.sums.items()},
                "updates": dict(self.updates)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counts, sums and updates; a part the state does not have (a group, in a checkpoint written
        before groups were accumulated) starts from nothing."""
        self.counts = {p: state["counts"].get(p, 0) for p in self.parts}
        self.sums = {p: list(state["sums"][p]) if p in state["sums"] else [None] * len(ps)
                     for p, ps in self.parts.items()}
        self.updates = {p: state["updates"].get(p, 0) for p in self.parts}


__all__ = ["PartAccumulator", "group_name"]
