"""Per-task inputs: a task may be restricted to some input columns, or own columns no other task reads
("if two tasks are very sensitive to certain features, it makes sense for them to use only those features").

`TaskInputs` wraps any family on table inputs. Each task sees its visible columns; every other column is
replaced by its neutral value before the model reads it: 0 for a standardised numeric column (the training
mean), 0 ("not missing") for a missing indicator, which always goes with its column, and category index 0
("unknown") for a categorical one. So task t's output provably does not depend on a column it may not see.
Tasks that see the same columns share one forward pass of the wrapped model; tasks that see different columns
cannot share a representation, so the wrapped model is balanced in parameters mode (features mode is refused).
A BatchNorm in the wrapped model updates its running statistics once per column group and step.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.layers import InputSchema

INDICATOR = "__missing"  # the suffix of a missing-value indicator column (data.preprocessing.INDICATOR)


def visible_columns(names: Sequence[str], inputs: Mapping[str, Sequence[str] | None],
                    private: Mapping[str, Sequence[str] | None], tasks: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Per task, the columns it reads: its `inputs` (all when None) minus the columns other tasks keep
    `private`. A column's missing indicator (``<column>__missing``) goes with its column. Errors name the task
    and the column."""
    known = set(names)
    for what, spec in (("inputs", inputs), ("private_inputs", private)):
        for t, cols in spec.items():
            if cols is None:
                continue
            if t not in tasks:
                raise ValueError(f"tasks.{t}.{what}: no task {t!r} is trained")
            unknown = [c for c in cols if c not in known]
            if unknown:
                raise ValueError(f"tasks.{t}.{what}: unknown input column(s) {unknown}; the inputs are "
                                 f"{', '.join(names)}")
    def with_indicators(cols: Sequence[str] | None) -> Sequence[str] | None:
        return None if cols is None else [x for c in cols for x in (c, c + INDICATOR) if x in known]

    inputs = {t: with_indicators(c) for t, c in inputs.items()}
    private = {t: with_indicators(c) for t, c in private.items()}
    owner: dict[str, str] = {}
    for t, cols in private.items():
        for c in cols or ():
            if c in owner and owner[c] != t:
                raise ValueError(f"tasks.{t}.private_inputs: column {c!r} is already private to task {owner[c]!r}")
            owner[c] = t
    out = {}
    for t in tasks:
        own = inputs.get(t)
        seen = [c for c in (names if own is None else own) if owner.get(c, t) == t]
        if not seen:
            raise ValueError(f"tasks.{t}.inputs: task {t!r} would read no input column (the ones it names are "
                             "private to other tasks)")
        out[t] = tuple(c for c in names if c in seen)
    return out


class TaskInputs(MultiTaskModel):
    """`model` with each task reading only `visible[task]` of the schema's columns (see the module docstring).
    `schema.names` lists the numeric columns (indicators included) then the categorical ones."""

    shares_representation = False

    def __init__(self, model: MultiTaskModel, schema: InputSchema, visible: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        if len(schema.names) != schema.num_features + len(schema.cat_cardinalities):
            raise ValueError("per-task inputs need the input schema's column names")
        self.model = model
        self.task_names = list(model.task_names)
        names = list(schema.names)
        n_num = schema.num_features
        masks: dict[tuple[str, ...], list[str]] = {}
        for t in self.task_names:
            masks.setdefault(tuple(visible.get(t, names)), []).append(t)
        self.groups = list(masks.values())  # tasks that see the same columns, in task order
        for k, cols in enumerate(masks):
            keep = torch.tensor([c in cols for c in names])
            self.register_buffer(f"num_keep{k}", keep[:n_num].float(), persistent=False)
            self.register_buffer(f"cat_keep{k}", keep[n_num:].long(), persistent=False)

    def _masked(self, inputs: Inputs, k: int) -> Inputs:
        if isinstance(inputs, Tensor):
            return inputs * getattr(self, f"num_keep{k}")
        out = dict(inputs)
        if "num" in out:
            out["num"] = out["num"] * getattr(self, f"num_keep{k}")
        if "cat" in out:
            out["cat"] = out["cat"] * getattr(self, f"cat_keep{k}")
        return out

    def forward(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        tasks = self._check_tasks(tasks)
        out: dict[str, Tensor] = {}
        self._penalties = {}
        for k, group in enumerate(self.groups):
            asked = [t for t in group if t in tasks]
            if asked:
                out.update(self.model(self._masked(inputs, k), tasks=asked))
                # a penalty read from a forward's activations (Sluice, AITM) belongs to the forward its task saw
                self._penalties.update(self.model.penalties(asked))
        return {t: out[t] for t in tasks}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.shared_parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.model.task_parameters(task)

    def group_parameters(self) -> dict[tuple[str, ...], list[nn.Parameter]]:
        return self.model.group_parameters()

    def penalties(self, tasks: Sequence[str]) -> dict[str, Tensor]:
        """The wrapped model's terms, each taken right after the forward of its task's column group."""
        terms = getattr(self, "_penalties", {})
        return {t: terms[t] for t in tasks if t in terms}

    @property
    def skips_work(self) -> bool:  # type: ignore[override]
        return self.model.skips_work

    @classmethod
    def feature_mode_error(cls) -> str | None:
        return ("per-task inputs: tasks that read different columns share no representation, so a balancer "
                "cannot work in mode 'features'; use mode: parameters")
