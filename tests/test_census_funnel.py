"""census-income as a funnel (multitask.data.census_funnel): labels, refused values, features, split."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from multitask.data.census import read_census_csv
from multitask.data.census_funnel import (FUNNEL_CATEGORICAL, FUNNEL_NUMERIC, LEAKS, census_funnel_targets,
                                          load_census_funnel)
from multitask.data.paths import CENSUS_FILES, find_census_income


def frame(weeks, income) -> pd.DataFrame:
    return pd.DataFrame({"weeks_worked_in_year": weeks, "income": income})


def test_labels_follow_the_funnel():
    df = frame([0, 10, 52, 0, None, 5, 0], ["50000+.", "50000+.", "- 50000.", "- 50000.", "50000+.", None, None])
    y = census_funnel_targets(df)
    works, high = y["works"].tolist(), y["high_income"].tolist()
    assert works[:4] == [0.0, 1.0, 1.0, 0.0] and works[5:] == [1.0, 0.0]
    # a high earner who did not work is outside the funnel: 0, not 1
    assert high[:4] == [0.0, 1.0, 0.0, 0.0]
    assert math.isnan(works[4]) and math.isnan(high[4])  # weeks unknown: both missing
    assert math.isnan(high[5])  # worked, income unknown: missing
    assert high[6] == 0.0  # did not work: 0 whatever the income


@pytest.mark.parametrize("weeks", [-1, 53, 2.5, "many"])
def test_a_week_count_out_of_range_names_the_column(weeks):
    with pytest.raises(ValueError, match="weeks_worked_in_year.*works.*1 row"):
        census_funnel_targets(frame([10, weeks], ["- 50000", "- 50000"]))


def test_an_unknown_income_value_names_the_column():
    with pytest.raises(ValueError, match="'income'.*high_income"):
        census_funnel_targets(frame([10], ["lots"]))


def test_bundle_tasks_features_and_labels_against_the_raw_file():
    b = load_census_funnel(limit=3000, seed=0)
    assert [(t.name, t.kind, t.after) for t in b.tasks] == [("works", "binary", None),
                                                            ("high_income", "binary", "works")]
    features = set(b.preprocessor.numeric) | set(b.preprocessor.categorical)
    assert not features & set(LEAKS) and "marital_stat" in features
    assert b.preprocessor.numeric == FUNNEL_NUMERIC and b.preprocessor.categorical == FUNNEL_CATEGORICAL
    raw = read_census_csv(find_census_income() / CENSUS_FILES[1], limit=1500)
    works = (raw["weeks_worked_in_year"] > 0).to_numpy()
    rich = raw["income"].str.contains("50000+", regex=False).to_numpy()
    assert np.array_equal(b.test.targets["works"].numpy(), works.astype(np.float32))
    assert np.array_equal(b.test.targets["high_income"].numpy(), (works & rich).astype(np.float32))
    assert len(b.train) + len(b.val) == 3000 and len(b.val) == 300 and len(b.test) == 1500


def test_same_split_as_the_census_loader():
    from multitask.data import load_census_income

    funnel, census = load_census_funnel(limit=2000, seed=3), load_census_income(limit=2000, seed=3)
    age = FUNNEL_NUMERIC.index("age")
    for split in ("train", "val", "test"):
        a = getattr(funnel, split).inputs["num"][:, age]
        b = getattr(census, split).inputs["num"][:, census.preprocessor.numeric.index("age")]
        assert torch.equal(a, b), split


def test_a_funnel_family_trains_on_it():
    from multitask.models import build_model
    from multitask.training import Trainer, TrainerConfig

    b = load_census_funnel(limit=1000, seed=0)
    net = build_model("esmm", b.tasks, b.preprocessor.schema, hidden=[16])
    trainer = Trainer(net, b.tasks, config=TrainerConfig(epochs=1, batch_size=128, progress=False))
    trainer.fit(b.train)
    p = trainer.predict(b.test.inputs)
    assert torch.all(p["high_income"] <= p["works"] + 1e-6)  # pCTCVR = pCTR x pCVR never exceeds pCTR


FUNNEL_CONFIG = {
    "data": {"name": "census-funnel", "limit": 2000},
    "tasks": {"works": {}, "high_income": {"after": "works"}},
    "model": {"name": "esmm", "hidden": [16], "embedding_dim": 4},
    "balancer": {"name": "equal"},
    "trainer": {"epochs": 1, "batch_size": 128, "progress": False},
}


def test_the_cli_trains_a_funnel_family_on_census_funnel(tmp_path, capsys):
    """`data: {name: census-funnel}` from YAML: esmm trains on the funnel; the run keeps `after`."""
    import json

    import yaml

    from multitask.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(FUNNEL_CONFIG))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--no-report"]) == 0
    final = json.loads((run / "final.json").read_text())
    assert set(final["test"]) == {"works", "high_income"}
    assert 0.5 < final["test"]["works"]["auc"] <= 1
    tasks = json.loads((run / "tasks.json").read_text())
    after = {t["name"]: t.get("after") for t in (tasks if isinstance(tasks, list) else tasks["tasks"])}
    assert after == {"works": None, "high_income": "works"}


def test_a_funnel_without_its_after_link_is_refused_before_any_work(tmp_path, capsys):
    import yaml

    from multitask.cli import main

    raw = {**FUNNEL_CONFIG, "tasks": {"works": {}, "high_income": {}}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "ESMM" in err and "works" in err and "after" in err
    assert not (tmp_path / "run").exists()


def test_census_funnel_tasks_are_known_without_reading_the_data():
    from multitask.data import dataset_tasks

    tasks = dataset_tasks("census-funnel")
    assert [(t.name, t.kind, t.after) for t in tasks] == [("works", "binary", None), ("high_income", "binary", "works")]
