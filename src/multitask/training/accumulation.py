"""UberNet-style gradient accumulation (Kokkinos 2016, "UberNet", section 4): with tasks from different
datasets a batch need not be the same size for every task. The gradients of the shared parameters and of
each task's own parameters are accumulated separately, each weighted by the samples it came from (all rows
of the batch for the shared part, the task's labelled rows for its own part), and each part takes an
optimiser step with its sample-weighted mean gradient once its own count reaches its threshold.

A step's gradients are those the balancer wrote (so any balancing method works); the accumulation only
decides when which part steps. Parameters in no part (e.g. a balancer's own) step every step.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

SHARED = "shared"


class PartAccumulator:
    """Accumulates `.grad` per part (shared, and each task) and releases a part once it has seen its
    threshold of samples (`shared`: rows; `task`: labelled rows of that task)."""

    def __init__(self, model: torch.nn.Module, tasks: Sequence[str], shared: int, task: int) -> None:
        for name, v in (("shared", shared), ("task", task)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"accumulation threshold {name} must be an integer >= 1, got {v!r}")
        try:
            parts = {SHARED: list(model.shared_parameters()), **{t: list(model.task_parameters(t)) for t in tasks}}
        except NotImplementedError:
            raise ValueError(f"{type(model).__name__} does not say which parameters are shared and which are a "
                             "task's own (shared_parameters / task_parameters): accumulation needs both") from None
        self.parts = parts
        self.thresholds = {p: (shared if p == SHARED else task) for p in parts}
        self.counts = dict.fromkeys(parts, 0)
        self.sums: dict[str, list[Tensor | None]] = {p: [None] * len(ps) for p, ps in parts.items()}
        self.in_parts = {id(p) for ps in parts.values() for p in ps}
        self.updates = dict.fromkeys(parts, 0)  # optimiser steps taken by each part

    def add(self, rows: int, labelled: Mapping[str, int]) -> bool:
        """Fold this step's `.grad` into the sums; then leave in `.grad` only the mean gradients of the parts
        that reached their threshold (None elsewhere). True when any part steps now."""
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
        self.counts = dict(state["counts"])
        self.sums = {p: list(s) for p, s in state["sums"].items()}
        self.updates = dict(state["updates"])


__all__ = ["PartAccumulator"]
