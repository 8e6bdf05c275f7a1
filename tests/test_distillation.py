"""Distillation for tasks without labels: losses against hand computations, teachers (previous self, EMA,
fixed), the trainer's hook (masks, presence, lambda = 0, no gradient into teachers), resume."""
import math

import pytest
import torch

from conftest import synthetic
from multitask import HardSharing, InputSchema, Task, Trainer
from multitask.data import MultiTaskData
from multitask.data.sampling import SourceBatches
from multitask.training.distillation import (Distillation, FixedTeachers, PreviousSelf, distill_loss,
                                             masked_mean)


def _model(tasks, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,), dropout=dropout)


def _two_sources(n=192, seed=0):
    """Rows 0..n/2 labelled for `reg` only, the rest for `bin` and `cls` only: two disjoint sources."""
    tasks, data = synthetic(n, seed)
    half = n // 2
    y = {t: v.clone() for t, v in data.targets.items()}
    y["reg"][half:] = math.nan
    y["bin"][:half] = math.nan
    y["cls"][:half] = -1
    return tasks, MultiTaskData(data.inputs, y), {"a": half, "b": n - half}


# ------------------------------------------------------------------------------------------ losses by hand
def test_softened_cross_entropy_equals_a_hand_computation_with_the_T_squared_factor():
    task = Task("c", "multiclass", n_outputs=3)
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    T = 2.0
    got = distill_loss(task, s, t, temperature=T)
    for r in range(2):
        pt = [math.exp(v / T) for v in t[r].tolist()]
        pt = [v / sum(pt) for v in pt]
        zs = [v / T for v in s[r].tolist()]
        lse = math.log(sum(math.exp(v) for v in zs))
        want = T * T * -sum(p * (z - lse) for p, z in zip(pt, zs))
        assert got[r].item() == pytest.approx(want, rel=1e-6)
    # the gradient equals T * (softmax(s/T) - softmax(t/T)): T^2 keeps it on the scale of T = 1
    s.requires_grad_(True)
    distill_loss(task, s, t, temperature=T).sum().backward()
    want = T * (torch.softmax(s.detach() / T, -1) - torch.softmax(t / T, -1))
    assert torch.allclose(s.grad, want, atol=1e-6)


def test_soft_target_bce_and_mse_equal_hand_computations():
    b = Task("b", "binary")
    s, t = torch.tensor([[0.3], [-1.2]]), torch.tensor([[2.0], [0.0]])
    got = distill_loss(b, s, t)
    for r in range(2):
        p = 1 / (1 + math.exp(-t[r, 0].item()))
        q = 1 / (1 + math.exp(-s[r, 0].item()))
        assert got[r].item() == pytest.approx(-(p * math.log(q) + (1 - p) * math.log(1 - q)), rel=1e-6)
    ml = Task("m", "multilabel", n_outputs=2)
    got = distill_loss(ml, torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, -1.0]]))
    assert got.shape == (1, 2) and got[0, 0].item() == pytest.approx(math.log(2), rel=1e-6)
    r = Task("r", "regression")
    assert torch.allclose(distill_loss(r, torch.tensor([[1.0], [3.0]]), torch.tensor([[0.5], [5.0]])),
                          torch.tensor([0.25, 4.0]))


def test_distillation_term_uses_only_rows_without_a_label():
    tasks = {"r": Task("r", "regression")}
    teacher_out = torch.tensor([[0.0], [10.0], [0.0], [4.0]])

    class Const(torch.nn.Module):
        def forward(self, x, tasks=None):
            return {"r": teacher_out}

    d = Distillation(FixedTeachers({"r": Const()}), weight=0.5)
    target = torch.tensor([1.0, math.nan, 2.0, math.nan])
    mask = ~torch.isnan(target)
    terms = d.terms(tasks, torch.zeros(4, 1), {"r": mask})
    student = torch.tensor([[1.0], [7.0], [100.0], [5.0]])  # row 2 (labelled) is far off: must not count
    assert terms["r"].fn(student).item() == pytest.approx(0.5 * ((7 - 10) ** 2 + (5 - 4) ** 2) / 2)
    assert not terms["r"].replace and terms["r"].present
    assert d.terms(tasks, torch.zeros(4, 1), {"r": torch.ones(4, dtype=torch.bool)}) == {}  # all labelled
    assert masked_mean(torch.ones(3), torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="ema"):
        PreviousSelf(ema=1.5)
    with pytest.raises(ValueError, match="refresh"):
        PreviousSelf(refresh=0)
    with pytest.raises(ValueError, match="temperature"):
        Distillation(PreviousSelf(), temperature=0)
    with pytest.raises(ValueError, match="weight"):
        Distillation(PreviousSelf(), weight=-1.0)
    tasks, _ = synthetic(8)
    with pytest.raises(ValueError, match="no teacher for"):
        Trainer(_model(tasks), tasks, distill=Distillation(FixedTeachers({"reg": _model(tasks)})), progress=False)


