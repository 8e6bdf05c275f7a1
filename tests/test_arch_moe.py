"""CGC and PLE (Tang et al., RecSys 2020), and the embedding / BatchNorm options of every tabular builder."""
import pytest
import torch
from torch import nn

from arch_checks import check_partition, check_skips_other_tasks, check_training, partition
from multitask import CGC, ESMM, PLE, AITM, HardSharing, ImageSpec, Independent, InputSchema, MMoE, Task, config
from multitask.config import ConfigError
from multitask.data import MultiTaskData
from multitask.models import MODELS, build_model
from multitask.models.blocks import MLPBlocks
from multitask.models.layers import BatchNorm1d, mlp

TASKS = [Task("r", "regression"), Task("c", "multiclass", n_outputs=3), Task("b", "binary")]
SCHEMA = InputSchema(5, (7, 3))
SPEC = ImageSpec(1, 16, 16)
SMALL = dict(n_shared_experts=2, n_task_experts=2, expert_hidden=(8, 8), tower_hidden=(8,))
IMAGE = dict(conv_channels=(2, 3), kernel_size=3, expert_hidden=(8,), tower_hidden=(8,))


def _inputs(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"num": torch.randn(n, 5, generator=g),
            "cat": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1)}


def _images(n=8):
    return torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8)


def _model(levels, **options):
    torch.manual_seed(0)
    if levels == "cgc":
        return CGC.tabular(TASKS, SCHEMA, **{**SMALL, **options})
    return PLE.tabular(TASKS, SCHEMA, n_levels=levels, **{**SMALL, **options})


LEVELS = ["cgc", 1, 2, 3, 4]


def test_registered_and_exported():
    assert MODELS["cgc"] is CGC and MODELS["ple"] is PLE
    assert isinstance(build_model("ple", TASKS, SCHEMA, n_levels=2), PLE)
    assert isinstance(build_model("cgc", TASKS, SPEC), CGC)


@pytest.mark.parametrize("levels", LEVELS)
def test_output_shapes_on_tables(levels):
    out = _model(levels)(_inputs(6))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"r": (6, 1), "c": (6, 3), "b": (6, 1)}


@pytest.mark.parametrize("make", [
    lambda: CGC.image(TASKS, SPEC, **IMAGE),
    lambda: PLE.image(TASKS, SPEC, n_levels=2, **IMAGE),
    lambda: PLE.image(TASKS, SPEC, n_levels=3, batch_norm=True, **IMAGE),
])
def test_output_shapes_on_images(make):
    model = make()
    out = model(_images(5))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"r": (5, 1), "c": (5, 3), "b": (5, 1)}
    assert model.levels[0].task_gates["r"].in_features == 3 * 2 * 2  # the flattened conv features (16 -> 7 -> 2)


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_partition_is_exact(levels, batch_norm):
    model = _model(levels, batch_norm=batch_norm)
    check_partition(model, _inputs())
    shared, own, groups = partition(model)
    assert not groups
    n = 1 if levels == "cgc" else levels
    if n == 1:  # CGC: only the shared experts (and the embeddings) are shared
        assert own["r"] == {id(p) for m in (model.levels[0].task_experts["r"], model.levels[0].task_gates["r"],
                                            model.towers["r"]) for p in m.parameters()}
    else:  # the second-to-last level's task gate is its task's own; its task experts are shared
        assert {id(p) for p in model.levels[-2].task_gates["r"].parameters()} <= own["r"]
        assert {id(p) for p in model.levels[-2].task_experts["c"].parameters()} <= shared


def test_partition_on_images():
    torch.manual_seed(0)
    check_partition(PLE.image(TASKS, SPEC, n_levels=3, **IMAGE), _images(16))


@pytest.mark.parametrize("levels", LEVELS)
def test_forward_for_one_task_runs_none_of_the_others_own_modules(levels):
    check_skips_other_tasks(_model(levels), _inputs(8))


def _by_hand(model, x):
    """PLE as the paper writes it: every level computed in full for every task, then the towers."""
    h = model.bottom(model.encoder(x))
    ins = {t: h for t in model.task_names}
    s_in = h
    for level in model.levels:
        experts = {t: [e(ins[t]) for e in level.task_experts[t]] for t in model.task_names}
        shared = [e(s_in) for e in level.shared_experts]
        new = {}
        for t in model.task_names:
            w = torch.softmax(level.task_gates[t](ins[t]), -1)
            new[t] = sum(w[:, j:j + 1] * e for j, e in enumerate(experts[t] + shared))
        if level.shared_gate is not None:
            every = [e for t in model.task_names for e in experts[t]] + shared
            w = torch.softmax(level.shared_gate(s_in), -1)
            assert w.shape[1] == len(model.task_names) * 2 + 2
            s_in = sum(w[:, j:j + 1] * e for j, e in enumerate(every))
        ins = new
    return {t: model.towers[t](ins[t]) for t in model.task_names}


