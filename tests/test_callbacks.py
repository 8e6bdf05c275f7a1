"""The Callback hooks: order, what a step reports, keys added to the epoch record, state across a resume."""
import json

import pytest
import torch

from conftest import synthetic
from multitask import HardSharing, InputSchema, Trainer, Uncertainty
from multitask.training import Callback, StopTraining


def _trainer(tasks, run_dir=None, epochs=3):
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
    return Trainer(model, tasks, Uncertainty(tasks), epochs=epochs, batch_size=128, lr=1e-2, progress=False,
                   run_dir=run_dir)


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.events, self.steps, self.stop_at = [], 0, stop_at

    def on_fit_start(self, trainer):
        self.events.append(("fit_start", trainer.epoch))

    def on_step_start(self, trainer, inputs, targets, masks):
        self.before = [p.detach().clone() for p in trainer.model.parameters()]

    def on_step_end(self, trainer, info):
        after = list(trainer.model.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(self.before, after))  # called after the update
        assert info.step == trainer.global_step and set(info.losses) == set(trainer.tasks)
        assert all(not l.requires_grad for l in info.losses.values())
        self.steps += 1

    def on_epoch_end(self, trainer, record):
        record["seen_steps"] = self.steps
        self.events.append(("epoch_end", record["epoch"]))
        if record["epoch"] == self.stop_at:
            raise StopTraining

    def on_fit_end(self, trainer, history):
        self.events.append(("fit_end", len(history)))

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def test_hooks_run_in_order_and_record_keys_are_logged(tmp_path):
    tasks, data = synthetic()
    rec = Recorder()
    history = _trainer(tasks, tmp_path).fit(data.subset(torch.arange(384)), data.subset(torch.arange(384, 512)),
                                            callbacks=[rec])
    assert rec.events == [("fit_start", 0), ("epoch_end", 1), ("epoch_end", 2), ("epoch_end", 3), ("fit_end", 3)]
    assert rec.steps == 9 and [r["seen_steps"] for r in history] == [3, 6, 9]
    logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["seen_steps"] for r in logged] == [3, 6, 9]


def test_stop_in_on_epoch_end_saves_that_epoch_and_state_survives_resume(tmp_path):
    tasks, data = synthetic()
    train, val = data.subset(torch.arange(384)), data.subset(torch.arange(384, 512))
    first = Recorder(stop_at=2)
    _trainer(tasks, tmp_path).fit(train, val, callbacks=[first])
    assert first.events[-1] == ("fit_end", 2)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    again = Recorder()
    history = _trainer(tasks, tmp_path).fit(train, val, resume=True, callbacks=[again])
    assert again.events[0] == ("fit_start", 2)  # state and epoch restored before on_fit_start
    assert history[-1]["seen_steps"] == 9


def test_plain_functions_still_work_and_duplicate_keys_are_refused():
    tasks, data = synthetic()
    seen = []
    _trainer(tasks, epochs=2).fit(data.subset(torch.arange(256)), callbacks=[lambda tr, r: seen.append(r["epoch"])])
    assert seen == [1, 2]
    with pytest.raises(ValueError, match="share the key 'Recorder'"):
        _trainer(tasks).fit(data, callbacks=[Recorder(), Recorder()])
    with pytest.raises(TypeError, match="must be a multitask.training.Callback"):
        _trainer(tasks).fit(data, callbacks=[3])
