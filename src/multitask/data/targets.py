"""Target columns of a user's table: what kind each is (declared or inferred), and how its values become
training targets and predictions become values again.

A `TargetCodec` is fitted on the training rows and saved as JSON with the run, so labels, their order and the
regression scaling travel with the model:

- binary: the two values, sorted (``False``/``True``, ``0``/``1``, ``"no"``/``"yes"``), map to 0/1;
- multiclass: the sorted distinct values map to 0..K-1;
- multilabel: several 0/1 columns, one output each;
- regression: standardised with the training mean and standard deviation (``scale="standard"``, the default:
  a target in grams² would otherwise drown every other task's loss) or left as it is (``scale="none"``).

An empty cell is a missing label (NaN / -1), never guessed.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from multitask.tasks import KINDS, Task

SCALES = ("standard", "none")


def _present(col: pd.Series) -> pd.Series:
    """The labelled cells: not NaN/None and not blank text."""
    present = col.notna()
    if col.dtype == object or pd.api.types.is_string_dtype(col):
        present &= col.astype(str).str.strip() != ""
    return present


def infer_kind(col: pd.Series) -> tuple[str, str]:
    """(kind, why) for one target column: two distinct values -> binary; floats with more -> regression;
    text, booleans or integers with more -> multiclass."""
    values = col[_present(col)]
    distinct = pd.unique(values)
    if len(distinct) == 0:
        raise ValueError(f"target column {col.name!r} has no labels at all (every cell is empty)")
    if len(distinct) == 2:
        return "binary", f"2 distinct values ({', '.join(sorted(map(str, distinct)))})"
    if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values.to_numpy(dtype=float), 1) == 0):
        return "regression", f"numbers with {len(distinct)} distinct values"
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and len(distinct) > 50:
        return "regression", f"numbers with {len(distinct)} distinct values"
    return "multiclass", f"{len(distinct)} distinct {'text ' if values.dtype == object else ''}values"


def _label(v: Any) -> Any:
    """A label as plain JSON data (numpy scalars become Python numbers)."""
    return v.item() if isinstance(v, np.generic) else v


@dataclass
class TargetCodec:
    """How one target (a column, or several 0/1 columns for multilabel) becomes a tensor and back."""

    name: str
    kind: str
    columns: list[str]
    labels: list[Any] = field(default_factory=list)  # binary / multiclass: the value of each class index
    scale: str = "standard"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"target {self.name!r}: kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.scale not in SCALES:
            raise ValueError(f"target {self.name!r}: scale must be one of {', '.join(SCALES)}; got {self.scale!r}")
        if self.kind == "multilabel" and len(self.columns) < 1:
            raise ValueError(f"target {self.name!r}: a multilabel target names its 0/1 columns")
        if self.kind != "multilabel" and len(self.columns) != 1:
            raise ValueError(f"target {self.name!r}: a {self.kind} target is one column, got {self.columns}")

    # ------------------------------------------------------------------------------------------ fitting
    def fit(self, df: pd.DataFrame) -> "TargetCodec":
        """Learn labels (classification) or mean and std (regression) from the training rows."""
        self._check_columns(df)
        col = df[self.columns[0]]
        values = col[_present(col)]
        if self.kind in ("binary", "multiclass"):
            self.labels = sorted((_label(v) for v in pd.unique(values)), key=lambda v: (str(type(v)), v))
            if not self.labels:
                raise ValueError(f"target {self.name!r} has no labels at all in the training rows (every cell is "
                                 "empty)")
            if len(self.labels) < 2:
                shown = f" (only {self.labels[0]!r})"
                raise ValueError(f"target {self.name!r}: the training rows hold 1 class{shown}; "
                                 "a classification task needs at least two")
            if self.kind == "binary" and len(self.labels) != 2:
                raise ValueError(f"target {self.name!r}: declared binary but the training rows hold "
                                 f"{len(self.labels)} values ({', '.join(map(repr, self.labels[:5]))}, ...); "
                                 "use kind: multiclass")
        elif self.kind == "regression":
            numbers = self._numbers(col)
            finite = numbers[~np.isnan(numbers)]
            if len(finite) == 0:
                raise ValueError(f"target {self.name!r}: every training row is empty")
            if self.scale == "standard":
                self.mean = float(finite.mean())
                std = float(finite.std())
                self.std = std if std > 0 and math.isfinite(std) else 1.0
        return self

    def _check_columns(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise KeyError(f"target {self.name!r}: column(s) {missing} not in the table; it has "
                           f"{', '.join(map(str, df.columns[:12]))}{', ...' if len(df.columns) > 12 else ''}")

    def _numbers(self, col: pd.Series) -> np.ndarray:
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):  # no text to check
            numbers = col.to_numpy(dtype="float64", na_value=np.nan)
            if np.isinf(numbers).any():
                raise ValueError(f"target {self.name!r} (column {col.name!r}): {int(np.isinf(numbers).sum())} rows "
                                 "are infinite")
            return numbers
        text = col.astype(object).where(_present(col), np.nan)
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
        bad = ~np.isnan(numbers) | text.isna().to_numpy()
        if not bad.all():
            examples = ", ".join(repr(v) for v in pd.unique(text[~bad])[:3])
            raise ValueError(f"target {self.name!r} (column {col.name!r}): {int((~bad).sum())} rows are not "
                             f"numbers (e.g. {examples})")
        if np.isinf(numbers).any():
            raise ValueError(f"target {self.name!r} (column {col.name!r}): {int(np.isinf(numbers).sum())} rows "
                             "are infinite")
        return numbers

    # ------------------------------------------------------------------------------------------ encoding
    def encode(self, df: pd.DataFrame) -> torch.Tensor:
        """The training targets: class indices (-1 missing), 0/1 floats (NaN missing) or scaled values."""
        self._check_columns(df)
        if self.kind == "multilabel":
            parts = [TargetCodec(f"{self.name}.{c}", "binary", [c], [0, 1]).encode(df) for c in self.columns]
            return torch.stack(parts, dim=1)
        col = df[self.columns[0]]
        if self.kind == "regression":
            return torch.from_numpy(((self._numbers(col) - self.mean) / self.std).astype(np.float32))
        index = {self._key(v): i for i, v in enumerate(self.labels)}
        rows, uniques = pd.factorize(col, use_na_sentinel=True)  # each distinct value is looked up once
        present = _present(pd.Series(uniques, dtype=object)).to_numpy()
        lookup = np.array([index.get(self._key(_label(v)), -2) if p else -1 for v, p in zip(uniques, present)]
                          + [-1], dtype=np.int64)  # the last entry: an empty cell (factorize's code -1)
        codes = lookup[rows]
        unseen = codes == -2
        if unseen.any():
            examples = ", ".join(repr(v) for v in pd.unique(col[unseen])[:3])
            raise ValueError(f"target {self.name!r}: {int(unseen.sum())} rows hold labels that the training rows "
                             f"never had (e.g. {examples}); known: {', '.join(map(repr, self.labels[:10]))}")
        if self.kind == "multiclass":
            return torch.from_numpy(codes)
        return torch.from_numpy(np.where(codes < 0, np.nan, codes).astype(np.float32))

    @staticmethod
    def _key(v: Any) -> str:
        """Labels compare by value across dtypes: 1, 1.0 and "1" read from different files are one class."""
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        if isinstance(v, (int, float, np.number)) and float(v).is_integer():
            return str(int(v))
        return str(v).strip()

    def decode(self, predictions: torch.Tensor) -> pd.DataFrame:
        """Columns a user reads from the model's predictions (probabilities or scaled values): the value in
        original units (regression), the label and its probability columns (classification)."""
        p = predictions.detach().cpu().double().numpy()
        if self.kind == "regression":
            values = p * self.std + self.mean
            if values.ndim == 1:
                return pd.DataFrame({self.name: values})
            return pd.DataFrame({f"{self.name}_{k}": values[:, k] for k in range(values.shape[1])})
        if self.kind == "binary":
            labels = np.array(self.labels, dtype=object)
            return pd.DataFrame({self.name: labels[(p >= 0.5).astype(int)], f"{self.name}_p_{self.labels[1]}": p})
        if self.kind == "multiclass":
            labels = np.array(self.labels, dtype=object)
            out = {self.name: labels[p.argmax(-1)]}
            out.update({f"{self.name}_p_{lab}": p[:, k] for k, lab in enumerate(self.labels)})
            return pd.DataFrame(out)
        return pd.DataFrame({c: p[:, k] for k, c in enumerate(self.columns)})

    def task(self, **options: Any) -> Task:
        """The `Task` this target trains; a standardised regression target's task knows its scaling, so its
        metrics are reported in the target's own units."""
        n = len(self.labels) if self.kind == "multiclass" else len(self.columns) if self.kind == "multilabel" else 1
        if self.kind == "regression" and self.scale == "standard":
            options = {"target_mean": self.mean, "target_std": self.std, **options}
        return Task(self.name, self.kind, n, **options)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "columns": list(self.columns), "labels": list(self.labels),
                "scale": self.scale, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict) -> "TargetCodec":
        return cls(d["name"], d["kind"], list(d["columns"]), list(d.get("labels", [])), d.get("scale", "standard"),
                   float(d.get("mean", 0.0)), float(d.get("std", 1.0)))


