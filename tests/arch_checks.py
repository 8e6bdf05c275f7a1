"""Checks of the architecture contract shared by tests/test_arch_*.py: the exact parameter partition, skipped
work for other tasks, and a short training run."""
import torch

from multitask import Trainer
from multitask.balancing import BALANCERS


def partition(model):
    """(shared ids, {task: own ids}, {group: ids}), checking that every parameter is in exactly one of them."""
    shared = [id(p) for p in model.shared_parameters()]
    own = {t: [id(p) for p in model.task_parameters(t)] for t in model.task_names}
    groups = {k: [id(p) for p in ps] for k, ps in model.group_parameters().items()}
    listed = shared + [i for ids in own.values() for i in ids] + [i for ids in groups.values() for i in ids]
    assert len(listed) == len(set(listed)), "a parameter is listed twice"
    assert set(listed) == {id(p) for p in model.parameters()}, "a parameter is in no part"
    assert all(set(k) <= set(model.task_names) and len(k) > 1 for k in groups)
    return set(shared), {t: set(v) for t, v in own.items()}, {k: set(v) for k, v in groups.items()}


def lively_init(model, seed=0):
    """A random init that keeps tiny ReLU networks alive (PyTorch's default often leaves a width-8 layer dead on
    every row): weights N(0, 1/fan_in), biases and other vectors U(0.1, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 + 0.4 * torch.rand(p.shape, generator=g))
    return model


def check_partition(model, inputs):
    """For each task t: grad of outputs[t].sum() is zero on every other task's own parameters and on groups
    without t, and nonzero on every shared parameter tensor (after `lively_init`)."""
    lively_init(model)
    shared, own, groups = partition(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for t in model.task_names:
        model.zero_grad(set_to_none=True)
        model(inputs)[t].sum().backward()
        grads = {id(p): p.grad for p in model.parameters()}
        nonzero = {i for i, g in grads.items() if g is not None and bool((g != 0).any())}
        for u, ids in own.items():
            if u != t:
                assert not ids & nonzero, (t, u, [names[i] for i in ids & nonzero])
        for k, ids in groups.items():
            if t not in k:
                assert not ids & nonzero, (t, k, [names[i] for i in ids & nonzero])
        assert shared <= nonzero, (t, [names[i] for i in shared - nonzero])
        assert own[t] & nonzero or not own[t], t
    model.zero_grad(set_to_none=True)


def check_skips_other_tasks(model, inputs):
    """forward(tasks=[t]) calls no module whose parameters are all other tasks' own (or groups without t)."""
    shared, own, groups = partition(model)
    for t in model.task_names:
        foreign = set().union(*(ids for u, ids in own.items() if u != t),
                              *(ids for k, ids in groups.items() if t not in k))
        calls, handles = [], []
        for name, m in model.named_modules():
            ps = {id(p) for p in m.parameters()}
            if ps and ps <= foreign:
                handles.append(m.register_forward_hook(lambda *a, name=name: calls.append(name)))
        out = model(inputs, tasks=[t])
        for h in handles:
            h.remove()
        assert list(out) == [t] and calls == [], (t, calls)


def check_training(make_model, tasks, data, balancer, mode=None, steps=3, batch_size=16):
    """A few steps of `Trainer` with `balancer` (in `mode`): finite losses, every part's parameters moved."""
    torch.manual_seed(0)
    model = make_model()
    options = {} if mode is None else {"mode": mode}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model, tasks, BALANCERS[balancer](tasks, **options), epochs=1, batch_size=batch_size,
                      lr=1e-2, progress=False)
    history = trainer.fit(data.subset(torch.arange(steps * batch_size)))
    losses = history[-1]["train_loss"]
    assert set(losses) == {t.name for t in tasks}
    assert all(torch.isfinite(torch.as_tensor(v)) for v in losses.values()), losses
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    shared, own, groups = partition(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for part in [shared, *own.values(), *groups.values()]:
        if part:
            assert {names[i] for i in part} & moved, (balancer, mode, sorted(names[i] for i in part))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return trainer
