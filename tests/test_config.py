"""Bad configs exit with code 2 and one message naming the field and what is allowed; no traceback."""
import pytest
import yaml

from multitask import config
from multitask.cli import main
from multitask.config import ConfigError

GOOD = {"data": {"name": "yeast"}, "model": {"name": "hard_sharing", "hidden": [32]}, "balancer": {"name": "equal"}}


def _write(tmp_path, raw):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("patch, message", [
    ({"modle": {"name": "mmoe"}}, "modle: unknown field; sections are: data, tasks, model, balancer, trainer, baselines"),
    ({"model": {"name": "transformer"}}, "model.name: unknown model 'transformer'; choose one of: independent, hard_sharing, mmoe"),
    ({"model": {"name": "mmoe", "n_expert": 3}}, "model.n_expert: unknown field; model 'mmoe' takes: n_experts (default 8)"),
    ({"model": {"name": "hard_sharing", "hidden": "big"}}, "model.hidden"),
    ({"balancer": {"name": "mgda2"}}, "balancer.name: unknown balancer 'mgda2'; choose one of: equal, static, uncertainty"),
    ({"balancer": {"name": "uncertainty", "init": 1}}, "balancer.init: unknown field; balancer 'uncertainty' takes: init_log_var"),
    ({"trainer": {"epochs": 0}}, "trainer.epochs: Input should be greater than or equal to 1"),
    ({"trainer": {"optimizer": "adagrad"}}, "trainer.optimizer: Input should be 'adam', 'adamw' or 'sgd'"),
    ({"trainer": {"lr": "fast"}}, "trainer.lr: Input should be a valid number"),
    ({"data": {"name": "imagenet"}}, "data.name: Input should be 'census-income', 'yeast', 'table'"),
    ({"data": {"name": "yeast", "val_fraction": 1.5}}, "data.val_fraction: Input should be less than 1"),
    ({"tasks": {"class99": {}}}, "tasks.class99: unknown task for dataset 'yeast'; it has: class1, class2"),
    ({"trainer": {"monitor": "nope.auc"}}, "trainer.monitor"),
    ({"baselines": "/no/such/run"}, "baselines: must be 'none', 'auto' or an existing run directory"),
    ({"data": {"name": "yeast", "missing_indicator": True}}, "data.missing_indicator: only a table of features"),
    ({"trainer": {"accumulate_shared": 0}}, "trainer.accumulate_shared: Input should be greater than or equal to 1"),
    ({"trainer": {"accumulate_task": "lots"}}, "trainer.accumulate_task: Input should be a valid integer"),
    ({"data": {"name": "yeast", "image_size": [0, 8]}}, "data.image_size: height and width must be >= 1"),
    ({"data": {"name": "table", "path": "t.csv", "val_fraction": 0.3}},
     "data.val_fraction: a table is split by data.split: {val_fraction, test_fraction, seed}"),
    ({"data": {"name": "sources", "seed": 7, "sources": {"a": {"path": "a.csv", "targets": {"y": None}}}}},
     "data.seed: a source is split by data.split"),
    ({"data": {"name": "sources", "missing_indicator": True, "sources": {"a": {"path": "a.csv", "targets": {"y": None}}}}},
     "data.missing_indicator: only a table of features"),
    ({"data": {"name": "table", "path": "t.csv", "image_column": "path", "missing_indicator": True}},
     "data.missing_indicator: only a table of features"),
    ({"data": {"name": "sources", "image_column": "path", "sources": {"a": {"path": "a.csv", "targets": {"y": None}}}}},
     "data.image_column: sources are tables of features"),
])
def test_bad_config_exits_2_naming_the_field(tmp_path, capsys, patch, message):
    raw = {**GOOD, **patch}
    code = main(["train", str(_write(tmp_path, raw)), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_set_overrides_are_parsed_as_yaml(tmp_path):
    cfg = config.load(_write(tmp_path, GOOD), ["trainer.epochs=3", "model.hidden=[8, 4]", "trainer.grad_clip=1.5"])
    assert cfg.trainer.epochs == 3 and cfg.model.options["hidden"] == [8, 4] and cfg.trainer.grad_clip == 1.5
    with pytest.raises(ConfigError, match="expected key=value"):
        config.load(_write(tmp_path, GOOD), ["trainer.epochs"])
    with pytest.raises(ConfigError, match="trainer.epochs: Input should be a valid integer"):
        config.load(_write(tmp_path, GOOD), ["trainer.epochs=many"])


def test_task_metrics_must_fit_the_task_kind(tmp_path):
    with pytest.raises(ConfigError, match="tasks.class1: task 'class1': metric 'mse' does not apply"):
        config.validate({**GOOD, "tasks": {"class1": {"metrics": ["mse"]}}})


def test_config_file_problems(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    assert main(["train", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_resolved_config_round_trips():
    cfg = config.validate(GOOD)
    again = config.validate(yaml.safe_load(config.dump(cfg)))
    assert again == cfg and again.trainer.epochs == 10
