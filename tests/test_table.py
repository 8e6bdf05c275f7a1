"""A user's own table through the CLI: declared and inferred targets, labels back from predict, regression
metrics and predictions in original units, a split column, and clean errors."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from multitask.cli import main


def penguins(n=400, seed=0):
    rng = np.random.default_rng(seed)
    species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], n)
    island = np.where(species == "Gentoo", "Biscoe", rng.choice(["Dream", "Torgersen", "Biscoe"], n))
    bill = rng.normal(40, 3, n) + (species == "Chinstrap") * 8 + (species == "Gentoo") * 6
    flipper = rng.normal(190, 6, n) + (species == "Gentoo") * 25
    mass = 3500 + (species == "Gentoo") * 1500 + rng.normal(0, 200, n)
    sex = np.where(rng.random(n) < 0.5, "male", "female").astype(object)
    sex[rng.random(n) < 0.1] = None  # missing labels
    return pd.DataFrame({"island": island, "bill_length_mm": bill.round(1), "flipper_length_mm": flipper.round(0),
                         "species": species, "sex": sex, "body_mass_g": mass.round(0)})


def _config(tmp_path, data, **trainer):
    raw = {"data": {"name": "table", **data}, "model": {"name": "hard_sharing", "hidden": [32], "head_hidden": [16]},
           "trainer": {"epochs": 25, "batch_size": 32, "lr": 3e-3, "progress": False, **trainer}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))  # targets keep the order they are written in
    return str(p)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table")
    df = penguins()
    df.to_csv(tmp / "penguins.csv", index=False)
    cfg = _config(tmp, {"path": str(tmp / "penguins.csv"),
                        "targets": {"species": None, "sex": "binary", "body_mass_g": "regression"}})
    assert main(["train", cfg, "--out", str(tmp / "run")]) == 0
    return tmp, df


def test_table_trains_with_inferred_and_declared_targets(table_run, capsys):
    tmp, _ = table_run
    tasks = json.loads((tmp / "run" / "tasks.json").read_text())
    assert [(t["name"], t["kind"], t["n_outputs"]) for t in tasks] == [
        ("species", "multiclass", 3), ("sex", "binary", 1), ("body_mass_g", "regression", 1)]
    final = json.loads((tmp / "run" / "final.json").read_text())
    assert final["test"]["species"]["accuracy"] > 0.8
    # metrics in grams: the noise of the generated mass is 200 g, so its MAE is in the hundreds, not ~0.3
    assert 100 < final["test"]["body_mass_g"]["mae"] < 400 and final["test"]["body_mass_g"]["r2"] > 0.6
    codecs = json.loads((tmp / "run" / "targets.json").read_text())
    assert codecs[0]["labels"] == ["Adelie", "Chinstrap", "Gentoo"] and codecs[2]["std"] > 100


def test_predict_gives_labels_and_grams_back(table_run, capsys):
    tmp, df = table_run
    df.drop(columns=["species", "sex", "body_mass_g"]).head(50).to_csv(tmp / "rows.csv", index=False)
    assert main(["predict", str(tmp / "run"), "--input", str(tmp / "rows.csv"), "--output", str(tmp / "p.csv")]) == 0
    pred = pd.read_csv(tmp / "p.csv")
    assert set(pred["species"]) <= {"Adelie", "Chinstrap", "Gentoo"} and set(pred["sex"]) <= {"male", "female"}
    assert (pred["species"] == df["species"].head(50)).mean() > 0.8
    probs = pred[["species_p_Adelie", "species_p_Chinstrap", "species_p_Gentoo"]].sum(axis=1)
    assert np.allclose(probs, 1, atol=1e-5)
    assert 2500 < pred["body_mass_g"].mean() < 6000  # grams, not standardised units
    assert main(["evaluate", str(tmp / "run"), "--split", "val"]) == 0
    assert "body_mass_g" in capsys.readouterr().out


def test_split_column_and_tsv(tmp_path):
    df = penguins(200, seed=1)
    df["fold"] = np.where(np.arange(200) < 140, "train", np.where(np.arange(200) < 170, "val", "test"))
    df.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    cfg = _config(tmp_path, {"path": str(tmp_path / "p.tsv"), "targets": {"species": "multiclass"},
                             "split": {"column": "fold"}}, epochs=2)
    assert main(["train", cfg, "--out", str(tmp_path / "run")]) == 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert set(final["test"]) == {"species"}
    pre = json.loads((tmp_path / "run" / "preprocessor.json").read_text())
    assert "fold" not in pre["numeric"] + pre["categorical"] and "species" not in pre["categorical"]


@pytest.mark.parametrize("edit, message", [
    (lambda df, d: d.update(targets={"weight": "regression"}), "data.targets: "),
    (lambda df, d: df.assign(species="Adelie").to_csv(d["path"], index=False), "1 class (only 'Adelie')"),
    (lambda df, d: df.assign(species=None).to_csv(d["path"], index=False), "has no labels at all"),
    (lambda df, d: d.update(targets=None), "data.targets: name the target columns"),
    (lambda df, d: d.update(split={"val_fraction": 0.5, "test_fraction": 0.5}), "leave no training rows"),
    (lambda df, d: d.update(features=["beak"]), "features ['beak'] are not in the table"),
    (lambda df, d: open(d["path"], "w").close(), "is empty"),
    (lambda df, d: open(d["path"], "w").write("a,a,b\n1,2,3\n"), "duplicate column name(s) ['a']"),
])
def test_bad_tables_exit_2_naming_the_problem(tmp_path, capsys, edit, message):
    df = penguins(100)
    data = {"path": str(tmp_path / "t.csv"), "targets": {"species": "multiclass"}}
    df.to_csv(data["path"], index=False)
    edit(df, data)
    code = main(["train", _config(tmp_path, data, epochs=1), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_table_options_are_refused_for_built_in_datasets(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"name": "yeast", "targets": {"class1": "binary"}}}))
    assert main(["train", str(p)]) == 2
    assert "data.targets: only a table (data.name: table) takes it" in capsys.readouterr().err


def test_resuming_a_run_recorded_in_standardised_units_is_refused(tmp_path, capsys):
    """A run whose tasks.json predates target scaling in Task logged its regression metrics (and chose its best
    epoch) in standardised units: resuming it would mix units, so it is refused, naming the task."""
    penguins(200).to_csv(tmp_path / "p.csv", index=False)
    cfg = _config(tmp_path, {"path": str(tmp_path / "p.csv"), "targets": {"species": None, "body_mass_g": None}},
                  epochs=1, monitor="body_mass_g.mse")
    run = tmp_path / "run"
    assert main(["train", cfg, "--out", str(run)]) == 0
    tasks = json.loads((run / "tasks.json").read_text())
    for t in tasks:  # as the code before target scaling wrote it
        t.pop("target_mean", None), t.pop("target_std", None)
    (run / "tasks.json").write_text(json.dumps(tasks))
    capsys.readouterr()
    assert main(["train", cfg, "--resume", str(run), "--set", "trainer.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "body_mass_g" in err and "standardised units" in err and err.count("\n") == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # nothing trained
