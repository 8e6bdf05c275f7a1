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
from typing import Any, Collection, Sequence

import numpy as np
import pandas as pd
import torch

from multitask.data.dataset import DatasetBundle, MultiTaskData, split_indices
from multitask.data.preprocessing import TabularPreprocessor
from multitask.errors import message
from multitask.data.targets import TargetCodec, codecs_for, declared_columns, target_columns

SPLIT_VALUES = ("train", "val", "test")
SNIFF = 1 << 20  # bytes of a CSV's first rows whose column types pyarrow's whole read is given


# pandas.read_csv's default missing-value markers: the fast reader is given the same list
NULL_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
               "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def _arrow_pool():  # noqa: ANN202  (a pyarrow MemoryPool)
    """jemalloc told to hand freed memory back at once (the reader's buffers would otherwise stay in the
    process's resident memory); the default pool where jemalloc is not built in."""
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
        return pool
    except (NotImplementedError, AttributeError, OSError):
        return pa.default_memory_pool()


def _to_pandas(table: Any, keep_float64: Collection[str], pool: Any) -> pd.DataFrame:
    """An arrow table as the DataFrame pandas' own reader would give, float columns not in `keep_float64` as
    float32 (cast one column at a time), the table's memory freed as it is converted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, f in enumerate(table.schema):
        if pa.types.is_floating(f.type) and f.type != pa.float32() and f.name not in keep_float64:
            table = table.set_column(i, f.name, pc.cast(table.column(i), pa.float32(), memory_pool=pool))
    return table.to_pandas(split_blocks=True, self_destruct=True, memory_pool=pool)


def _arrow_csv(p: Path, sep: str, columns: Sequence[str] | None,
               keep_float64: Collection[str]) -> pd.DataFrame | None:
    """The table read by pyarrow's multithreaded CSV reader, as the DataFrame `pandas.read_csv` would give
    (except that float columns not in `keep_float64` are float32, half the memory), or None, and pandas reads
    it, when pyarrow is missing, fails, or meets what the two readers treat differently: dates and times, text
    with leading blanks (pandas is told to skip them). The whole file is read with the column types of its
    first rows, so no column is read twice and float features never pass through float64 (a later row that
    does not fit them is a failure: pandas reads the file); a column empty in the first rows is left to
    pyarrow's inference."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv
    except ImportError:
        return None
    pool = _arrow_pool()
    parse = pacsv.ParseOptions(delimiter=sep)
    convert = dict(include_columns=columns, null_values=NULL_VALUES, strings_can_be_null=True,
                   quoted_strings_can_be_null=True, timestamp_parsers=[])
    try:
        with pacsv.open_csv(p, read_options=pacsv.ReadOptions(block_size=SNIFF), parse_options=parse,
                            convert_options=pacsv.ConvertOptions(**convert), memory_pool=pool) as first:
            sniffed = first.schema  # the types of the first rows
        types = {f.name: (pa.float32() if pa.types.is_floating(f.type) and f.name not in keep_float64 else f.type)
                 for f in sniffed}
        if any(pa.types.is_null(t) for t in types.values()):  # empty in the first rows: only floats are fixed
            types = {k: t for k, t in types.items() if t == pa.float32()}
        table = pacsv.read_csv(p, parse_options=parse, convert_options=pacsv.ConvertOptions(column_types=types,
                               **convert), memory_pool=pool)
    except (pa.ArrowException, OSError, ValueError):  # a malformed row, text in a float column...: pandas says
        return None
    for i, f in enumerate(table.schema):
        t = f.type
        if pa.types.is_null(t):  # an all-empty column: pandas reads float NaN
            table = table.set_column(i, f.name, pa.nulls(len(table), pa.float64()))
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            col = table.column(i)
            if pc.any(pc.starts_with(col, " ")).as_py() or pc.any(pc.starts_with(col, "\t")).as_py():
                return None
        elif not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            return None
    return _to_pandas(table, keep_float64, pool)


def _arrow_parquet(p: Path, columns: Sequence[str] | None, keep_float64: Collection[str]) -> pd.DataFrame:
    """A Parquet file read one column at a time (pyarrow's whole-table read holds every column as float64 at
    once), float columns not in `keep_float64` cast to float32 as they come; the pandas index columns, if the
    file stores any, are left out as `pandas.read_parquet` leaves them out of the columns."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pool = _arrow_pool()
    f = pq.ParquetFile(p)
    index = {c for c in (f.schema_arrow.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    names = list(columns) if columns else [n for n in f.schema_arrow.names if n not in index]
    missing = [c for c in names if c not in f.schema_arrow.names]
    if missing:
        raise ValueError(f"columns {missing} are not in the file")
    read = []
    for name in names:
        col = f.read(columns=[name]).column(0)
        if pa.types.is_floating(col.type) and col.type != pa.float32() and name not in keep_float64:
            col = pc.cast(col, pa.float32(), memory_pool=pool)
        read.append(col)
    return pa.table(read, names=names).to_pandas(split_blocks=True, self_destruct=True, memory_pool=pool)


def read_header(path: str | Path) -> list[str]:
    """The column names of a table file as `read_table` gives them, reading no rows (a CSV's first line, a
    Parquet file's schema); a ValueError naming the file when it is not UTF-8, empty or has duplicate names."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            schema = pq.read_schema(p)
            index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
            return [n for n in schema.names if n not in index]
        except ImportError:
            raise ValueError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        except Exception as e:  # pyarrow's own errors for a damaged file
            raise ValueError(f"{p} cannot be read as Parquet ({' '.join(str(e).split())[:200]})") from None
    if suffix not in (".csv", ".tsv", ".txt"):
        raise ValueError(f"{p}: unknown table format {suffix!r}; use .csv, .tsv or .parquet")
    try:
        with open(p, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), None)
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not UTF-8 text: is it a {suffix[1:].upper()} file?") from None
    if not header:
        raise ValueError(f"{p} is empty (expected a header row)")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise ValueError(f"{p}: duplicate column name(s) {duplicated}")
    return header