@pytest.mark.parametrize("levels", LEVELS)
def test_matches_a_hand_computation_of_every_level(levels):
    model = _model(levels).eval()
    x = _inputs(10)
    got, want = model(x), _by_hand(model, x)
    for t in model.task_names:
        torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-6)
    assert (model.levels[-1].shared_gate is None and all(lv.shared_gate is not None for lv in model.levels[:-1]))


@pytest.mark.parametrize("call, option", [
    (lambda: PLE.tabular(TASKS, SCHEMA, n_levels=0), "n_levels"),
    (lambda: PLE.tabular(TASKS, SCHEMA, n_levels=True), "n_levels"),
    (lambda: CGC.tabular(TASKS, SCHEMA, n_shared_experts=0), "n_shared_experts"),
    (lambda: PLE.tabular(TASKS, SCHEMA, n_task_experts=1.5), "n_task_experts"),
    (lambda: PLE.tabular(TASKS, SCHEMA, expert_hidden=()), "expert_hidden"),
    (lambda: CGC.tabular(TASKS, SCHEMA, expert_hidden=[0]), "expert_hidden"),
    (lambda: PLE.tabular(TASKS, SCHEMA, tower_hidden=[-1]), "tower_hidden"),
    (lambda: PLE.tabular(TASKS, SCHEMA, batch_norm="yes"), "batch_norm"),
    (lambda: PLE.tabular(TASKS, SCHEMA, embedding_std=0.0), "embedding_std"),
    (lambda: CGC.tabular(TASKS, SCHEMA, embedding_width="wide"), "embedding_width"),
    (lambda: PLE.tabular(TASKS, SCHEMA, dropout=1.0), "dropout"),
    (lambda: PLE.image(TASKS, SPEC, expert_hidden=()), "expert_hidden"),
    (lambda: CGC.image(TASKS, SPEC, n_task_experts=0), "n_task_experts"),
    (lambda: PLE(TASKS, MLPBlocks(SCHEMA, (8, 8)), shared_layers=2), "shared_layers"),
])
def test_bad_options_name_the_option(call, option):
    with pytest.raises(ValueError, match=option):
        call()


def _data(n=48):
    x = _inputs(n)
    g = torch.Generator().manual_seed(1)
    z = x["num"] @ torch.randn(5, 3, generator=g)
    targets = {"r": z[:, 0], "c": torch.bucketize(z[:, 1].contiguous(), torch.tensor([-0.5, 0.5])),
               "b": (z[:, 2] > 0).float()}
    return MultiTaskData(x, targets)


@pytest.mark.filterwarnings("ignore:min_norm_simplex")
@pytest.mark.parametrize("levels", ["cgc", 2, 3])
@pytest.mark.parametrize("balancer, mode", [("equal", None), ("uncertainty", None), ("mgda", "parameters"),
                                            ("mgda", "features")])
def test_short_training_runs(levels, balancer, mode):
    check_training(lambda: _model(levels, batch_norm=levels == 2), TASKS, _data(), balancer, mode)


GOOD = {"data": {"name": "yeast"}, "tasks": {"class1": {}, "class2": {}},
        "model": {"name": "ple", "n_levels": 2, "expert_hidden": [8], "tower_hidden": [4], "embedding_std": 1e-4,
                  "batch_norm": True},
        "balancer": {"name": "mgda", "mode": "features"}}


def test_config_validates_ple_and_cgc_options():
    cfg = config.validate(GOOD)
    assert cfg.model.options["n_levels"] == 2
    config.validate({**GOOD, "model": {"name": "cgc", "n_task_experts": 3}})
    with pytest.raises(ConfigError, match="model: n_levels must be an integer >= 1"):
        config.validate({**GOOD, "model": {"name": "ple", "n_levels": 0}})
    with pytest.raises(ConfigError, match="model.n_levels: unknown field"):
        config.validate({**GOOD, "model": {"name": "cgc", "n_levels": 2}})
    with pytest.raises(ConfigError, match="model.batch_norm"):
        config.validate({**GOOD, "model": {"name": "ple", "batch_norm": "maybe"}})


# ------------------------------------------------------------------ embedding and BatchNorm options (all builders)
BINARY = [Task("a", "binary"), Task("b", "binary", after="a")]
BUILDERS = [
    lambda **o: HardSharing.tabular(BINARY, SCHEMA, hidden=(8,), head_hidden=(4,), **o),
    lambda **o: Independent.tabular(BINARY, SCHEMA, hidden=(8,), head_hidden=(4,), **o),
    lambda **o: MMoE.tabular(BINARY, SCHEMA, n_experts=2, expert_hidden=(8,), tower_hidden=(4,), **o),
    lambda **o: CGC.tabular(BINARY, SCHEMA, expert_hidden=(8,), tower_hidden=(4,), **o),
    lambda **o: PLE.tabular(BINARY, SCHEMA, expert_hidden=(8,), tower_hidden=(4,), **o),
    lambda **o: ESMM.tabular(BINARY, SCHEMA, hidden=(8,), **o),
    lambda **o: AITM.tabular(BINARY, SCHEMA, hidden=(8,), **o),
]


