"""census-income as a two-step funnel, for the funnel families (ESMM, AITM): works -> high income.

- ``works``: the person worked at all in the year (``weeks_worked_in_year > 0``), labelled on every row;
- ``high_income`` (``after: works``): works AND total income > $50k, also labelled on every row (the
  click-and-convert, CTCVR-style label of ESMM: a step counts only when the step before it happened).

About 5% of the high earners did not work (income from capital or pensions: 596 of the 12,382 in the training
file); they fall outside the funnel and are labelled ``high_income = 0``. The conditional rate P(high_income |
works) is what a funnel's second tower estimates (pCVR); it is read off the rows with works = 1.

Columns that give ``works`` away are not features: ``weeks_worked_in_year`` (it defines the label),
``num_persons_worked_for_employer`` (0 exactly when no week was worked: a recode of the label) and
``own_business_or_self_employed`` (asked only of those who worked: its codes 1 and 2 occur on workers alone).
The current-job columns (class of worker, industry, occupation, employment status, union) stay: they describe
the survey week, not last year's weeks, and disagree with ``works`` on several percent of rows (a strong
predictor, not a copy). ``marital_stat`` is a feature here (it is no task). Same split rule as
`load_census_income`: a seeded `val_fraction` of the training file for validation, the test file for test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multitask.data.census import CATEGORICAL, NUMERIC, _binary_target, census_bundle
from multitask.data.dataset import DatasetBundle
from multitask.tasks import Task

FUNNEL_TASKS = ("works", "high_income")
# column -> why it is not a feature of the funnel (each one reveals `works`)
LEAKS = {
    "weeks_worked_in_year": "defines works (> 0)",
    "num_persons_worked_for_employer": "0 exactly when weeks_worked_in_year is 0 (a recode of works)",
    "own_business_or_self_employed": "asked only of people who worked: codes 1 and 2 occur on workers alone",
}
FUNNEL_NUMERIC = [c for c in NUMERIC if c not in LEAKS]
FUNNEL_CATEGORICAL = [c for c in CATEGORICAL if c not in LEAKS] + ["marital_stat"]
WEEKS_IN_YEAR = 52


def census_funnel_tasks() -> list[Task]:
    """works, then high_income after works; both binary."""
    return [Task("works", "binary"), Task("high_income", "binary", after="works")]


def census_funnel_targets(df: pd.DataFrame) -> dict[str, torch.Tensor]:
    """works = weeks_worked_in_year > 0; high_income = works AND income "50000+" (0 for every non-worker, whatever
    the income). NaN where the needed cells are empty: works when weeks is; high_income when weeks is, or when
    the person worked and the income is. Weeks that are not a whole number 0..52 are an error naming the
    column."""
    weeks = pd.to_numeric(df["weeks_worked_in_year"], errors="coerce")
    cells = df["weeks_worked_in_year"]
    text = cells.astype(object).where(cells.notna(), "").map(str).str.strip()
    bad = (weeks.isna() & (text != "")) | (weeks < 0) | (weeks > WEEKS_IN_YEAR) | (weeks.notna() & (weeks % 1 != 0))
    if bad.any():
        k, examples = int(bad.sum()), ", ".join(repr(v) for v in pd.unique(text[bad])[:3])
        raise ValueError(f"census column 'weeks_worked_in_year' (task 'works'): {k} "
                         f"{'row has' if k == 1 else 'rows have'} a value that is not a whole week count "
                         f"0..{WEEKS_IN_YEAR} (e.g. {examples})")
    w = weeks.to_numpy(dtype=float)
    works = np.where(np.isnan(w), np.nan, w > 0)
    income = _binary_target(df, "income", "high_income", "50000+", ("50000+", "- 50000"), strip=".").numpy()
    high = np.where(works == 0, 0.0, works * income)  # NaN income on a worker, or NaN works, stays NaN
    return {"works": torch.tensor(works, dtype=torch.float32), "high_income": torch.tensor(high, dtype=torch.float32)}


def load_census_funnel(path: str | Path | None = None, val_fraction: float = 0.1, seed: int = 0,
                       limit: int | None = None) -> DatasetBundle:
    """The census-income funnel bundle (tasks works -> high_income; the columns of `LEAKS` dropped). `limit`
    reads only the first rows of the training file (and half as many of the test file), as `load_census_income`."""
    return census_bundle("census-income-funnel", census_funnel_tasks(), list(FUNNEL_NUMERIC),
                         list(FUNNEL_CATEGORICAL), census_funnel_targets, path, val_fraction, seed, limit,
                         info={"dropped": dict(LEAKS)})
