"""trainer.loggers: TensorBoard event files and an MLflow store, read back; resume logs no step twice."""
import json

import pytest
import torch

from conftest import synthetic
from multitask import HardSharing, InputSchema, Trainer, Uncertainty, config
from multitask.training.loggers import TensorBoardLogger, flatten, logger_callbacks, missing_package


def _trainer(run_dir, epochs, loggers, tasks):
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
    return Trainer(model, tasks, Uncertainty(tasks), epochs=epochs, batch_size=128, lr=1e-2, progress=False,
                   run_dir=run_dir, loggers=loggers)


def _split():
    tasks, data = synthetic()
    return tasks, data.subset(torch.arange(384)), data.subset(torch.arange(384, 512))


def _scalars(log_dir):
    """{tag: [(step, value)]} as TensorBoard would show it (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_flatten_keeps_numbers_and_names_lists_by_task():
    rec = {"kind": "gradients", "tasks": ["a", "b"], "cosine": [[1.0, -0.5], [-0.5, 1.0]], "norms": [2, 3],
           "weights": {"a": 0.5}, "best": True, "note": "x", "n": None}
    assert flatten(rec, "d", rec["tasks"]) == {"d/cosine/a/a": 1.0, "d/cosine/a/b": -0.5, "d/cosine/b/a": -0.5,
                                               "d/cosine/b/b": 1.0, "d/norms/a": 2.0, "d/norms/b": 3.0,
                                               "d/weights/a": 0.5}


@pytest.mark.skipif(missing_package("tensorboard") is not None, reason="tensorboard is not installed")
def test_tensorboard_logs_epochs_steps_diagnostics_and_resume_drops_a_crashed_attempt(tmp_path):
    tasks, train, val = _split()
    # diagnostics.jsonl as another callback writes it (an unknown kind of record is logged generically)
    (tmp_path / "diagnostics.jsonl").write_text(json.dumps(
        {"kind": "gradients", "step": 2, "epoch": 0, "tasks": ["reg", "bin", "cls"], "norms": [1.0, 2.0, 3.0],
         "cosine": [[1, 0.1, 0.2], [0.1, 1, 0.3], [0.2, 0.3, 1]]}) + "\n")
    trainer = _trainer(tmp_path, 2, ["tensorboard"], tasks)
    tb = TensorBoardLogger(tmp_path, step_every=1)
    history = trainer.fit(train, val, callbacks=[tb])
    s = _scalars(tmp_path / "tensorboard")
    assert [step for step, _ in s["train_loss/reg"]] == [3, 6]  # epochs at the global step that ends them
    assert s["train_loss/reg"][1][1] == pytest.approx(history[1]["train_loss"]["reg"])
    assert s["weights/cls"][0][1] == pytest.approx(history[0]["weights"]["cls"])
    assert s["val/bin/auc"][1][1] == pytest.approx(history[1]["val"]["bin"]["auc"])
    assert [step for step, _ in s["step/loss/bin"]] == [1, 2, 3, 4, 5, 6]
    assert s["diagnostics/gradients/norms/cls"] == [(2, 3.0)]
    assert s["diagnostics/gradients/cosine/bin/cls"][0][1] == pytest.approx(0.3)
    # a third epoch, then a "crash" undoes it: the checkpoint goes back to epoch 2 while events of epoch 3 stay
    last = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    _trainer(tmp_path, 3, ["tensorboard"], tasks).fit(train, val, resume=True,
                                                      callbacks=[TensorBoardLogger(tmp_path, 1)])
    (tmp_path / "checkpoints" / "last.pt").write_bytes(last)
    resumed = _trainer(tmp_path, 3, ["tensorboard"], tasks)
    history = resumed.fit(train, val, resume=True, callbacks=[TensorBoardLogger(tmp_path, 1)])
    s = _scalars(tmp_path / "tensorboard")
    assert [step for step, _ in s["train_loss/reg"]] == [3, 6, 9]  # each step once
    assert [step for step, _ in s["step/loss/bin"]] == list(range(1, 10))
    assert s["train_loss/reg"][2][1] == pytest.approx(history[2]["train_loss"]["reg"])


@pytest.mark.skipif(missing_package("mlflow") is not None, reason="mlflow is not installed")
def test_mlflow_logs_to_a_local_store_read_back_with_the_client_and_resume_continues_the_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tasks, train, val = _split()
    history = _trainer(tmp_path, 2, ["jsonl", "mlflow"], tasks).fit(train, val)
    saved = json.loads((tmp_path / "mlflow_run.json").read_text())
    assert saved["tracking_uri"] == (tmp_path / "mlruns").as_uri() and (tmp_path / "mlruns").is_dir()  # no server
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["trainer.lr"] == "0.01"
    losses = client.get_metric_history(saved["run_id"], "train_loss/cls")
    assert [m.step for m in losses] == [3, 6]
    assert [m.value for m in losses] == pytest.approx([r["train_loss"]["cls"] for r in history])
    weights = client.get_metric_history(saved["run_id"], "weights/reg")
    assert weights[-1].value == pytest.approx(history[1]["weights"]["reg"])
    assert client.get_metric_history(saved["run_id"], "val/bin/auc")[-1].value == pytest.approx(
        history[1]["val"]["bin"]["auc"])
    # a resumed run continues the same MLflow run; the epochs already logged are not logged again
    resumed = _trainer(tmp_path, 3, ["mlflow"], tasks)
    history = resumed.fit(train, val, resume=True)
    assert json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"] == saved["run_id"]
    steps = [m.step for m in client.get_metric_history(saved["run_id"], "train_loss/cls")]
    assert steps == [3, 6, 9]
    assert [m.step for m in client.get_metric_history(saved["run_id"], "step/loss/reg")] == []  # step_every=10 > 9


def test_missing_logger_packages_are_named_with_their_extra(monkeypatch, no_work):
    from multitask.training import loggers

    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    raw = {"data": {"name": "yeast"}, "trainer": {"loggers": ["jsonl", "mlflow"]}}
    with pytest.raises(config.ConfigError, match=r"trainer.loggers: .*pip install 'multitask\[mlflow\]'"):
        config.validate(raw)
    with pytest.raises(config.ConfigError, match="trainer.loggers"):
        config.validate({"data": {"name": "yeast"}, "trainer": {"loggers": ["wandb"]}})
    with pytest.raises(ValueError, match="run_dir"):
        monkeypatch.undo()
        logger_callbacks(["tensorboard"], None)
