"""Tables beyond the basics: missing-value indicators, unseen categories and far-out values reported by predict,
regression metrics in original units during training, DataFrames and arrays through the Python API, and the
fast (pyarrow) reader giving what the pandas reader gives."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from multitask import HardSharing, MultiTaskData, Task, Trainer
from multitask.cli import main
from multitask.data import table
from multitask.data.preprocessing import TabularPreprocessor
from multitask.training import read_metrics

from test_table import penguins


# ------------------------------------------------------------------------------------------ preprocessing
def test_missing_indicator_columns_for_columns_with_missing_training_values():
    train = pd.DataFrame({"a": [1.0, np.nan, 3.0, 5.0], "b": [1.0, 2.0, 3.0, 4.0], "c": ["x", None, "y", "x"]})
    pre = TabularPreprocessor(["a", "b"], ["c"], missing_indicator=True).fit(train)
    assert pre.indicators == ["a"] and pre.feature_names == ["a", "b", "a__missing", "c"]
    assert pre.schema.num_features == 3
    new = pd.DataFrame({"a": [np.nan, 2.0], "b": [np.nan, 2.0], "c": ["y", "z"]})
    x = pre.transform(new)
    assert x["num"][:, 2].tolist() == [1.0, 0.0]  # a was missing in row 0 only
    assert x["num"][0, 0] == 0 and x["num"][0, 1] == 0  # missing values read as the training mean (0 scaled)
    again = TabularPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert torch.equal(again.transform(new)["num"], x["num"])
    off = TabularPreprocessor(["a", "b"], ["c"]).fit(train)
    assert off.indicators == [] and off.transform(new)["num"].shape == (2, 2)


def test_old_preprocessor_files_still_load():
    old = {"numeric": ["a"], "categorical": [], "means": {"a": 1.0}, "stds": {"a": 2.0}, "vocab": {}}
    pre = TabularPreprocessor.from_dict(old)
    x, seen = pre.transform_with_report(pd.DataFrame({"a": [3.0, 1e9]}))
    assert x["num"][:, 0].tolist() == [1.0, pytest.approx((1e9 - 1) / 2)] and seen.far == {}  # no range saved


def test_unseen_categories_and_far_values_are_counted_per_column():
    train = pd.DataFrame({"a": np.arange(10.0), "c": list("xyxyxyxyxy")})
    pre = TabularPreprocessor(["a"], ["c"]).fit(train)  # a: min 0, max 9, std ~2.87
    new = pd.DataFrame({"a": [4.0, 17.0, -9.0, 100.0], "c": ["x", "w", "w", None]})
    x, seen = pre.transform_with_report(new)
    assert x["cat"][:, 0].tolist() == [pre.vocab["c"].index("x") + 1, 0, 0, 0]  # unseen w and empty -> unknown
    assert seen.unseen == {"c": 3} and seen.far == {"a": 2}  # 17 is within 9 + 3 std (17.6); -9 and 100 are not
    assert "c: 3 rows" in seen.lines()[0] and "a: 2 rows" in seen.lines()[1]


# ------------------------------------------------------------------------------------------ CLI
def _config(tmp_path, data, **trainer):
    raw = {"data": {"name": "table", **data}, "model": {"name": "hard_sharing", "hidden": [16], "head_hidden": [8]},
           "trainer": {"epochs": 3, "batch_size": 32, "lr": 3e-3, "progress": False, **trainer}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(p)


@pytest.fixture(scope="module")
def run_with_gaps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gaps")
    df = penguins(300, seed=3)
    df.loc[::6, "bill_length_mm"] = np.nan
    df.to_csv(tmp / "p.csv", index=False)
    cfg = _config(tmp, {"path": str(tmp / "p.csv"), "missing_indicator": True,
                        "targets": {"species": "multiclass", "body_mass_g": "regression"}})
    assert main(["train", cfg, "--out", str(tmp / "run")]) == 0
    return tmp, df


def test_missing_indicator_is_saved_and_predict_reproduces_it(run_with_gaps, capsys):
    tmp, df = run_with_gaps
    pre = json.loads((tmp / "run" / "preprocessor.json").read_text())
    assert pre["indicators"] == ["bill_length_mm"] and pre["missing_indicator"] is True
    rows = df.drop(columns=["species", "body_mass_g"]).head(12)
    rows.to_csv(tmp / "rows.csv", index=False)
    capsys.readouterr()
    assert main(["predict", str(tmp / "run"), "--input", str(tmp / "rows.csv"), "--output", str(tmp / "o.csv")]) == 0
    assert len(pd.read_csv(tmp / "o.csv")) == 12
    assert "warning" not in capsys.readouterr().err  # rows from the training table: nothing to report


def test_predict_reports_unseen_categories_and_far_values(run_with_gaps, capsys):
    tmp, df = run_with_gaps
    rows = df.drop(columns=["species", "body_mass_g"]).head(10).copy()
    rows.loc[rows.index[:3], "island"] = "Atlantis"
    rows.loc[rows.index[:2], "flipper_length_mm"] = 10_000.0
    rows.to_csv(tmp / "odd.csv", index=False)
    capsys.readouterr()
    assert main(["predict", str(tmp / "run"), "--input", str(tmp / "odd.csv"), "--output", str(tmp / "o.csv")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any("never seen in training" in line and "island: 3 rows" in line for line in err), err
    assert any("far outside the training range" in line and "flipper_length_mm: 2 rows" in line for line in err)
    assert len(pd.read_csv(tmp / "o.csv")) == 10


@pytest.mark.parametrize("kind, message", [("empty", "is empty"), ("header", "has a header but no rows"),
                                           ("folder", "does not exist")])
def test_predict_on_a_table_run_refuses_empty_input_and_missing_folder(run_with_gaps, capsys, kind, message):
    tmp, _ = run_with_gaps
    src, out = tmp / f"{kind}.csv", tmp / "o.csv"
    src.write_text({"empty": "", "header": "island,bill_length_mm,flipper_length_mm,sex\n"}.get(kind, "x\n1\n"))
    if kind == "folder":
        out = tmp / "no" / "such" / "o.csv"
    code = main(["predict", str(tmp / "run"), "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_validation_metrics_during_training_are_in_original_units(run_with_gaps):
    """metrics.jsonl (written by Trainer during fit) holds the val mse in grams²: recomputed by hand from the
    final model's predictions and the raw column."""
    tmp, df = run_with_gaps
    from multitask import experiment

    cfg, tasks, pre, trainer, _ = experiment.load_run(tmp / "run", "last")
    mass = next(t for t in tasks if t.name == "body_mass_g")
    assert mass.target_std > 100  # saved in tasks.json
    bundle = experiment.load_data(cfg)
    val_rows = bundle.info["rows"]["val"]
    grams = trainer.predict(bundle.val.inputs)["body_mass_g"].double() * mass.target_std + mass.target_mean
    truth = bundle.val.targets["body_mass_g"].double() * mass.target_std + mass.target_mean
    by_hand = float(((grams - truth) ** 2).mean())
    logged = read_metrics(tmp / "run")[-1]["val"]["body_mass_g"]["mse"]
    assert len(truth) == val_rows and logged == pytest.approx(by_hand, rel=1e-6) and logged > 1000
    # the raw column agrees: val targets in grams are the table's own values
    assert set(np.round(truth.numpy(), 3)) <= set(np.round(df["body_mass_g"].to_numpy(), 3))