def read_table(path: str | Path, columns: Sequence[str] | None = None, limit: int | None = None,
               keep_float64: Collection[str] | None = None) -> pd.DataFrame:
    """A .csv, .tsv or .parquet file as a DataFrame; a ValueError naming the file for anything unreadable.

    With pyarrow installed a whole CSV is read by its multithreaded reader (same columns and dtypes as
    `pandas.read_csv`, except that with `keep_float64` given, float columns not named there are read as
    float32); otherwise, and for anything the two readers would read differently, by pandas."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    if p.is_dir():
        raise ValueError(f"{p} is a directory, not a table file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            if keep_float64 is None:
                df = pd.read_parquet(p, columns=list(columns) if columns else None)
            else:
                df = _arrow_parquet(p, columns, keep_float64)
        except ImportError:
            raise ValueError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        except Exception as e:  # pyarrow's own errors for a damaged file
            raise ValueError(f"{p} cannot be read as Parquet ({' '.join(str(e).split())[:200]})") from None
        return df.head(limit) if limit else df
    header = read_header(p)
    sep = "\t" if suffix == ".tsv" else ","
    df = None
    if (limit is None and all(c == c.strip() for c in header) and not header[0].startswith("\ufeff")
            and (not columns or set(columns) <= set(header))):
        df = _arrow_csv(p, sep, [c for c in header if c in columns] if columns else None,
                        set(header) if keep_float64 is None else set(keep_float64))
    if df is None:
        try:
            df = pd.read_csv(p, sep=sep, usecols=list(columns) if columns else None, nrows=limit,
                             skipinitialspace=True)
        except ValueError as e:  # usecols naming a missing column, a malformed row
            raise ValueError(f"{p}: {' '.join(str(e).split())[:200]}") from None
    if len(df) == 0:
        raise ValueError(f"{p} has a header but no rows")
    return df


SPLIT_OPTIONS = ("val_fraction", "test_fraction", "seed", "column")


def split_rows(df: pd.DataFrame, split: dict[str, Any], path: Path | str) -> dict[str, torch.Tensor]:
    """Row indices of train/val/test: random fractions (`val_fraction`, `test_fraction`, `seed`) or a
    `column` holding train/val/test; a ValueError naming `path` for an unknown option or a bad value."""
    unknown = sorted(set(split) - set(SPLIT_OPTIONS))
    if unknown:
        raise ValueError(f"{path}: split: unknown option(s) {unknown}; it takes {', '.join(SPLIT_OPTIONS)}")
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
        if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
            raise ValueError(f"{path}: split: val_fraction {val:g} and test_fraction {test:g} must each be in (0, 1) "
                             "and add up to less than 1 (the rest is for training)")
        out = split_indices(len(df), {"train": 1.0 - val - test, "val": val, "test": test}, int(split.get("seed", 0)))
    for k in ("train", "val", "test"):
        if len(out[k]) == 0:
            raise ValueError(f"{path}: the split leaves no {k} rows ({len(df)} rows in all)")
    return out


def load_table(path: str | Path, targets: dict[str, Any], features: str | Sequence[str] = "auto",
               categorical: Sequence[str] | None = None, split: dict[str, Any] | None = None,
               limit: int | None = None, missing_indicator: bool = False) -> DatasetBundle:
    """The bundle of a user's table; `bundle.info["codecs"]` holds the fitted target codecs and
    `bundle.info["notes"]` what was inferred (kinds of targets, categorical features)."""
    path = Path(path)
    wide = (declared_columns(targets or {}) | {(split or {}).get("column")}
            | set(categorical or ()))  # categories are compared as text: read them exactly
    df = read_table(path, limit=limit, keep_float64=wide)  # features may be read as float32 (targets not)
    lossy = float32_lossy(df)
    if lossy:  # e.g. timestamps in seconds: float32 cannot tell the values apart, so read them exactly
        exact = read_table(path, columns=lossy, limit=limit, keep_float64=set(lossy))
        for c in lossy:
            df[c] = exact[c]
    return bundle_from_frame(df, targets, features, categorical, split, missing_indicator, source=str(path))


def float32_lossy(df: pd.DataFrame, resolution: float = 1e-3, sample: int = 10_000) -> list[str]:
    """The float32 columns whose spacing of representable values near their largest magnitude exceeds
    `resolution` x their standard deviation (both estimated on up to `sample` evenly spaced rows): read as
    float32 they would lose most of what tells rows apart."""
    out = []
    step = max(1, len(df) // sample)
    for c in df.columns:
        if df[c].dtype != np.float32:
            continue
        a = df[c].to_numpy()[::step]
        if not np.isnan(a).all():
            big, std = float(np.nanmax(np.abs(a))), float(np.nanstd(a, dtype=np.float64))
            if big * 2.0 ** -23 > resolution * std:
                out.append(c)
    return out


def looks_numeric(col: pd.Series, sample: int = 1000, share: float = 0.9) -> bool:
    """True when at least `share` of (up to `sample` of) the non-empty cells of a text column are numbers: a
    numeric column with a few typos, which must be an error naming them, not a categorical feature."""
    present = col.dropna().head(sample)
    present = present[present.astype(str).str.strip() != ""]
    return len(present) > 0 and float(pd.to_numeric(present, errors="coerce").notna().mean()) >= share


def categorical_features(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The features read as categorical when none are declared: text and boolean columns, except text columns
    that are mostly numbers (`looks_numeric`; their text cells are then reported as an error)."""
    return [c for c in columns if pd.api.types.is_bool_dtype(df[c])
            or (not pd.api.types.is_numeric_dtype(df[c]) and not looks_numeric(df[c]))]


