"""Tabular preprocessing fitted on training rows only: standardised numeric columns (a missing value reads as
the training mean, optionally flagged by a 0/1 indicator column), indexed categoricals (an empty cell is a
category of its own, one never seen in training is "unknown", index 0).

It is saved as JSON in the run directory, so `predict` turns a new CSV into exactly the inputs the model saw.
Columns are processed one at a time into preallocated arrays (no float64 copy of the whole table), and
categoricals are coded through `pandas.factorize` rather than a Python loop over rows.
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
INDICATOR = "__missing"  # suffix of a numeric column's missing-value indicator
FAR_STDS = 3.0  # predict warns about values beyond the training min/max by more than this many training stds
BLOCK = 16384  # rows filled at a time by transform


def _rows(k: int) -> str:
    return f"{k} row is" if k == 1 else f"{k} rows are"


def categorical_codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """(codes, texts): each row's index into `texts`, the distinct values of the column as text (str(value),
    an empty cell as MISSING, which is `texts[-1]`, also the row code -1). Vectorised through pandas.factorize."""
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    return codes, [str(v) for v in uniques] + [MISSING]


def numeric_column(df: pd.DataFrame, c: str) -> np.ndarray:
    """Column `c` as floats (float32 if the frame holds it so, else float64; possibly a view of the frame), NaN where a cell is empty (also blank text or the text "nan"). Text that is not a
    number and infinite values are errors naming the column, the count of rows and some of the values."""
    raw = df[c]
    if pd.api.types.is_float_dtype(raw) and isinstance(raw.dtype, np.dtype):  # float32/64 as it is (no copy)
        values = raw.to_numpy()
    elif pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):  # no text to check
        values = raw.to_numpy(dtype="float64", na_value=np.nan)
    else:
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
class InputReport:
    """What `TabularPreprocessor.transform` saw in new rows: per column, how many rows held a category never
    seen in training, and how many held numbers far outside the training range (see `FAR_STDS`)."""

    unseen: dict[str, int] = field(default_factory=dict)
    far: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One warning line per kind of finding, naming the columns and the counts of rows; [] when all is well."""
        out = []
        if self.unseen:
            out.append("categories never seen in training (read as unknown): "
                       + ", ".join(f"{c}: {k} rows" for c, k in self.unseen.items()))
        if self.far:
            out.append(f"values far outside the training range (beyond its min/max by more than {FAR_STDS:g} "
                       "training std): " + ", ".join(f"{c}: {k} rows" for c, k in self.far.items()))
        return out


