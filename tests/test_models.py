import pytest
import torch

from multitask import HardSharing, Independent, InputSchema, MMoE, Task

TASKS = [Task("r", "regression"), Task("c", "multiclass", n_outputs=4), Task("m", "multilabel", n_outputs=3)]
SCHEMA = InputSchema(5, (7, 3))


def _inputs(n=6):
    return {"num": torch.randn(n, 5), "cat": torch.stack([torch.randint(0, 7, (n,)), torch.randint(0, 3, (n,))], 1)}


@pytest.mark.parametrize("make", [
    lambda: Independent.tabular(TASKS, SCHEMA, hidden=(16,), head_hidden=(8,)),
    lambda: HardSharing.tabular(TASKS, SCHEMA, hidden=(16,), head_hidden=(8,)),
    lambda: MMoE.tabular(TASKS, SCHEMA, n_experts=3, expert_hidden=(16,), tower_hidden=(8,)),
])
def test_outputs_and_parameter_split(make):
    model = make()
    out = model(_inputs())
    assert {k: tuple(v.shape) for k, v in out.items()} == {"r": (6, 1), "c": (6, 4), "m": (6, 3)}
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t.name)} for t in TASKS]
    everything = {id(p) for p in model.parameters()}
    assert shared | set().union(*per_task) == everything  # every parameter is accounted for
    assert all(not (shared & s) for s in per_task)
    assert all(not (a & b) for i, a in enumerate(per_task) for b in per_task[i + 1:])


def test_a_task_loss_touches_only_shared_and_its_own_parameters():
    model = HardSharing.tabular(TASKS, SCHEMA, hidden=(16,), head_hidden=(8,))
    out = model(_inputs())
    out["r"].sum().backward()
    assert all(p.grad is None for p in model.task_parameters("c"))
    assert any(p.grad is not None for p in model.shared_parameters())


def test_only_requested_heads_run():
    model = MMoE.tabular(TASKS, SCHEMA, n_experts=2, expert_hidden=(8,))
    calls = []
    model.towers["c"].register_forward_hook(lambda *a: calls.append("c"))
    out = model(_inputs(), tasks=["r"])
    assert list(out) == ["r"] and calls == []
    with pytest.raises(KeyError, match="unknown task"):
        model(_inputs(), tasks=["nope"])


def test_any_module_can_be_the_trunk():
    trunk = torch.nn.Sequential(torch.nn.Linear(4, 10), torch.nn.Tanh())
    model = HardSharing([Task("a", "binary"), Task("b", "regression")], trunk, trunk_dim=10)
    out = model(torch.randn(3, 4))
    assert out["a"].shape == (3, 1) and out["b"].shape == (3, 1)
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in trunk.parameters()}


def test_mmoe_mixture_is_a_gate_weighted_sum_of_experts():
    model = MMoE.tabular([Task("a", "regression")], InputSchema(3), n_experts=4, expert_hidden=(5,), tower_hidden=())
    x = torch.randn(2, 3)
    enc, experts = model.shared(x)
    gate = torch.softmax(model.gates["a"](enc), -1)
    assert torch.allclose(gate.sum(-1), torch.ones(2))
    expected = model.towers["a"]((gate[:, :, None] * experts).sum(1))
    assert torch.allclose(model(x)["a"], expected, atol=1e-6)
