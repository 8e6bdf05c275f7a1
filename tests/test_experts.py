"""MMoE, CGC and PLE run their experts and gates as concatenated matmuls (multitask.models.experts): outputs,
gradients and batch-norm running statistics equal those of the per-module loops they replace (written out
here as the reference), only asked tasks' gates and experts are read, and modules the fusion does not know
(or with hooks) run one by one with the same result."""
from __future__ import annotations

import copy

import pytest
import torch

from multitask import Task
from multitask.models import CGC, MMoE, PLE, ImageSpec, InputSchema
from multitask.models.experts import fused_layers, run_experts

TASKS = [Task("a", "binary"), Task("b", "multiclass", n_outputs=3), Task("c", "regression")]
SCHEMA = InputSchema(4, (5, 3))
SPEC = ImageSpec(1, 16, 16)


def _inputs(kind: str, n: int = 16):
    g = torch.Generator().manual_seed(1)
    if kind == "image":
        return torch.randn(n, 1, 16, 16, generator=g)
    return {"num": torch.randn(n, 4, generator=g),
            "cat": torch.stack([torch.randint(0, 5, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1)}


# ------------------------------------------------------------------ the per-module loops (the former forward)
def _mix(gate, gate_input, experts):
    return torch.einsum("nm,nmd->nd", torch.softmax(gate(gate_input), dim=-1), experts)


def mmoe_loop(model: MMoE, inputs, tasks):
    x = model.encoder(inputs)
    experts = torch.stack([e(x) for e in model.experts], dim=1)
    return {t: model.towers[t](_mix(model.gates[t], x, experts)) for t in tasks}


def ple_loop(model: PLE, inputs, tasks):
    names, flat = model.task_names, model.flat

    def run(experts, x):
        return torch.stack([flat(e(x)) for e in experts], dim=1)

    x = model.bottom(model.encoder(inputs))
    out = {}
    if model.n_levels == 1:
        S = run(model.levels[0].shared_experts, x)
        for t in tasks:
            level = model.levels[0]
            out[t] = model.towers[t](_mix(level.task_gates[t], flat(x), torch.cat([run(level.task_experts[t], x), S], 1)))
        return out
    xf = flat(x)
    ins, gins, s_in, s_gin = {t: x for t in names}, {t: xf for t in names}, x, xf
    for level in model.levels[:-1]:
        E = {t: run(level.task_experts[t], ins[t]) for t in names}
        Es = run(level.shared_experts, s_in)
        ins = gins = {t: _mix(level.task_gates[t], gins[t], torch.cat([E[t], Es], 1)) for t in names}
        s_in = s_gin = _mix(level.shared_gate, s_gin, torch.cat([*E.values(), Es], 1))
    last = model.levels[-1]
    S = run(last.shared_experts, s_in)
    for t in tasks:
        out[t] = model.towers[t](_mix(last.task_gates[t], gins[t], torch.cat([run(last.task_experts[t], ins[t]), S], 1)))
    return out


def _build(family: str, kind: str, **options):
    torch.manual_seed(0)
    cls = {"mmoe": MMoE, "cgc": CGC, "ple": PLE}[family]
    if kind == "table":
        model = cls.tabular(TASKS, SCHEMA, expert_hidden=(8, 6), tower_hidden=(4,), **options)
    else:
        model = cls.image(TASKS, SPEC, conv_channels=(2, 3), kernel_size=3, expert_hidden=(8, 5), **options)
    with torch.no_grad():  # batch-norm scales and shifts off their initial 1 and 0
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _loop(model, inputs, tasks):
    return (mmoe_loop if isinstance(model, MMoE) else ple_loop)(model, inputs, tasks)


CASES = [("mmoe", "table", {}), ("mmoe", "image", {"batch_norm": True}), ("mmoe", "table", {"n_experts": 1}),
         ("cgc", "table", {}), ("cgc", "image", {"batch_norm": True}),
         ("ple", "table", {"n_levels": 2}), ("ple", "table", {"n_levels": 3, "n_task_experts": 1}),
         ("ple", "image", {"n_levels": 3, "batch_norm": True}), ("ple", "table", {"n_levels": 4, "batch_norm": False})]


@pytest.mark.parametrize("family,kind,options", CASES)
@pytest.mark.parametrize("train", [False, True])
def test_outputs_gradients_and_running_statistics_equal_the_loops(family, kind, options, train):
    model = _build(family, kind, **options)
    ref = copy.deepcopy(model)
    model.train(train)
    ref.train(train)
    x = _inputs(kind)
    names = [t.name for t in TASKS]
    for tasks in (names, ["c", "a"], ["b"]):
        got, want = model(x, tasks=tasks), _loop(ref, x, tasks)
        assert list(got) == tasks
        for t in tasks:
            assert torch.allclose(got[t], want[t], atol=1e-6, rtol=1e-5), (t, (got[t] - want[t]).abs().max())
        loss_got = sum(y.square().mean() for y in got.values())
        loss_want = sum(y.square().mean() for y in want.values())
        g1 = torch.autograd.grad(loss_got, list(model.parameters()), allow_unused=True)
        g2 = torch.autograd.grad(loss_want, list(ref.parameters()), allow_unused=True)
        for (name, _), a, b in zip(model.named_parameters(), g1, g2):
            assert (a is None) == (b is None) or torch.count_nonzero(a if b is None else b) == 0, name
            if a is not None and b is not None:
                assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (name, (a - b).abs().max())
    buffers = dict(ref.named_buffers())
    for name, b in model.named_buffers():  # batch-norm running statistics and batch counts, in each module
        assert torch.allclose(b.float(), buffers[name].float(), atol=1e-6), name


def test_state_dict_keys_are_the_per_module_ones():
    """Old checkpoints load: every expert and gate keeps its own module and keys."""
    keys = set(_build("mmoe", "table").state_dict())
    assert {"experts.0.0.weight", "experts.0.1.running_mean", "experts.1.3.weight", "gates.a.weight",
            "towers.c.0.weight"} <= keys
    keys = set(_build("ple", "table", n_levels=2).state_dict())
    assert {"levels.0.task_experts.a.0.0.0.weight", "levels.0.shared_gate.weight", "levels.1.task_gates.b.bias",
            "levels.1.shared_experts.1.0.0.weight"} <= keys


@pytest.mark.parametrize("family,options", [("mmoe", {}), ("cgc", {}), ("ple", {"n_levels": 2}),
                                             ("ple", {"n_levels": 3})])
def test_an_asked_task_reads_no_other_tasks_gate_or_experts(family, options):
    """NaN in every parameter that is another task's own: the asked task's output stays finite and unchanged
    (the fused gates and experts take only the asked tasks' weights)."""
    model = _build(family, "table", **options).eval()
    x = _inputs("table")
    before = model(x, tasks=["b"])["b"]
    with torch.no_grad():
        for t in ("a", "c"):
            for p in model.task_parameters(t):
                p.fill_(float("nan"))
    after = model(x, tasks=["b"])["b"]
    assert torch.isfinite(after).all() and torch.equal(before, after)


def test_experts_with_hooks_or_other_layers_run_one_by_one():
    model = _build("mmoe", "table").eval()
    x = _inputs("table")
    want = mmoe_loop(model, x, ["a"])["a"]
    calls = []
    handle = model.experts[1].register_forward_hook(lambda *_: calls.append(1))
    assert fused_layers(model.experts) is None
    assert torch.allclose(model(x, tasks=["a"])["a"], want, atol=1e-6) and calls == [1]
    handle.remove()
    assert fused_layers(model.experts) is not None
    odd = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()) for _ in range(2)]
    assert fused_layers(odd) is None
    z = torch.randn(5, 3)
    assert torch.equal(run_experts(odd, z), torch.stack([e(z) for e in odd], 1))
    grouped = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()) for _ in range(4)]
    zg = torch.randn(5, 2, 3)  # experts 0, 1 read zg[:, 0]; 2, 3 read zg[:, 1]
    want = torch.stack([e(zg[:, i // 2]) for i, e in enumerate(grouped)], 1).unflatten(1, (2, 2))
    assert torch.allclose(run_experts(grouped, zg, groups=2), want, atol=1e-6)
    grouped[3] = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())  # not fusable: one by one, same layout
    want = torch.stack([e(zg[:, i // 2]) for i, e in enumerate(grouped)], 1).unflatten(1, (2, 2))
    assert torch.equal(run_experts(grouped, zg, groups=2), want)


def test_a_one_row_training_batch_uses_the_running_statistics():
    """BatchNorm1d's one-row rule (the running statistics, no update) holds in the fused experts too."""
    model = _build("mmoe", "table").train()
    ref = copy.deepcopy(model)
    x = {k: v[:1] for k, v in _inputs("table").items()}
    assert torch.allclose(model(x)["a"], mmoe_loop(ref, x, ["a"])["a"], atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), ref.buffers()))


@pytest.mark.parametrize("family,options", [("mmoe", {}), ("cgc", {}), ("ple", {"n_levels": 3})])
def test_tasks_in_blocks_give_the_same_outputs(family, options, monkeypatch):
    """With a block budget of one byte every task is a block of its own (`task_blocks`): same outputs."""
    from multitask.models import experts

    model = _build(family, "table", **options).eval()
    x = _inputs("table")
    monkeypatch.setattr(experts, "BLOCK_BYTES", 1)
    assert experts.task_blocks(["a", "b", "c"], 10) == [["a"], ["b"], ["c"]]
    for tasks in (["a", "b", "c"], ["c", "a"]):
        got, want = model(x, tasks=tasks), _loop(model, x, tasks)
        assert list(got) == tasks
        assert all(torch.allclose(got[t], want[t], atol=1e-6) for t in tasks)
