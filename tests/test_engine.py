"""The gradient engine: modes, masking, caching, head isolation, and every method end to end."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synthetic
from multitask import Equal, HardSharing, InputSchema, Task, Trainer, autograd
from multitask.balancing import BALANCERS, GradientBalancer, GramianBalancer, MGDA, UPGrad
from multitask.models.base import MultiTaskModel


class ParameterIsRepresentation(MultiTaskModel):
    """A model whose shared representation IS its shared parameter (an identity trunk on a parameter)."""

    def __init__(self, tasks, dim=6):
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.theta = nn.Parameter(torch.randn(dim))
        self.targets = {t.name: torch.randn(dim) for t in tasks}
        self.scale = nn.ParameterDict({t.name: nn.Parameter(torch.ones(())) for t in tasks})

    def shared(self, inputs):
        return self.theta

    def heads(self, rep, tasks):
        return {t: self.scale[t] * ((rep - self.targets[t]) ** 2).sum(-1, keepdim=True)[None] for t in tasks}

    def shared_parameters(self):
        return iter([self.theta])

    def task_parameters(self, task):
        return iter([self.scale[task]])


def _grads(model, balancer, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    autograd.backward(model, balancer, None, lambda t, out: out.sum())
    return {n: p.grad.clone() for n, p in model.named_parameters()}


GRADIENT_METHODS = [n for n, c in BALANCERS.items() if issubclass(c, GradientBalancer)]


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_feature_mode_with_identity_trunk_equals_parameter_mode(name):
    tasks = [Task(f"t{i}", "regression") for i in range(3)]
    torch.manual_seed(1)
    model = ParameterIsRepresentation(tasks)
    a = _grads(model, BALANCERS[name](tasks, mode="parameters"))
    b = _grads(model, BALANCERS[name](tasks, mode="features"))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7), (name, k)


def _model(tasks, seed=0):
    torch.manual_seed(seed)
    return HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))


def _loss_of(tasks, targets):
    by = {t.name: t for t in tasks}
    return lambda t, out: by[t].loss(out, targets[t])


def test_equal_matches_a_plain_summed_backward_exactly():
    tasks, data = synthetic(64)
    model = _model(tasks)
    autograd.backward(model, Equal(tasks), data.inputs, _loss_of(tasks, data.targets))
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    out = model(data.inputs)
    sum(t.loss(out[t.name], data.targets[t.name]) for t in tasks).backward()
    assert all(torch.equal(g, p.grad) for g, p in zip(got, model.parameters()))


@pytest.mark.parametrize("mode", ["parameters", "features"])
def test_heads_get_only_their_own_task_gradient(mode):
    tasks, data = synthetic(64)
    model = _model(tasks)
    autograd.backward(model, MGDA(tasks, mode=mode), data.inputs, _loss_of(tasks, data.targets))
    got = {t.name: [p.grad.clone() for p in model.task_parameters(t.name)] for t in tasks}
    for t in tasks:
        model.zero_grad(set_to_none=True)
        out = model(data.inputs, [t.name])
        t.loss(out[t.name], data.targets[t.name]).backward()
        assert all(torch.allclose(g, p.grad, atol=1e-7) for g, p in zip(got[t.name], model.task_parameters(t.name)))


@pytest.mark.parametrize("mode", ["parameters", "features"])
def test_shared_gradient_is_the_weighted_task_gradients(mode):
    tasks, data = synthetic(64)
    model = _model(tasks)
    m = UPGrad(tasks, mode=mode)
    autograd.backward(model, m, data.inputs, _loss_of(tasks, data.targets))
    got = [p.grad.clone() for p in model.shared_parameters()]
    w = m.weights()
    model.zero_grad(set_to_none=True)
    out = model(data.inputs)
    sum(w[t.name] * t.loss(out[t.name], data.targets[t.name]) for t in tasks).backward()
    assert all(torch.allclose(g, p.grad, rtol=1e-4, atol=1e-7) for g, p in zip(got, model.shared_parameters()))


def test_parameter_mode_solves_on_the_parameter_jacobian():
    tasks, data = synthetic(64)
    model = _model(tasks)
    m = MGDA(tasks)
    autograd.backward(model, m, data.inputs, _loss_of(tasks, data.targets))
    w = np.array([m.weights()[t.name] for t in tasks])
    rows = []
    for t in tasks:
        model.zero_grad(set_to_none=True)
        t.loss(model(data.inputs)[t.name], data.targets[t.name]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.shared_parameters()]).double().numpy())
    G = np.stack(rows)
    K = G @ G.T
    from multitask.balancing.solvers import min_norm_simplex

    assert w @ K @ w == pytest.approx(min_norm_simplex(K) @ K @ min_norm_simplex(K), rel=1e-4)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("mode", ["parameters", "features"])
def test_tasks_without_labels_drop_out_and_nothing_is_nan(name, mode):
    tasks, data = synthetic(32)
    targets = dict(data.targets)
    targets["reg"] = torch.full_like(targets["reg"], float("nan"))  # no label for this task in the batch
    model = _model(tasks)
    m = BALANCERS[name](tasks, mode=mode)
    present = {"reg": False, "bin": True, "cls": True}
    autograd.backward(model, m, data.inputs, _loss_of(tasks, targets), present)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert m.weights()["reg"] == 0.0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.task_parameters("reg"))


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_zero_and_tiny_gradients_give_no_nan(name):
    tasks = [Task(f"t{i}", "regression") for i in range(3)]
    model = ParameterIsRepresentation(tasks)
    with torch.no_grad():
        model.theta.copy_(model.targets["t0"])  # task t0 at its optimum: zero gradient
        model.targets["t1"] = model.theta.detach() + 1e-20  # a tiny one
    for mode in ("parameters", "features"):
        g = _grads(model, BALANCERS[name](tasks, mode=mode))
        assert all(torch.isfinite(v).all() for v in g.values()), (name, mode)


def _count_solves(balancer) -> list:
    """Wrap `balancer.solve` so that each call appends to the returned list."""
    calls: list = []
    original = balancer.solve
    balancer.solve = lambda *a: (calls.append(1), original(*a))[1]
    return calls


def test_weights_are_recomputed_every_k_steps():
    tasks, data = synthetic(64)
    model = _model(tasks)
    m = MGDA(tasks, every=3)
    calls = _count_solves(m)
    for step in range(7):
        model.zero_grad(set_to_none=True)
        autograd.backward(model, m, data.inputs, _loss_of(tasks, data.targets))
    assert len(calls) == 3  # steps 0, 3, 6


def test_cached_weights_give_the_weighted_gradient():
    tasks, data = synthetic(64)
    model = _model(tasks)
    m = MGDA(tasks, every=2)
    autograd.backward(model, m, data.inputs, _loss_of(tasks, data.targets))
    w = m.weights()
    model.zero_grad(set_to_none=True)
    autograd.backward(model, m, data.inputs, _loss_of(tasks, data.targets))  # a reuse step
    assert m.weights() == pytest.approx(w)
    got = [p.grad.clone() for p in model.shared_parameters()]
    model.zero_grad(set_to_none=True)
    out = model(data.inputs)
    sum(w[t.name] * t.loss(out[t.name], data.targets[t.name]) for t in tasks).backward()
    assert all(torch.allclose(g, p.grad, rtol=1e-5, atol=1e-7) for g, p in zip(got, model.shared_parameters()))


@pytest.mark.parametrize("name", list(BALANCERS))
def test_every_method_trains_and_checkpoints(name, tmp_path):
    tasks, data = synthetic(256, missing=0.2)
    train, val = data.subset(torch.arange(192)), data.subset(torch.arange(192, 256))
    modes = ["parameters", "features"] if issubclass(BALANCERS[name], GradientBalancer) else [None]
    for mode in modes:
        balancer = BALANCERS[name](tasks, mode=mode) if mode else BALANCERS[name](tasks)
        trainer = Trainer(_model(tasks), tasks, balancer, epochs=4, batch_size=32, lr=5e-3, progress=False,
                          run_dir=tmp_path / f"{name}-{mode}")
        before = trainer.evaluate(val)["loss"]
        trainer.fit(train, val)
        after = trainer.evaluate(val)["loss"]
        assert sum(after.values()) < sum(before.values()), (name, mode, before, after)
        assert all(math.isfinite(v) for v in balancer.weights().values())
        # the balancer's state comes back from the checkpoint
        fresh = BALANCERS[name](tasks, mode=mode) if mode else BALANCERS[name](tasks)
        from multitask.training.checkpoint import load_checkpoint

        fresh.load_state_dict(load_checkpoint(tmp_path / f"{name}-{mode}" / "checkpoints" / "last.pt")["balancer"])
        for k, v in balancer.state_dict().items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, fresh.state_dict()[k]), (name, k)


def test_gramian_methods_declare_what_they_need():
    assert all(issubclass(BALANCERS[n], GramianBalancer) for n in
               ["mgda", "pcgrad", "gradvac", "cagrad", "imtl_g", "aligned_mtl", "nash_mtl", "upgrad", "gradnorm"])
    assert BALANCERS["graddrop"].requires == "jacobian" and BALANCERS["db_mtl"].requires == "jacobian"


def test_a_change_in_labelled_tasks_forces_a_fresh_solve():
    tasks, data = synthetic(64)
    model = _model(tasks)
    m = MGDA(tasks, every=10)
    calls = _count_solves(m)
    loss_of = _loss_of(tasks, data.targets)
    for present in [None, None, {"reg": False, "bin": True, "cls": True}, {"reg": False, "bin": True, "cls": True}]:
        model.zero_grad(set_to_none=True)
        autograd.backward(model, m, data.inputs, loss_of, present)
    assert len(calls) == 2  # the first step, and the step where 'reg' lost its labels; then reuse again
    assert m.weights()["reg"] == 0.0 and sum(m.weights().values()) == pytest.approx(1.0)


def test_gradnorm_and_db_mtl_heads_follow_the_methods_objective():
    from multitask.balancing import DBMTL, GradNorm

    tasks, data = synthetic(64)
    for balancer, factor in [(DBMTL(tasks), lambda t, L: 1.0 / L), (GradNorm(tasks), lambda t, L: 1.0)]:
        model = _model(tasks)
        losses = autograd.backward(model, balancer, data.inputs, _loss_of(tasks, data.targets))
        got = {t.name: [p.grad.clone() for p in model.task_parameters(t.name)] for t in tasks}
        for t in tasks:
            model.zero_grad(set_to_none=True)
            L = t.loss(model(data.inputs, [t.name])[t.name], data.targets[t.name])
            (factor(t.name, L.detach()) * L).backward()
            assert all(torch.allclose(g, p.grad, rtol=1e-5, atol=1e-8)
                       for g, p in zip(got[t.name], model.task_parameters(t.name)))


@pytest.mark.parametrize("mode", ["parameters", "features"])
def test_freezing_or_replacing_parameters_between_steps_is_seen(mode):
    # the engine caches its parameter lists between steps; a change to the model must still be respected
    tasks, data = synthetic(64)
    model, balancer = _model(tasks), MGDA(tasks, mode=mode)
    loss_of = _loss_of(tasks, data.targets)
    autograd.backward(model, balancer, data.inputs, loss_of)
    first = next(p for p in model.shared_parameters())
    first.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    autograd.backward(model, balancer, data.inputs, loss_of)
    assert first.grad is None
    assert all(p.grad is not None for p in model.shared_parameters() if p.requires_grad)
    head = model.task_parameters(tasks[0].name)
    old = next(head)
    with torch.no_grad():
        new = nn.Parameter(old.detach().clone() + 1.0)
    for module in model.modules():  # swap the parameter object where it lives
        for name, p in list(module._parameters.items()):
            if p is old:
                module._parameters[name] = new
    model.zero_grad(set_to_none=True)
    old.grad = None
    autograd.backward(model, balancer, data.inputs, loss_of)
    assert new.grad is not None and old.grad is None


class WithoutEntries(HardSharing):
    """The same model, but the engine is not told about the head entries: it takes the generic path."""

    def head_entries(self):
        return None


def _pair(tasks, head_hidden, seed=0):
    """Two identical HardSharing models (trunk 8 -> 16 -> 12): one with head entries, one without."""
    def build(cls):
        torch.manual_seed(seed)
        trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh())
        return cls(tasks, trunk, 12, head_hidden=head_hidden)
    return build(HardSharing), build(WithoutEntries)


def _step_grads(model, balancer, data, loss_of, present=None, steps=2):
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same random draws (RLW, GradDrop) on both paths
        autograd.backward(model, balancer, data.inputs, loss_of, present)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("mode", ["parameters", "features"])
@pytest.mark.parametrize("head_hidden", [(), (6,)], ids=["linear-heads", "mlp-heads"])
def test_gradients_taken_at_the_head_entries_equal_the_generic_path(name, mode, head_hidden):
    # linear heads (1, 1 and 3 outputs) take the factored Gramian; 6-unit hidden layers the formed one
    tasks, data = synthetic(48)
    targets = dict(data.targets)
    factored, generic = _pair(tasks, head_hidden)
    assert factored.head_entries() is not None and generic.head_entries() is None
    loss_of = _loss_of(tasks, targets)
    for present in [None, {"reg": True, "bin": False, "cls": True}]:
        a = _step_grads(factored, BALANCERS[name](tasks, mode=mode), data, loss_of, present)
        b = _step_grads(generic, BALANCERS[name](tasks, mode=mode), data, loss_of, present)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), (name, mode, k, present)


@pytest.mark.parametrize("sizes", [(1, 1, 1), (1, 3, 2), (4, 4)])
def test_factored_gramian_and_sums_equal_those_of_the_formed_gradients(sizes):
    g = torch.Generator().manual_seed(sum(sizes))
    D = [torch.randn(2, 5, d, generator=g, dtype=torch.float64) for d in sizes]  # leading dims (2, 5)
    W = [torch.randn(d, 7, generator=g, dtype=torch.float64) for d in sizes]
    like = torch.zeros(2, 5, 7, dtype=torch.float64)
    feats = autograd.FactoredGradients(D, W, like, MGDA([Task(f"t{i}", "regression") for i in range(len(sizes))]))
    F = torch.stack([(d @ w).flatten() for d, w in zip(D, W)])
    assert torch.allclose(feats.matrix(), F)
    for factored in (True, False):  # both ways of forming the Gramian
        feats.factored_gram_is_cheaper = lambda: factored
        assert torch.allclose(feats.gram(), F @ F.T), factored
    w = torch.tensor([0.5, -2.0, 1.5][:len(sizes)], dtype=torch.float64)
    assert torch.allclose(feats.combine(w)[0].flatten(), w @ F)
    total, absolute = feats.column_sums()
    assert torch.allclose(total, F.sum(0)) and torch.allclose(absolute, F.abs().sum(0))


def test_an_entry_called_twice_is_an_error_and_overridden_heads_lose_their_entries():
    class Twice(HardSharing):  # applies the entry layer twice
        def heads(self, rep, tasks):
            return {t: self.task_heads[t](rep) + self.task_heads[t](rep) for t in tasks}

        def head_entries(self):
            return {t: self.task_heads[t][0] for t in self.task_names}

    tasks, data = synthetic(32)
    trunk = nn.Sequential(nn.Linear(8, 12), nn.ReLU())
    with pytest.raises(RuntimeError, match="called exactly once"):
        autograd.backward(Twice(tasks, trunk, 12), MGDA(tasks), data.inputs, _loss_of(tasks, data.targets))
    # a subclass that overrides `heads` loses the entries: HardSharing cannot vouch for the new heads
    class Overridden(HardSharing):
        def heads(self, rep, tasks):
            return super().heads(rep, tasks)

    assert Overridden(tasks, trunk, 12).head_entries() is None


def test_frozen_entry_layers_fall_back_to_the_generic_path():
    tasks, data = synthetic(48)
    factored, generic = _pair(tasks, ())
    for m in (factored, generic):
        for t in tasks:
            m.task_heads[t.name][0].weight.requires_grad_(False)
    loss_of = _loss_of(tasks, data.targets)
    a = _step_grads(factored, MGDA(tasks, mode="features"), data, loss_of)
    b = _step_grads(generic, MGDA(tasks, mode="features"), data, loss_of)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in b)


@pytest.mark.parametrize("bad, raises", [(float("nan"), True), (float("inf"), True), (3e38, False)])
def test_a_direction_that_is_not_finite_is_an_error(bad, raises):
    from multitask.balancing.base import JacobianBalancer

    class Fixed(JacobianBalancer):  # returns the mean row with two entries set to `bad`
        def aggregate(self, jacobian, losses, index):
            d = jacobian.mean(0).clone()
            d[:2] = bad  # 3e38 twice overflows a float32 sum, yet every entry is finite: no error
            return d

    tasks = [Task(f"t{i}", "regression") for i in range(3)]
    model = ParameterIsRepresentation(tasks)
    if raises:
        with pytest.raises(FloatingPointError, match="Fixed returned an invalid direction"):
            _grads(model, Fixed(tasks, mode="features"))
    else:
        assert _grads(model, Fixed(tasks, mode="features"))["theta"][0] == pytest.approx(3e38, rel=1e-6)


@pytest.mark.parametrize("head_hidden", [(), (6,)], ids=["factored", "stacked"])
def test_batched_jacobian_equals_the_per_task_loop(head_hidden, monkeypatch):
    # the batched (vmap) branch is the one CUDA takes; it runs on CPU too, so it is checked here
    tasks, data = synthetic(48)
    loss_of = _loss_of(tasks, data.targets)
    original = autograd._jacobian
    for generic in (False, True):
        model = _pair(tasks, head_hidden)[int(generic)]
        seen = []
        for batched in (False, True):
            monkeypatch.setattr(autograd, "_jacobian", lambda *a, b=batched: seen.append(
                original(*a, batched=b).clone()) or seen[-1])
            _step_grads(model, UPGrad(tasks), data, loss_of, steps=1)
        loop, vmap = seen
        assert loop.shape == vmap.shape and loop.abs().sum() > 0
        assert torch.allclose(loop, vmap, rtol=1e-5, atol=1e-7)


def test_batched_jacobian_handles_embeddings_and_a_two_part_representation(monkeypatch):
    from multitask import MMoE

    tasks, data = synthetic(32)
    torch.manual_seed(0)
    x = {"num": data.inputs[:, :4], "cat": torch.randint(0, 5, (32, 2))}
    model = MMoE.tabular(tasks, InputSchema(4, (5, 5)))  # embeddings; representation (x, experts)
    loss_of = _loss_of(tasks, data.targets)
    original, seen = autograd._jacobian, []
    for batched in (False, True):
        monkeypatch.setattr(autograd, "_jacobian", lambda *a, b=batched: seen.append(
            original(*a, batched=b).clone()) or seen[-1])
        model.zero_grad(set_to_none=True)
        autograd.backward(model, UPGrad(tasks), x, loss_of)
    assert seen[0].abs().sum() > 0 and torch.allclose(seen[0], seen[1], rtol=1e-5, atol=1e-7)


def test_a_hook_on_an_entry_layer_sends_the_step_down_the_generic_path():
    # a forward hook may change the entry's output, so u = z W^T + b no longer holds: the engine must not
    # factor; with the same hook on both models the gradients must agree
    tasks, data = synthetic(48)
    factored, generic = _pair(tasks, ())
    for m in (factored, generic):
        m.task_heads["reg"][0].register_forward_hook(lambda _m, _a, out: 2.0 * out + 1.0)
    loss_of = _loss_of(tasks, data.targets)
    a = _step_grads(factored, MGDA(tasks, mode="features"), data, loss_of)
    b = _step_grads(generic, MGDA(tasks, mode="features"), data, loss_of)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in b)


@pytest.mark.parametrize("head_hidden", [(), (6,)], ids=["factored", "stacked"])
def test_under_autocast_the_engine_algebra_keeps_full_precision(head_hidden, monkeypatch):
    # the caller's bfloat16 autocast applies to the model's forward pass, not to the engine's Gramians and
    # combinations: those must match float64 products of the very gradients the engine obtained
    tasks, data = synthetic(48)
    by = {t.name: t for t in tasks}
    loss_of = lambda t, out: by[t].loss(out.float(), data.targets[t])  # noqa: E731
    seen = []

    def spy(cls):
        original = cls.gram

        def gram(self):
            K = original(self)
            M = self.matrix().double()
            seen.append((K, M @ M.T))
            return K
        monkeypatch.setattr(cls, "gram", gram)

    spy(autograd.StackedGradients)
    spy(autograd.FactoredGradients)
    original_gram = autograd._gram
    monkeypatch.setattr(autograd, "_gram", lambda M: seen.append((original_gram(M), M.double() @ M.double().T))
                        or seen[-1][0])
    for model in _pair(tasks, head_hidden):
        for mode in ("features", "parameters"):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autograd.backward(model, MGDA(tasks, mode=mode), data.inputs, loss_of)
            K, ref = seen.pop()
            assert torch.allclose(K, ref, rtol=1e-5, atol=1e-9 * float(ref.abs().max())), (mode, K, ref)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def _inplace_relu(m):
    for name in m.task_names:
        m.task_heads[name][1] = nn.ReLU(inplace=True)  # acts on the entry's output itself


def _prehook_on_head(m):
    m.task_heads["reg"].register_forward_pre_hook(lambda _m, args: (3.0 * args[0],))  # changes z


def _backward_hook_on_entry(m):
    m.task_heads["reg"][0].register_full_backward_hook(
        lambda _m, grad_in, _out: tuple(None if g is None else 5.0 * g for g in grad_in))


def _rebuilt_heads(m):
    for name in m.task_names:  # a parameter-free layer in front of each entry: the heads no longer qualify
        m.task_heads[name] = nn.Sequential(nn.Hardtanh(-0.2, 0.2), *m.task_heads[name])


@pytest.mark.parametrize("change, hidden, after_first_step", [
    (_inplace_relu, (6,), False), (_prehook_on_head, (), False), (_backward_hook_on_entry, (), False),
    (_rebuilt_heads, (), True)], ids=["inplace-after-entry", "prehook-on-head", "backward-hook-on-entry",
                                      "heads-rebuilt-between-steps"])
@pytest.mark.parametrize("mode", ["parameters", "features"])
def test_heads_changed_or_hooked_still_get_exact_gradients(change, hidden, after_first_step, mode):
    tasks, data = synthetic(48)
    loss_of = _loss_of(tasks, data.targets)
    got = []
    for model in _pair(tasks, hidden):
        balancer = MGDA(tasks, mode=mode)
        if after_first_step:
            _step_grads(model, balancer, data, loss_of, steps=1)
        change(model)
        got.append(_step_grads(model, balancer, data, loss_of, steps=1))
    assert got[0].keys() == got[1].keys()
    assert all(torch.allclose(got[0][k], got[1][k], rtol=1e-5, atol=1e-7) for k in got[1])


def test_a_present_task_whose_loss_is_a_constant_contributes_nothing():
    tasks, data = synthetic(48)
    by = {t.name: t for t in tasks}
    loss_of = lambda t, out: torch.zeros(()) if t == "bin" else by[t].loss(out, data.targets[t])  # noqa: E731
    for model in _pair(tasks, ()):
        balancer = UPGrad(tasks, mode="features")
        grads = _step_grads(model, balancer, data, loss_of, steps=1)
        assert all(torch.isfinite(g).all() for g in grads.values())
        assert all(p.grad is None or not p.grad.any() for p in model.task_parameters("bin"))
