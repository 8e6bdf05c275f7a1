"""census-income (UCI KDD 1994-95; the data of the MMoE paper): two binary tasks by default, three on request.

- ``income``: total person income > $50k (the dataset's label);
- ``marital``: marital status is "Never married" (the MMoE paper's second task), so that column is not a feature;
- ``education`` (only when asked for): at least a bachelor's degree (the MMoE paper's second census
  experiment); the education column then stops being a feature.
Features: the 7 continuous columns standardised (train statistics) and the other 32 columns as categorical
embeddings; the sampling weight column ``instance_weight`` is dropped. Train 199,523 rows (a random
`val_fraction` of which is held out for validation), test 99,762 rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

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
                   strip: str = "", positives: tuple[str, ...] = ()) -> torch.Tensor:
    """1.0 where `column` reads `positive` (or one of `positives`), 0.0 for the other `known` values, NaN (a missing label) where the cell
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
    hit = text.isin(positives) if positives else text == positive
    return torch.tensor(np.where(empty, np.nan, hit), dtype=torch.float32)


EDUCATION_LEVELS = ("Children", "Less than 1st grade", "1st 2nd 3rd or 4th grade", "5th or 6th grade",
                    "7th and 8th grade", "9th grade", "10th grade", "11th grade", "12th grade no diploma",
                    "High school graduate", "Some college but no degree", "Associates degree-occup /vocational",
                    "Associates degree-academic program", "Bachelors degree(BA AB BS)",
                    "Masters degree(MA MS MEng MEd MSW MBA)", "Prof school degree (MD DDS DVM LLB JD)",
                    "Doctorate degree(PhD EdD)")
BACHELOR_OR_MORE = EDUCATION_LEVELS[-4:]
TASKS = ("income", "marital", "education")
DEFAULT_TASKS = ("income", "marital")  # the MMoE paper's first census experiment; `education` on request
TASK_COLUMN = {"income": "income", "marital": "marital_stat", "education": "education"}


def census_targets(df: pd.DataFrame, tasks: Sequence[str] = DEFAULT_TASKS) -> dict[str, torch.Tensor]:
    """income: "50000+" -> 1, "- 50000" -> 0; marital: "Never married" -> 1, another status -> 0; education: at
    least a bachelor's degree -> 1, a lower level -> 0. An empty cell is a missing label (NaN); any other value
    is an error."""
    out = {}
    if "income" in tasks:
        out["income"] = _binary_target(df, "income", "income", "50000+", ("50000+", "- 50000"), strip=".")
    if "marital" in tasks:
        out["marital"] = _binary_target(df, "marital_stat", "marital", "Never married", MARITAL_STATUSES)
    if "education" in tasks:
        out["education"] = _binary_target(df, "education", "education", "", EDUCATION_LEVELS,
                                          positives=BACHELOR_OR_MORE)
    return out


def census_tasks(tasks: Sequence[str] = DEFAULT_TASKS) -> list[Task]:
    """The census-income tasks named in `tasks` (default: income and marital), all binary."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise KeyError(f"unknown census-income task(s) {unknown}; it has: {', '.join(TASKS)}")
    return [Task(t, "binary") for t in TASKS if t in tasks]


def load_census_income(path: str | Path | None = None, val_fraction: float = 0.1, seed: int = 0,
                       limit: int | None = None, tasks: Sequence[str] | None = None) -> DatasetBundle:
    """The census-income bundle for `tasks` (default: income and marital; `education` as a third task is the
    MMoE paper's second census experiment, and its column then stops being a feature). `limit` reads only the
    first rows of each file (for tests and quick runs)."""
    chosen = census_tasks(DEFAULT_TASKS if tasks is None else tasks)
    names = [t.name for t in chosen]
    categorical = [c for c in CATEGORICAL if not (c == "education" and "education" in names)]
    return census_bundle("census-income", chosen, list(NUMERIC), categorical, lambda df: census_targets(df, names),
                         path, val_fraction, seed, limit)


def census_bundle(name: str, tasks: list[Task], numeric: list[str], categorical: list[str],
                  targets: Callable[[pd.DataFrame], dict[str, torch.Tensor]], path: str | Path | None,
                  val_fraction: float, seed: int, limit: int | None, info: dict | None = None) -> DatasetBundle:
    """A bundle from census-income's two files: a seeded `val_fraction` of the training file for validation, the
    test file for test; `numeric` and `categorical` columns preprocessed as fitted on the training rows; `targets`
    of a frame. `limit` reads only the first rows of the training file (half as many of the test file)."""
    folder = find_census_income(path)
    train_df = read_census_csv(folder / CENSUS_FILES[0], limit)
    test_df = read_census_csv(folder / CENSUS_FILES[1], None if limit is None else max(limit // 2, 1))
    split = split_indices(len(train_df), {"train": 1.0 - val_fraction, "val": val_fraction}, seed)
    pre = TabularPreprocessor(numeric, categorical).fit(train_df.iloc[split["train"].numpy()])
    full = MultiTaskData(pre.transform(train_df), targets(train_df))
    test = MultiTaskData(pre.transform(test_df), targets(test_df))
    return DatasetBundle(
        name, tasks, full.subset(split["train"]), full.subset(split["val"]), test, pre,
        info={"rows": {"train": len(split["train"]), "val": len(split["val"]), "test": len(test_df)},
              "source": str(folder), **(info or {})},
    )
