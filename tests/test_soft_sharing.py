"""Soft-sharing families: cross-stitch networks, sluice networks, parameter-distance sharing."""
import copy

import pytest
import torch
from torch import nn

from conftest import synthetic
from multitask import (BALANCERS, CrossStitch, ImageSpec, Independent, InputSchema, ParameterDistance, Sluice, Task,
                       Trainer, autograd, config)
from multitask.config import ConfigError
from multitask.models import MODELS

TASKS = [Task("r", "regression"), Task("c", "multiclass", n_outputs=4), Task("b", "binary")]
NAMES = [t.name for t in TASKS]
SCHEMA = InputSchema(5, (7, 3))
SPEC = ImageSpec(1, 16, 16)
FAMILIES = [CrossStitch, Sluice, ParameterDistance]
pytestmark = pytest.mark.filterwarnings("ignore:min_norm_simplex")  # MGDA on tiny random models


def _table(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"num": torch.randn(n, 5, generator=g),
            "cat": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1)}


def _images(n=4, seed=0):
    return torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _tabular(cls, tasks=TASKS, **kw):
    # the checks below are algebra on plain Linear-ReLU columns (BatchNorm variants: test_architectures.py)
    return cls.tabular(tasks, SCHEMA, **{"hidden": (8, 6), "head_hidden": (4,), "batch_norm": False, **kw})


def _image(cls, tasks=TASKS, **kw):
    return cls.image(tasks, SPEC, **{"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,), "head_hidden": (4,),
                                     **kw})


