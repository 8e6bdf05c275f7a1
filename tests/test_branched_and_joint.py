"""The engine's path for families without a shared representation, checked against the representation path
on the same model; and the branching tree (its parsing, its extremes and its group parameters)."""
import pytest
import torch

from conftest import synthetic
from multitask import Branched, HardSharing, Independent, InputSchema, MLPBlocks, Task, Trainer, TrainerConfig, autograd
from multitask.balancing import BALANCERS, GradientBalancer
from multitask.config import ConfigError, validate
from multitask.models.branched import parse_branches

GRADIENT_METHODS = [n for n, c in BALANCERS.items() if issubclass(c, GradientBalancer)]


class WholeModel(HardSharing):
    """The same hard-sharing model, declared without a representation: the engine takes the joint path."""
    shares_representation = False


def _loss_of(tasks, targets):
    by = {t.name: t for t in tasks}
    return lambda t, out: by[t].loss(out, targets[t])


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_joint_path_equals_the_representation_path_in_parameters_mode(name):
    tasks, data = synthetic(64)
    grads = []
    for cls in (HardSharing, WholeModel):
        torch.manual_seed(0)
        model = cls.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
        m = BALANCERS[name](tasks, mode="parameters")
        torch.manual_seed(3)  # methods with randomness (PCGrad's order, GradDrop) draw the same
        autograd.backward(model, m, data.inputs, _loss_of(tasks, data.targets))
        grads.append(([p.grad.clone() for p in model.parameters()], m.weights()))
    (a, wa), (b, wb) = grads
    for ga, gb in zip(a, b):
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6), name
    assert wa == pytest.approx(wb, rel=1e-4, abs=1e-7)


def test_joint_path_refuses_features_mode_and_drops_absent_tasks():
    tasks, data = synthetic(32)
    model = WholeModel.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
    with pytest.raises(ValueError, match="WholeModel has no representation.*mode: parameters"):
        autograd.backward(model, BALANCERS["mgda"](tasks, mode="features"), data.inputs, _loss_of(tasks, data.targets))
    targets = dict(data.targets)
    targets["reg"] = torch.full_like(targets["reg"], float("nan"))
    m = BALANCERS["mgda"](tasks)
    autograd.backward(model, m, data.inputs, _loss_of(tasks, targets), {"reg": False, "bin": True, "cls": True})
    assert m.weights()["reg"] == 0.0
    assert all(p.grad is None for p in model.task_parameters("reg"))
    assert all(torch.isfinite(p.grad).all() for p in model.shared_parameters())


NAMES = ["income", "marital", "education"]


def test_branches_parse_to_a_tree_and_bad_ones_are_named():
    assert parse_branches([NAMES, [["marital"], ["education", "income"]]], NAMES, 3) == [
        [("income", "marital", "education")], [("income", "education"), ("marital",)],
        [("income", "education"), ("marital",)]]
    assert parse_branches(None, NAMES, 2) == [[tuple(NAMES)]] * 2
    bad = [
        ([["income", "marital"]], "education.*in no group"),
        ([NAMES, [["income"], ["marital", "nope"]]], r"branches\[1\]: unknown task"),
        ([[["income", "marital"], ["education"]], [["income", "education"], ["marital"]]], "never merges"),
        ([NAMES, NAMES, NAMES, NAMES], "4 layers given but the network has 3"),
        ([[["income"], ["income", "marital", "education"]]], "more than one group"),
        ("income", "one entry per layer"),
    ]
    for branches, message in bad:
        with pytest.raises(ValueError, match=message):
            parse_branches(branches, NAMES, 3)


def _tasks():
    return [Task(n, "binary") for n in NAMES]


def _x(n=16):
    return torch.randn(n, 6)


def test_one_group_is_hard_sharing_and_singletons_are_one_model_per_task():
    tasks, schema = _tasks(), InputSchema(6)
    torch.manual_seed(0)
    tree = Branched.tabular(tasks, schema, hidden=(8, 4), head_hidden=(3,), batch_norm=False)
    torch.manual_seed(0)
    hard = HardSharing.tabular(tasks, schema, hidden=(8, 4), head_hidden=(3,), batch_norm=False)
    assert sum(p.numel() for p in tree.parameters()) == sum(p.numel() for p in hard.parameters())
    assert tree.head_entries() is not None and not tree.group_parameters()
    split = Branched.tabular(tasks, schema, branches=[[[n] for n in NAMES]], hidden=(8, 4), head_hidden=(3,),
                             batch_norm=False)
    indep = Independent.tabular(tasks, schema, hidden=(8, 4), head_hidden=(3,), batch_norm=False)
    assert not list(split.shared_parameters()) and not split.group_parameters()
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in indep.parameters())
    assert split.head_entries() is None


