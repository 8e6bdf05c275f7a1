"""Task-conditioned, MTAN, modulation, task-specific normalisation and cascade families: shapes on tables and
images, the parameter partition, work skipped for tasks not asked, hand computations, bad options, training
with loss and gradient balancers, and the config."""
import copy

import pytest
import torch
from torch.nn import functional as F

from conftest import synthetic
from multitask import MTAN, Cascade, HardSharing, Modulation, Task, TaskConditioned, TaskNorm, Trainer, autograd, config
from multitask.balancing import BALANCERS, MGDA, GradientBalancer, GramianBalancer
from multitask.config import ConfigError
from multitask.data import MultiTaskData
from multitask.models import MODELS, ImageSpec, InputSchema

TASKS = [Task("r", "regression"), Task("c", "multiclass", n_outputs=4), Task("m", "multilabel", n_outputs=3)]
SCHEMA = InputSchema(5, (7, 3))
SPEC = ImageSpec(1, 16, 16)
SMALL_TABLE = dict(hidden=(8, 6), head_hidden=(4,), embedding_dim=2)
SMALL_IMAGE = dict(conv_channels=(2, 3), kernel_size=3, hidden=(8,), head_hidden=(4,))

# (class, family options): every variant below is checked on tables and on images
VARIANTS = [
    (TaskConditioned, {}),
    (TaskConditioned, {"descriptor": "embedding", "descriptor_dim": 3, "join_at": 1}),
    (TaskConditioned, {"join": "film", "join_at": 1}),
    (MTAN, {}),
    (Modulation, {}),
    (Modulation, {"modulate_from": 1}),
    (TaskNorm, {}),
    (TaskNorm, {"norm": "layer"}),
    (Cascade, {}),
    (Cascade, {"detach": True, "order": ["m", "r", "c"]}),
]
IMAGE_ONLY = [  # the descriptor joins the flattened features of the first dense layer; FiLM on a conv layer
    (TaskConditioned, {"join_at": 2}),
    (TaskConditioned, {"descriptor": "embedding", "join_at": 2}),
    (TaskConditioned, {"join": "film", "join_at": 0}),
]
IDS = [f"{c.__name__}-{o}" for c, o in VARIANTS]


def _table(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"num": torch.randn(n, 5, generator=g),
            "cat": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1)}


def _images(n=6, seed=0):
    return torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _build(cls, options, kind, tasks=TASKS, seed=0):
    torch.manual_seed(seed)
    if kind == "table":
        return cls.tabular(tasks, SCHEMA, **SMALL_TABLE, **options)
    return cls.image(tasks, SPEC, **SMALL_IMAGE, **options)


