import os

import pytest
import torch

from conftest import synthetic
from multitask import Equal, HardSharing, InputSchema, Trainer, Uncertainty
from multitask.training import StopTraining
from multitask.training.checkpoint import load_checkpoint, save_atomic


def _model(tasks, seed=0):
    torch.manual_seed(seed)
    return HardSharing.tabular(tasks, InputSchema(8), hidden=(32,), head_hidden=(16,), dropout=0.1)


def test_training_lowers_every_task_loss_with_missing_labels():
    tasks, data = synthetic(missing=0.3)
    train, val = data.subset(torch.arange(400)), data.subset(torch.arange(400, 512))
    trainer = Trainer(_model(tasks), tasks, Uncertainty(tasks), epochs=15, batch_size=32, lr=3e-3, progress=False)
    before = trainer.evaluate(val)["loss"]
    history = trainer.fit(train, val)
    after = trainer.evaluate(val)["loss"]
    assert all(after[t] < 0.7 * before[t] for t in before), (before, after)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert len(history) == 15 and set(history[-1]["weights"]) == {"reg", "bin", "cls"}


def _fit(tasks, data, run_dir, epochs, stop_after=None, resume=False):
    trainer = Trainer(_model(tasks), tasks, Uncertainty(tasks), epochs=epochs, batch_size=64, lr=1e-2,
                      scheduler="step", step_size=1, gamma=0.7, progress=False, run_dir=run_dir)

    def stop(tr, record):
        if stop_after is not None and record["epoch"] == stop_after:
            raise StopTraining

    trainer.fit(data.subset(torch.arange(384)), data.subset(torch.arange(384, 512)), resume=resume,
                callbacks=[stop])
    return trainer


def test_resume_gives_identical_weights(tmp_path):
    tasks, data = synthetic(missing=0.2)
    straight = _fit(tasks, data, tmp_path / "a", epochs=4)
    _fit(tasks, data, tmp_path / "b", epochs=4, stop_after=2)  # interrupted after epoch 2
    _fit(tasks, data, tmp_path / "b", epochs=4, resume=True)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["balancer"]["log_vars"], b["balancer"]["log_vars"])
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_resume_drops_metric_lines_beyond_the_checkpoint(tmp_path):
    tasks, data = synthetic()
    _fit(tasks, data, tmp_path, epochs=2)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a crash after logging epoch 3 but before its checkpoint
        f.write('{"epoch": 3, "train_loss": {}}\n')
    _fit(tasks, data, tmp_path, epochs=3, resume=True)
    epochs = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 3 and '"train_loss": {}' not in epochs[-1]


def test_early_stopping_and_best_checkpoint(tmp_path):
    tasks, data = synthetic()
    trainer = Trainer(_model(tasks), tasks, epochs=50, batch_size=64, lr=5e-2, patience=2, monitor="bin.auc",
                      progress=False, run_dir=tmp_path)
    history = trainer.fit(data.subset(torch.arange(200)), data.subset(torch.arange(200, 512)))
    assert len(history) < 50
    best = max(history, key=lambda r: r["val"]["bin"]["auc"])
    assert trainer.early.best_epoch == best["epoch"]
    assert len(history) - best["epoch"] == 2
    saved = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert saved["epoch"] == best["epoch"]
    # the trainer ends on the best weights
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, saved["model"][k])


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"x": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"x": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    assert os.listdir(tmp_path) == ["c.pt"]  # no temp file left behind


def test_checkpoints_load_without_running_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": os.system}, path)  # a pickle that would reference a callable
    with pytest.raises(RuntimeError, match="refuses to load") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value)  # never point a user at the unsafe way to load it


def test_errors_name_the_task():
    tasks, data = synthetic()
    with pytest.raises(ValueError, match="model has tasks"):
        Trainer(_model(tasks[:2]), tasks)
    trainer = Trainer(_model(tasks), tasks, progress=False)
    bad = type(data)(data.inputs, {**data.targets, "extra": data.targets["reg"]})
    with pytest.raises(KeyError, match="unknown task"):
        trainer.fit(bad)
    with pytest.raises(ValueError, match="monitor 'reg.auc' is not available"):
        Trainer(_model(tasks), tasks, monitor="reg.auc")


def test_predict_runs_only_requested_heads_and_gives_probabilities():
    tasks, data = synthetic()
    trainer = Trainer(_model(tasks), tasks, Equal(tasks), progress=False)
    preds = trainer.predict(data.inputs[:10], ["bin", "cls"])
    assert set(preds) == {"bin", "cls"}
    assert ((preds["bin"] >= 0) & (preds["bin"] <= 1)).all()
    assert torch.allclose(preds["cls"].sum(-1), torch.ones(10))


def test_train_step_without_masks_reads_missing_labels_from_targets():
    tasks, data = synthetic(64, missing=0.5)
    trainer = Trainer(_model(tasks), tasks, progress=False)
    losses = trainer.train_step(data.inputs, data.targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters() if p.grad is not None)
