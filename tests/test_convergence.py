"""Per-task convergence: per-task patience, frozen heads kept at their best, protection by distillation,
the end of training when every task has stopped, and resume in the middle of it."""
import math

import pytest
import torch

from conftest import synthetic
from multitask import HardSharing, InputSchema, Trainer
from multitask.training import Callback
from multitask.training.convergence import TaskConvergence
from multitask.training.distillation import distill_loss


def _model(tasks, seed=0):
    torch.manual_seed(seed)
    return HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,), dropout=0.1)


def _data(n=320, seed=0):
    """Train and val splits where `reg` is learnable but `bin`'s validation labels are noise (it stops early)."""
    tasks, data = synthetic(n, seed)
    g = torch.Generator().manual_seed(1)
    val_targets = {t: y[256:].clone() for t, y in data.targets.items()}
    val_targets["bin"] = (torch.rand(n - 256, generator=g) < 0.5).float()
    from multitask.data import MultiTaskData

    val = MultiTaskData(data.inputs[256:], val_targets)
    return tasks, data.subset(torch.arange(256)), val


class Heads(Callback):
    """Records every task's own parameters at the end of each epoch (after a stop restored them)."""

    def __init__(self):
        self.seen = []

    def on_epoch_end(self, trainer, record):
        self.seen.append({t: [p.detach().clone() for p in trainer.model.task_parameters(t)] for t in trainer.tasks})
        self.seen[-1]["shared"] = [p.detach().clone() for p in trainer.model.shared_parameters()]


def _trainer(tasks, run_dir=None, epochs=8, protect="none", patience=1):
    return Trainer(_model(tasks), tasks, epochs=epochs, batch_size=32, lr=2e-2, progress=False, run_dir=run_dir,
                   per_task_patience=patience, protect=protect)


def test_update_follows_each_tasks_own_metric_and_direction():
    tasks, _ = synthetic(8)
    model = _model(tasks)
    conv = TaskConvergence(model, {t.name: t for t in tasks}, patience=2)
    assert conv.metric == {"reg": "mse", "bin": "auc", "cls": "accuracy"}
    seq = [{"reg": 1.0, "bin": 0.6, "cls": 0.5}, {"reg": 0.9, "bin": 0.55, "cls": 0.5},
           {"reg": 0.95, "bin": 0.58, "cls": 0.6}, {"reg": 0.8, "bin": 0.7, "cls": 0.4}]
    stops = []
    for e, v in enumerate(seq, start=1):
        stops.append(conv.update(e, {t: {conv.metric[t]: x} for t, x in v.items()}))
    # bin: best 0.6 at epoch 1, worse at 2 and 3 -> stops at 3; reg: 1.0, 0.9 (better), 0.95, 0.8 (better)
    assert stops == [[], [], ["bin"], []]
    assert conv.stopped == {"bin": 3} and conv.best_epoch == {"reg": 4, "bin": 1, "cls": 3}
    assert conv.best["reg"] == 0.8 and conv.bad["cls"] == 1
    # a stopped task is no longer tracked: a later better value changes nothing
    conv.update(5, {"reg": {"mse": 0.9}, "bin": {"auc": 0.99}, "cls": {"accuracy": 0.1}})
    assert conv.best["bin"] == 0.6 and conv.stopped == {"bin": 3, "cls": 5}


def test_a_stopped_tasks_head_is_its_best_and_stays_bit_identical():
    tasks, train, val = _data()
    heads = Heads()
    trainer = _trainer(tasks, epochs=8)
    history = trainer.fit(train, val, callbacks=[heads])
    conv = trainer.convergence
    assert "bin" in conv.stopped, history[-1]["stopped"]  # noise labels: it stops
    stop, best = conv.stopped["bin"], conv.best_epoch["bin"]
    assert best < stop
    assert history[stop - 1]["stopping"] == ["bin"] or "bin" in history[stop - 1]["stopping"]
    # from the stop on, the head is the one of its best epoch, bit for bit, every epoch to the end
    for e in range(stop, len(history) + 1):
        for p, q in zip(heads.seen[e - 1]["bin"], heads.seen[best - 1]["bin"]):
            assert torch.equal(p, q), (e, best)
    # the shared trunk kept training after the stop
    assert len(history) > stop
    assert any(not torch.equal(p, q) for p, q in zip(heads.seen[-1]["shared"], heads.seen[stop - 1]["shared"]))
    # the final.json figures: metric at stop (its best) and at the end
    s = conv.summary(trainer.evaluate(val)["metrics"])
    assert s["bin"]["stop_epoch"] == stop and s["bin"]["at_stop"] == conv.best["bin"]
    assert s["bin"]["metric"] == "auc" and math.isfinite(s["bin"]["at_end"])


