"""The contract every registered architecture keeps, on tables and on images (tiny models):
only the asked tasks are computed, the shared/task/group parameter split is exact by autograd, and every
balancer kind runs on it (features mode refused with a clear error where the family has no representation)."""
from __future__ import annotations

import pytest
import torch

from multitask import Task, Trainer, TrainerConfig
from multitask.balancing import BALANCERS, GradientBalancer
from multitask.models import MODELS, ImageSpec, InputSchema, builder

TASKS = [Task("a", "binary"), Task("b", "multiclass", n_outputs=3), Task("c", "regression")]
FUNNEL = [Task("a", "binary"), Task("b", "binary", after="a"), Task("c", "binary", after="b")] \
    if "after" in Task.__dataclass_fields__ else TASKS
SCHEMA = InputSchema(4, (5, 3))
SPEC = ImageSpec(1, 16, 16)

# per family: tiny options for (table, image); variants are "name/label"
TINY: dict[str, tuple[dict, dict]] = {
    "independent": ({"hidden": (8,), "head_hidden": (4,)}, {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,)}),
    "hard_sharing": ({"hidden": (8,), "head_hidden": (4,)}, {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,)}),
    "mmoe": ({"n_experts": 2, "expert_hidden": (8,), "tower_hidden": (4,)},
             {"conv_channels": (2, 3), "kernel_size": 3, "n_experts": 2, "expert_hidden": (8,)}),
    "branched": ({"hidden": (8, 6), "head_hidden": (4,)},
                 {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,)}),
    "branched/tree": ({"hidden": (8, 6, 5), "head_hidden": (4,), "branches": [["a", "b", "c"], [["a", "c"], ["b"]]]},
                      {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,),
                       "branches": [["a", "b", "c"], [["a", "c"], ["b"]], [["a"], ["b"], ["c"]]]}),
    "branched/split-at-input": ({"hidden": (8, 6), "branches": [[["a", "b"], ["c"]]]},
                                {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,),
                                 "branches": [[["a", "b"], ["c"]]]}),
    "cross_stitch": ({"hidden": (8, 6), "head_hidden": (4,)}, {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,)}),
    "cross_stitch/partial": ({"hidden": (8, 6), "head_hidden": (4,), "stitch_after": [0], "per_channel": True},
                             {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,), "stitch_after": [1]}),
    "sluice": ({"hidden": (8, 6), "head_hidden": (4,), "orthogonality": 0.1},
               {"conv_channels": (2, 4), "kernel_size": 3, "hidden": (8,), "orthogonality": 0.1}),
    "sluice/sum": ({"hidden": (6, 6), "layer_mixing": "sum", "subspaces": 3},
                   {"conv_channels": (2, 4), "kernel_size": 3, "hidden": (8,), "layer_mixing": "last"}),
    "param_distance": ({"hidden": (8, 6), "head_hidden": (4,), "strength": 0.1},
                       {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,), "penalty": "trace"}),
    "task_conditioned": ({"hidden": (8, 6), "head_hidden": (4,)}, {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,)}),
    "task_conditioned/film": ({"hidden": (8, 6), "join": "film", "join_at": 1},
                              {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,), "join_at": 2, "descriptor": "embedding"}),
    "mtan": ({"hidden": (8, 6), "head_hidden": (4,)}, {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,)}),
    "modulation": ({"hidden": (8, 6), "head_hidden": (4,), "modulate_from": 1},
                   {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,)}),
    "task_norm": ({"hidden": (8, 6), "head_hidden": (4,)},
                  {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,), "norm": "layer"}),
    "cascade": ({"hidden": (8, 6), "head_hidden": (4,)},
                {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,), "order": ["c", "a", "b"]}),
    "cgc": ({"n_shared_experts": 2, "n_task_experts": 1, "expert_hidden": (8,), "tower_hidden": (4,)},
            {"conv_channels": (2, 3), "kernel_size": 3, "expert_hidden": (8,), "tower_hidden": (4,)}),
    "ple": ({"n_levels": 3, "expert_hidden": (8,), "tower_hidden": (4,), "batch_norm": True},
            {"conv_channels": (2, 3), "kernel_size": 3, "expert_hidden": (8,), "tower_hidden": (4,)}),
    "esmm": ({"hidden": (8, 6)}, {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,)}),
    "aitm": ({"hidden": (8, 6), "head_hidden": (4,)}, {"conv_channels": (2, 3), "kernel_size": 3, "hidden": (8,)}),
    "soft_order": ({"width": 6, "depth": 3, "head_hidden": (4,)},
                   {"conv_channels": (2, 3), "kernel_size": 3, "depth": 2, "head_hidden": (4,)}),
    "soft_order/one-layer": ({"width": 5, "depth": 1}, {"conv_channels": (2,), "kernel_size": 3, "depth": 1}),
    "dselect_k": ({"n_experts": 3, "k": 2, "gamma": 4.0, "expert_hidden": (8,), "tower_hidden": (4,)},
                  {"conv_channels": (2, 3), "kernel_size": 3, "n_experts": 4, "k": 2, "gamma": 4.0,
                   "expert_hidden": (8,)}),
    "dselect_k/entropy": ({"n_experts": 5, "k": 3, "gamma": 4.0, "entropy_reg": 0.1, "expert_hidden": (8,)},
                          {"conv_channels": (2, 3), "kernel_size": 3, "n_experts": 2, "k": 1, "gamma": 4.0,
                           "entropy_reg": 0.1, "expert_hidden": (8,)}),
}
# every family's builders take batch_norm (Linear-BatchNorm-ReLU layers): a variant of each with it on
for _name in [n for n in list(TINY) if "/" not in n]:
    TINY[_name + "/batch_norm"] = tuple({**o, "batch_norm": True} for o in TINY[_name])
