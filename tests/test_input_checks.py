"""Non-finite values and bad labels are caught where they enter: at load time and at the API, with messages that
name the column / input / task at fault, the bad value(s) and how many rows."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from multitask import HardSharing, InputSchema, Task, Trainer
from multitask.data import MultiTaskData, TabularPreprocessor, load_yeast
from multitask.data.census import census_targets

INF, NAN = float("inf"), float("nan")


# ------------------------------------------------------------------------------------------ preprocessing
def test_fit_rejects_infinite_features_but_imputes_missing_ones():
    df = pd.DataFrame({"age": [1.0, NAN, 3.0, 5.0], "w": [0.0, 1.0, 2.0, 3.0]})
    pre = TabularPreprocessor(["age", "w"], []).fit(df)
    assert pre.means["age"] == pytest.approx(3.0)
    assert pre.transform(df)["num"][1, 0].item() == pytest.approx(0.0)  # NaN reads as the mean
    with pytest.raises(ValueError, match=r"feature column 'age': 2 rows are infinite") as e:
        TabularPreprocessor(["age", "w"], []).fit(df.assign(age=[INF, 1.0, -INF, 2.0]))
    assert "empty for a missing value" in str(e.value)


def test_transform_rejects_infinite_features():
    pre = TabularPreprocessor(["age"], []).fit(pd.DataFrame({"age": [1.0, 2.0, 3.0]}))
    with pytest.raises(ValueError, match=r"feature column 'age': 3 rows are infinite \(inf/-inf\)"):
        pre.transform(pd.DataFrame({"age": [INF, 1.0, -INF, NAN, INF]}))
    with pytest.raises(ValueError, match=r"feature column 'age': 1 row is infinite"):
        pre.transform(pd.DataFrame({"age": ["inf", "1"]}))  # text that pandas parses as inf


def test_fit_rejects_an_entirely_empty_numeric_column():
    df = pd.DataFrame({"age": [NAN, NAN, NAN], "w": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"feature column 'age': all 3 training rows are empty"):
        TabularPreprocessor(["age", "w"], []).fit(df)


def test_fit_rejects_no_rows():
    with pytest.raises(ValueError, match="0 rows"):
        TabularPreprocessor(["age"], []).fit(pd.DataFrame({"age": pd.Series([], dtype="float64")}))


@pytest.mark.parametrize("stage", ["fit", "transform"])
def test_text_in_a_numeric_column_names_the_column_the_count_and_an_example(stage):
    good = pd.DataFrame({"age": ["1", "2", "3", ""]})
    bad = pd.DataFrame({"age": ["1", "old", "nan", "old", None, "x"]})
    pre = TabularPreprocessor(["age"], [])
    with pytest.raises(ValueError, match=r"feature column 'age' must be numeric: 3 rows .*'old'.*'x'"):
        if stage == "fit":
            pre.fit(bad)
        else:
            pre.fit(good).transform(bad)


# ------------------------------------------------------------------------------------------ loaders
def _census_frame(income, marital):
    return pd.DataFrame({"income": income, "marital_stat": marital})


@pytest.mark.parametrize("income, marital, message", [
    (["50000+.", "inf", "- 50000.", "inf"], ["Never married"] * 4,
     r"census column 'income' \(task 'income'\): 2 rows .*'inf'"),
    (["50000+.", "- 50000.", "- 50000."], ["Never married", "inf", "Divorced"],
     r"census column 'marital_stat' \(task 'marital'\): 1 row .*'inf'"),
])
def test_census_rejects_unknown_labels_naming_the_column_and_count(income, marital, message):
    with pytest.raises(ValueError, match=message):
        census_targets(_census_frame(income, marital))


def test_census_empty_label_cells_are_missing_labels():
    y = census_targets(_census_frame(["50000+.", None, "- 50000."], ["Never married", "Divorced", None]))
    assert y["income"][0] == 1 and math.isnan(y["income"][1]) and y["income"][2] == 0
    assert y["marital"][0] == 1 and y["marital"][1] == 0 and math.isnan(y["marital"][2])


def _yeast_csv(tmp_path, label1):
    n = len(label1)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({f"Att{i}": rng.normal(size=n) for i in range(1, 104)})
    for i in range(1, 15):
        df[f"Class{i}"] = label1 if i == 1 else [0] * n
    path = tmp_path / "yeast.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("label1, message", [
    ([0, 1, "inf", 1, 0, "-inf", 0, 1, 0, 1], r"yeast column 'Class1' \(task 'class1'\): 2 rows are infinite"),
    ([0, 1, 7, 1, 0, 7, 0, 1, 0, 1], r"yeast column 'Class1' \(task 'class1'\): 2 rows .*\(e\.g\. 7\)"),
    (["true", "false", "yes", "true"] * 3, r"yeast column 'Class1' \(task 'class1'\): 3 rows .*'yes'"),
])
def test_yeast_rejects_bad_labels_naming_the_column_and_count(tmp_path, label1, message):
    with pytest.raises(ValueError, match=message):
        load_yeast(_yeast_csv(tmp_path, label1))


# ------------------------------------------------------------------------------------------ MultiTaskData
@pytest.mark.parametrize("dict_inputs", [False, True])
@pytest.mark.parametrize("bad, what", [(INF, "(0 NaN, 2 inf/-inf entries)"), (NAN, "(1 NaN, 1 inf/-inf entries)")])
def test_non_finite_inputs_are_rejected_naming_the_key_and_count(dict_inputs, bad, what):
    x = torch.randn(6, 3)
    x[1, 2] = bad
    x[4, 0] = -INF
    inputs = {"num": x, "cat": torch.zeros(6, 1, dtype=torch.long)} if dict_inputs else x
    key = "input 'num'" if dict_inputs else "inputs"
    with pytest.raises(ValueError, match=rf"{key}: 2 rows have non-finite values") as e:
        MultiTaskData(inputs, {"y": torch.zeros(6)})
    assert what in str(e.value)


def test_infinite_targets_are_rejected_naming_the_task_but_nan_is_a_missing_label():
    x = torch.randn(4, 2)
    MultiTaskData(x, {"y": torch.tensor([1.0, NAN, 0.0, NAN])})
    with pytest.raises(ValueError, match=r"task 'y': 2 rows have infinite targets"):
        MultiTaskData(x, {"y": torch.tensor([1.0, INF, 0.0, -INF])})


@pytest.mark.parametrize("inputs, targets, error, message", [
    (np.zeros((3, 2), dtype="float32"), {"y": torch.zeros(3)}, TypeError, "inputs are a numpy array"),
    ({"num": np.zeros((3, 2))}, {"y": torch.zeros(3)}, TypeError, "input 'num' is a numpy array"),
    (torch.zeros(3, 2), {"y": np.zeros(3)}, TypeError, "task 'y': targets are a numpy array"),
    (torch.zeros(3, 2), {"y": torch.tensor(1.0)}, ValueError, "task 'y': targets are a 0-dim tensor"),
    (torch.tensor(1.0), {"y": torch.zeros(1)}, ValueError, "inputs are a 0-dim tensor"),
    ({}, {"y": torch.zeros(1)}, ValueError, "inputs are an empty dict"),
    ({"num": torch.zeros(3, 2), "cat": torch.zeros(2, 1)}, {"y": torch.zeros(3)}, ValueError,
     "input 'cat' has 2 rows but input 'num' has 3"),
])
def test_non_tensor_and_0_dim_data_give_a_clear_error(inputs, targets, error, message):
    with pytest.raises(error, match=message):
        MultiTaskData(inputs, targets)


def test_fit_on_0_training_rows_is_a_clear_error():
    tasks = [Task("y", "regression")]
    empty = MultiTaskData(torch.zeros(0, 8), {"y": torch.zeros(0)})  # an empty subset itself is allowed
    assert len(empty) == 0
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(4,))
    with pytest.raises(ValueError, match="0 rows"):
        Trainer(model, tasks, epochs=1, progress=False).fit(empty)


# ------------------------------------------------------------------------------------------ Task declaration
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(kind="multiclass", n_outputs=2.5), TypeError, "n_outputs must be an int, got 2.5"),
    (dict(kind="regression", n_outputs=True), TypeError, "n_outputs must be an int, got True"),
    (dict(kind="regression", n_outputs="3"), TypeError, "n_outputs must be an int, got '3'"),
    (dict(kind="binary", importance=INF), ValueError, "importance must be >= 0 and finite, got inf"),
    (dict(kind="binary", importance=NAN), ValueError, "importance must be >= 0 and finite, got nan"),
    (dict(kind="binary", importance="high"), TypeError, "importance must be a number, got 'high'"),
    (dict(kind="binary", metrics="auc"), TypeError, r"metrics=\['auc'\]"),
    (dict(kind="binary", metrics=[1]), TypeError, "metric names must be strings"),
])
def test_bad_task_declarations_are_rejected(kwargs, error, message):
    with pytest.raises(error, match=message) as e:
        Task("t", **kwargs)
    assert "task 't'" in str(e.value)


def test_numpy_integers_are_accepted_as_n_outputs():
    t = Task("c", "multiclass", n_outputs=np.int64(3), importance=np.float32(0.5))
    assert type(t.n_outputs) is int and t.n_outputs == 3 and type(t.importance) is float


# ------------------------------------------------------------------------------------------ target checks
BIN, ML = Task("b", "binary"), Task("m", "multilabel", n_outputs=2)
MC, REG, REG2 = Task("c", "multiclass", n_outputs=3), Task("r", "regression"), Task("r2", "regression", n_outputs=2)


@pytest.mark.parametrize("task, target, message", [
    (BIN, torch.tensor([0.0, 7.0, 1.0, 7.0]), r"task 'b': 2 rows have labels other than 0/1 \(e\.g\. 7\)"),
    (BIN, torch.tensor([0, 7, 1, -1]), r"task 'b': 1 row has labels other than 0/1 \(e\.g\. 7\)"),
    (BIN, torch.tensor([0.0, -1.0, 1.0, NAN]), r"task 'b': 1 row .*-1.*NaN marks a missing label"),
    (ML, torch.tensor([[0.0, 2.0], [1.0, NAN], [2.0, 2.0]]),
     r"task 'm': 2 rows have labels other than 0/1 \(e\.g\. 2\)"),
    (ML, torch.zeros(4), r"task 'm': targets of shape \(4,\); a multilabel task with n_outputs=2 takes \[N, 2\]"),
    (MC, torch.tensor([0.0, 1.7, 2.0]), r"task 'c': 1 row has class labels that are not whole numbers \(e\.g\. 1\.7\)"),
    (MC, torch.tensor([0, 5, 2, 5, 7, -1]), r"task 'c': 3 rows have class labels outside 0\.\.2 \(e\.g\. 5, 7\)"),
    (MC, torch.tensor([0.0, 5.0, NAN]), r"task 'c': 1 row has class labels outside 0\.\.2 \(e\.g\. 5\)"),
    (MC, torch.tensor([0.0, -1.0, 2.0]), r"task 'c': 1 row .*-1.*NaN marks a missing label"),
    (MC, torch.zeros(3, 3), r"task 'c': targets of shape \(3, 3\); a multiclass task with n_outputs=3 takes \[N\]"),
    (REG, torch.zeros(3, 1), r"task 'r': targets of shape \(3, 1\); a regression task with n_outputs=1 takes \[N\]"),
    (REG2, torch.zeros(3), r"task 'r2': targets of shape \(3,\); a regression task with n_outputs=2 takes \[N, 2\]"),
    (REG, torch.tensor([1, -2, 3]), r"task 'r': 1 row has negative integer targets"),
    (REG, torch.tensor([1.0, INF, 3.0]), r"task 'r': 1 row has infinite targets"),
])
def test_bad_targets_are_rejected_by_check_tasks(task, target, message):
    data = MultiTaskData(torch.zeros(len(target), 2), {task.name: target}) if not torch.isinf(target).any() else None
    with pytest.raises(ValueError, match=message):
        if data is None:
            task.check_targets(target)  # MultiTaskData itself already refuses inf targets
        else:
            data.check_tasks([task])


def test_check_targets_rejects_numpy_and_0_dim_targets():
    with pytest.raises(TypeError, match=r"task 'b': targets are a numpy array.*torch\.as_tensor"):
        BIN.check_targets(np.zeros(3))
    with pytest.raises(ValueError, match="task 'b': targets are a 0-dim tensor"):
        BIN.check_targets(torch.tensor(1.0))


def test_good_targets_pass_including_missing_labels():
    BIN.check_targets(torch.tensor([0.0, 1.0, NAN]))
    BIN.check_targets(torch.tensor([0, 1, -1]))
    BIN.check_targets(torch.tensor([True, False]))
    ML.check_targets(torch.tensor([[0.0, NAN], [1.0, 1.0]]))
    MC.check_targets(torch.tensor([0, 2, -1, 1]))
    MC.check_targets(torch.tensor([0.0, 2.0, NAN]))
    REG.check_targets(torch.tensor([-1.5, NAN, 3.0]))
    REG2.check_targets(torch.randn(4, 2))


def test_fit_with_an_out_of_range_class_names_the_task_instead_of_an_index_error():
    tasks = [Task("c", "multiclass", n_outputs=3)]
    data = MultiTaskData(torch.randn(8, 8), {"c": torch.tensor([0, 1, 2, 5, 0, 1, 2, 0])})
    trainer = Trainer(HardSharing.tabular(tasks, InputSchema(8), hidden=(4,)), tasks, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"task 'c': 1 row has class labels outside 0\.\.2 \(e\.g\. 5\)"):
        trainer.fit(data)