def test_protect_distills_the_model_at_the_best_epoch_into_the_trunk():
    tasks, train, val = _data()
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))  # no dropout: outputs by hand
    trainer = Trainer(model, tasks, epochs=8, batch_size=32, lr=2e-2, progress=False, per_task_patience=1,
                      protect="distill")
    trainer.fit(train, val)
    conv = trainer.convergence
    assert "bin" in conv.stopped and "bin" in conv.teachers
    teacher = conv.teachers["bin"]
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in conv.best_models["bin"].items())
    head = [p.detach().clone() for p in model.task_parameters("bin")]
    trunk = [p.detach().clone() for p in model.shared_parameters()]
    batch = train.subset(torch.arange(32))
    with torch.no_grad():
        soft = teacher(batch.inputs)["bin"]
        student = model(batch.inputs)["bin"]
    losses = trainer.train_step(batch.inputs, batch.targets)
    # its loss is the distillation of the best-epoch model on every row (its labels are no longer used)
    assert trainer._present["bin"]
    assert losses["bin"].item() == pytest.approx(distill_loss(tasks[1], student, soft).mean().item(), rel=1e-6)
    for p, q in zip(model.task_parameters("bin"), head):
        assert torch.equal(p, q)  # frozen although it has a loss
    assert any(not torch.equal(p, q) for p, q in zip(model.shared_parameters(), trunk))


def test_training_ends_when_every_task_has_stopped(monkeypatch):
    tasks, train, val = _data()
    trainer = _trainer(tasks, epochs=10, patience=2)
    constant = {"loss": {t.name: 1.0 for t in tasks},
                "metrics": {"reg": {"mse": 1.0, "mae": 1.0, "r2": 0.0}, "bin": {"auc": 0.5, "accuracy": 0.5, "f1": 0.5},
                            "cls": {"accuracy": 0.3, "macro_f1": 0.3}}}
    monkeypatch.setattr(trainer, "evaluate", lambda data: constant)
    history = trainer.fit(train, val)
    assert len(history) == 3  # best at epoch 1, no improvement at 2 and 3: all stop at 3
    assert history[-1]["stopped"] == {"reg": 3, "bin": 3, "cls": 3}
    assert trainer.early.best_epoch == -1 and "best" not in history[0]  # no whole-model best is kept


def test_resume_in_the_middle_of_per_task_freezing_is_bit_identical(tmp_path):
    tasks, train, val = _data()
    for protect in ("none", "distill"):
        a = _trainer(tasks, tmp_path / protect / "a", epochs=6, protect=protect)
        ha = a.fit(train, val)
        stop = a.convergence.stopped.get("bin")
        assert stop is not None and stop < 6
        b = _trainer(tasks, tmp_path / protect / "b", epochs=stop + 1, protect=protect)
        b.fit(train, val)  # interrupted one epoch after the stop
        b = _trainer(tasks, tmp_path / protect / "b", epochs=6, protect=protect)
        hb = b.fit(train, val, resume=True)
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), protect
        assert [r["stopped"] for r in ha] == [r["stopped"] for r in hb]
        assert a.convergence.summary(a.evaluate(val)["metrics"]) == b.convergence.summary(b.evaluate(val)["metrics"])


def test_options_are_checked():
    tasks, _ = synthetic(8)
    with pytest.raises(ValueError, match="exclude each other"):
        Trainer(_model(tasks), tasks, per_task_patience=2, patience=2)
    with pytest.raises(ValueError, match="per_task_patience"):
        Trainer(_model(tasks), tasks, protect="distill")
    with pytest.raises(ValueError, match="protect"):
        Trainer(_model(tasks), tasks, per_task_patience=2, protect="keep")
    with pytest.raises(ValueError, match="need validation data"):
        _trainer(tasks).fit(synthetic(64)[1])


def test_when_every_task_has_stopped_the_model_goes_back_to_the_last_improvement(monkeypatch):
    """reg improves at epochs 1-3, bin and cls only at 1; patience 2: bin and cls stop at 3, reg at 5. The final
    model is the trunk (and reg's head) of epoch 3, the last epoch any task improved, with bin's and cls's
    heads of epoch 1."""
    tasks, train, val = _data()
    trainer = _trainer(tasks, epochs=10, patience=2)
    reg = iter([3.0, 2.0, 1.0, 1.5, 1.5, 1.5, 1.5])

    def fake(data):
        return {"loss": {t.name: 1.0 for t in tasks},
                "metrics": {"reg": {"mse": next(reg)}, "bin": {"auc": 0.5}, "cls": {"accuracy": 0.3}}}
    monkeypatch.setattr(trainer, "evaluate", fake)
    seen = Heads()
    history = trainer.fit(train, val, callbacks=[seen])
    assert len(history) == 5 and history[-1]["stopped"] == {"bin": 3, "cls": 3, "reg": 5}
    assert trainer.convergence.last_improved == 3
    model = trainer.model
    for p, q in zip(model.shared_parameters(), seen.seen[2]["shared"]):
        assert torch.equal(p, q)
    for t, e in (("reg", 3), ("bin", 1), ("cls", 1)):
        for p, q in zip(model.task_parameters(t), seen.seen[e - 1][t]):
            assert torch.equal(p, q), t
    assert any(not torch.equal(p, q) for p, q in zip(seen.seen[3]["shared"], seen.seen[2]["shared"]))
