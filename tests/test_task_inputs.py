"""Per-task inputs: a task restricted to some columns, or owning columns no other task reads."""
import pytest
import torch

from multitask import HardSharing, InputSchema, Task, Trainer, TrainerConfig
from multitask.balancing import BALANCERS
from multitask.config import ConfigError, validate
from multitask.models.task_inputs import TaskInputs, visible_columns

NAMES = ("age", "hours", "wage", "sex", "job")  # three numeric columns, then two categorical ones
SCHEMA = InputSchema(3, (3, 4), NAMES)
TASKS = [Task("a", "binary"), Task("b", "regression"), Task("c", "binary")]


def _inputs(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"num": torch.randn(n, 3, generator=g),
            "cat": torch.stack([torch.randint(1, 3, (n,), generator=g), torch.randint(1, 4, (n,), generator=g)], 1)}


def _model(visible):
    torch.manual_seed(0)
    return TaskInputs(HardSharing.tabular(TASKS, SCHEMA, hidden=(8,), head_hidden=(4,)), SCHEMA, visible)


def test_visible_columns_follow_inputs_and_private_inputs():
    seen = visible_columns(NAMES, {"a": ["age", "sex"]}, {"b": ["wage"]}, ["a", "b", "c"])
    assert seen == {"a": ("age", "sex"), "b": NAMES, "c": ("age", "hours", "sex", "job")}
    with pytest.raises(ValueError, match=r"tasks.a.inputs: unknown input column\(s\) \['salary'\]"):
        visible_columns(NAMES, {"a": ["salary"]}, {}, ["a", "b"])
    with pytest.raises(ValueError, match="column 'wage' is already private to task 'a'"):
        visible_columns(NAMES, {}, {"a": ["wage"], "b": ["wage"]}, ["a", "b"])
    with pytest.raises(ValueError, match="task 'b' would read no input column"):
        visible_columns(NAMES, {"b": ["wage"]}, {"a": ["wage"]}, ["a", "b"])


def test_a_task_output_does_not_depend_on_columns_it_cannot_see():
    model = _model(visible_columns(NAMES, {"a": ["age", "sex"]}, {"b": ["wage"]}, ["a", "b", "c"]))
    x = _inputs()
    y = _inputs(seed=1)  # every column different
    changed = {"num": torch.cat([x["num"][:, :1], y["num"][:, 1:]], 1),
               "cat": torch.stack([x["cat"][:, 0], y["cat"][:, 1]], 1)}  # only age and sex kept
    assert torch.equal(model(x, ["a"])["a"], model(changed, ["a"])["a"])
    wage_changed = {"num": torch.cat([x["num"][:, :2], y["num"][:, 2:]], 1), "cat": x["cat"]}
    assert torch.equal(model(x, ["c"])["c"], model(wage_changed, ["c"])["c"])  # b's private column
    assert not torch.equal(model(x, ["b"])["b"], model(wage_changed, ["b"])["b"])
    # the neutral values: 0 for numbers, the 'unknown' category 0
    plain = model.model
    masked = {"num": x["num"] * torch.tensor([1.0, 0.0, 0.0]), "cat": x["cat"] * torch.tensor([1, 0])}
    assert torch.allclose(model(x, ["a"])["a"], plain(masked, ["a"])["a"])


def test_tasks_seeing_the_same_columns_share_one_forward_and_training_runs():
    model = _model(visible_columns(NAMES, {"a": ["age", "sex"]}, {}, ["a", "b", "c"]))
    assert model.groups == [["a"], ["b", "c"]]
    calls = []
    model.model.trunk.register_forward_hook(lambda *a: calls.append(1))
    model(_inputs())
    assert len(calls) == 2
    calls.clear()
    model(_inputs(), ["b"])
    assert len(calls) == 1
    trainer = Trainer(model, TASKS, BALANCERS["mgda"](TASKS), TrainerConfig(epochs=1, batch_size=16, progress=False))
    g = torch.Generator().manual_seed(2)
    losses = trainer.train_step(_inputs(), {"a": torch.randint(0, 2, (16,), generator=g).float(),
                                            "b": torch.randn(16, generator=g),
                                            "c": torch.randint(0, 2, (16,), generator=g).float()})
    assert all(torch.isfinite(v) for v in losses.values())
    features = Trainer(model, TASKS, BALANCERS["mgda"](TASKS, mode="features"),
                       TrainerConfig(epochs=1, batch_size=16, progress=False))
    with pytest.raises(ValueError, match="per-task inputs.*mode: parameters"):
        features.train_step(_inputs(), {"a": torch.zeros(16), "b": torch.zeros(16), "c": torch.zeros(16)})