@dataclass
class TabularPreprocessor:
    numeric: list[str]
    categorical: list[str]
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    vocab: dict[str, list[str]] = field(default_factory=dict)
    missing_indicator: bool = False  # add a 0/1 column per numeric column that had missing training values
    indicators: list[str] = field(default_factory=list)  # the numeric columns that have one (set by fit)
    mins: dict[str, float] = field(default_factory=dict)  # training range, for predict's warning
    maxs: dict[str, float] = field(default_factory=dict)

    def fit(self, df: pd.DataFrame, rows: np.ndarray | None = None) -> "TabularPreprocessor":
        """Statistics of the training rows: `df` itself, or its rows at positions `rows` (no copy of the frame)."""
        self._check_columns(df)
        if (len(df) if rows is None else len(rows)) == 0:
            raise ValueError("TabularPreprocessor.fit got 0 rows: there is nothing to fit the feature statistics on")
        self.indicators = []
        for c in self.numeric:
            col = numeric_column(df, c)
            if rows is not None:
                col = col[rows]
            present = col[~np.isnan(col)]
            if present.size == 0:
                raise ValueError(f"feature column {c!r}: all {len(col)} training rows are empty, so there is no "
                                 "mean to fill missing values with; drop the column or give it values")
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported just below
                mean, std = float(present.mean(dtype=np.float64)), float(present.std(dtype=np.float64))
            if not (np.isfinite(mean) and np.isfinite(std)):
                raise ValueError(f"feature column {c!r}: values too large to standardise (mean {mean}, std {std})")
            self.means[c] = mean
            self.stds[c] = std if std > 0 else 1.0
            self.mins[c], self.maxs[c] = float(present.min()), float(present.max())
            if self.missing_indicator and present.size < col.size:
                self.indicators.append(c)
        for c in self.categorical:
            codes, texts = categorical_codes(df[c])
            if rows is not None:
                codes = codes[rows]
            self.vocab[c] = sorted({texts[k] for k in np.unique(codes)})  # code -1 (empty) is texts[-1]
        return self

    def _check_columns(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.numeric + self.categorical if c not in df.columns]
        if missing:
            raise KeyError(f"input is missing feature column(s) {missing}")

    def transform(self, df: pd.DataFrame, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """{"num": float32[N, n_numeric + n_indicators], "cat": int64[N, n_categorical]} for the rows of `df`
        (or its rows at positions `rows`, in that order); unseen categories map to index 0."""
        return self.transform_with_report(df, rows, report_far=False)[0]

    def transform_with_report(self, df: pd.DataFrame, rows: np.ndarray | None = None, report_far: bool = True
                              ) -> tuple[dict[str, torch.Tensor], InputReport]:
        """`transform`, and what it saw: the unseen categories and (with `report_far`) the far-out numbers of
        each column."""
        self._check_columns(df)
        n = len(df) if rows is None else len(rows)
        out: dict[str, torch.Tensor] = {}
        report = InputReport()
        if self.numeric:
            num = np.empty((n, self.num_features), dtype=np.float32)
            sources = [numeric_column(df, c) for c in self.numeric]  # checked first: an error before any work
            slots = {c: len(self.numeric) + k for k, c in enumerate(self.indicators)}
            for a in range(0, n, BLOCK):  # row blocks: each block of the output stays in cache while filled
                b = min(a + BLOCK, n)
                idx = rows[a:b] if rows is not None else slice(a, b)
                for j, (c, src) in enumerate(zip(self.numeric, sources)):
                    # float32 columns are standardised in float32 (the output's precision), others in float64
                    work = src.dtype if src.dtype == np.float32 else np.dtype(np.float64)
                    mean, std = work.type(self.means[c]), work.type(self.stds[c])
                    col = src[idx].astype(work, copy=isinstance(idx, slice))  # this block's own copy
                    if report_far and c in self.mins:
                        margin = FAR_STDS * self.stds[c]
                        k = int(np.count_nonzero((col < self.mins[c] - margin) | (col > self.maxs[c] + margin)))
                        if k:
                            report.far[c] = report.far.get(c, 0) + k
                    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below
                        col -= mean
                        col /= std
                    missing = np.isnan(col)
                    if c in slots:
                        num[a:b, slots[c]] = missing
                    np.copyto(col, 0, where=missing)  # a missing value reads as the training mean (0 once scaled)
                    num[a:b, j] = col
                finite = np.isfinite(num[a:b, :len(self.numeric)])
                if not finite.all():  # a value past float32's range after standardising
                    j = int(np.flatnonzero(~finite.all(axis=0))[0])
                    c = self.numeric[j]
                    full = (sources[j] if rows is None else sources[j][rows]).astype(np.float64)
                    with np.errstate(over="ignore", invalid="ignore"):
                        scaled = ((np.where(np.isnan(full), self.means[c], full) - self.means[c])
                                  / self.stds[c]).astype(np.float32)
                    k = int(np.count_nonzero(~np.isfinite(scaled)))
                    raise ValueError(f"feature column {c!r}: {_rows(k)} too large to represent after "
                                     f"standardising (mean {self.means[c]:g}, std {self.stds[c]:g})")
            out["num"] = torch.from_numpy(num)
        if self.categorical:
            cat = np.empty((n, len(self.categorical)), dtype=np.int64)
            for j, c in enumerate(self.categorical):
                index = {v: i + 1 for i, v in enumerate(self.vocab[c])}
                codes, texts = categorical_codes(df[c])
                lookup = np.array([index.get(t, UNKNOWN) for t in texts], dtype=np.int64)
                if rows is not None:
                    codes = codes[rows]
                cat[:, j] = lookup[codes]  # code -1 (an empty cell) picks lookup[-1], the MISSING category
                k = int(np.count_nonzero(cat[:, j] == UNKNOWN))
                if k:
                    report.unseen[c] = k
            out["cat"] = torch.from_numpy(cat)
        return out, report

    @property
    def num_features(self) -> int:
        """Width of the numeric input: the numeric columns, then one indicator per column in `indicators`."""
        return len(self.numeric) + len(self.indicators)

    @property
    def feature_names(self) -> list[str]:
        """Names of the numeric input's columns (indicators are `<column>__missing`), then the categoricals."""
        return self.numeric + [c + INDICATOR for c in self.indicators] + self.categorical

    @property
    def schema(self) -> InputSchema:
        return InputSchema(self.num_features, tuple(len(self.vocab[c]) + 1 for c in self.categorical),
                           tuple(self.feature_names))

    def to_dict(self) -> dict:
        return {"numeric": self.numeric, "categorical": self.categorical, "means": self.means,
                "stds": self.stds, "vocab": self.vocab, "missing_indicator": self.missing_indicator,
                "indicators": self.indicators, "mins": self.mins, "maxs": self.maxs}

    @classmethod
    def from_dict(cls, d: dict) -> "TabularPreprocessor":
        """Also reads files written before indicators and ranges were saved (neither is then used)."""
        return cls(list(d["numeric"]), list(d["categorical"]), dict(d["means"]), dict(d["stds"]),
                   {k: list(v) for k, v in d["vocab"].items()}, bool(d.get("missing_indicator", False)),
                   list(d.get("indicators", [])), dict(d.get("mins", {})), dict(d.get("maxs", {})))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> "TabularPreprocessor":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def columns(self) -> Sequence[str]:
        return self.numeric + self.categorical