def _scramble(model, seed=0, std=0.5):
    """A random non-degenerate init: every parameter (alphas and betas too) drawn afresh."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# ------------------------------------------------------------------------------------------------ every family
@pytest.mark.parametrize("cls", FAMILIES)
def test_output_shapes_on_tables_and_images(cls):
    shapes = {"r": 1, "c": 4, "b": 1}
    for model, x, n in ((_tabular(cls), _table(6), 6), (_image(cls), _images(4), 4)):
        assert {t: tuple(o.shape) for t, o in model(x).items()} == {t: (n, d) for t, d in shapes.items()}
        assert list(model(x, ["c"])) == ["c"]
    assert cls in MODELS.values()


MAKERS = [  # (model, image inputs)
    (lambda: _tabular(CrossStitch), False),
    (lambda: _tabular(CrossStitch, stitch_after=[0], per_channel=True), False),
    (lambda: _image(CrossStitch, stitch_after=[1]), True),
    (lambda: _tabular(CrossStitch, stitch_after=[]), False),
    (lambda: _tabular(Sluice, orthogonality=0.1), False),
    (lambda: _tabular(Sluice, stitch_after=[0], layer_mixing="last"), False),
    (lambda: _image(Sluice, stitch_after=[0, 2]), True),
    (lambda: _tabular(ParameterDistance), False),
    (lambda: _image(ParameterDistance, penalty="trace"), True),
]


@pytest.mark.parametrize("make, image", MAKERS)
def test_exact_parameter_partition(make, image):
    """Every parameter in exactly one part; task t's output reaches every shared tensor and no other task's own
    parameter (checked with every parameter drawn at random, the units far from the identity)."""
    torch.manual_seed(0)
    model = _scramble(make())
    shared = list(model.shared_parameters())
    own = {t: list(model.task_parameters(t)) for t in NAMES}
    params = shared + [p for ps in own.values() for p in ps]
    ids = [id(p) for p in params]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    x = _images(4) if image else _table(6)
    for t in NAMES:
        grads = torch.autograd.grad(model(x, [t])[t].sum(), params, allow_unused=True)
        g = dict(zip(ids, grads))
        assert all(g[id(p)] is not None and g[id(p)].abs().sum() > 0 for p in shared), t
        for s in NAMES:
            if s != t:
                assert all(g[id(p)] is None or not g[id(p)].any() for p in own[s]), (t, s)
        # a task's penalty term touches only parameters its loss depends on
        model(x, [t])  # penalties come from the latest forward
        terms = model.penalties([t])
        if terms:
            term = terms[t]
            tg = torch.autograd.grad(term, params, allow_unused=True)
            others = {id(p) for s in NAMES if s != t for p in own[s]}
            assert all(gg is None or not gg.any() for p, gg in zip(params, tg) if id(p) in others)


@pytest.mark.parametrize("cls", FAMILIES)
def test_only_the_asked_tasks_heads_and_private_layers_run(cls):
    torch.manual_seed(0)
    kw = {} if cls is ParameterDistance else {"stitch_after": [0]}
    model = _tabular(cls, **kw)
    calls = []
    for t in NAMES:
        if cls is ParameterDistance:
            watched = list(model.columns[t].modules())
        else:
            watched = [model.task_heads[t], model.columns[t][1]]  # layer 1 comes after the last stitch
        for m in watched:
            m.register_forward_hook(lambda *a, t=t: calls.append(t))
    model(_table(), ["c"])
    assert calls and set(calls) == {"c"}


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize("balancer", ["equal", "uncertainty", "mgda"])
def test_trainer_steps_on_tables_and_images(cls, balancer):
    tasks, data = synthetic(48)
    for model, x in ((cls.tabular(tasks, InputSchema(8), hidden=(8, 6), head_hidden=(4,)), data.inputs),
                     (_image(cls, tasks), _images(48))):
        torch.manual_seed(0)
        before = [p.detach().clone() for p in model.parameters()]
        trainer = Trainer(model, tasks, BALANCERS[balancer](tasks), lr=1e-2, progress=False)
        for _ in range(3):
            losses = trainer.train_step(x, data.targets)
            assert all(torch.isfinite(v) for v in losses.values())
        changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
        assert all(changed), [n for (n, _), c in zip(model.named_parameters(), changed) if not c]


@pytest.mark.parametrize("cls", FAMILIES)
def test_features_mode(cls):
    tasks, data = synthetic(32)
    model = cls.tabular(tasks, InputSchema(8), hidden=(8,), head_hidden=(4,))
    mgda = BALANCERS["mgda"](tasks, mode="features")
    if cls is ParameterDistance:  # nothing is shared: every task's network gets its own gradient, as Independent
        assert cls.feature_mode_error() is None
        losses = Trainer(model, tasks, mgda, progress=False).train_step(data.inputs, data.targets)
        assert all(torch.isfinite(v) for v in losses.values())
    else:
        assert "mode: parameters" in cls.feature_mode_error()
        with pytest.raises(ValueError, match="no representation that every task reads"):
            Trainer(model, tasks, mgda, progress=False).train_step(data.inputs, data.targets)


@pytest.mark.parametrize("name, image", [("cross_stitch", False), ("sluice", False), ("param_distance", False),
                                         ("cross_stitch", True), ("sluice", True), ("param_distance", True)])
def test_config_validates_options(name, image):
    data = {"name": "multi-fashion"} if image else {"name": "yeast"}
    options = {"cross_stitch": {"stitch_after": [0], "init": "identity", "per_channel": True},
               "sluice": {"subspaces": 2, "layer_mixing": "concat", "orthogonality": 0.01},
               "param_distance": {"penalty": "trace", "strength": 0.1, "layers": [0]}}[name]
    raw = {"data": data, "model": {"name": name, "hidden": [16], **options}, "balancer": {"name": "mgda"}}
    cfg = config.validate(raw)
    assert cfg.model.options == {"hidden": [16], **options}
    bad = {"cross_stitch": ("init", "gaussian"), "sluice": ("orthogonality", -1.0),
           "param_distance": ("penalty", "l1")}[name]
    with pytest.raises(ConfigError, match=f"model(: |\\.){bad[0]}"):
        config.validate({**raw, "model": {**raw["model"], bad[0]: bad[1]}})
    where = "layers" if name == "param_distance" else "stitch_after"
    with pytest.raises(ConfigError, match=f"model: {where}"):  # only the constructor knows how many layers there are
        config.validate({**raw, "model": {**raw["model"], where: [7]}})
    features = {**raw, "balancer": {"name": "mgda", "mode": "features"}}
    if name == "param_distance":
        config.validate(features)
    else:
        with pytest.raises(ConfigError, match="balancer.mode: .*mode: parameters"):
            config.validate(features)


@pytest.mark.parametrize("cls, option, value", [
    (CrossStitch, "stitch_after", [2]), (CrossStitch, "stitch_after", [0, 0]), (CrossStitch, "stitch_after", "all"),
    (CrossStitch, "init", "random"), (CrossStitch, "per_channel", 1), (CrossStitch, "head_hidden", [0]),
    (Sluice, "subspaces", 0), (Sluice, "subspaces", 7), (Sluice, "layer_mixing", "max"),
    (Sluice, "layer_mixing", "sum"), (Sluice, "orthogonality", -0.1), (Sluice, "orthogonality", float("nan")),
    (Sluice, "init", "ones"), (Sluice, "stitch_after", [-1]),
    (ParameterDistance, "penalty", "l1"), (ParameterDistance, "strength", -1.0), (ParameterDistance, "strength", True),
    (ParameterDistance, "layers", [5]), (ParameterDistance, "layers", []),
])
def test_bad_options_name_themselves(cls, option, value):
    with pytest.raises(ValueError, match=option):
        _tabular(cls, **{option: value})


# ------------------------------------------------------------------------------------------------ cross-stitch
def _independent_copy(model, tasks=TASKS):
    """An `Independent` whose network t is column t of a stitched model (encoder, layers, head), copied."""
    def make(task):
        t = task.name
        return nn.Sequential(copy.deepcopy(model.encoders[t]), *copy.deepcopy(model.columns[t]), nn.Flatten(1),
                             copy.deepcopy(model.task_heads[t]))
    return Independent(tasks, make)


@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_identity_cross_stitch_is_independent_bit_for_bit(image, per_channel):
    torch.manual_seed(0)
    model = (_image if image else _tabular)(CrossStitch, init="identity", per_channel=per_channel)
    x = _images(5) if image else _table(7)
    ind = _independent_copy(model)
    out, ref = model(x), ind(x)
    assert all(torch.equal(out[t], ref[t]) for t in NAMES)
    assert torch.equal(model(x, ["c"])["c"], ref["c"])
    # the units still learn: d out_t / d alpha[t, s] = h_s is not zero, while other columns get no gradient
    model(x)["r"].sum().backward()
    alpha = model.stitches["0"].grad
    assert alpha[0, 1:].abs().sum() > 0 and not alpha[1:].any()
    assert all(p.grad is None or not p.grad.any() for p in model.columns["c"].parameters())


def test_misra_init_and_a_hand_computed_stitch():
    torch.manual_seed(0)
    model = _tabular(CrossStitch, stitch_after=[0])
    a = model.stitches["0"]
    assert torch.allclose(a, torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    assert torch.equal(_tabular(CrossStitch, tasks=TASKS[:1]).stitches["0"], torch.ones(1, 1))
    _scramble(model)
    x = _table()
    h = [model.columns[t][0](model.encoders[t](x)) for t in NAMES]
    for i, t in enumerate(NAMES):
        mixed = sum(a[i, s] * h[s] for s in range(3))
        expected = model.task_heads[t](model.columns[t][1](mixed))
        assert torch.allclose(model(x)[t], expected, atol=1e-6)
    pc = _scramble(_image(CrossStitch, stitch_after=[0], per_channel=True))
    x = _images()
    h = [pc.columns[t][0](pc.encoders[t](x)) for t in NAMES]  # [N, 2, 7, 7]
    a = pc.stitches["0"]  # [3, 3, 2]
    mixed = [sum(a[i, s][None, :, None, None] * h[s] for s in range(3)) for i in range(3)]
    expected = pc.task_heads["b"](pc.columns["b"][2](pc.columns["b"][1](mixed[2])))
    assert torch.allclose(pc(x, ["b"])["b"], expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------ sluice
def test_sluice_mixes_task_subspace_pieces():
    torch.manual_seed(0)
    model = _scramble(_tabular(Sluice, tasks=TASKS[:2], hidden=(6, 4), stitch_after=[0], layer_mixing="last"))
    x = _table()
    h = [model.columns[t][0](model.encoders[t](x)) for t in ("r", "c")]
    pieces = [h[0][:, :3], h[0][:, 3:], h[1][:, :3], h[1][:, 3:]]  # (r, 0), (r, 1), (c, 0), (c, 1)
    a = model.alphas["0"]
    mixed = [sum(a[row, j] * pieces[j] for j in range(4)) for row in range(4)]
    expected = model.task_heads["c"](model.columns["c"][1](torch.cat(mixed[2:], 1)))
    assert torch.allclose(model(x)["c"], expected, atol=1e-6)
    # a width that `subspaces` does not divide is padded with zeros: 5 features -> pieces of 3 and 2 (+ 1 zero)
    odd = _scramble(_tabular(Sluice, tasks=TASKS[:2], hidden=(5, 4), stitch_after=[0], layer_mixing="last"))
    h = [odd.columns[t][0](odd.encoders[t](x)) for t in ("r", "c")]
    zero = torch.zeros(6, 1)
    pieces = [h[0][:, :3], torch.cat([h[0][:, 3:], zero], 1), h[1][:, :3], torch.cat([h[1][:, 3:], zero], 1)]
    a = odd.alphas["0"]
    mixed = [sum(a[row, j] * pieces[j] for j in range(4)) for row in range(4)]
    expected = odd.task_heads["r"](odd.columns["r"][1](torch.cat(mixed[:2], 1)[:, :5]))
    assert torch.allclose(odd(x, ["r"])["r"], expected, atol=1e-6)


@pytest.mark.parametrize("image", [False, True])
def test_sluice_at_its_init_is_the_cross_stitch_network(image):
    torch.manual_seed(0)
    make = _image if image else _tabular
    kw = {"conv_channels": (2, 4)} if image else {}
    sluice = make(Sluice, layer_mixing="last", **kw)
    cross = make(CrossStitch, **kw)
    for name in ("encoders", "columns", "task_heads"):
        getattr(cross, name).load_state_dict(getattr(sluice, name).state_dict())
    x = _images() if image else _table()
    out, ref = sluice(x), cross(x)
    assert all(torch.allclose(out[t], ref[t], atol=1e-6) for t in NAMES)


def test_layer_mixing_reads_beta_weighted_layer_outputs():
    torch.manual_seed(0)
    x = _table()
    for mixing in ("concat", "sum"):
        model = _scramble(_tabular(Sluice, hidden=(6, 6), layer_mixing=mixing, stitch_after=[0]))
        h0 = model._mix(0, {t: model.columns[t][0](model.encoders[t](x)) for t in NAMES}, NAMES)
        h1 = model.columns["c"][1](h0["c"])
        beta = model.betas["c"]
        z = torch.cat([beta[0] * h0["c"], beta[1] * h1], 1) if mixing == "concat" else beta[0] * h0["c"] + beta[1] * h1
        assert torch.allclose(model(x, ["c"])["c"], model.task_heads["c"](z), atol=1e-6)
    img = _image(Sluice, conv_channels=(2, 4))  # a conv layer enters the concatenation as its channel means
    assert img.task_heads["r"][0].in_features == 2 + 4 + 8
    assert torch.equal(img.betas["r"], torch.ones(3))


def test_orthogonality_terms_add_up_to_the_papers_penalty():
    torch.manual_seed(0)
    lam = 0.3
    model = _scramble(_image(Sluice, conv_channels=(2, 4), orthogonality=lam, stitch_after=[0, 2]))
    x = _images(5)
    seen = {}
    for t in NAMES:
        for i in (0, 2):
            model.columns[t][i].register_forward_hook(lambda m, a, out, key=(t, i): seen.__setitem__(key, out))
    assert model.penalties(NAMES) == {}  # no training forward yet
    model(x)
    penalties = model.penalties(NAMES)
    full = 0.0
    for (t, i), out in seen.items():
        g = out.movedim(1, -1).reshape(-1, out.shape[1])  # rows: (image, position); columns: features
        m = g.shape[1] // 2
        full = full + lam * ((g[:, :m].T @ g[:, m:]) / g.shape[0]).square().sum()
    total = sum(penalties[t] for t in NAMES)
    assert torch.allclose(total, full)
    params = list(model.parameters())
    got = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(full, params, allow_unused=True)
    for g1, g2 in zip(got, want):
        assert (g1 is None) == (g2 is None) and (g1 is None or torch.allclose(g1, g2, atol=1e-6))
    model.eval()
    model(x)  # an evaluation forward leaves no stale term behind
    assert model.penalties(NAMES) == {}
    assert _tabular(Sluice).penalties(NAMES) == {}


def test_orthogonality_reaches_the_training_step():
    tasks, data = synthetic(32)

    def shared_grad(lam, balancer):
        torch.manual_seed(0)
        model = Sluice.tabular(tasks, InputSchema(8), hidden=(8,), head_hidden=(4,), orthogonality=lam)
        losses = autograd.backward(model, BALANCERS[balancer](tasks), data.inputs,
                                   lambda t, o: tasks[[x.name for x in tasks].index(t)].loss(o, data.targets[t]))
        return model.columns["reg"][0][0].weight.grad.clone(), losses

    for balancer in ("equal", "mgda"):
        g0, l0 = shared_grad(0.0, balancer)
        g1, l1 = shared_grad(5.0, balancer)
        assert not torch.allclose(g0, g1) and all(l1[t] > l0[t] for t in l0)


# ------------------------------------------------------------------------------------------------ param distance
@pytest.mark.parametrize("penalty", ["l2", "trace"])
@pytest.mark.parametrize("image", [False, True])
def test_per_task_terms_have_the_full_penaltys_gradient(penalty, image):
    torch.manual_seed(0)
    model = (_image if image else _tabular)(ParameterDistance, penalty=penalty, strength=0.7)
    terms = model.penalties(NAMES)
    total, full = sum(terms.values()), model.full_penalty()
    assert torch.allclose(total, full, rtol=1e-5)
    params = list(model.parameters())
    got = torch.autograd.grad(total, params, allow_unused=True)
    want = torch.autograd.grad(full, params, allow_unused=True)
    assert sum(g is not None for g in want) == 2 * len(NAMES) * len(model.tied)  # weight and bias per layer
    for g1, g2 in zip(got, want):
        assert (g1 is None) == (g2 is None) and (g1 is None or torch.allclose(g1, g2, atol=1e-6)), penalty


def test_l2_penalty_by_hand_and_the_layers_option():
    torch.manual_seed(0)
    model = _tabular(ParameterDistance, tasks=TASKS[:2], strength=0.5, layers=[1])
    a, b = (torch.cat([p.reshape(-1) for p in model.columns[t].layers[1].parameters()]) for t in ("r", "c"))
    terms = model.penalties(["r", "c"])
    assert torch.allclose(terms["r"], 0.5 / 2 * ((a - b) / 2).square().sum())
    assert torch.allclose(terms["r"] + terms["c"], 0.5 / 4 * (a - b).square().sum())
    grads = torch.autograd.grad(terms["r"], list(model.parameters()), allow_unused=True)
    touched = {n for (n, _), g in zip(model.named_parameters(), grads) if g is not None}
    assert touched == {"columns.r.layers.1.0.weight", "columns.r.layers.1.0.bias"}
    assert list(model.penalties(["c"])) == ["c"] and _tabular(ParameterDistance, strength=0).penalties(NAMES) == {}


def test_trace_penalty_is_the_nuclear_norm():
    torch.manual_seed(0)
    model = _tabular(ParameterDistance, strength=1.0, penalty="trace", layers=[0])
    W = torch.stack([torch.cat([p.reshape(-1) for p in model.columns[t].layers[0].parameters()]) for t in NAMES])
    assert torch.allclose(sum(model.penalties(NAMES).values()), torch.linalg.svdvals(W).sum())


@pytest.mark.parametrize("balancer", ["equal", "mgda"])
def test_strength_zero_trains_as_independent_bit_for_bit(balancer):
    tasks, data = synthetic(32)
    torch.manual_seed(0)
    model = ParameterDistance.tabular(tasks, InputSchema(8), hidden=(8, 6), head_hidden=(4,), strength=0.0)
    ind = Independent(tasks, lambda t: copy.deepcopy(model.columns[t.name]))
    runs = [Trainer(m, tasks, BALANCERS[balancer](tasks), lr=1e-2, progress=False) for m in (model, ind)]
    for step in range(3):
        rows = torch.arange(step * 8, step * 8 + 8)
        for trainer in runs:
            trainer.train_step(data.inputs[rows], {t: y[rows] for t, y in data.targets.items()})
    for t in (x.name for x in tasks):
        for p, q in zip(model.columns[t].parameters(), ind.networks[t].parameters()):
            assert torch.equal(p, q)
    moved = ParameterDistance.tabular(tasks, InputSchema(8), hidden=(8, 6), head_hidden=(4,), strength=1.0)
    assert moved.penalties([x.name for x in tasks])  # and with a strength the penalty is there


# ------------------------------------------------------------------------------------------------ the engine
def test_joint_step_gives_shared_parameters_the_weighted_sum_of_task_gradients():
    """`_joint_step` with MGDA: shared .grad = sum_t w_t grad_t (w as recorded), own parameters grad_t;
    a task without labels in the batch is left out of both."""
    tasks, data = synthetic(24)
    names = [t.name for t in tasks]
    torch.manual_seed(0)
    model = _scramble(Sluice.tabular(tasks, InputSchema(8), hidden=(6, 4), head_hidden=(4,), orthogonality=0.05),
                      std=0.3)

    def loss_of(t, out):
        return tasks[names.index(t)].loss(out, data.targets[t])

    for present in ({t: True for t in names}, {"reg": True, "bin": False, "cls": True}):
        model.zero_grad(set_to_none=True)
        balancer = BALANCERS["mgda"](tasks)
        autograd.backward(model, balancer, data.inputs, loss_of, present)
        got = {n: p.grad for n, p in model.named_parameters()}
        w = balancer.weights()
        out = model(data.inputs)
        penalties = model.penalties(names)  # from the forward just run
        per_task = {t: torch.autograd.grad(loss_of(t, out[t]) + penalties[t], list(model.parameters()),
                                           retain_graph=True, allow_unused=True) for t in names}
        shared = {id(p) for p in model.shared_parameters()}
        for k, (n, p) in enumerate(model.named_parameters()):
            if id(p) in shared:
                want = sum(w[t] * per_task[t][k] for t in names if present[t])
            else:
                owner = [t for t in names if any(q is p for q in model.task_parameters(t))][0]
                want = per_task[owner][k] if present[owner] else None
            if want is None:
                assert got[n] is None or not got[n].any(), n
            else:
                assert torch.allclose(got[n], want, atol=1e-5), n
        assert present["bin"] or w["bin"] == 0.0