def test_a_branch_is_one_copy_computed_once_and_its_tasks_share_it():
    tasks = _tasks()
    model = Branched(tasks, MLPBlocks(InputSchema(6), (8, 4)), branches=[NAMES, [["income", "education"], ["marital"]]],
                     head_hidden=())
    assert set(model.group_parameters()) == {("income", "education")}
    calls = []
    model.nodes["1:income+education"].register_forward_hook(lambda *a: calls.append(1))
    out = model(_x())
    assert len(calls) == 1 and set(out) == set(NAMES)
    # by hand: encoder, shared layer 0, the income/education copy of layer 1, the head
    x = _x(4)
    h = model.nodes["1:income+education"](model.trunk(model.encoders["income+marital+education"](x)))
    assert torch.allclose(model(x, ["education"])["education"], model.task_heads["education"](h))


def test_group_parameters_are_left_alone_when_none_of_their_tasks_has_labels():
    tasks = _tasks()
    torch.manual_seed(0)
    model = Branched.tabular(tasks, InputSchema(6), branches=[NAMES, [["income", "education"], ["marital"]]],
                             hidden=(8, 4), head_hidden=(3,))
    trainer = Trainer(model, tasks, BALANCERS["mgda"](tasks), TrainerConfig(epochs=1, batch_size=16, progress=False))
    x = _x()
    y = {n: torch.randint(0, 2, (16,)).float() for n in NAMES}
    trainer.train_step(x, y)  # all labelled: Adam now has momentum on every parameter
    group = [p.detach().clone() for p in model.group_parameters()[("income", "education")]]
    nan = torch.full((16,), float("nan"))
    trainer.train_step(x, {"income": nan, "marital": y["marital"], "education": nan})
    assert all(torch.equal(a, p) for a, p in zip(group, model.group_parameters()[("income", "education")]))
    trainer.train_step(x, {"income": y["income"], "marital": y["marital"], "education": nan})
    assert not all(torch.equal(a, p) for a, p in zip(group, model.group_parameters()[("income", "education")]))


def test_branches_in_a_config_are_checked_before_any_work(no_work):
    base = {"data": {"name": "census-income"}, "tasks": {n: {} for n in NAMES},
            "model": {"name": "branched", "hidden": [16, 8]}}
    validate({**base, "model": {**base["model"], "branches": [NAMES, [["income", "education"], ["marital"]]]}})
    with pytest.raises(ConfigError, match=r"model: branches\[1\]: unknown task\(s\) \['nope'\]"):
        validate({**base, "model": {**base["model"], "branches": [NAMES, [["income", "nope"], ["marital"]]]}})


@pytest.mark.parametrize("name", ["mgda", "upgrad", "nash_mtl"])
def test_joint_path_with_cached_weights_equals_the_representation_path_over_steps(name):
    """every=2: on the steps that reuse the weights the joint path takes one combined backward, no J."""
    tasks, data = synthetic(64)
    finals = []
    for cls in (HardSharing, WholeModel):
        torch.manual_seed(0)
        model = cls.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
        trainer = Trainer(model, tasks, BALANCERS[name](tasks, every=2),
                          TrainerConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, progress=False))
        for step in range(4):
            targets = dict(data.targets)
            if step == 2:  # a task without labels forces a fresh solve
                targets["reg"] = torch.full_like(targets["reg"], float("nan"))
            trainer.train_step(data.inputs, targets)
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


class Penalised(HardSharing):
    """A penalty on the shared trunk (a user's weight decay on it, as a task's own loss term)."""

    def penalties(self, tasks):
        return {t: 0.5 * sum((p ** 2).sum() for p in self.trunk.parameters()) for t in tasks if t == "reg"}


def test_a_penalty_on_shared_parameters_reaches_them_with_gradient_balancing_and_absent_tasks_drop_theirs():
    tasks, data = synthetic(64)
    by = {t.name: t for t in tasks}

    def grads(balancer, present=None):
        torch.manual_seed(0)
        model = Penalised.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
        autograd.backward(model, balancer, data.inputs, lambda t, out: by[t].loss(out, data.targets[t]), present)
        return model

    # MGDA's direction on the shared parameters combines the task gradients *with* reg's penalty in reg's row
    m = BALANCERS["mgda"](tasks)
    model = grads(m)
    w = m.weights()
    torch.manual_seed(0)
    ref = Penalised.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
    out = ref(data.inputs)
    total = sum(w[t.name] * t.loss(out[t.name], data.targets[t.name]) for t in tasks)
    total = total + w["reg"] * 0.5 * sum((p ** 2).sum() for p in ref.trunk.parameters())
    total.backward()
    for a, b in zip(model.shared_parameters(), ref.shared_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    # reg without labels: no loss, no penalty, under a loss balancer as under a gradient one
    absent = {"reg": False, "bin": True, "cls": True}
    for balancer in (BALANCERS["equal"](tasks), BALANCERS["mgda"](tasks)):
        with_absent = grads(balancer, absent)
        torch.manual_seed(0)
        plain = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
        autograd.backward(plain, type(balancer)(tasks), data.inputs, lambda t, out: by[t].loss(out, data.targets[t]),
                          absent)
        for a, b in zip(with_absent.shared_parameters(), plain.shared_parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
