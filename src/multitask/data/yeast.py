"""Yeast (Elisseeff & Weston 2001; MULAN's version): 2,417 genes, 103 numeric features, 14 functional classes.

Each of the 14 labels is one binary task (``class1`` ... ``class14``), which shows the library with many tasks.
Read from the CSV that `river` ships (``river.datasets.Yeast``); nothing is downloaded. The file has no
official split, so test and validation rows are drawn at random with the seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multitask.data.dataset import DatasetBundle, MultiTaskData, split_indices
from multitask.data.preprocessing import TabularPreprocessor
from multitask.tasks import Task

N_LABELS = 14


def find_yeast(path: str | Path | None = None) -> Path:
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"yeast data not found at {p}")
        return p
    try:
        from river import datasets
    except ImportError:
        raise FileNotFoundError(
            "yeast data comes from the `river` package: install it with `pip install 'river>=0.26.1'` "
            "(or `pip install multitask[data]`)"
        ) from None
    return Path(datasets.Yeast().path)


_TEXT_LABELS = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}


def yeast_label(df: pd.DataFrame, c: str) -> torch.Tensor:
    """Label column `c` as float32 0/1, NaN (a missing label) for an empty cell. It may hold numbers or the text
    true/false/1/0; anything else (another number, inf, other text) is an error naming the column, the task,
    the count of rows and some of the values."""
    where = f"yeast column {c!r} (task {c.lower()!r})"
    col = df[c]
    if pd.api.types.is_numeric_dtype(col):
        values = col.astype("float64")
        k = int(np.isinf(values).sum())
        if k:
            raise ValueError(f"{where}: {k} {'row is' if k == 1 else 'rows are'} infinite (inf/-inf); a label "
                             "is 0 or 1, or an empty cell for a missing label")
        bad = values.notna() & ~values.isin([0.0, 1.0])
        shown = [f"{v:g}" for v in pd.unique(values[bad])[:3]]
    else:
        text = col.astype(object).where(col.notna(), "").map(str).str.strip().str.lower()
        values = text.map(_TEXT_LABELS)  # NaN for an empty cell, and for text that is not a label
        bad = values.isna() & (text != "")
        shown = [repr(str(v)) for v in pd.unique(col[bad])[:3]]
    if bad.any():
        k, examples = int(bad.sum()), ", ".join(shown)
        raise ValueError(f"{where}: {k} {'row has' if k == 1 else 'rows have'} labels other than 0/1 "
                         f"(e.g. {examples}); a label is 0/1 or true/false, or an empty cell for a missing label")
    return torch.tensor(values.astype("float32").to_numpy())


def load_yeast(path: str | Path | None = None, val_fraction: float = 0.1, test_fraction: float = 0.3,
               seed: int = 0, limit: int | None = None) -> DatasetBundle:
    df = pd.read_csv(find_yeast(path), nrows=limit)
    features = [c for c in df.columns if c.startswith("Att")]
    labels = [f"Class{i}" for i in range(1, N_LABELS + 1)]
    missing = [c for c in labels if c not in df.columns]
    if len(features) != 103 or missing:
        raise ValueError(f"unexpected yeast columns: {len(features)} features, missing labels {missing}")
    split = split_indices(len(df), {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction,
                                    "test": test_fraction}, seed)
    pre = TabularPreprocessor(features, []).fit(df.iloc[split["train"].numpy()])
    targets = {c.lower(): yeast_label(df, c) for c in labels}
    full = MultiTaskData(pre.transform(df), targets)
    tasks = [Task(c.lower(), "binary") for c in labels]
    return DatasetBundle("yeast", tasks, full.subset(split["train"]), full.subset(split["val"]),
                         full.subset(split["test"]), pre,
                         info={"rows": {k: len(v) for k, v in split.items()}, "source": str(find_yeast(path))})