def _randomize(model, seed=1):
    """A non-degenerate init: FiLM scales, modulations and norms away from 1 / 0, so that tasks differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _nonzero(p):
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


def _ids(params):
    return [id(p) for p in params]


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("cls, options", VARIANTS + IMAGE_ONLY, ids=IDS + [f"{c.__name__}-{o}" for c, o in IMAGE_ONLY])
@pytest.mark.parametrize("kind", ["table", "image"])
def test_output_shapes(cls, options, kind):
    if kind == "table" and (cls, options) in IMAGE_ONLY:
        pytest.skip("image variant")
    model = _build(cls, options, kind)
    x = _table() if kind == "table" else _images()
    out = model(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"r": (6, 1), "c": (6, 4), "m": (6, 3)}
    assert list(model(x, tasks=["m"])) == ["m"]
    with pytest.raises(KeyError, match="unknown task"):
        model(x, tasks=["nope"])


def test_registered_under_snake_case_names():
    assert {MODELS[n] for n in ("task_conditioned", "mtan", "modulation", "task_norm", "cascade")} == {
        TaskConditioned, MTAN, Modulation, TaskNorm, Cascade}
    assert not TaskConditioned.shares_representation and not Modulation.shares_representation
    assert not TaskNorm.shares_representation
    assert MTAN.shares_representation and Cascade.shares_representation
    assert MTAN.feature_mode_error() is None and "mode: parameters" in TaskNorm.feature_mode_error()


# ------------------------------------------------------------------------------------------ partition
@pytest.mark.parametrize("cls, options", VARIANTS, ids=IDS)
@pytest.mark.parametrize("kind", ["table", "image"])
def test_exact_parameter_partition(cls, options, kind):
    model = _build(cls, options, kind)
    _randomize(model)
    own = {t: list(model.task_parameters(t)) for t in model.task_names}
    groups = model.group_parameters()
    listed = _ids(model.shared_parameters()) + [i for ps in own.values() for i in _ids(ps)] \
        + [i for ps in groups.values() for i in _ids(ps)]
    assert sorted(listed) == sorted(_ids(model.parameters()))  # every parameter exactly once
    x = _table() if kind == "table" else _images()
    for t in model.task_names:
        model.zero_grad(set_to_none=True)
        out = model(x)[t]
        (out * torch.randn_like(out)).sum().backward()  # (a plain sum has zero gradient through a batch norm)
        assert all(_nonzero(p) for p in model.shared_parameters()), t
        assert all(_nonzero(p) for p in own[t]), t
        assert not any(_nonzero(p) for u in model.task_names if u != t for p in own[u]), t
        for group, ps in groups.items():
            assert all(_nonzero(p) for p in ps) == (t in group) and any(_nonzero(p) for p in ps) == (t in group)


# ------------------------------------------------------------------------------------------ work skipped
def _not_needed(model, task):
    """Modules that `forward(tasks=[task])` must not call: those of other tasks' (and of groups without
    `task`), except, in a cascade, the heads before `task` in the order (their outputs feed its head)."""
    if isinstance(model, Cascade):
        k = model.order.index(task)
        return [model.task_heads[t] for t in model.order[k + 1:]]
    mine = set(_ids(model.shared_parameters())) | set(_ids(model.task_parameters(task)))
    return [m for m in model.modules() if list(m.parameters()) and not set(_ids(m.parameters())) & mine]


@pytest.mark.parametrize("cls, options", VARIANTS, ids=IDS)
@pytest.mark.parametrize("kind", ["table", "image"])
def test_only_the_asked_tasks_run(cls, options, kind):
    model = _build(cls, options, kind)
    x = _table() if kind == "table" else _images()
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append("encoder"))
    for t in model.task_names:
        modules = _not_needed(model, t)
        assert modules or (isinstance(model, Cascade) and t == model.order[-1])
        handles = [m.register_forward_hook(lambda *a: calls.append("other")) for m in modules]
        calls.clear()
        model(x, tasks=[t])
        assert calls == ["encoder"], (t, calls)  # the encoder once, nothing of the other tasks
        for h in handles:
            h.remove()


def test_cascade_asking_the_first_task_runs_only_the_first_head():
    model = _build(Cascade, {"order": ["c", "m", "r"]}, "table")
    ran = []
    for t in model.task_names:
        model.task_heads[t].register_forward_hook(lambda *a, t=t: ran.append(t))
    model(_table(), tasks=["c"])
    assert ran == ["c"]
    ran.clear()
    model(_table(), tasks=["m"])
    assert ran == ["c", "m"]


# ------------------------------------------------------------------------------------------ hand computations
def test_onehot_concat_is_the_network_with_the_one_hot_appended():
    tasks = TASKS
    torch.manual_seed(0)
    model = TaskConditioned.tabular(tasks, InputSchema(3), batch_norm=False, hidden=(5, 4), head_hidden=())
    x = torch.randn(4, 3)
    out = model(x)
    l0, l1 = model.layers[0][0], model.layers[1][0]
    assert l0.in_features == 3 + len(tasks)
    for i, t in enumerate(model.task_names):
        onehot = torch.zeros(4, 3)
        onehot[:, i] = 1.0
        h = torch.relu(F.linear(torch.cat([x, onehot], 1), l0.weight, l0.bias))
        h = torch.relu(F.linear(h, l1.weight, l1.bias))
        head = model.task_heads[t][0]
        assert torch.allclose(out[t], F.linear(h, head.weight, head.bias), atol=1e-6), t


def test_onehot_concat_on_a_conv_layer_is_broadcast_over_height_and_width():
    torch.manual_seed(0)
    model = TaskConditioned.image(TASKS, SPEC, **SMALL_IMAGE)
    x = _images()
    out = model(x)
    conv = model.layers[0].conv
    assert conv.in_channels == 1 + 3
    for i, t in enumerate(model.task_names):
        h = model.encoder(x)
        planes = torch.zeros(6, 3, 16, 16)
        planes[:, i] = 1.0
        h = torch.relu(F.max_pool2d(F.conv2d(torch.cat([h, planes], 1), conv.weight, conv.bias), 2))
        for layer in model.layers[1:]:
            h = layer(h)
        assert torch.allclose(out[t], model.task_heads[t](h), atol=1e-5), t


@pytest.mark.parametrize("kind, join_at", [("table", 0), ("table", 1), ("image", 0), ("image", 2)])
def test_film_at_init_is_the_plain_network(kind, join_at):
    model = _build(TaskConditioned, {"join": "film", "join_at": join_at}, kind)
    x = _table() if kind == "table" else _images()
    h = model.encoder(x)
    for layer in model.layers:
        h = layer(h)
    out = model(x)
    for t in model.task_names:
        assert torch.allclose(out[t], model.task_heads[t](h.flatten(1)), atol=1e-6)
    _randomize(model)
    out = model(x)
    with torch.no_grad():
        model.shifts["r"].add_(1.0)  # a task's own shift changes only that task
    assert torch.allclose(model(x)["c"], out["c"]) and not torch.allclose(model(x)["r"], out["r"])


def test_mtan_masks_by_hand():
    torch.manual_seed(0)
    model = MTAN.tabular(TASKS, InputSchema(3), batch_norm=False, hidden=(5, 4), head_hidden=())
    _randomize(model)
    x = torch.randn(4, 3)
    p0, p1 = model.shared(x)
    assert torch.allclose(p1, model.trunk[1](model.trunk[0](x)))
    out = model(x)
    for t in model.task_names:
        a0, a1 = model.attention[t]

        def g(att, u):
            first, second = att.g[0], att.g[2]
            hidden = torch.relu(F.linear(u, first.weight, first.bias))
            return torch.sigmoid(F.linear(hidden, second.weight, second.bias))

        hat0 = g(a0, p0) * p0
        hat1 = g(a1, torch.cat([p1, F.linear(hat0, a1.project.weight, a1.project.bias)], 1)) * p1
        assert torch.allclose(out[t], model.task_heads[t](hat1), atol=1e-6), t


def test_mtan_on_images_carries_masks_across_pooling_and_flattening():
    model = _build(MTAN, {}, "image")
    rep = model.shared(_images())
    assert [tuple(p.shape) for p in rep] == [(6, 2, 7, 7), (6, 3, 2, 2), (6, 8)]
    att = model.attention["c"]
    assert att[1].project.in_features == 2 and att[2].project.in_features == 3
    assert att[2].g[0].out_features == 8
    assert _build(MTAN, {"attention_reduction": 4}, "image").attention["c"][2].g[0].out_features == 2


def test_modulation_by_hand():
    torch.manual_seed(0)
    model = Modulation.tabular(TASKS, InputSchema(3), batch_norm=False, hidden=(5, 4), head_hidden=(), modulate_from=1)
    _randomize(model)
    assert [len(model.modulations[t]) for t in model.task_names] == [1, 1, 1]
    x = torch.randn(4, 3)
    out = model(x)
    l0, l1 = model.layers[0][0], model.layers[1][0]
    for t in model.task_names:
        h = torch.relu(F.linear(torch.relu(F.linear(x, l0.weight, l0.bias)), l1.weight, l1.bias))
        assert torch.allclose(out[t], model.task_heads[t](h * model.modulations[t][0]), atol=1e-6)
    fresh = Modulation.tabular(TASKS, InputSchema(3), batch_norm=False, hidden=(5, 4))
    assert all(torch.equal(m, torch.ones_like(m)) for ms in fresh.modulations.values() for m in ms)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_task_norm_by_hand_with_its_own_statistics(norm):
    torch.manual_seed(0)
    model = TaskNorm.tabular(TASKS, InputSchema(3), batch_norm=False, hidden=(5,), head_hidden=(), norm=norm)
    _randomize(model)
    if norm == "batch":
        for t in model.task_names:
            model.norms[t][0].reset_running_stats()
    x = torch.randn(8, 3)
    out = model(x, tasks=["r", "m"])
    h = model.layers[0](x)
    mean, var = (h.mean(0), h.var(0, unbiased=False)) if norm == "batch" else \
        (h.mean(1, keepdim=True), h.var(1, unbiased=False, keepdim=True))
    for t in ("r", "m"):
        n = model.norms[t][0]
        expected = (h - mean) / torch.sqrt(var + n.eps) * n.weight + n.bias
        assert torch.allclose(out[t], model.task_heads[t](expected), atol=1e-5)
    if norm == "batch":  # running statistics are each task's own: c did not run, so its are untouched
        assert torch.allclose(model.norms["r"][0].running_mean, 0.1 * mean)
        assert torch.equal(model.norms["c"][0].running_mean, torch.zeros(5))
        assert model.norms["c"][0].num_batches_tracked == 0 and model.norms["m"][0].num_batches_tracked == 1


@pytest.mark.parametrize("detach", [False, True])
def test_cascade_by_hand(detach):
    torch.manual_seed(0)
    model = Cascade.tabular(TASKS, InputSchema(3), batch_norm=False, hidden=(5,), head_hidden=(), order=["c", "r", "m"],
                            detach=detach)
    x = torch.randn(4, 3)
    z = model.shared(x)
    yc = model.task_heads["c"](z)
    yr = model.task_heads["r"](torch.cat([z, yc], 1))
    ym = model.task_heads["m"](torch.cat([z, yr], 1))
    out = model(x)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in ((out["c"], yc), (out["r"], yr), (out["m"], ym)))
    assert model.task_heads["r"][0].in_features == 5 + 4 and model.task_heads["m"][0].in_features == 5 + 1
    groups = model.group_parameters()
    if detach:
        assert groups == {} and len(list(model.task_parameters("c"))) == 2
    else:
        assert set(groups) == {("c", "r", "m"), ("r", "m")} and list(model.task_parameters("c")) == []
    model(x)["m"].pow(2).sum().backward()
    assert _nonzero(model.task_heads["r"][0].weight) != detach  # later losses train earlier heads unless detached


# ------------------------------------------------------------------------------------------ bad options
@pytest.mark.parametrize("cls, options, option", [
    (TaskConditioned, {"descriptor": "word2vec"}, "descriptor"),
    (TaskConditioned, {"join": "add"}, "join"),
    (TaskConditioned, {"join_at": 2}, "join_at"),
    (TaskConditioned, {"join_at": -1}, "join_at"),
    (TaskConditioned, {"descriptor": "embedding", "descriptor_dim": 0}, "descriptor_dim"),
    (TaskConditioned, {"descriptor_dim": 4}, "descriptor_dim"),
    (TaskConditioned, {"join": "film", "descriptor": "embedding"}, "descriptor"),
    (MTAN, {"hidden": ()}, "hidden"),
    (MTAN, {"head_hidden": (0,)}, "head_hidden"),
    (MTAN, {"attention_reduction": 0}, "attention_reduction"),
    (Modulation, {"modulate_from": 2}, "modulate_from"),
    (Modulation, {"modulate_from": 1.5}, "modulate_from"),
    (TaskNorm, {"norm": "group"}, "norm"),
    (Cascade, {"order": ["r", "c"]}, "order"),
    (Cascade, {"order": ["r", "c", "x"]}, "order"),
    (Cascade, {"order": ["r", "c", "c"]}, "order"),
    (Cascade, {"order": "rcm"}, "order"),
    (Cascade, {"detach": "yes"}, "detach"),
])
def test_bad_options_raise_naming_the_option(cls, options, option):
    with pytest.raises(ValueError, match=option):
        cls.tabular(TASKS, SCHEMA, **{**SMALL_TABLE, **options})


def test_bad_image_options_raise_naming_the_option():
    with pytest.raises(ValueError, match="join_at"):
        TaskConditioned.image(TASKS, SPEC, **SMALL_IMAGE, join_at=3)
    with pytest.raises(ValueError, match="conv_channels"):
        MTAN.image(TASKS, SPEC, **{**SMALL_IMAGE, "conv_channels": ()})
    with pytest.raises(ValueError, match="kernel_size"):
        TaskNorm.image(TASKS, SPEC, **{**SMALL_IMAGE, "kernel_size": 0})


# ------------------------------------------------------------------------------------------ the engine
def _loss_of(tasks, targets):
    by = {t.name: t for t in tasks}
    return lambda t, out: by[t].loss(out, targets[t])


@pytest.mark.parametrize("cls, options, mode", [
    (TaskConditioned, {"join_at": 1}, "parameters"), (Modulation, {}, "parameters"), (TaskNorm, {}, "parameters"),
    (Cascade, {}, "parameters"), (Cascade, {}, "features"), (MTAN, {}, "parameters"), (MTAN, {}, "features")])
def test_each_task_gets_its_own_gradient_and_the_shared_the_weighted_sum(cls, options, mode):
    tasks, data = synthetic(32)
    torch.manual_seed(0)
    model = cls.tabular(tasks, InputSchema(8), hidden=(8, 6), head_hidden=(4,), **options)
    _randomize(model)
    m = MGDA(tasks, mode=mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    autograd.backward(model, m, data.inputs, _loss_of(tasks, data.targets))
    got = {id(p): p.grad.clone() for p in model.parameters()}
    model.load_state_dict(before)  # a batch norm's running statistics: as they were for the step
    w = m.weights()
    per_task = {}
    for t in tasks:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(before)
        t.loss(model(data.inputs)[t.name], data.targets[t.name]).backward()
        per_task[t.name] = {id(p): p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                            for p in model.parameters()}
    for p in model.shared_parameters():
        expected = sum(w[t] * per_task[t][id(p)] for t in per_task)
        assert torch.allclose(got[id(p)], expected, rtol=1e-4, atol=1e-6)
    for t in per_task:
        for p in model.task_parameters(t):
            assert torch.allclose(got[id(p)], per_task[t][id(p)], rtol=1e-5, atol=1e-7)
    for group, ps in model.group_parameters().items():  # the plain sum of its tasks' gradients
        for p in ps:
            assert torch.allclose(got[id(p)], sum(per_task[t][id(p)] for t in group), rtol=1e-5, atol=1e-7)


GRADIENT_METHODS = [n for n, c in BALANCERS.items() if issubclass(c, GradientBalancer)]


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_joint_step_equals_the_representation_step_in_parameters_mode(name):
    """The engine's path for families without a shared representation (a backward per task into J) gives the
    same gradients and balancer state as the usual one on a model that has one, over steps with a task
    absent and cached weights (every=2)."""
    tasks, data = synthetic(48, missing=0.3)
    by = {t.name: t for t in tasks}
    masks = {t: by[t].label_mask(y) for t, y in data.targets.items()}

    def loss_of(t, out):
        return by[t].loss(out, data.targets[t], masks[t])

    runs = []
    for step_fn in (autograd._gradient_step, autograd._joint_step):
        torch.manual_seed(0)
        model = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
        cls = BALANCERS[name]
        balancer = cls(tasks, mode="parameters", **({"every": 2} if issubclass(cls, GramianBalancer) else {}))
        grads = []
        for step in range(3):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(step)
            step_fn(model, balancer, data.inputs, loss_of, {"reg": True, "bin": step != 1, "cls": True})
            grads.append([p.grad for p in model.parameters()])
        runs.append((grads, copy.deepcopy(balancer.state_dict())))
    (ga, sa), (gb, sb) = runs
    for a_step, b_step in zip(ga, gb):
        for a, b in zip(a_step, b_step):
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-4, atol=1e-6))
    torch.testing.assert_close(sa, sb, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ training
BALANCING = [("equal", {}), ("uncertainty", {}), ("mgda", {"mode": "parameters"}), ("mgda", {"mode": "features"})]


@pytest.mark.parametrize("cls, options", VARIANTS, ids=IDS)
@pytest.mark.parametrize("name, balancer_options", BALANCING, ids=[f"{n}-{o.get('mode', '')}" for n, o in BALANCING])
def test_short_training_on_a_table(cls, options, name, balancer_options):
    tasks, data = synthetic(64, missing=0.2)
    if "order" in options:
        options = {**options, "order": ["cls", "reg", "bin"]}
    torch.manual_seed(0)
    model = cls.tabular(tasks, InputSchema(8), hidden=(8, 6), head_hidden=(4,), **options)
    balancer = BALANCERS[name](tasks, **balancer_options)
    trainer = Trainer(model, tasks, balancer, epochs=1, batch_size=24, lr=1e-2, progress=False)
    if balancer_options.get("mode") == "features" and not cls.shares_representation:
        with pytest.raises(ValueError, match="mode: parameters"):
            trainer.fit(data)
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit(data)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged
    losses = trainer.evaluate(data)["loss"]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


@pytest.mark.parametrize("cls, options", [(TaskConditioned, {"join_at": 2}), (TaskConditioned, {"join": "film"}),
                                          (MTAN, {}), (Modulation, {"modulate_from": 1}), (TaskNorm, {}),
                                          (Cascade, {})])
def test_short_training_on_images(cls, options):
    tasks = [Task("a", "multiclass", n_outputs=3), Task("b", "binary")]
    g = torch.Generator().manual_seed(0)
    data = MultiTaskData(_images(24), {"a": torch.randint(0, 3, (24,), generator=g),
                                       "b": torch.randint(0, 2, (24,), generator=g).float()})
    torch.manual_seed(0)
    model = cls.image(tasks, SPEC, **{**SMALL_IMAGE, "head_hidden": (8,)}, **options)  # (4: a dead head at init)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model, tasks, MGDA(tasks), epochs=1, batch_size=8, lr=1e-2, progress=False)
    trainer.fit(data)
    assert not [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert all(torch.isfinite(torch.tensor(v)) for v in trainer.evaluate(data)["loss"].values())


# ------------------------------------------------------------------------------------------ config
def test_config_options_are_validated():
    base = {"data": {"name": "yeast"}, "tasks": {"class1": {}, "class2": {}}, "balancer": {"name": "mgda"}}
    for model in ({"name": "task_conditioned", "join": "film", "join_at": 1, "hidden": [8, 4]},
                  {"name": "task_conditioned", "descriptor": "embedding", "descriptor_dim": 4},
                  {"name": "mtan", "hidden": [8], "attention_reduction": 2}, {"name": "modulation", "modulate_from": 1},
                  {"name": "task_norm", "norm": "layer"}, {"name": "cascade", "order": ["class2", "class1"],
                                                           "detach": True}):
        assert config.validate({**base, "model": model}).model.options == {k: v for k, v in model.items()
                                                                            if k != "name"}
    images = {"data": {"name": "multi-fashion"}, "balancer": {"name": "mgda", "mode": "features"},
              "model": {"name": "mtan", "conv_channels": [2, 3], "kernel_size": 3}}
    config.validate(images)
    for model, balancer, field in [
        ({"name": "task_conditioned", "join": "add"}, {"name": "mgda"}, "model.join"),
        ({"name": "task_conditioned", "join_at": 7}, {"name": "mgda"}, "join_at"),
        ({"name": "task_conditioned", "descriptor_dim": 4}, {"name": "mgda"}, "descriptor_dim"),
        ({"name": "modulation", "modulate_from": "late"}, {"name": "mgda"}, "model.modulate_from"),
        ({"name": "task_norm", "norm": "instance"}, {"name": "mgda"}, "model.norm"),
        ({"name": "cascade", "order": ["class1", "class9"]}, {"name": "mgda"}, "order"),
        ({"name": "task_norm"}, {"name": "mgda", "mode": "features"}, "balancer.mode"),
    ]:
        with pytest.raises(ConfigError, match=field):
            config.validate({**base, "model": model, "balancer": balancer})


def test_task_batch_norm_takes_a_one_row_training_batch():
    from multitask import InputSchema, TaskNorm
    from multitask import Task as _Task

    tasks = [_Task("a", "binary"), _Task("b", "regression")]
    model = TaskNorm.tabular(tasks, InputSchema(3), batch_norm=False, hidden=(4,), head_hidden=(), norm="batch")
    model.train()
    out = model(torch.randn(1, 3))
    assert all(torch.isfinite(v).all() for v in out.values())
