"""Tasks from different datasets: several user tables ("sources") with the same feature columns, each
labelling only its own tasks.

    data:
      name: sources
      sources:
        action:  {name: table, path: action.csv,  targets: {action: multiclass}}
        caption: {name: table, path: caption.csv, targets: {topic: multiclass, length: regression}}
      sampling: proportional      # uniform | proportional | temperature (with temperature: τ) | round_robin | mixed
      split: {val_fraction: 0.1, test_fraction: 0.2, seed: 0}   # the default of every source without its own

Each source is read, its targets are coded and it is split as a table is (`multitask.data.table`). The
splits are then stacked, source after source: a row has labels for its own source's tasks and missing ones
(NaN / -1, masked) for every other task. One `TabularPreprocessor` is fitted on all sources' training rows,
so `predict` takes any row of those feature columns. How training steps draw from the sources is the job of
`multitask.data.sampling.SourceBatches`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from multitask.data.dataset import DatasetBundle, MultiTaskData
from multitask.data.preprocessing import TabularPreprocessor
from multitask.data.sampling import SourceBatches, make_rule
from multitask.data.table import categorical_features, planned_codecs, read_header, read_table, split_rows
from multitask.data.targets import TargetCodec, codecs_for, declared_columns
from multitask.errors import message

SPLITS = ("train", "val", "test")


def header(path: str | Path) -> list[str]:
    """The column names of a table file as the loader reads them (a byte-order mark and the blanks after a
    delimiter dropped, as pandas drops them), reading no rows."""
    return [c.lstrip("\ufeff").lstrip(" ") for c in read_header(path)]


def feature_columns(path: str | Path, spec: Mapping[str, Any], columns: Sequence[str] | None = None,
                    split: Mapping[str, Any] | None = None) -> list[str]:
    """The feature columns of one source: its `features` list, or (auto) every column that is not a target
    or the split column."""
    columns = header(path) if columns is None else list(columns)
    features = spec.get("features", "auto") or "auto"
    if features != "auto":
        missing = [c for c in features if c not in columns]
        if missing:
            raise ValueError(f"{path}: features {missing} are not in the table")
        return list(features)
    split = spec.get("split") or split or {}
    used = declared_columns(spec.get("targets") or {}) | ({split["column"]} if split.get("column") else set())
    return [c for c in columns if c not in used]


def check_sources(sources: Mapping[str, Mapping[str, Any]], split: Mapping[str, Any] | None = None) -> None:
    """Task names unique across sources and the same feature columns in every source; a one-line ValueError
    naming the sources, their files and the columns otherwise. Reads only the files' headers."""
    owner: dict[str, str] = {}
    for name, spec in sources.items():
        for t in spec.get("targets") or {}:
            if t in owner:
                raise ValueError(f"task {t!r} is in both sources {owner[t]!r} and {name!r}; task names must be "
                                 "unique across sources (rename the column in one file)")
            owner[t] = name
    first, first_cols = None, None
    for name, spec in sources.items():
        columns = header(spec["path"])
        absent = sorted(declared_columns(spec.get("targets") or {}) - set(columns))
        if absent:
            raise ValueError(f"source {name!r}: target column(s) {absent} are not in {spec['path']} (it has "
                             f"{', '.join(columns)})")
        cols = feature_columns(spec["path"], spec, columns, split)
        if first_cols is None:
            first, first_cols = name, cols
            continue
        if set(cols) != set(first_cols):
            only_a = [c for c in first_cols if c not in cols]
            only_b = [c for c in cols if c not in first_cols]
            raise ValueError(
                f"sources {first!r} ({sources[first]['path']}) and {name!r} ({spec['path']}) have different feature "
                f"columns: only in {Path(sources[first]['path']).name}: {only_a or 'none'}; only in "
                f"{Path(spec['path']).name}: {only_b or 'none'} (sources must share their input columns)")


def planned_source_codecs(sources: Mapping[str, Mapping[str, Any]]) -> list[TargetCodec]:
    """Every source's target codecs (fitted on the target columns alone), source after source: the tasks a
    config trains, known before the data is loaded. A ValueError names the source."""
    out: list[TargetCodec] = []
    for name, spec in sources.items():
        try:
            out += planned_codecs(spec["path"], spec["targets"])
        except (ValueError, KeyError, TypeError) as e:
            reason = message(e)
            raise ValueError(f"source {name!r}: {reason}") from None
    return out


def _missing_like(y: torch.Tensor, n: int) -> torch.Tensor:
    """`n` missing labels shaped and typed like `y`: NaN for float targets, -1 for class indices."""
    fill = float("nan") if y.is_floating_point() else -1
    return torch.full((n, *y.shape[1:]), fill, dtype=y.dtype)