# ------------------------------------------------------------------------------------------ teachers
def test_ema_teacher_equals_its_formula_after_k_steps_and_never_gets_gradient():
    tasks, data, sizes = _two_sources()
    model = _model(tasks)
    teacher = PreviousSelf(ema=0.9)
    trainer = Trainer(model, tasks, epochs=1, batch_size=32, lr=1e-2, progress=False,
                      distill=Distillation(teacher, weight=1.0))
    teacher.start(model)
    name = "trunk.0.weight" if "trunk.0.weight" in dict(model.named_parameters()) else next(iter(dict(model.named_parameters())))
    expected = dict(model.named_parameters())[name].detach().clone()
    for k in range(5):
        idx = torch.arange(32 * k, 32 * (k + 1))
        sub = data.subset(idx)
        trainer.train_step(sub.inputs, sub.targets)
        expected = 0.9 * expected + 0.1 * dict(model.named_parameters())[name].detach()
        assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    got = dict(teacher.model.named_parameters())[name]
    assert torch.allclose(got, expected, atol=1e-6)
    # closed form: a^k theta_0 + (1 - a) sum_i a^(k-i) theta_i, checked on a scalar sequence
    thetas = [0.0, 1.0, 2.0, 3.0]
    v = thetas[0]
    for th in thetas[1:]:
        v = 0.9 * v + 0.1 * th
    closed = 0.9 ** 3 * thetas[0] + 0.1 * sum(0.9 ** (3 - i) * thetas[i] for i in range(1, 4))
    assert v == pytest.approx(closed)


def test_snapshot_teacher_refreshes_every_n_steps_and_fixed_teachers_never_change():
    tasks, data, sizes = _two_sources()
    model = _model(tasks)
    teacher = PreviousSelf(refresh=3)
    fixed_model = _model(tasks, seed=5)
    before = {k: v.clone() for k, v in fixed_model.state_dict().items()}
    fixed = FixedTeachers({t.name: fixed_model for t in tasks})
    for distill in (Distillation(teacher), Distillation(fixed)):
        trainer = Trainer(_model(tasks) if distill.teacher is fixed else model, tasks, epochs=2, batch_size=32,
                          lr=1e-2, progress=False, distill=distill)
        trainer.fit(SourceBatches(data, sizes, "round_robin"))
    assert teacher.ready() and teacher.refreshes == (2 * 6) // 3  # 6 steps an epoch, a refresh every 3
    snap = teacher.model.state_dict()
    # the last refresh was at step 12, the last step: the teacher is the student now
    assert all(torch.equal(snap[k], model.state_dict()[k]) for k in snap)
    fixed_copy = fixed.teachers["reg"]
    assert all(torch.equal(fixed_copy.state_dict()[k], before[k]) for k in before)
    assert all(not p.requires_grad and p.grad is None for p in fixed_copy.parameters())
    assert all(torch.equal(fixed_model.state_dict()[k], before[k]) for k in before)  # the original, too


# ------------------------------------------------------------------------------------------ the trainer's hook
def _run(tasks, data, sizes, distill, epochs=2, rule="round_robin", dropout=0.1, seed=0):
    trainer = Trainer(_model(tasks, dropout=dropout), tasks, epochs=epochs, batch_size=32, lr=1e-2, seed=seed,
                      progress=False, distill=distill)
    history = trainer.fit(SourceBatches(data, sizes, rule))
    return trainer, history


