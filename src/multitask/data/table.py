"""A user's own table (CSV, TSV or Parquet) as a dataset: declared or inferred targets, automatic features,
a random or column-given split.

    data:
      name: table
      path: penguins.csv
      targets: {species: multiclass, sex: binary, body_mass_g: regression, tags: {kind: multilabel, columns: [a, b]}}
      features: auto            # every other column; or a list
      categorical: [island]     # optional: which features are categorical (default: text/bool columns)
      split: {val_fraction: 0.1, test_fraction: 0.2, seed: 0}   # or {column: fold} with values train/val/test

Targets are fitted on the training rows only (`multitask.data.targets`); so are the feature statistics.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from multitask.data.dataset import DatasetBundle, MultiTaskData, split_indices
from multitask.data.preprocessing import TabularPreprocessor
from multitask.data.targets import TargetCodec, codecs_for, target_columns

SPLIT_VALUES = ("train", "val", "test")


def read_table(path: str | Path, columns: Sequence[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    """A .csv, .tsv or .parquet file as a DataFrame; a ValueError naming the file for anything unreadable."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    if p.is_dir():
        raise ValueError(f"{p} is a directory, not a table file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pd.read_parquet(p, columns=list(columns) if columns else None)
        except ImportError:
            raise ValueError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        except Exception as e:  # pyarrow's own errors for a damaged file
            raise ValueError(f"{p} cannot be read as Parquet ({' '.join(str(e).split())[:200]})") from None
        return df.head(limit) if limit else df
    if suffix not in (".csv", ".tsv", ".txt"):
        raise ValueError(f"{p}: unknown table format {suffix!r}; use .csv, .tsv or .parquet")
    sep = "\t" if suffix == ".tsv" else ","
    try:
        with open(p, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f, delimiter=sep), None)
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not UTF-8 text: is it a {suffix[1:].upper()} file?") from None
    if not header:
        raise ValueError(f"{p} is empty (expected a header row)")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise ValueError(f"{p}: duplicate column name(s) {duplicated}")
    try:
        df = pd.read_csv(p, sep=sep, usecols=list(columns) if columns else None, nrows=limit,
                         skipinitialspace=True)
    except ValueError as e:  # usecols naming a missing column, a malformed row
        raise ValueError(f"{p}: {' '.join(str(e).split())[:200]}") from None
    if len(df) == 0:
        raise ValueError(f"{p} has a header but no rows")
    return df


def _split(df: pd.DataFrame, split: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    column = split.get("column")
    if column is not None:
        if column not in df.columns:
            raise ValueError(f"{path}: split column {column!r} is not in the table")
        values = df[column].astype(str).str.strip().str.lower()
        bad = ~values.isin(SPLIT_VALUES)
        if bad.any():
            raise ValueError(f"{path}: split column {column!r} holds {int(bad.sum())} rows with values other than "
                             f"train/val/test (e.g. {values[bad].iloc[0]!r})")
        out = {k: torch.as_tensor((values == k).to_numpy().nonzero()[0]) for k in SPLIT_VALUES}
    else:
        val, test = float(split.get("val_fraction", 0.1)), float(split.get("test_fraction", 0.2))
        out = split_indices(len(df), {"train": 1.0 - val - test, "val": val, "test": test}, int(split.get("seed", 0)))
    for k in ("train", "val", "test"):
        if len(out[k]) == 0:
            raise ValueError(f"{path}: the split leaves no {k} rows ({len(df)} rows in all)")
    return out


def load_table(path: str | Path, targets: dict[str, Any], features: str | Sequence[str] = "auto",
               categorical: Sequence[str] | None = None, split: dict[str, Any] | None = None,
               limit: int | None = None) -> DatasetBundle:
    """The bundle of a user's table; `bundle.info["codecs"]` holds the fitted target codecs and
    `bundle.info["notes"]` what was inferred (kinds of targets, categorical features)."""
    path = Path(path)
    df = read_table(path, limit=limit)
    split = dict(split or {})
    codecs, notes = codecs_for(df, targets)
    used = target_columns(codecs) | ({split["column"]} if split.get("column") else set())
    if features == "auto":
        feature_cols = [c for c in df.columns if c not in used]
    else:
        feature_cols = list(features)
        missing = [c for c in feature_cols if c not in df.columns]
        clash = [c for c in feature_cols if c in used]
        if missing or clash:
            raise ValueError(f"{path}: features {missing} are not in the table" if missing
                             else f"{path}: features {clash} are also targets or the split column")
    if not feature_cols:
        raise ValueError(f"{path}: no feature columns are left besides the targets")
    if categorical is None:
        cat_cols = [c for c in feature_cols if not pd.api.types.is_numeric_dtype(df[c])
                    or pd.api.types.is_bool_dtype(df[c])]
        if cat_cols:
            notes.append(f"categorical features (text or boolean columns): {', '.join(cat_cols)}")
    else:
        unknown = [c for c in categorical if c not in feature_cols]
        if unknown:
            raise ValueError(f"{path}: categorical {unknown} are not feature columns")
        cat_cols = list(categorical)
    num_cols = [c for c in feature_cols if c not in cat_cols]
    parts = _split(df, split, path)
    fit_rows = df.iloc[parts["train"].numpy()]
    pre = TabularPreprocessor(num_cols, cat_cols).fit(fit_rows)
    for codec in codecs:
        codec.fit(fit_rows)
    inputs = pre.transform(df)
    y = {codec.name: codec.encode(df) for codec in codecs}
    full = MultiTaskData(inputs, y)
    tasks = [codec.task() for codec in codecs]
    return DatasetBundle(
        "table", tasks, full.subset(parts["train"]), full.subset(parts["val"]), full.subset(parts["test"]), pre,
        info={"rows": {k: len(v) for k, v in parts.items()}, "source": str(path), "codecs": codecs, "notes": notes},
    )


def planned_codecs(path: str | Path, targets: dict[str, Any]) -> list[TargetCodec]:
    """The target codecs fitted on every row of the target columns alone: the tasks a config trains, known
    before the data is loaded (the run refits them on the training rows)."""
    wanted = sorted({c for name, spec in targets.items()
                     for c in (spec.get("columns", [name]) if isinstance(spec, dict) else [name])})
    df = read_table(path, columns=wanted)
    codecs, _ = codecs_for(df, targets)
    return [c.fit(df) for c in codecs]