def codecs_for(df: pd.DataFrame, targets: dict[str, Any]) -> tuple[list[TargetCodec], list[str]]:
    """One codec per declared target (`{column: kind}`, `{name: {kind, columns, scale}}`, or a kind of None to
    infer it), unfitted, and a line per inferred kind saying why (for the run log)."""
    codecs, notes = [], []
    for name, spec in targets.items():
        spec = {"kind": spec} if spec is None or isinstance(spec, str) else dict(spec)
        columns = list(spec.pop("columns", [name]))
        kind = spec.pop("kind", None)
        if kind is None:
            if name not in df.columns or len(columns) != 1:
                raise ValueError(f"target {name!r}: no column {name!r} to infer its kind from; declare kind and columns")
            kind, why = infer_kind(df[columns[0]])
            notes.append(f"target {name!r}: {kind} (inferred: {why})")
        codecs.append(TargetCodec(name, kind, columns, scale=spec.pop("scale", "standard")))
        if spec:
            raise ValueError(f"target {name!r}: unknown option(s) {sorted(spec)}; a target takes kind, columns, scale")
    return codecs, notes


def with_target_scaling(tasks: Sequence[Task], codecs: Sequence[TargetCodec]) -> list[Task]:
    """`tasks` with the regression scaling of their codecs filled in where the task lacks it: a run directory
    written before tasks.json recorded it still reports its metrics in original units."""
    by_name = {c.name: c for c in codecs}
    out = []
    for t in tasks:
        c = by_name.get(t.name)
        if t.target_std is None and c is not None and c.kind == "regression" and c.scale == "standard":
            t = dataclasses.replace(t, target_mean=c.mean, target_std=c.std)
        out.append(t)
    return out


def declared_columns(targets: Mapping[str, Any]) -> set[str]:
    """The columns a `targets:` mapping uses (a multilabel target names its 0/1 columns), before any codec."""
    return {c for name, spec in targets.items()
            for c in (spec.get("columns", [name]) if isinstance(spec, dict) else [name])}


def target_columns(codecs: Sequence[TargetCodec]) -> set[str]:
    return {c for codec in codecs for c in codec.columns}