FUNNELS = {"esmm", "aitm"}  # families whose tasks form an `after` chain of binary tasks


def _variants() -> list[str]:
    names = []
    for name in MODELS:
        names += [v for v in TINY if v == name or v.startswith(name + "/")] or [name]
    return names


def _tasks(variant: str) -> list[Task]:
    return FUNNEL if variant.split("/")[0] in FUNNELS else TASKS


def _inputs(kind: str, n: int = 8):
    g = torch.Generator().manual_seed(0)
    if kind == "image":
        return torch.randn(n, 1, 16, 16, generator=g)  # float pixels pass as they are; both signs: no dead units
    return {"num": torch.randn(n, 4, generator=g),
            "cat": torch.stack([torch.randint(0, 5, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1)}


def _build(variant: str, kind: str):
    name = variant.split("/")[0]
    if variant not in TINY:
        pytest.fail(f"model {name!r} is registered but tests/test_architectures.py has no tiny options for it")
    options = TINY[variant][0 if kind == "table" else 1]
    try:
        make = builder(name, kind)
    except ValueError:
        pytest.skip(f"{name} has no {kind} builder")
    torch.manual_seed(0)
    model = make(_tasks(variant), SCHEMA if kind == "table" else SPEC, **options)
    with torch.no_grad():  # off any special initialisation (identity stitches, unit FiLM scales), so that every
        for p in model.parameters():  # parameter a task's loss can reach gets a nonzero gradient
            p.add_(0.2 * torch.randn_like(p))
    return model


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def _partition(model):
    shared = _ids(model.shared_parameters())
    own = {t: _ids(model.task_parameters(t)) for t in model.task_names}
    groups = {g: _ids(ps) for g, ps in model.group_parameters().items()}
    return shared, own, groups


def _batch_norm_as_fixed_affine(model, x) -> None:
    """Every BatchNorm set to this batch's statistics and then frozen (eval): the same normalisation, but the
    batch mean is no longer differentiated, which in training cancels exactly the gradient of anything that
    shifts all rows alike (a bias before it) and would hide whether a parameter is reached."""
    from torch.nn.modules.batchnorm import _BatchNorm

    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    with torch.no_grad():
        model(x)
    for m in norms:
        m.eval()


CASES = [(v, k) for v in _variants() for k in ("table", "image")]


@pytest.mark.parametrize("variant,kind", CASES)
def test_outputs_and_exact_partition(variant, kind):
    model = _build(variant, kind)
    tasks = _tasks(variant)
    out = model(_inputs(kind))
    assert {t: tuple(y.shape) for t, y in out.items()} == {t.name: (8, t.out_dim) for t in tasks}
    shared, own, groups = _partition(model)
    sets = [shared, *own.values(), *groups.values()]
    everything = _ids(model.parameters())
    assert set().union(*sets) == everything, "a parameter is in no part"
    assert sum(len(s) for s in sets) == len(everything), "a parameter is in two parts"
    assert all(len(g) >= 2 and set(g) <= set(model.task_names) for g in groups)


@pytest.mark.parametrize("variant,kind", CASES)
def test_a_task_reaches_exactly_its_parameters(variant, kind):
    model = _build(variant, kind)
    shared, own, groups = _partition(model)
    params = dict((id(p), p) for p in model.parameters())
    x = _inputs(kind)
    _batch_norm_as_fixed_affine(model, x)
    for t in model.task_names:
        loss = model(x)[t].square().mean()
        penalty = model.penalties([t]).get(t)
        if penalty is not None:
            loss = loss + penalty
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
        reached = {i for i, g in grads.items() if g is not None and bool(g.abs().sum() > 0)}
        for s, ids in own.items():
            if s != t:
                assert not (reached & ids), f"task {t}'s loss reaches task {s}'s own parameters"
        for g, ids in groups.items():
            if t not in g:
                assert not (reached & ids), f"task {t}'s loss reaches the parameters of group {g}"
            elif penalty is None or bool(penalty != 0):  # (an inactive hinge penalty, e.g. AITM's calibrator
                assert reached & ids, f"task {t}'s loss does not reach its group {g}"  # at 0, links nothing)
        missed = shared - reached
        assert not missed, f"task {t}'s loss misses {len(missed)} shared parameter tensors"
        assert not own[t] or own[t] & reached, f"task {t}'s loss reaches none of its own parameters"
        # (a task may own nothing: a cascade's first head is shared with the tasks after it)


@pytest.mark.parametrize("variant,kind", CASES)
def test_only_the_asked_tasks_are_computed(variant, kind):
    model = _build(variant, kind)
    shared, own, groups = _partition(model)
    x = _inputs(kind)
    for t in model.task_names:
        out = model(x, tasks=[t])
        assert list(out) == [t]
        full = model(x)[t]
        assert torch.allclose(out[t], full, atol=1e-5), "a task's output depends on which others are asked"
        if not model.skips_work:
            continue
        others = set().union(*(ids for s, ids in own.items() if s != t),
                             *(ids for g, ids in groups.items() if t not in g))
        calls: list[str] = []
        handles = [m.register_forward_hook(lambda *_a, n=n: calls.append(n))
                   for n, m in model.named_modules()
                   if list(m.parameters(recurse=False)) and _ids(m.parameters(recurse=False)) <= others]
        try:
            model(x, tasks=[t])
        finally:
            for h in handles:
                h.remove()
        assert not calls, f"asking for {t} ran {sorted(set(calls))}"


FEW = [("equal", {}), ("uncertainty", {}), ("mgda", {"mode": "parameters"}), ("mgda", {"mode": "features"}),
       ("pcgrad", {"mode": "parameters"})]
# every balancer on every family (its main variant): parameters mode, and features mode for the gradient methods
EVERY = [(name, {}) for name in BALANCERS] + [(name, {"mode": "features"}) for name, cls in BALANCERS.items()
                                              if issubclass(cls, GradientBalancer)]
BALANCER_CASES = [(v, k, b, o) for v, k in CASES for b, o in (FEW if "/" in v else EVERY)]


@pytest.mark.parametrize("variant,kind,balancer,options", BALANCER_CASES)
def test_every_balancer_trains_it(variant, kind, balancer, options):
    model = _build(variant, kind)
    tasks = _tasks(variant)
    bal = BALANCERS[balancer](tasks, **options)
    trainer = Trainer(model, tasks, bal, TrainerConfig(epochs=1, batch_size=8, progress=False))
    x = _inputs(kind)
    g = torch.Generator().manual_seed(1)
    y = {t.name: (torch.randint(0, 3, (8,), generator=g) if t.kind == "multiclass" else
                  torch.randint(0, 2, (8,), generator=g).float() if t.kind == "binary" else
                  torch.randn(8, generator=g)) for t in tasks}
    before = [p.detach().clone() for p in model.parameters()]
    if getattr(bal, "mode", None) == "features" and model.feature_mode_error():  # (GradDrop's default mode)
        with pytest.raises(ValueError, match="features"):
            trainer.train_step(x, y)
        return
    losses = trainer.train_step(x, y)
    assert all(torch.isfinite(v) for v in losses.values())
    shared, _, _ = _partition(model)
    moved = {id(p) for p, b in zip(model.parameters(), before) if not torch.equal(p.detach(), b)}
    assert shared <= moved, "a shared parameter did not move"
    assert len(moved) > 0
