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


@dataclass
class TabularPreprocessor:
    numeric: list[str]
    categorical: list[str]
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    vocab: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, df: pd.DataFrame) -> "TabularPreprocessor":
        self._check_columns(df)
        for c in self.numeric:
            col = pd.to_numeric(df[c], errors="raise").astype("float64")
            self.means[c] = float(col.mean())
            std = float(col.std(ddof=0))
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
                try:
                    col = pd.to_numeric(df[c], errors="raise").astype("float64").to_numpy()
                except (ValueError, TypeError) as e:
                    raise ValueError(f"feature column {c!r} must be numeric: {e}") from None
                col = np.where(np.isnan(col), self.means[c], col)  # a missing value reads as the mean
                cols.append((col - self.means[c]) / self.stds[c])
            out["num"] = torch.tensor(np.stack(cols, axis=1), dtype=torch.float32)
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
