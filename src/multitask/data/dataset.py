"""In-memory multi-task data: one input table, one target tensor per task (NaN / -1 where a label is missing)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from multitask.tasks import Task


def index_inputs(inputs: Any, idx: Tensor) -> Any:
    """Rows `idx` of a tensor or of a dict of tensors."""
    if isinstance(inputs, Tensor):
        return inputs[idx]
    return {k: v[idx] for k, v in inputs.items()}


def n_rows(inputs: Any) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    return next(iter(inputs.values())).shape[0]


def to_device(obj: Any, device: torch.device | str) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    return {k: to_device(v, device) for k, v in obj.items()}


@dataclass
class MultiTaskData:
    """Rows of inputs with a target per task. Every tensor has the same first dimension."""

    inputs: Any
    targets: dict[str, Tensor]

    def __post_init__(self) -> None:
        n = n_rows(self.inputs)
        for name, y in self.targets.items():
            if y.shape[0] != n:
                raise ValueError(f"task {name!r}: {y.shape[0]} targets for {n} input rows")

    def __len__(self) -> int:
        return n_rows(self.inputs)

    def subset(self, idx: Tensor) -> "MultiTaskData":
        return MultiTaskData(index_inputs(self.inputs, idx), {t: y[idx] for t, y in self.targets.items()})

    def check_tasks(self, tasks: Sequence[Task]) -> None:
        """Every task has targets here, and no target names an unknown task."""
        names = {t.name for t in tasks}
        missing = [t for t in names if t not in self.targets]
        if missing:
            raise KeyError(f"no targets for task(s) {sorted(missing)}; the data has {sorted(self.targets)}")
        unknown = [t for t in self.targets if t not in names]
        if unknown:
            raise KeyError(f"targets for unknown task(s) {sorted(unknown)}; the tasks are {sorted(names)}")


def batches(data: MultiTaskData, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[Any, dict[str, Tensor], Tensor]]:
    """Yield (inputs, targets, row indices) in batches; a shuffled order comes from `generator` alone."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield index_inputs(data.inputs, idx), {t: y[idx] for t, y in data.targets.items()}, idx


@dataclass
class DatasetBundle:
    """A dataset ready to train on: tasks, splits, and the fitted preprocessing (needed to predict later)."""

    name: str
    tasks: list[Task]
    train: MultiTaskData
    val: MultiTaskData
    test: MultiTaskData
    preprocessor: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def select_tasks(self, names: Sequence[str]) -> "DatasetBundle":
        known = [t.name for t in self.tasks]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown} for dataset {self.name!r}; available: {known}")
        keep = [t for t in self.tasks if t.name in names]

        def sub(d: MultiTaskData) -> MultiTaskData:
            return MultiTaskData(d.inputs, {n: d.targets[n] for n in names})

        return DatasetBundle(self.name, keep, sub(self.train), sub(self.val), sub(self.test),
                             self.preprocessor, self.info)


def split_indices(n: int, fractions: Mapping[str, float], seed: int) -> dict[str, Tensor]:
    """Random disjoint index sets of the given fractions; the remainder goes to the first key."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    out, start = {}, 0
    keys = list(fractions)
    sizes = {k: int(round(fractions[k] * n)) for k in keys[1:]}
    sizes[keys[0]] = n - sum(sizes.values())
    for k in keys:
        out[k] = perm[start:start + sizes[k]].sort().values
        start += sizes[k]
    return out
