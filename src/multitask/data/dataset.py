"""In-memory multi-task data: one input table, one target tensor per task (NaN / -1 where a label is missing)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from multitask.tasks import Task, fail_if_any, require_tensor


def index_inputs(inputs: Any, idx: Tensor) -> Any:
    """Rows `idx` of a tensor or of a dict of tensors."""
    if isinstance(inputs, Tensor):
        return inputs[idx]
    return {k: v[idx] for k, v in inputs.items()}


def n_rows(inputs: Any) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    return next(iter(inputs.values())).shape[0]


def check_inputs(inputs: Any) -> int:
    """The number of rows of `inputs` (a tensor or a dict of tensors), after checking that every tensor has
    that many rows and that no float entry is NaN or infinite (one would make every weight NaN at the first
    step; missing values are imputed before this point, e.g. by `TabularPreprocessor`)."""
    if isinstance(inputs, Mapping):
        if not inputs:
            raise ValueError("inputs are an empty dict; give at least one tensor, e.g. {'num': x}")
        items = [(f"input {k!r}", v, "is") for k, v in inputs.items()]
    else:
        items = [("inputs", inputs, "are")]
    n: int | None = None
    for what, x, verb in items:
        require_tensor(x, what, verb)
        if n is None:
            n, first = x.shape[0], what
        elif x.shape[0] != n:
            raise ValueError(f"{what} has {x.shape[0]} rows but {first} has {n}")
        if x.is_floating_point() or x.is_complex():
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                rows = int((~finite).reshape(n, -1).any(1).sum())
                n_nan = int(torch.isnan(x).sum())
                raise ValueError(
                    f"{what}: {rows} {'row has' if rows == 1 else 'rows have'} non-finite values "
                    f"({n_nan} NaN, {int((~finite).sum()) - n_nan} inf/-inf entries); a NaN or infinite input "
                    "makes every weight NaN at the first step: impute missing values first (TabularPreprocessor "
                    "fills a missing numeric value with the training mean) and replace infinite ones"
                )
    assert n is not None
    return n


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
        """Inputs as in `check_inputs`; each target a tensor with one row per input row, never infinite (NaN is
        a missing label). 0 rows are allowed here (an empty subset); `check_tasks` refuses them."""
        n = check_inputs(self.inputs)
        if not isinstance(self.targets, Mapping):
            raise TypeError(f"targets must be a dict {{task name: tensor}}, got {type(self.targets).__name__}")
        for name, y in self.targets.items():
            require_tensor(y, f"task {name!r}: targets")
            if y.shape[0] != n:
                raise ValueError(f"task {name!r}: {y.shape[0]} targets for {n} input rows")
            if y.is_floating_point():
                fail_if_any(f"task {name!r}", torch.isinf(y), y, "infinite targets",
                            "NaN marks a missing label; an infinite one cannot be learned")

    @staticmethod
    def from_frame(df: Any, targets: Mapping[str, Any], features: str | Sequence[str] = "auto",
                   categorical: Sequence[str] | None = None, split: Mapping[str, Any] | None = None,
                   missing_indicator: bool = False) -> "DatasetBundle":
        """A pandas DataFrame as a `DatasetBundle` ready to train on, exactly as `data: {name: table}` reads a
        file: `targets` maps a column to its kind (None: inferred), features are the other columns (text and
        boolean ones categorical), `split` is {val_fraction, test_fraction, seed} or {column}. The bundle holds
        train/val/test, the tasks, the fitted `preprocessor` (for new rows) and ``info["codecs"]`` (labels and
        target scaling, to decode predictions)."""
        import pandas as pd

        from multitask.data.table import bundle_from_frame

        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"from_frame takes a pandas DataFrame, got {type(df).__name__}; for numpy arrays use "
                            "MultiTaskData.from_arrays(x, {task: y})")
        return bundle_from_frame(df, dict(targets), features, categorical, dict(split or {}), missing_indicator)

    @staticmethod
    def from_arrays(x: Any, y: Mapping[str, Any], kinds: Mapping[str, str | None] | None = None,
                    feature_names: Sequence[str] | None = None, split: Mapping[str, Any] | None = None,
                    missing_indicator: bool = False) -> "DatasetBundle":
        """Numeric arrays (numpy, or anything `numpy.asarray` takes) as a `DatasetBundle`, through `from_frame`:
        `x` of shape [N, F] (NaN = missing value), `y` {task: [N] labels, or [N, K] 0/1 for a multilabel task};
        a task's kind is `kinds[task]` or inferred. Features are named `feature_names` or x0..x{F-1}."""
        import pandas as pd

        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"from_arrays: x must have shape [rows, features], got shape {x.shape}")
        names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(x.shape[1])]
        if len(names) != x.shape[1]:
            raise ValueError(f"from_arrays: {len(names)} feature names for {x.shape[1]} columns of x")
        frame = pd.DataFrame(x, columns=names)
        targets: dict[str, Any] = {}
        kinds = dict(kinds or {})
        unknown = sorted(set(kinds) - set(y))
        if unknown:
            raise KeyError(f"from_arrays: kinds name task(s) {unknown} that y does not have")
        for name, values in y.items():
            v = np.asarray(values)
            if name in frame.columns:
                raise ValueError(f"from_arrays: task {name!r} has the name of a feature column")
            if v.shape[:1] != (x.shape[0],) or v.ndim not in (1, 2):
                raise ValueError(f"from_arrays: task {name!r}: {v.shape} labels for {x.shape[0]} rows of x "
                                 "(give shape [N], or [N, K] for a multilabel task)")
            if v.ndim == 1:
                frame[name] = v
                targets[name] = kinds.get(name)
            else:
                cols = [f"{name}_{k}" for k in range(v.shape[1])]
                for k, c in enumerate(cols):
                    frame[c] = v[:, k]
                targets[name] = {"kind": kinds.get(name) or "multilabel", "columns": cols}
        return MultiTaskData.from_frame(frame, targets, "auto", [], split, missing_indicator)

    @classmethod
    def prechecked(cls, inputs: Any, targets: dict[str, Tensor]) -> "MultiTaskData":
        """Without `__post_init__`'s passes over every value: for a loader that already checked each column as
        it wrote it (`multitask.data.table`; on a million-row table the passes took 0.7 s of a 6 s load)."""
        data = cls.__new__(cls)
        data.inputs, data.targets = inputs, targets
        return data

    def __len__(self) -> int:
        return n_rows(self.inputs)

    def subset(self, idx: Tensor) -> "MultiTaskData":
        return MultiTaskData(index_inputs(self.inputs, idx), {t: y[idx] for t, y in self.targets.items()})

    def check_tasks(self, tasks: Sequence[Task], require_rows: bool = True, what: str = "the data") -> None:
        """Every task has targets here, no target names an unknown task, every target passes its task's
        `Task.check_targets` (labels of the right kind and shape), and (with `require_rows`) there is at least
        one row. `what` names this data in the errors ("the training data"). Called by `Trainer.fit` and
        `Trainer.evaluate`; a few passes over the targets."""
        names = {t.name for t in tasks}
        missing = [t for t in names if t not in self.targets]
        if missing:
            raise KeyError(f"no targets for task(s) {sorted(missing)}; the data has {sorted(self.targets)}")
        unknown = [t for t in self.targets if t not in names]
        if unknown:
            raise KeyError(f"targets for unknown task(s) {sorted(unknown)}; the tasks are {sorted(names)}")
        if require_rows and len(self) == 0:
            raise ValueError(f"{what} has 0 rows (inputs and targets are empty): training and evaluation need at "
                             "least one; check the split fractions and any row limit")
        for t in tasks:
            t.check_targets(self.targets[t.name])


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
    # how training batches are drawn from `train` (e.g. per source, multitask.data.sampling); None: shuffled
    plan: Callable[[MultiTaskData], Any] | None = None

    def training_data(self) -> Any:
        """What `Trainer.fit` trains on: `train` itself, or the batch plan built over it."""
        return self.train if self.plan is None else self.plan(self.train)

    def select_tasks(self, names: Sequence[str]) -> "DatasetBundle":
        known = [t.name for t in self.tasks]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown} for dataset {self.name!r}; available: {known}")
        keep = [t for t in self.tasks if t.name in names]
        if self.plan is not None and len(keep) < len(self.tasks):
            raise ValueError("a bundle of several sources chooses its tasks when it is loaded "
                             "(load_sources(..., tasks=[...]) also drops the sources left without a task, whose "
                             "steps would train nothing)")

        def sub(d: MultiTaskData) -> MultiTaskData:
            return MultiTaskData(d.inputs, {n: d.targets[n] for n in names})

        return DatasetBundle(self.name, keep, sub(self.train), sub(self.val), sub(self.test),
                             self.preprocessor, self.info, self.plan)


def split_indices(n: int, fractions: Mapping[str, float], seed: int) -> dict[str, Tensor]:
    """Random disjoint index sets of the given fractions; the remainder goes to the first key."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    out, start = {}, 0
    keys = list(fractions)
    sizes = {k: int(round(fractions[k] * n)) for k in keys[1:]}
    sizes[keys[0]] = n - sum(sizes.values())
    for k in keys:
        out[k] = torch.from_numpy(np.sort(perm[start:start + sizes[k]].numpy()))  # numpy: torch's threaded sort can stall on a busy machine
        start += sizes[k]
    return out