def _embeddings(model):
    return [m for m in model.modules() if isinstance(m, nn.Embedding)]


@pytest.mark.parametrize("make", BUILDERS)
def test_every_tabular_builder_takes_the_embedding_options(make):
    torch.manual_seed(0)
    default = _embeddings(make())
    assert [e.embedding_dim for e in default[:2]] == [4, 2]  # per_column: min(8, (cardinality + 1) // 2)
    # every builder here starts its embeddings at N(0, 1e-4) (EMBEDDING_STD: measured better on census)
    assert default[0].weight.std() < 1e-3
    assert _embeddings(make(embedding_std=None))[0].weight.std() > 0.3
    small = _embeddings(make(embedding_std=1e-4, embedding_width="same", embedding_dim=6))
    assert all(e.embedding_dim == 6 for e in small)
    assert all(0 < e.weight.std() < 1e-3 for e in small)
    with pytest.raises(ValueError, match="embedding_width"):
        make(embedding_width="narrow")


@pytest.mark.parametrize("make", BUILDERS)
def test_batch_norm_is_an_option_on_by_default_where_it_was_measured(make):
    assert any(isinstance(m, nn.BatchNorm1d) for m in make().modules())  # on by default (measured better)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in make(batch_norm=False).modules())
    model = make(batch_norm=True)
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    out = model(_inputs(6))
    assert all(torch.isfinite(v).all() for v in out.values())
    # a last training batch of one row (PyTorch's BatchNorm1d refuses it) is normalised with the running stats
    assert model.training and all(torch.isfinite(v).all() for v in model(_inputs(1)).values())


def test_batch_norm_goes_in_the_experts_and_the_trunk():
    layers = list(mlp(4, (8, 6), 2, dropout=0.1, batch_norm=True))
    assert [type(m) for m in layers] == [nn.Linear, BatchNorm1d, nn.ReLU, nn.Dropout,
                                         nn.Linear, BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert [type(m) for m in mlp(4, (8,))] == [nn.Linear, nn.ReLU]
    mmoe = MMoE.tabular(TASKS, SCHEMA, n_experts=2, expert_hidden=(8,), batch_norm=True)
    assert all(isinstance(e[1], nn.BatchNorm1d) for e in mmoe.experts)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in mmoe.towers.modules())
    mmoe_image = MMoE.image(TASKS, SPEC, conv_channels=(2, 3), kernel_size=3, n_experts=2, expert_hidden=(8,),
                            batch_norm=True)
    assert all(isinstance(e[1], nn.BatchNorm1d) for e in mmoe_image.experts)
    hard = HardSharing.tabular(TASKS, SCHEMA, hidden=(8, 8), batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in hard.trunk.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm1d) for m in hard.task_heads.modules())
    hard_image = HardSharing.image(TASKS, SPEC, conv_channels=(2, 3), kernel_size=3, hidden=(8,), batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in hard_image.trunk.modules()) == 1
    ple = PLE.tabular(TASKS, SCHEMA, expert_hidden=(8, 8), batch_norm=True)
    assert all(sum(isinstance(m, nn.BatchNorm1d) for m in e.modules()) == 2
               for lv in ple.levels for e in lv.shared_experts)


def test_config_takes_the_embedding_and_batch_norm_options():
    raw = {"data": {"name": "yeast"}, "model": {"name": "hard_sharing", "hidden": [8], "embedding_std": 1e-4,
                                                "embedding_width": "same", "batch_norm": True}}
    assert config.validate(raw).model.options["batch_norm"] is True
    for name in ("mmoe", "independent"):
        config.validate({**raw, "model": {"name": name, "embedding_std": 0.01, "batch_norm": True}})
    with pytest.raises(ConfigError, match="model: embedding_std must be a number > 0"):
        config.validate({**raw, "model": {"name": "mmoe", "embedding_std": -1}})
    with pytest.raises(ConfigError, match="model.embedding_width"):
        config.validate({**raw, "model": {"name": "hard_sharing", "embedding_width": 3}})


def test_table_defaults_are_the_measured_choices():
    """Every family's table builder defaults to N(0, 1e-4) embeddings and BatchNorm (measured better on census for
    each of them, docs/benchmarks/architectures_choices.md), except soft_order, where BatchNorm in its mixed shared
    layers lowered education AUC; it keeps PyTorch's N(0, 1) and no BatchNorm."""
    import inspect

    from multitask.models import MODELS
    from multitask.models.layers import EMBEDDING_STD

    for name, cls in MODELS.items():
        params = inspect.signature(cls.tabular).parameters
        expected = (None, False) if name == "soft_order" else (EMBEDDING_STD, True)
        assert (params["embedding_std"].default, params["batch_norm"].default) == expected, name