def test_a_run_directory_without_target_scaling_in_tasks_json_still_reports_grams(run_with_gaps, tmp_path, capsys):
    import shutil

    tmp, _ = run_with_gaps
    old = tmp_path / "old"
    shutil.copytree(tmp / "run", old)
    tasks = json.loads((old / "tasks.json").read_text())
    for t in tasks:
        t.pop("target_mean", None), t.pop("target_std", None)
    (old / "tasks.json").write_text(json.dumps(tasks))  # as written before tasks.json kept the scaling
    assert main(["evaluate", str(old), "--checkpoint", "last", "--json", str(tmp_path / "old.json")]) == 0
    assert main(["evaluate", str(tmp / "run"), "--checkpoint", "last", "--json", str(tmp_path / "new.json")]) == 0
    old_m = json.loads((tmp_path / "old.json").read_text())["metrics"]["body_mass_g"]
    new_m = json.loads((tmp_path / "new.json").read_text())["metrics"]["body_mass_g"]
    assert old_m == pytest.approx(new_m) and new_m["mae"] > 50


def test_task_target_scaling_is_checked_and_saved():
    t = Task("mass", "regression", target_mean=4000.0, target_std=500.0)
    assert Task(**t.to_dict()) == t and "target_std" not in Task("y", "regression").to_dict()
    scores = t.evaluate(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
    assert scores["mse"] == pytest.approx(500.0 ** 2 / 2) and scores["mae"] == pytest.approx(250.0)
    for bad, message in [({"target_std": 0.0}, "target_std must be > 0"),
                         ({"target_std": float("nan")}, "must be a finite number"),
                         ({"kind": "binary", "target_std": 1.0}, "regression targets only")]:
        with pytest.raises(ValueError, match=message):
            Task("t", **{"kind": "regression", **bad})


# ------------------------------------------------------------------------------------------ Python API
def test_from_frame_gives_a_bundle_ready_to_train():
    df = penguins(300, seed=5)
    bundle = MultiTaskData.from_frame(df, targets={"species": None, "body_mass_g": "regression"},
                                      split={"val_fraction": 0.2, "test_fraction": 0.2, "seed": 1})
    assert [(t.name, t.kind) for t in bundle.tasks] == [("species", "multiclass"), ("body_mass_g", "regression")]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (180, 60, 60)
    assert bundle.preprocessor.categorical == ["island", "sex"]  # text columns, sex is a feature here
    assert bundle.info["codecs"][0].labels == ["Adelie", "Chinstrap", "Gentoo"]
    model = HardSharing.tabular(bundle.tasks, bundle.preprocessor.schema, hidden=(16,))
    trainer = Trainer(model, bundle.tasks, epochs=2, batch_size=32, progress=False)
    trainer.fit(bundle.train, val=bundle.val)
    assert trainer.evaluate(bundle.test)["metrics"]["body_mass_g"]["mae"] > 50  # grams, not standardised units


def test_from_arrays_takes_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    x[::10, 2] = np.nan
    y = {"v": x[:, 0] * 3.0 + 1.0, "pos": (x[:, 1] > 0).astype(int), "tags": (x[:, :2] > 0).astype(float)}
    bundle = MultiTaskData.from_arrays(x, y, missing_indicator=True)
    assert [(t.name, t.kind, t.n_outputs) for t in bundle.tasks] == [
        ("v", "regression", 1), ("pos", "binary", 1), ("tags", "multilabel", 2)]
    assert bundle.preprocessor.feature_names == ["x0", "x1", "x2", "x2__missing"]
    n = len(bundle.train)
    assert bundle.train.inputs["num"].shape == (n, 4) and bundle.train.targets["tags"].shape == (n, 2)
    with pytest.raises(ValueError, match="labels for 200 rows"):
        MultiTaskData.from_arrays(x, {"v": x[:5, 0]})
    with pytest.raises(TypeError, match="from_arrays"):
        MultiTaskData.from_frame(x, {"v": None})


# ------------------------------------------------------------------------------------------ readers
def _messy(n=400, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "f": rng.normal(1e3, 5, n), "i": rng.integers(0, 9, n), "flag": rng.random(n) < 0.5,
        "txt": rng.choice(["a b", "c", "déjà"], n).astype(object), "y": rng.choice(["p", "q", "r"], n),
        "r": rng.normal(size=n),
    })
    df.loc[::7, "f"] = np.nan
    df.loc[::11, "txt"] = None
    return df


