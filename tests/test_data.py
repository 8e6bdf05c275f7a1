import pytest
import torch

from multitask.data import DATASET_TASKS
from multitask.data.census import CATEGORICAL, NUMERIC, read_census_csv
from multitask.data.paths import CENSUS_FILES, find_census_income


def test_census_subset(census_small):
    b = census_small
    assert [t.name for t in b.tasks] == DATASET_TASKS["census-income"]
    assert len(b.train) + len(b.val) == 3000 and len(b.test) == 1500
    assert b.train.inputs["num"].shape[1] == len(NUMERIC) == 7
    assert b.train.inputs["cat"].shape[1] == len(CATEGORICAL) == 32
    # standardised on the training rows
    assert torch.allclose(b.train.inputs["num"].mean(0), torch.zeros(7), atol=1e-4)
    for y in b.train.targets.values():
        assert set(y.unique().tolist()) <= {0.0, 1.0}


def test_census_labels_match_the_raw_file():
    df = read_census_csv(find_census_income() / CENSUS_FILES[0], limit=500)
    from multitask.data.census import census_targets

    y = census_targets(df)
    assert y["income"].sum().item() == (df["income"].str.contains("50000+", regex=False)).sum()
    assert y["marital"].sum().item() == (df["marital_stat"] == "Never married").sum()


def test_full_census_row_counts_and_rates():
    folder = find_census_income()
    with open(folder / CENSUS_FILES[0]) as f:
        assert sum(1 for _ in f) == 199_523
    with open(folder / CENSUS_FILES[1]) as f:
        assert sum(1 for _ in f) == 99_762


def test_missing_census_data_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="multitask data install census-income"):
        find_census_income(tmp_path)


def test_yeast(yeast_small):
    b = yeast_small
    assert len(b.tasks) == 14 and len(b.train) + len(b.val) + len(b.test) == 2417
    assert b.train.inputs["num"].shape[1] == 103
    # splits are disjoint and cover every row
    assert b.info["rows"] == {"train": len(b.train), "val": len(b.val), "test": len(b.test)}


def test_unseen_categories_map_to_unknown_index(census_small):
    import pandas as pd

    pre = census_small.preprocessor
    row = {c: 0 for c in pre.numeric} | {c: "never seen" for c in pre.categorical}
    x = pre.transform(pd.DataFrame([row]))
    assert (x["cat"] == 0).all()
    with pytest.raises(ValueError, match="feature column 'age' must be numeric"):
        pre.transform(pd.DataFrame([row | {"age": "old"}]))
