"""Small end-to-end runs through the CLI on real data subsets: train, resume, evaluate, predict."""
import json

import pandas as pd
import pytest
import torch
import yaml

from multitask.cli import main
from multitask.training.checkpoint import load_checkpoint

CENSUS = {
    "data": {"name": "census-income", "limit": 2000},
    "model": {"name": "mmoe", "n_experts": 3, "expert_hidden": [16], "tower_hidden": [8], "embedding_dim": 4},
    "balancer": {"name": "uncertainty"},
    "trainer": {"epochs": 2, "batch_size": 128, "progress": False},
    "baselines": "auto",
}


def _config(tmp_path, raw, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def test_census_train_evaluate_predict(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", _config(tmp_path, CENSUS), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "Δm against single-task baselines" in out and "income" in out
    for f in ["config.yaml", "tasks.json", "preprocessor.json", "metrics.jsonl", "final.json",
              "checkpoints/last.pt", "checkpoints/best.pt", "baseline/final.json"]:
        assert (run / f).exists(), f
    final = json.loads((run / "final.json").read_text())
    assert set(final["test"]) == {"income", "marital"}
    assert 0.5 < final["test"]["income"]["auc"] <= 1 and final["parameters"] > 0 and final["wall_time_s"] > 0
    assert isinstance(final["delta_m"], float)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and "weights" in lines[0] and "val" in lines[0]

    # evaluate reproduces the test metrics of final.json from the saved best weights
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--json", str(report)]) == 0
    ev = json.loads(report.read_text())
    assert ev["metrics"]["income"]["auc"] == pytest.approx(final["test"]["income"]["auc"], abs=1e-9)

    # predict on raw rows with named columns, only one task's head
    from multitask.data.census import FEATURES, read_census_csv
    from multitask.data.paths import CENSUS_FILES, find_census_income

    rows = read_census_csv(find_census_income() / CENSUS_FILES[1], limit=25)[FEATURES]
    rows.loc[0, "education"] = "A category never seen"  # unseen categories are allowed
    src = tmp_path / "rows.csv"
    rows.to_csv(src, index=False)
    dst = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--input", str(src), "--output", str(dst), "--tasks", "income"]) == 0
    pred = pd.read_csv(dst)
    assert list(pred.columns) == ["income"] and len(pred) == 25 and pred["income"].between(0, 1).all()

    assert main(["predict", str(run), "--input", str(src), "--output", str(dst), "--tasks", "salary"]) == 2
    assert "unknown task 'salary'" in capsys.readouterr().err
    rows.drop(columns=["age"]).to_csv(src, index=False)
    assert main(["predict", str(run), "--input", str(src), "--output", str(dst)]) == 2
    assert "missing feature column(s) ['age']" in capsys.readouterr().err


def test_resume_through_the_cli_matches_one_go(tmp_path):
    raw = {**CENSUS, "baselines": "none", "balancer": {"name": "uncertainty"},
           "model": {"name": "hard_sharing", "hidden": [16], "head_hidden": [8], "dropout": 0.2}}
    cfg = _config(tmp_path, raw)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", cfg, "--out", str(a), "--set", "trainer.epochs=4"]) == 0
    assert main(["train", cfg, "--out", str(b), "--set", "trainer.epochs=2"]) == 0
    assert main(["train", cfg, "--resume", str(b), "--set", "trainer.epochs=4"]) == 0
    sa = load_checkpoint(a / "checkpoints" / "last.pt")
    sb = load_checkpoint(b / "checkpoints" / "last.pt")
    assert sa["epoch"] == sb["epoch"] == 4
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert all(torch.equal(sa["optimizer"]["state"][k]["exp_avg"], sb["optimizer"]["state"][k]["exp_avg"])
               for k in sa["optimizer"]["state"])


def test_resume_refuses_a_different_config_and_an_existing_run(tmp_path, capsys):
    raw = {**CENSUS, "baselines": "none", "trainer": {"epochs": 1, "progress": False}}
    cfg = _config(tmp_path, raw)
    run = tmp_path / "r"
    assert main(["train", cfg, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", cfg, "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", cfg, "--resume", str(run), "--set", "trainer.lr=0.1"]) == 2
    assert "differs from the run's config.yaml in trainer.lr" in capsys.readouterr().err
    assert main(["train", cfg, "--resume", str(tmp_path / "nothing")]) == 2
    assert "no checkpoints/last.pt" in capsys.readouterr().err


def test_yeast_end_to_end_with_fourteen_tasks(tmp_path):
    raw = {"data": {"name": "yeast"}, "model": {"name": "hard_sharing", "hidden": [32], "head_hidden": []},
           "balancer": {"name": "equal"}, "trainer": {"epochs": 3, "batch_size": 64, "progress": False},
           "baselines": "auto"}
    run = tmp_path / "y"
    assert main(["train", _config(tmp_path, raw), "--out", str(run)]) == 0
    final = json.loads((run / "final.json").read_text())
    assert len(final["test"]) == 14 and all(0 <= m["auc"] <= 1 for m in final["test"].values())
    assert final["delta_m"] is not None
    # reuse this run's baselines by path
    raw2 = {**raw, "baselines": str(run / "baseline")}
    assert main(["train", _config(tmp_path, raw2, "d.yaml"), "--out", str(tmp_path / "y2")]) == 0
    again = json.loads((tmp_path / "y2" / "final.json").read_text())
    assert again["baseline"]["test"] == json.loads((run / "baseline" / "final.json").read_text())["test"]


def test_task_selection_and_importance(tmp_path):
    raw = {"data": {"name": "yeast", "limit": 400}, "tasks": {"class1": {"importance": 2.0}, "class3": {}},
           "model": {"name": "hard_sharing", "hidden": [16]}, "balancer": {"name": "static"},
           "trainer": {"epochs": 1, "progress": False}}
    run = tmp_path / "s"
    assert main(["train", _config(tmp_path, raw), "--out", str(run)]) == 0
    final = json.loads((run / "final.json").read_text())
    assert set(final["test"]) == {"class1", "class3"}
    assert final["balancer_weights"] == {"class1": 2.0, "class3": 1.0}


def test_methods_prints_one_clean_line_per_method(capsys):
    from multitask.balancing import BALANCERS
    from multitask.models import MODELS

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in list(BALANCERS) + list(MODELS):
        (line,) = [x for x in lines if x.split()[:1] == [name]]
        description = line.split(None, 2 if name in BALANCERS else 1)[-1]
        assert description.rstrip().endswith((".", ")")), line  # a whole sentence, not cut mid-way
        assert "``" not in description and len(description.split()) >= 4, line
