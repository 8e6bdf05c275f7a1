"""Tabular preprocessing fitted on training rows only: standardised numeric columns, indexed categoricals.

It is saved as JSON in the run directory, so `predict` turns a new CSV into exactly the inputs the model saw.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from multitask.models.layers import InputSchema

UNKNOWN = 0  # index of categories never seen in training
MISSING = "<missing>"  # an empty categorical cell is a category of its own


def _as_text(col: pd.Series) -> pd.Series:
    return col.astype(object).where(col.notna(), MISSING).map(str)


def _rows(k: int) -> str:
    return f"{k} row is" if k == 1 else f"{k} rows are"


def numeric_column(df: pd.DataFrame, c: str) -> np.ndarray:
    """Column `c` as float64, NaN where a cell is empty (also blank text or the text "nan"). Text that is not a
    number and infinite values are errors naming the column, the count of rows and some of the values."""
    raw = df[c]
    col = pd.to_numeric(raw, errors="coerce")
    bad = col.isna() & raw.notna()
    if bad.any():  # empty-looking text is a missing value; anything else unparsable is an error
        text = raw[bad].map(str).str.strip()
        bad[bad] = ~text.str.lower().isin(["", "nan"]).to_numpy()
    if bad.any():
        k, examples = int(bad.sum()), ", ".join(repr(v) for v in pd.unique(raw[bad].map(str))[:3])
        raise ValueError(f"feature column {c!r} must be numeric: {k} {'row holds' if k == 1 else 'rows hold'} "
                         f"text that is not a number (e.g. {examples}); leave a cell empty for a missing value")
    values = col.astype("float64").to_numpy()
    k = int(np.isinf(values).sum())
    if k:
        raise ValueError(f"feature column {c!r}: {_rows(k)} infinite (inf/-inf); replace them, or leave the cells "
                         "empty for a missing value (it is filled with the training mean)")
    return values


@dataclass
class TabularPreprocessor:
    numeric: list[str]
    categorical: list[str]
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    vocab: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, df: pd.DataFrame) -> "TabularPreprocessor":
        self._check_columns(df)
        if len(df) == 0:
            raise ValueError("TabularPreprocessor.fit got 0 rows: there is nothing to fit the feature statistics on")
        for c in self.numeric:
            col = numeric_column(df, c)
            present = col[~np.isnan(col)]
            if present.size == 0:
                raise ValueError(f"feature column {c!r}: all {len(col)} training rows are empty, so there is no "
                                 "mean to fill missing values with; drop the column or give it values")
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported just below
                mean, std = float(present.mean()), float(present.std())
            if not (np.isfinite(mean) and np.isfinite(std)):
                raise ValueError(f"feature column {c!r}: values too large to standardise (mean {mean}, std {std})")
            self.means[c] = mean
            self.stds[c] = std if std > 0 else 1.0
        for c in self.categorical:
            self.vocab[c] = sorted(_as_text(df[c]).unique().tolist())
        return self

    def _check_columns(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.numeric + self.categorical if c not in df.columns]
        if missing:
            raise KeyError(f"input is missing feature column(s) {missing}")

    def transform(self, df: pd.DataFrame) -> dict[str, torch.Tensor]:
        """{"num": float32[N, n_numeric], "cat": int64[N, n_categorical]}; unseen categories map to index 0."""
        self._check_columns(df)
        out: dict[str, torch.Tensor] = {}
        if self.numeric:
            cols = []
            for c in self.numeric:
                col = numeric_column(df, c)
                col = np.where(np.isnan(col), self.means[c], col)  # a missing value reads as the mean
                with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported just below
                    col = ((col - self.means[c]) / self.stds[c]).astype("float32")
                k = int((~np.isfinite(col)).sum())  # a value past float32's range after standardising
                if k:
                    raise ValueError(f"feature column {c!r}: {_rows(k)} too large to represent after "
                                     f"standardising (mean {self.means[c]:g}, std {self.stds[c]:g})")
                cols.append(col)
            out["num"] = torch.from_numpy(np.stack(cols, axis=1))
        if self.categorical:
            cols = []
            for c in self.categorical:
                index = {v: i + 1 for i, v in enumerate(self.vocab[c])}
                cols.append(_as_text(df[c]).map(index).fillna(UNKNOWN).astype("int64").to_numpy())
            out["cat"] = torch.tensor(np.stack(cols, axis=1), dtype=torch.int64)
        return out

    @property
    def schema(self) -> InputSchema:
        return InputSchema(len(self.numeric), tuple(len(self.vocab[c]) + 1 for c in self.categorical))

    def to_dict(self) -> dict:
        return {"numeric": self.numeric, "categorical": self.categorical, "means": self.means,
                "stds": self.stds, "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict) -> "TabularPreprocessor":
        return cls(list(d["numeric"]), list(d["categorical"]), dict(d["means"]), dict(d["stds"]),
                   {k: list(v) for k, v in d["vocab"].items()})

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> "TabularPreprocessor":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def columns(self) -> Sequence[str]:
        return self.numeric + self.categorical
