"""census-income (UCI KDD 1994-95; the data of the MMoE paper): two binary tasks.

- ``income``: total person income > $50k (the dataset's label);
- ``marital``: marital status is "Never married" (the MMoE paper's second task), so that column is not a feature.
Features: the 7 continuous columns standardised (train statistics) and the other 32 columns as categorical
embeddings; the sampling weight column ``instance_weight`` is dropped. Train 199,523 rows (a random
`val_fraction` of which is held out for validation), test 99,762 rows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multitask.data.dataset import DatasetBundle, MultiTaskData, split_indices
from multitask.data.paths import CENSUS_FILES, find_census_income
from multitask.data.preprocessing import TabularPreprocessor
from multitask.tasks import Task

# The 42 columns of census-income.data, in file order (names follow census-income.names).
COLUMNS = [
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
    "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code",
    "major_occupation_code", "race", "hispanic_origin", "sex", "member_of_a_labor_union",
    "reason_for_unemployment", "full_or_part_time_employment_stat", "capital_gains", "capital_losses",
    "dividends_from_stocks", "tax_filer_stat", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income",
]
NUMERIC = ["age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
           "num_persons_worked_for_employer", "weeks_worked_in_year"]
DROPPED = ["instance_weight", "income", "marital_stat"]
CATEGORICAL = [c for c in COLUMNS if c not in NUMERIC and c not in DROPPED]
FEATURES = NUMERIC + CATEGORICAL


def read_census_csv(path: Path, limit: int | None = None) -> pd.DataFrame:
    """One raw census-income CSV (no header) as a DataFrame with named columns."""
    df = pd.read_csv(path, header=None, names=COLUMNS, skipinitialspace=True, nrows=limit,
                     dtype={c: str for c in CATEGORICAL + ["income", "marital_stat"]})
    if df.shape[1] != len(COLUMNS):
        raise ValueError(f"{path}: expected {len(COLUMNS)} columns, found {df.shape[1]}")
    return df


MARITAL_STATUSES = ("Never married", "Married-civilian spouse present", "Divorced", "Widowed", "Separated",
                    "Married-spouse absent", "Married-A F spouse present")


def _binary_target(df: pd.DataFrame, column: str, task: str, positive: str, known: tuple[str, ...],
                   strip: str = "") -> torch.Tensor:
    """1.0 where `column` reads `positive`, 0.0 for the other `known` values, NaN (a missing label) where the cell
    is empty; any other value is an error naming the column, the task, the count of rows and some values."""
    text = df[column].astype(object).where(df[column].notna(), "").map(str).str.strip().str.rstrip(strip)
    empty = text == ""
    bad = ~empty & ~text.isin(known)
    if bad.any():
        k, examples = int(bad.sum()), ", ".join(repr(v) for v in pd.unique(text[bad])[:3])
        raise ValueError(
            f"census column {column!r} (task {task!r}): {k} {'row has' if k == 1 else 'rows have'} unexpected "
            f"labels (e.g. {examples}); the column takes {' / '.join(repr(v) for v in known)}, or an empty cell "
            "for a missing label"
        )
    return torch.tensor(np.where(empty, np.nan, text == positive), dtype=torch.float32)


def census_targets(df: pd.DataFrame) -> dict[str, torch.Tensor]:
    """income: "50000+" -> 1, "- 50000" -> 0; marital: "Never married" -> 1, another status -> 0. An empty cell is a
    missing label (NaN); any other value is an error."""
    return {
        "income": _binary_target(df, "income", "income", "50000+", ("50000+", "- 50000"), strip="."),
        "marital": _binary_target(df, "marital_stat", "marital", "Never married", MARITAL_STATUSES),
    }


def census_tasks() -> list[Task]:
    return [Task("income", "binary"), Task("marital", "binary")]


def load_census_income(path: str | Path | None = None, val_fraction: float = 0.1, seed: int = 0,
                       limit: int | None = None) -> DatasetBundle:
    """The census-income bundle; `limit` reads only the first rows of each file (for tests and quick runs)."""
    folder = find_census_income(path)
    train_df = read_census_csv(folder / CENSUS_FILES[0], limit)
    test_df = read_census_csv(folder / CENSUS_FILES[1], None if limit is None else max(limit // 2, 1))
    split = split_indices(len(train_df), {"train": 1.0 - val_fraction, "val": val_fraction}, seed)
    fit_rows = train_df.iloc[split["train"].numpy()]
    pre = TabularPreprocessor(list(NUMERIC), list(CATEGORICAL)).fit(fit_rows)
    full = MultiTaskData(pre.transform(train_df), census_targets(train_df))
    test = MultiTaskData(pre.transform(test_df), census_targets(test_df))
    return DatasetBundle(
        "census-income", census_tasks(), full.subset(split["train"]), full.subset(split["val"]), test, pre,
        info={"rows": {"train": len(split["train"]), "val": len(split["val"]), "test": len(test_df)},
              "source": str(folder)},
    )