def test_lambda_zero_is_bit_identical_to_masking():
    tasks, data, sizes = _two_sources()
    for rule in ("round_robin", "mixed"):
        plain, _ = _run(tasks, data, sizes, None, rule=rule)
        zero, _ = _run(tasks, data, sizes, Distillation(PreviousSelf(refresh=2), weight=0.0), rule=rule)
        per_task, _ = _run(tasks, data, sizes, Distillation(PreviousSelf(ema=0.5), weight={"reg": 0.0}), rule=rule)
        a = plain.model.state_dict()
        for other in (zero, per_task):
            b = other.model.state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a), rule
        on, _ = _run(tasks, data, sizes, Distillation(PreviousSelf(refresh=2), weight=1.0), rule=rule)
        assert not all(torch.equal(a[k], on.model.state_dict()[k]) for k in a)  # the hook does act when lambda > 0


def test_a_task_without_labels_in_the_step_counts_as_present_when_distilled():
    """With one source per step, the other source's tasks have no label; distilled, they have a loss, so
    their heads train on every step; with masking alone they sit still on those steps."""
    tasks, data, sizes = _two_sources()
    _, masked = _run(tasks, data, sizes, None, epochs=1)
    trainer, distilled = _run(tasks, data, sizes, Distillation(PreviousSelf(refresh=1), weight=1.0), epochs=1)
    steps = masked[0]["steps"]
    assert masked[0]["steps_per_task"] == {"reg": steps // 2, "bin": steps // 2, "cls": steps // 2}
    # the first step (source a: reg's labels) has no teacher yet (refresh=1: it is taken after step 1); from
    # step 2 on every task has a loss
    assert distilled[0]["steps_per_task"] == {"reg": steps, "bin": steps - 1, "cls": steps - 1}
    assert set(distilled[0]["distill_loss"]) == {"reg", "bin", "cls"}
    assert distilled[0]["teacher_seconds"] > 0

    # a head is moved by distillation on a step of the other source (and not by masking)
    model = _model(tasks)
    tr = Trainer(model, tasks, batch_size=32, lr=1e-2, progress=False,
                 distill=Distillation(PreviousSelf(refresh=1), weight=1.0))
    tr.distill.teacher.start(model)
    with torch.no_grad():  # make the teacher disagree with the student
        for p in tr.distill.teacher.model.parameters():
            p.add_(0.5)
    tr.distill.teacher.refreshes = 1
    head = [p for p in model.task_parameters("reg")]
    before = [p.detach().clone() for p in head]
    b = data.subset(torch.arange(96, 128))  # source b: no label for reg
    tr.train_step(b.inputs, b.targets)
    assert tr._present["reg"]
    assert any(not torch.equal(p, q) for p, q in zip(head, before))


def test_distillation_resumes_bit_identically(tmp_path):
    tasks, data, sizes = _two_sources()

    def fit(run_dir, epochs, resume=False, ema=None):
        distill = Distillation(PreviousSelf(refresh=4) if ema is None else PreviousSelf(ema=ema), weight=1.0,
                               temperature=2.0)
        trainer = Trainer(_model(tasks, dropout=0.1), tasks, epochs=epochs, batch_size=32, lr=1e-2,
                          progress=False, run_dir=run_dir, distill=distill)
        trainer.fit(SourceBatches(data, sizes, "round_robin"), resume=resume)
        return trainer

    for ema in (None, 0.8):
        tag = f"ema{ema}"
        a = fit(tmp_path / tag / "a", 3, ema=ema)
        fit(tmp_path / tag / "b", 1, ema=ema)
        b = fit(tmp_path / tag / "b", 3, resume=True, ema=ema)
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        ta, tb = a.distill.teacher.model.state_dict(), b.distill.teacher.model.state_dict()
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


# ------------------------------------------------------------------------------------------ YAML and CLI
def _cli_config(tmp_path, **distill):
    from test_sources import raw_config, write_sources

    write_sources(tmp_path)
    raw = raw_config(tmp_path, sampling="round_robin", epochs=2)
    raw["baselines"] = "auto"
    raw["distill"] = distill
    return raw


def test_cli_trains_with_single_task_teachers_from_the_baseline_run(tmp_path):
    import json

    import yaml

    from multitask.cli import main

    raw = _cli_config(tmp_path, kind="teachers", teachers="auto", weight={"action": 1.0, "topic": 0.5},
                      temperature=2.0)
    raw["trainer"]["per_task_patience"] = 1
    raw["trainer"]["protect"] = "distill"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["distill"]["kind"] == "teachers" and final["distill"]["teacher_seconds"] > 0
    assert set(final["per_task_stop"]) == {"action", "topic", "length"}
    for s in final["per_task_stop"].values():
        assert {"stop_epoch", "at_stop", "at_end", "metric"} <= set(s)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(lines[-1]["distill_loss"]) == {"action", "topic"}  # length has no weight: not distilled
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()  # per-task: the final model is last.pt
    assert main(["evaluate", str(tmp_path / "run"), "--json", str(tmp_path / "ev.json")]) == 0
    # the run directory of the teachers can be named explicitly by another run; previous_self from YAML too
    raw2 = dict(raw, baselines="none", distill={"kind": "teachers", "teachers": str(tmp_path / "run" / "baseline")})
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(raw2))
    assert main(["train", str(tmp_path / "d.yaml"), "--out", str(tmp_path / "run2")]) == 0
    raw3 = dict(raw, baselines="none", distill={"kind": "previous_self", "ema": 0.99})
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(raw3))
    assert main(["train", str(tmp_path / "e.yaml"), "--out", str(tmp_path / "run3")]) == 0