def test_the_pyarrow_reader_matches_the_pandas_reader(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    path = tmp_path / "m.csv"
    df = _messy()
    df.to_csv(path, index=False)
    with open(path, "a") as f:
        f.write("NA,3,True,,q,0.5\n")  # a pandas missing-value marker
    targets = {"y": None, "r": "regression"}
    fast = table.load_table(path, targets, missing_indicator=True)
    monkeypatch.setattr(table, "_arrow_csv", lambda *a, **k: None)
    slow = table.load_table(path, targets, missing_indicator=True)
    assert fast.preprocessor.categorical == slow.preprocessor.categorical == ["flag", "txt"]
    assert fast.preprocessor.vocab == slow.preprocessor.vocab and fast.preprocessor.indicators == ["f"]
    assert [c.to_dict() for c in fast.info["codecs"]] == [c.to_dict() for c in slow.info["codecs"]]
    for split in ("train", "val", "test"):
        a, b = getattr(fast, split), getattr(slow, split)
        assert torch.equal(a.inputs["cat"], b.inputs["cat"])
        assert torch.allclose(a.inputs["num"], b.inputs["num"], atol=1e-4)  # features read as float32
        assert all(torch.equal(a.targets[t], b.targets[t]) for t in a.targets)


def test_blank_led_text_falls_back_to_pandas(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("a, b,y\n1, x,p\n2, z,q\n3, x,p\n")
    df = table.read_table(path)
    assert list(df.columns) == ["a", "b", "y"] and df["b"].tolist() == ["x", "z", "x"]  # pandas skipinitialspace


@pytest.mark.parametrize("tail", ["", "\n7.5,2.5,False,c,p,0.25\n", '\n1.0,3,True,"q, r",p,0.5\n'])
def test_typed_read_matches_pandas(tmp_path, monkeypatch, tail):
    """A CSV is read whole with the column types of its first rows (here 500 bytes); a later row that does not
    fit them (a float in an integer column) sends the file to pandas, a quoted cell does not: same frame."""
    pytest.importorskip("pyarrow")
    path = tmp_path / "m.csv"
    _messy(300, seed=2).to_csv(path, index=False, float_format="%.6f")
    with open(path, "a") as f:
        f.write(tail.lstrip("\n"))
    monkeypatch.setattr(table, "SNIFF", 500)
    rows = []  # rows read by pyarrow (none when pandas read the file)

    def spy(t, *a):
        rows.append(t.num_rows)
        return real(t, *a)

    real = table._to_pandas
    monkeypatch.setattr(table, "_to_pandas", spy)
    fast = table.read_table(path)
    assert rows == ([300] if not tail else [301] if '"' in tail else [])
    slow = pd.read_csv(path, skipinitialspace=True)
    assert list(fast.dtypes.astype(str)) == list(slow.dtypes.astype(str))
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)


def test_parquet_and_csv_give_the_same_bundle(tmp_path):
    pytest.importorskip("pyarrow")
    df = _messy(200, seed=4)
    df.to_csv(tmp_path / "m.csv", index=False)
    df.to_parquet(tmp_path / "m.parquet", index=False)
    a = table.load_table(tmp_path / "m.csv", {"y": None, "r": "regression"})
    b = table.load_table(tmp_path / "m.parquet", {"y": None, "r": "regression"})
    assert a.preprocessor.vocab == b.preprocessor.vocab and a.train.inputs["num"].dtype == torch.float32
    assert torch.allclose(a.train.inputs["num"], b.train.inputs["num"], atol=1e-4)
    assert torch.equal(a.test.targets["y"], b.test.targets["y"])


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("a,b\n1,x\n2,y\n".encode("utf-8-sig"))
    assert list(table.read_table(path).columns) == ["a", "b"]


# ------------------------------------------------------------------------------------------ found in review
def test_features_that_float32_cannot_resolve_are_read_exactly(tmp_path):
    """A feature like a timestamp in seconds (1.7e9 + a few units) read as float32 would be one constant value;
    it is read again in float64, and a declared categorical float column keeps its text as written."""
    rng = np.random.default_rng(0)
    n = 300
    t = 1.7e9 + rng.normal(0, 3, n).round(2)
    df = pd.DataFrame({"t": t, "code": rng.choice([0.1, 0.2, 1.5], n), "y": (t - 1.7e9 > 0).astype(int)})
    df.to_csv(tmp_path / "t.csv", index=False)
    bundle = table.load_table(tmp_path / "t.csv", {"y": "binary"}, categorical=["code"])
    pre = bundle.preprocessor
    assert 2.5 < pre.stds["t"] < 3.5  # N(0, 3) around 1.7e9; as float32 it read as one value (std 1 stood in)
    x = bundle.train.inputs["num"][:, 0]
    assert len(torch.unique(x)) > 100  # the rows are told apart
    assert sorted(pre.vocab["code"])[:3] == ["0.1", "0.2", "1.5"]
    assert table.float32_lossy(pd.DataFrame({"a": np.float32([1e9, 1e9 + 64])})) == ["a"]
    assert table.float32_lossy(pd.DataFrame({"a": np.float32([1.0, 2.0])})) == []


def test_text_in_a_mostly_numeric_column_is_an_error_not_a_category(tmp_path):
    df = penguins(200)
    df["bill_length_mm"] = df["bill_length_mm"].astype(object)
    df.loc[7, "bill_length_mm"] = "abc"
    df.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(ValueError, match=r"feature column 'bill_length_mm' must be numeric: 1 row holds text .*'abc'"):
        table.load_table(tmp_path / "p.csv", {"species": None})
    assert table.categorical_features(df, ["island", "bill_length_mm"]) == ["island"]


def test_label_errors_name_the_file_and_split_options_are_checked(tmp_path):
    df = penguins(200)
    df.loc[df.index[-5:], "species"] = "Emperor"  # only in the last rows: the split column puts them in test
    df["fold"] = ["train"] * 150 + ["val"] * 20 + ["test"] * 30
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"^{path}: target 'species': 5 rows hold labels that the training rows never"):
        table.load_table(path, {"species": None}, split={"column": "fold"})
    with pytest.raises(ValueError, match=r"split: unknown option\(s\) \['tset_fraction', 'val_frac'\]"):
        MultiTaskData.from_frame(penguins(100), {"species": None}, split={"val_frac": 0.5, "tset_fraction": 0.5})
    with pytest.raises(ValueError, match="val_fraction 0.6 and test_fraction 0.6 must each be in"):
        MultiTaskData.from_frame(penguins(100), {"species": None}, split={"val_fraction": 0.6, "test_fraction": 0.6})
