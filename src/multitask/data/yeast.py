"""Yeast (Elisseeff & Weston 2001; MULAN's version): 2,417 genes, 103 numeric features, 14 functional classes.

Each of the 14 labels is one binary task (``class1`` ... ``class14``), which shows the library with many tasks.
Read from the CSV that `river` ships (``river.datasets.Yeast``); nothing is downloaded. The file has no
official split, so test and validation rows are drawn at random with the seed.
"""
from __future__ import annotations

from pathlib import Path

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
    targets = {}
    for c in labels:
        col = df[c]
        if col.dtype == object:
            col = col.astype(str).str.lower().map({"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0})
        targets[c.lower()] = torch.tensor(col.astype("float32").to_numpy())
    full = MultiTaskData(pre.transform(df), targets)
    tasks = [Task(c.lower(), "binary") for c in labels]
    return DatasetBundle("yeast", tasks, full.subset(split["train"]), full.subset(split["val"]),
                         full.subset(split["test"]), pre,
                         info={"rows": {k: len(v) for k, v in split.items()}, "source": str(find_yeast(path))})