def test_config_errors_name_the_distill_field(tmp_path, no_work):
    from multitask.config import ConfigError, validate

    cases = [
        ({"kind": "teachers"}, "distill.teachers: kind: teachers needs"),
        ({"kind": "previous_self", "teachers": "auto"}, "distill.teachers: only kind: teachers"),
        ({"kind": "teachers", "teachers": "auto", "ema": 0.9}, "distill.ema: only kind: previous_self"),
        ({"kind": "previous_self", "weight": {"nope": 1.0}}, "distill.weight.nope: unknown task"),
        ({"kind": "previous_self", "ema": 1.0}, "distill.ema"),
        ({"kind": "previous_self", "temperature": 0}, "distill.temperature"),
        ({"kind": "previous_self", "refresh": 0}, "distill.refresh"),
        ({"kind": "previous_self", "refresh": 5, "ema": 0.9}, "set refresh or ema, not both"),
        ({"kind": "teachers", "teachers": "auto", "warmup": 3}, "distill.warmup: only kind: previous_self"),
        ({"kind": "teachers", "teachers": str(tmp_path)}, "is not a run directory"),
    ]
    for distill, match in cases:
        raw = _cli_config(tmp_path, **distill)
        with pytest.raises(ConfigError, match=match):
            validate(raw)
    raw = _cli_config(tmp_path, kind="teachers", teachers="auto")
    raw["baselines"] = "none"
    with pytest.raises(ConfigError, match="set baselines: auto"):
        validate(raw)
    raw = _cli_config(tmp_path, kind="previous_self")
    raw["trainer"].update(per_task_patience=2, patience=2)
    with pytest.raises(ConfigError, match="exclude each other"):
        validate(raw)
    for trainer, match in (({"protect": "keep"}, "trainer.protect"),
                           ({"protect": "distill"}, "applies to tasks stopped by per_task_patience"),
                           ({"per_task_patience": 0}, "trainer.per_task_patience")):
        raw = _cli_config(tmp_path, kind="previous_self")
        raw["trainer"].update(trainer)
        with pytest.raises(ConfigError, match=match):
            validate(raw)