def test_config_refuses_features_mode_and_image_inputs(no_work):
    base = {"data": {"name": "census-income"}, "tasks": {"income": {"inputs": ["age", "education"]}, "marital": {}}}
    validate(base)
    with pytest.raises(ConfigError, match="balancer.mode: per-task inputs"):
        validate({**base, "balancer": {"name": "mgda", "mode": "features"}})
    with pytest.raises(ConfigError, match="tasks: inputs / private_inputs name table columns"):
        validate({"data": {"name": "multi-fashion"}, "tasks": {"left": {"inputs": ["x"]}, "right": {}}})


def test_a_table_run_with_per_task_inputs_trains_predicts_and_names_bad_columns(tmp_path, capsys):
    import yaml

    from multitask.cli import main
    from test_table import penguins

    df = penguins(200)
    df.to_csv(tmp_path / "p.csv", index=False)
    raw = {"data": {"name": "table", "path": str(tmp_path / "p.csv"), "targets": {"species": None, "sex": "binary"}},
           "tasks": {"species": {"private_inputs": ["bill_length_mm"]}, "sex": {"inputs": ["island", "flipper_length_mm"]}},
           "model": {"name": "hard_sharing", "hidden": [16], "head_hidden": [8]},
           "trainer": {"epochs": 2, "batch_size": 32, "progress": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    df.drop(columns=["species", "sex"]).head(20).to_csv(tmp_path / "rows.csv", index=False)
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "rows.csv"),
                 "--output", str(tmp_path / "out.csv")]) == 0
    raw["tasks"]["sex"]["inputs"] = ["island", "flipper"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert "tasks.sex.inputs: unknown input column(s) ['flipper']" in err and "Traceback" not in err
    assert not (tmp_path / "run2" / "checkpoints").exists()


def test_indicators_go_with_their_column_and_config_checks_what_needs_no_names(no_work):
    names = ("age", "age__missing", "hours", "sex")
    seen = visible_columns(names, {"a": ["age"]}, {"b": ["hours"]}, ["a", "b", "c"])
    assert seen["a"] == ("age", "age__missing")
    seen = visible_columns(names, {}, {"a": ["age"]}, ["a", "b"])
    assert seen["b"] == ("hours", "sex")  # age's indicator is private to a, as age is
    base = {"data": {"name": "census-income"}}
    with pytest.raises(ConfigError, match="tasks.income.inputs"):
        validate({**base, "tasks": {"income": {"inputs": []}, "marital": {}}})
    with pytest.raises(ConfigError, match="column 'age' is already private to task 'income'"):
        validate({**base, "tasks": {"income": {"private_inputs": ["age"]}, "marital": {"private_inputs": ["age"]}}})


def test_penalties_of_a_wrapped_model_come_from_each_groups_own_forward():
    from multitask import Sluice

    torch.manual_seed(0)
    inner = Sluice.tabular(TASKS, SCHEMA, hidden=(8,), head_hidden=(4,), orthogonality=0.1)
    model = TaskInputs(inner, SCHEMA, visible_columns(NAMES, {"a": ["age", "sex"]}, {}, ["a", "b", "c"]))
    x = _inputs()
    model(x)
    terms = model.penalties(["a", "b", "c"])
    assert set(terms) == {"a", "b", "c"}
    inner(model._masked(x, 0), tasks=["a"])  # a's own forward, on the columns a sees
    assert torch.allclose(terms["a"], inner.penalties(["a"])["a"])
