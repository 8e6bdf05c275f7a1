import pytest
import torch

from multitask.data import DEFAULT_TASKS
from multitask.data.census import CATEGORICAL, NUMERIC, read_census_csv
from multitask.data.paths import CENSUS_FILES, find_census_income


def test_census_subset(census_small):
    b = census_small
    assert [t.name for t in b.tasks] == DEFAULT_TASKS["census-income"] == ["income", "marital"]
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


def test_census_education_is_a_third_task_and_then_not_a_feature():
    from multitask.data import load_census_income
    from multitask.data.census import BACHELOR_OR_MORE

    b = load_census_income(limit=3000, seed=0, tasks=["income", "education"])
    assert [t.name for t in b.tasks] == ["income", "education"] and set(b.train.targets) == {"income", "education"}
    assert "education" not in b.preprocessor.categorical and b.train.inputs["cat"].shape[1] == 31
    raw = read_census_csv(find_census_income() / CENSUS_FILES[0], limit=3000)
    expected = raw["education"].isin(BACHELOR_OR_MORE).to_numpy()
    full = torch.cat([b.train.targets["education"], b.val.targets["education"]])
    assert full.sum().item() == expected.sum() and 0.05 < expected.mean() < 0.3  # about 15% in the full file
    with pytest.raises(KeyError, match="unknown census-income task"):
        load_census_income(limit=100, tasks=["salary"])


def test_census_education_task_through_the_cli(tmp_path):
    import json

    import yaml

    from multitask.cli import main

    raw = {"data": {"name": "census-income", "limit": 1500}, "tasks": {"marital": {}, "education": {}},
           "model": {"name": "hard_sharing", "hidden": [16], "head_hidden": [8], "embedding_dim": 4},
           "trainer": {"epochs": 3, "batch_size": 64, "lr": 3e-3, "progress": False}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert set(final["test"]) == {"marital", "education"} and 0.7 < final["test"]["education"]["auc"] <= 1
    assert "education" not in json.loads((tmp_path / "run" / "preprocessor.json").read_text())["categorical"]