def test_a_teacher_run_with_other_tasks_or_inputs_is_a_config_error(tmp_path):
    import yaml

    from multitask.cli import main
    from multitask.config import ConfigError, validate
    from multitask.experiment import run

    raw = _cli_config(tmp_path, kind="previous_self")
    raw["distill"] = None
    raw["baselines"] = "none"
    raw["tasks"] = {"action": {}, "topic": {}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "teacher")]) == 0
    bad = _cli_config(tmp_path, kind="teachers", teachers=str(tmp_path / "teacher"))
    bad["baselines"] = "none"
    with pytest.raises(ConfigError, match="different tasks: it has action, topic, not length"):
        validate(bad)
    # the same tasks but other inputs (a split with another seed: other feature statistics)
    other = dict(_cli_config(tmp_path, kind="previous_self"), baselines="none", distill=None)
    other["data"]["split"] = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 7}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(other))
    assert main(["train", str(tmp_path / "o.yaml"), "--out", str(tmp_path / "other")]) == 0
    bad["distill"] = {"kind": "teachers", "teachers": str(tmp_path / "other")}
    with pytest.raises(ConfigError, match="trained on other inputs"):
        run(validate(bad), tmp_path / "student")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    assert main(["train", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "student2")]) == 2


@pytest.mark.parametrize("name,options", [("uncertainty", {}), ("pcgrad", {}), ("mgda", {"mode": "features"}),
                                          ("upgrad", {})])
def test_every_kind_of_balancer_sees_the_distillation_term_as_the_tasks_loss(name, options):
    """Loss- and gradient-based balancers (parameters and features modes) train with distilled tasks that
    have no label in the step: every task has a loss on every step after the first, all finite."""
    from multitask.balancing import BALANCERS

    tasks, data, sizes = _two_sources()
    trainer = Trainer(_model(tasks), tasks, BALANCERS[name](tasks, **options), epochs=1, batch_size=32, lr=1e-2,
                      progress=False, distill=Distillation(PreviousSelf(refresh=1), weight=1.0))
    history = trainer.fit(SourceBatches(data, sizes, "round_robin"))
    steps = history[0]["steps"]
    assert history[0]["steps_per_task"] == {"reg": steps, "bin": steps - 1, "cls": steps - 1}
    assert all(math.isfinite(v) for v in history[0]["train_loss"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_teacher_serving_several_tasks_runs_once_per_batch():
    tasks, data = synthetic(16)
    calls = []
    teacher = _model(tasks, seed=2)
    teacher.register_forward_hook(lambda *a: calls.append(1))
    fixed = FixedTeachers({t.name: teacher for t in tasks})
    assert len({id(m) for m in fixed.teachers.values()}) == 1 and fixed.teachers["reg"] is not teacher
    calls.clear()
    out = fixed.outputs(data.inputs, ["reg", "cls"])
    assert sorted(out) == ["cls", "reg"] and len(calls) == 1


def test_warmup_counts_steps_for_both_kinds_of_previous_self():
    tasks, data, sizes = _two_sources()
    model = _model(tasks)
    for teacher, ready_after in ((PreviousSelf(refresh=2, warmup=5), 5), (PreviousSelf(ema=0.9, warmup=3), 3),
                                 (PreviousSelf(refresh=4), 4)):
        teacher.bind(model)
        teacher.start(model)
        states = []
        for step in range(1, 8):
            states.append(teacher.ready())
            teacher.after_step(model, step)
        assert states == [k >= ready_after for k in range(7)], (teacher.refresh, teacher.ema, states)


def test_an_ema_teacher_starts_averaging_when_warmup_ends():
    tasks, data, sizes = _two_sources()
    model = _model(tasks)
    teacher = PreviousSelf(ema=0.5, warmup=2)
    trainer = Trainer(model, tasks, batch_size=32, lr=1e-2, progress=False, distill=Distillation(teacher))
    teacher.start(model)
    seen = []
    for k in range(3):
        b = data.subset(torch.arange(32 * k, 32 * (k + 1)))
        trainer.train_step(b.inputs, b.targets)
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
    t = dict(teacher.model.named_parameters())
    # steps 1-2: the teacher follows the student; step 3: 0.5 * theta_2 + 0.5 * theta_3
    for n in t:
        assert torch.allclose(t[n], 0.5 * seen[1][n] + 0.5 * seen[2][n], atol=1e-7), n
