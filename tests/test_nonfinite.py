"""Non-finite values are caught: a NaN/inf loss or gradient stops the run naming the task and the step (or
the step is skipped with nonfinite="skip"), and run files stay valid JSON."""
import json
import math

import pytest
import torch

from conftest import synthetic
from multitask import BALANCERS, HardSharing, InputSchema, Task, Trainer
from multitask.errors import NonFiniteError
from multitask.jsonio import to_json


def _model(tasks, seed=0):
    torch.manual_seed(seed)
    return HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))


class PoisonAt:
    """An element-wise loss that turns NaN (or inf) at the given steps of training (counted per call)."""

    def __init__(self, steps, value=math.nan, base=None):
        self.steps, self.value, self.calls = set(steps), value, 0
        self.base = base or (lambda o, t: (o - t) ** 2)

    def __call__(self, output, target):
        self.calls += 1
        out = self.base(output, target)
        return out + self.value if self.calls in self.steps else out


def _poisoned_tasks(steps, value=math.nan):
    tasks, data = synthetic(n=256)
    tasks = [Task("reg", "regression", loss_fn=PoisonAt(steps, value)), tasks[1], tasks[2]]
    return tasks, data


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_stops_on_a_nan_loss_naming_task_and_step(name):
    tasks, data = _poisoned_tasks({3})
    trainer = Trainer(_model(tasks), tasks, BALANCERS[name](tasks), epochs=1, batch_size=64, progress=False)
    with pytest.raises(NonFiniteError, match=r"step 3 \(epoch 1\): the loss of task 'reg' \(nan\) is not finite") as e:
        trainer.fit(data)
    assert e.value.tasks == ("reg",)


@pytest.mark.parametrize("name", ["equal", "mgda", "nash_mtl", "upgrad", "graddrop"])
def test_skip_leaves_the_model_untouched_and_counts(name):
    tasks, data = _poisoned_tasks({2})
    trainer = Trainer(_model(tasks), tasks, BALANCERS[name](tasks), epochs=1, batch_size=64, progress=False,
                      nonfinite="skip")
    seen = []
    original = trainer.train_step

    def spy(*a, **k):
        before = [p.detach().clone() for p in trainer.model.parameters()]
        skipped = trainer.skipped_steps
        out = original(*a, **k)
        after = list(trainer.model.parameters())
        seen.append((trainer.skipped_steps > skipped, all(torch.equal(b, p) for b, p in zip(before, after))))
        return out

    trainer.train_step = spy
    history = trainer.fit(data)
    assert [s for s, _ in seen] == [False, True, False, False]
    assert seen[1][1] and not seen[0][1]  # the skipped step changed nothing; an ordinary one did
    assert trainer.skipped_steps == 1 and history[0]["skipped_steps"] == 1
    assert all(math.isfinite(v) for v in history[0]["train_loss"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_skip_gives_up_after_max_skips_in_a_row():
    tasks, data = _poisoned_tasks({2, 3, 4})
    trainer = Trainer(_model(tasks), tasks, epochs=1, batch_size=32, progress=False, nonfinite="skip", max_skips=3)
    with pytest.raises(NonFiniteError, match=r"3 steps in a row had non-finite values .*step 4"):
        trainer.fit(data)
    tasks, data = _poisoned_tasks({2, 4, 6})  # never 3 in a row: trains to the end
    trainer = Trainer(_model(tasks), tasks, epochs=1, batch_size=32, progress=False, nonfinite="skip", max_skips=2)
    trainer.fit(data)
    assert trainer.skipped_steps == 3


def test_a_huge_learning_rate_stops_the_run_instead_of_ending_with_nan_weights(tmp_path):
    tasks, data = synthetic(n=256)
    trainer = Trainer(_model(tasks), tasks, epochs=5, batch_size=32, optimizer="sgd", lr=1e3, progress=False,
                      run_dir=tmp_path)
    with pytest.raises(NonFiniteError, match=r"step \d+ \(epoch 1\)"):
        trainer.fit(data)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # no epoch finished: nothing half-trained saved


def test_an_infinite_gradient_with_finite_losses_names_the_parameter():
    tasks, data = synthetic(n=128)
    model = _model(tasks)
    first = model.trunk.body[0]
    first.weight.register_hook(lambda g: torch.full_like(g, math.inf))
    trainer = Trainer(model, tasks, epochs=1, batch_size=64, progress=False)
    with pytest.raises(NonFiniteError, match=r"step 1 .*the gradient of model\.trunk\.body\.0\.weight is not finite"):
        trainer.fit(data)


@pytest.mark.parametrize("bad", [{"lr": math.inf}, {"lr": 1e400}, {"lr": 0.0}, {"grad_clip": math.nan},
                                 {"epochs": True}, {"weight_decay": -1.0}, {"nonfinite": "ignore"},
                                 {"max_skips": 0}, {"patience": 1.5}])
def test_trainer_options_are_checked_in_python_too(bad):
    tasks, _ = synthetic(n=16)
    with pytest.raises(ValueError, match=next(iter(bad))):
        Trainer(_model(tasks), tasks, progress=False, **bad)


def test_run_files_are_strict_json_with_reasons_for_nulls():
    text = to_json({"test": {"a": {"auc": math.nan, "f1": 0.5}}, "loss": [1.0, math.inf]})
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert data["test"]["a"] == {"auc": None, "f1": 0.5} and data["loss"] == [1.0, None]
    assert data["null_values"] == {"test.a.auc": "undefined (NaN)", "loss[1]": "infinite (inf)"}


def test_final_json_of_a_run_with_an_undefined_metric_is_valid_json(tmp_path):
    from multitask.cli import main
    import yaml

    # yeast class14 is rare: the 60 test rows of the first 200 hold no positive, so its AUC is undefined (NaN)
    raw = {"data": {"name": "yeast", "limit": 200}, "tasks": {"class14": {}, "class1": {}},
           "model": {"name": "hard_sharing", "hidden": [8], "head_hidden": [4]},
           "trainer": {"epochs": 1, "progress": False}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    strict = dict(parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    final = json.loads((tmp_path / "run" / "final.json").read_text(), **strict)
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, **strict)
    assert final["test"]["class14"]["auc"] is None
    assert final["null_values"]["test.class14.auc"] == "undefined (NaN)"
    assert isinstance(final["test"]["class1"]["auc"], float)