def load_sources(sources: Mapping[str, Mapping[str, Any]], split: Mapping[str, Any] | None = None,
                 limit: int | None = None, tasks: Sequence[str] | None = None, sampling: str = "proportional",
                 temperature: float | None = None) -> DatasetBundle:
    """The bundle of several tables whose rows are stacked source after source in every split.

    `sources`: {name: {path, targets, features?, categorical?, split?, limit?}} (as for a table); `split` and
    `limit` are the defaults of the sources that do not set their own; `tasks` keeps only those tasks (a
    source left without tasks is dropped); `sampling` / `temperature` pick the rule of the training batches
    (`bundle.training_data()` is the `SourceBatches` plan). `bundle.info` holds the codecs of every task, the
    rows per source and split, and notes of what was inferred."""
    make_rule(sampling, temperature)  # an unknown rule or a bad temperature fails before any file is read
    if not sources:
        raise ValueError("no sources: name at least one table")
    check_sources(sources, split)
    frames, parts, codecs_of, notes = {}, {}, {}, []
    for name, spec in sources.items():
        path = Path(spec["path"])
        df = read_table(path, limit=spec.get("limit") or limit)
        try:
            codecs, found = codecs_for(df, dict(spec["targets"]))
        except (ValueError, KeyError) as e:
            raise ValueError(f"source {name!r} ({path}): {message(e)}") from None
        notes += [f"{name}: {n}" for n in found]
        if tasks is not None:
            codecs = [c for c in codecs if c.name in tasks]
            if not codecs:
                continue  # no task of this source is trained: its rows would teach nothing
        parts[name] = split_rows(df, dict(spec.get("split") or split or {}), path)
        try:
            for codec in codecs:
                codec.fit(df.iloc[parts[name]["train"].numpy()])
        except (ValueError, KeyError) as e:
            raise ValueError(f"source {name!r} ({path}): {message(e)}") from None
        frames[name], codecs_of[name] = df, codecs
    if not frames:
        raise ValueError(f"none of the sources has any of the tasks {list(tasks or [])}")
    names = list(frames)
    first = names[0]
    features = feature_columns(sources[first]["path"], sources[first], frames[first].columns, split)
    declared = [c for n in names for c in (sources[n].get("categorical") or [])]
    union = pd.concat([frames[n][features] for n in names], ignore_index=True)
    if declared:
        unknown = [c for c in declared if c not in features]
        if unknown:
            raise ValueError(f"categorical {sorted(set(unknown))} are not feature columns")
        cat_cols = [c for c in features if c in declared]
    else:
        cat_cols = categorical_features(union, features)
        if cat_cols:
            notes.append(f"categorical features (text or boolean columns): {', '.join(cat_cols)}")
    num_cols = [c for c in features if c not in cat_cols]

    def rows(name: str, k: str) -> pd.DataFrame:
        return frames[name].iloc[parts[name][k].numpy()]

    pre = TabularPreprocessor(num_cols, cat_cols).fit(pd.concat([rows(n, "train")[features] for n in names],
                                                                ignore_index=True))
    data = {}
    for k in SPLITS:
        blocks = [rows(n, k) for n in names]
        inputs = pre.transform(pd.concat([b[features] for b in blocks], ignore_index=True))
        targets = {}
        for n, block in zip(names, blocks):
            for codec in codecs_of[n]:
                try:  # e.g. a label in val/test that the training rows never had
                    own = codec.encode(block)
                except (ValueError, KeyError) as e:
                    raise ValueError(f"source {n!r} ({sources[n]['path']}): {message(e)}") from None
                targets[codec.name] = torch.cat([own if m == n else _missing_like(own, len(b))
                                                 for m, b in zip(names, blocks)])
        data[k] = MultiTaskData(inputs, targets)
    codecs = [c for n in names for c in codecs_of[n]]
    sizes = {n: len(parts[n]["train"]) for n in names}
    bundle = DatasetBundle(
        "sources", [c.task() for c in codecs], data["train"], data["val"], data["test"], pre,
        info={"codecs": codecs, "notes": notes, "sampling": sampling,
              "rows": {n: {k: len(parts[n][k]) for k in SPLITS} for n in names},
              "sources": {n: str(sources[n]["path"]) for n in names}},
    )
    bundle.plan = lambda train: SourceBatches(train, sizes, sampling, temperature)
    return bundle


__all__ = ["load_sources", "check_sources", "planned_source_codecs", "feature_columns", "header"]