def bundle_from_frame(df: pd.DataFrame, targets: dict[str, Any], features: str | Sequence[str] = "auto",
                      categorical: Sequence[str] | None = None, split: dict[str, Any] | None = None,
                      missing_indicator: bool = False, source: str = "the DataFrame") -> DatasetBundle:
    """A DataFrame as a bundle ready to train on: targets coded and features preprocessed, both fitted on the
    training rows only, the splits written straight into their final arrays (train rows first, then val, then
    test, so each split is a view, not a copy). `source` names the table in the errors. Shared by
    `load_table` and `MultiTaskData.from_frame`."""
    path = source
    split = dict(split or {})
    if not isinstance(targets, dict) or not targets:
        raise ValueError(f"{path}: name the target columns, e.g. targets={{'species': 'multiclass'}}")
    if len(df) == 0:
        raise ValueError(f"{path} has no rows")
    odd = [c for c in df.columns if not isinstance(c, str)]
    if odd:
        raise ValueError(f"{path}: column names must be text, got {odd[:5]} (df.columns = df.columns.astype(str))")
    duplicated = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if duplicated:
        raise ValueError(f"{path}: duplicate column name(s) {duplicated}")
    try:
        codecs, notes = codecs_for(df, targets)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: {message(e)}") from None
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
        cat_cols = categorical_features(df, feature_cols)
        if cat_cols:
            notes.append(f"categorical features (text or boolean columns): {', '.join(cat_cols)}")
    else:
        unknown = [c for c in categorical if c not in feature_cols]
        if unknown:
            raise ValueError(f"{path}: categorical {unknown} are not feature columns")
        cat_cols = list(categorical)
    num_cols = [c for c in feature_cols if c not in cat_cols]
    parts = split_rows(df, split, path)
    train_rows = parts["train"].numpy()
    order = np.concatenate([parts[k].numpy() for k in SPLIT_VALUES])  # the rows of train, then val, then test
    bounds = np.cumsum([0] + [len(parts[k]) for k in SPLIT_VALUES])
    try:
        for codec in codecs:
            codec.fit(df[codec.columns].iloc[train_rows])
        y = {codec.name: codec.encode(df)[torch.from_numpy(order)] for codec in codecs}
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: {message(e)}") from None
    pre = TabularPreprocessor(num_cols, cat_cols, missing_indicator=missing_indicator).fit(df, rows=train_rows)
    if pre.indicators:
        notes.append(f"missing-value indicators: {', '.join(pre.indicators)}")
    inputs = pre.transform(df, rows=order)
    splits = [MultiTaskData.prechecked({k: v[a:b] for k, v in inputs.items()}, {t: v[a:b] for t, v in y.items()})
              for a, b in zip(bounds[:-1], bounds[1:])]
    tasks = [codec.task() for codec in codecs]
    return DatasetBundle(
        "table", tasks, *splits, pre,
        info={"rows": {k: len(v) for k, v in parts.items()}, "source": str(path), "codecs": codecs, "notes": notes},
    )


def planned_codecs(path: str | Path, targets: dict[str, Any]) -> list[TargetCodec]:
    """The target codecs fitted on every row of the target columns alone: the tasks a config trains, known
    before the data is loaded (the run refits them on the training rows)."""
    wanted = sorted(declared_columns(targets))
    header = read_header(path)
    absent = [c for c in wanted if c not in header]
    if absent:
        raise ValueError(f"{path}: target column(s) {absent} not in the table; it has "
                         f"{', '.join(header[:12])}{', ...' if len(header) > 12 else ''}")
    df = read_table(path, columns=wanted)
    codecs, _ = codecs_for(df, targets)
    return [c.fit(df) for c in codecs]

