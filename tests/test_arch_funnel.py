"""Funnels: Task.after, ESMM (Ma et al., SIGIR 2018) and AITM (Xi et al., KDD 2021)."""
import json
import math
from decimal import Decimal, getcontext
from itertools import product

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from arch_checks import check_partition, check_skips_other_tasks, check_training, lively_init, partition
from multitask import AITM, ESMM, Equal, ImageSpec, InputSchema, Task, autograd, config
from multitask.balancing import MGDA
from multitask.cli import main
from multitask.config import ConfigError
from multitask.data import MultiTaskData
from multitask.models import MODELS, build_model
from multitask.models.blocks import MLPBlocks
from multitask.models.esmm import product_logit
from multitask.tasks import check_dependencies

SCHEMA = InputSchema(5, (7, 3))
SPEC = ImageSpec(1, 16, 16)
CHAIN = [Task("click", "binary"), Task("cart", "binary", after="click"), Task("buy", "binary", after="cart")]
TREE = [Task("click", "binary"), Task("cart", "binary", after="click"), Task("like", "binary", after="click")]
FOREST = [Task("a", "binary"), Task("b", "binary", after="a"), Task("c", "binary"), Task("d", "binary", after="c")]
FAMILIES = {"esmm": ESMM, "aitm": AITM}


def _inputs(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"num": torch.randn(n, 5, generator=g),
            "cat": torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1)}


def _model(family, tasks=CHAIN, **options):
    torch.manual_seed(0)
    return FAMILIES[family].tabular(tasks, SCHEMA, **{"hidden": (8, 8), **options})


# ------------------------------------------------------------------------------------------------ Task.after
def test_after_is_validated_saved_and_restored():
    t = Task("buy", "binary", after="click")
    assert t.to_dict()["after"] == "click" and Task(**t.to_dict()) == t
    assert "after" not in Task("click", "binary").to_dict()  # as older run directories have it
    with pytest.raises(ValueError, match="task 'buy': a task cannot come after itself"):
        Task("buy", "binary", after="buy")
    with pytest.raises(ValueError, match="task 'buy': after must name another task"):
        Task("buy", "binary", after="")
    assert check_dependencies(CHAIN) == {"click": None, "cart": "click", "buy": "cart"}
    with pytest.raises(ValueError, match="task 'cart': after 'view' is not one of the tasks"):
        check_dependencies([Task("click", "binary"), Task("cart", "binary", after="view")])
    loop = [Task("a", "binary", after="c"), Task("b", "binary", after="a"), Task("c", "binary", after="b")]
    with pytest.raises(ValueError, match="task 'a': after: the tasks 'a' -> 'c' -> 'b' -> 'a' form a cycle"):
        check_dependencies(loop)


YEAST = {"data": {"name": "yeast"}, "tasks": {"class1": {}, "class2": {"after": "class1"}},
         "model": {"name": "esmm", "hidden": [8]}, "balancer": {"name": "equal"}}


def test_config_passes_after_to_the_tasks_and_checks_it():
    tasks = config.planned_tasks(config.validate(YEAST))
    assert [(t.name, t.after) for t in tasks] == [("class1", None), ("class2", "class1")]
    with pytest.raises(ConfigError, match="tasks.class2.after: task 'class2': after 'class9' is not one of the tasks"):
        config.validate({**YEAST, "tasks": {"class1": {}, "class2": {"after": "class9"}}})
    with pytest.raises(ConfigError, match="tasks.class1.after: .* form a cycle"):
        config.validate({**YEAST, "tasks": {"class1": {"after": "class2"}, "class2": {"after": "class1"}}})
    with pytest.raises(ConfigError, match="model: ESMM: task 'class1' is in no chain"):
        config.validate({**YEAST, "tasks": {"class1": {}, "class2": {}}})
    # other families ignore the links
    config.validate({**YEAST, "model": {"name": "hard_sharing", "hidden": [8]}})


def test_config_validates_funnel_options():
    config.validate({**YEAST, "model": {"name": "aitm", "hidden": [8], "alpha": 0.3}})
    config.validate({**YEAST, "balancer": {"name": "mgda", "mode": "features"}})  # ESMM: features mode
    with pytest.raises(ConfigError, match="model: alpha must be a number >= 0"):
        config.validate({**YEAST, "model": {"name": "aitm", "alpha": -1}})
    with pytest.raises(ConfigError, match="model.alpha: unknown field"):
        config.validate({**YEAST, "model": {"name": "esmm", "alpha": 0.5}})
    with pytest.raises(ConfigError, match="balancer.mode: AITM has no representation"):
        config.validate({**YEAST, "model": {"name": "aitm"}, "balancer": {"name": "mgda", "mode": "features"}})


# ------------------------------------------------------------------------------------------------ ESMM
def _exact_logit(logits):
    """logit(prod sigmoid(o)) with 60 significant digits."""
    getcontext().prec = 60
    p = Decimal(1)
    for o in logits:
        p *= 1 / (1 + (-Decimal(o)).exp())
    return float((p / (1 - p)).ln())


@pytest.mark.parametrize("n", [2, 3])
def test_product_logit_matches_a_hand_computation_even_at_extreme_logits(n):
    values = [-40.0, -3.0, 0.0, 2.5, 40.0]
    for combo in product(values, repeat=n):
        logits = [torch.tensor([[o]], dtype=torch.float64, requires_grad=True) for o in combo]
        got = product_logit(logits)
        want = _exact_logit(combo)
        assert math.isfinite(got.item()) and got.item() == pytest.approx(want, rel=1e-12, abs=1e-12), (combo, want)
        got.sum().backward()
        assert all(torch.isfinite(o.grad).all() for o in logits)
    # float32 at ±40 and beyond: finite, and a chain of sure steps stays sure
    o = torch.tensor([[40.0, -40.0, 100.0, -100.0]]).T
    for k in range(n):
        out = product_logit([o] * (k + 1))
        assert torch.isfinite(out).all()
    assert product_logit([torch.tensor([40.0]), torch.tensor([40.0])]).item() == pytest.approx(40 - math.log(2))


def test_product_logit_of_one_step_is_that_logit():
    o = torch.randn(4, 1)
    assert product_logit([o]) is o


def test_esmm_outputs_the_logit_of_the_chain_product():
    model = _model("esmm").double()
    x = {"num": _inputs(6)["num"].double(), "cat": _inputs(6)["cat"]}
    out, own = model(x), model.tower_logits(x)
    p = {t: torch.sigmoid(own[t]) for t in own}
    torch.testing.assert_close(out["click"], own["click"])
    torch.testing.assert_close(torch.sigmoid(out["cart"]), p["click"] * p["cart"])
    torch.testing.assert_close(torch.sigmoid(out["buy"]), p["click"] * p["cart"] * p["buy"])
    # the product trains with the ordinary binary cross-entropy over every row (pCTCVR)
    y = torch.tensor([1.0, 0, 1, 0, 0, 1], dtype=torch.float64)
    want = F.binary_cross_entropy(p["click"][:, 0] * p["cart"][:, 0], y)
    torch.testing.assert_close(Task("cart", "binary").loss(out["cart"], y), want)


@pytest.mark.parametrize("family", ["esmm", "aitm"])
@pytest.mark.parametrize("tasks", [CHAIN, TREE, FOREST], ids=["chain", "tree", "forest"])
def test_output_shapes_partition_and_skipped_work_on_tables(family, tasks):
    model = _model(family, tasks)
    out = model(_inputs(6))
    assert {k: tuple(v.shape) for k, v in out.items()} == {t.name: (6, 1) for t in tasks}
    check_partition(model, _inputs())
    check_skips_other_tasks(model, _inputs(8))


def test_partition_follows_the_chains():
    esmm = _model("esmm")
    shared, own, groups = partition(esmm)
    towers = {t: {id(p) for p in esmm.towers[t].parameters()} for t in esmm.task_names}
    assert towers["click"] <= shared and groups == {("cart", "buy"): towers["cart"]} and own["buy"] == towers["buy"]
    aitm = _model("aitm")
    shared, own, groups = partition(aitm)
    heads = {t: {id(p) for p in aitm.task_heads[t].parameters()} for t in aitm.task_names}
    assert {id(p) for p in aitm.towers["click"].parameters()} <= shared
    assert heads["click"] == groups[("click", "cart")]  # read by cart's calibrator
    assert heads["cart"] | {id(p) for p in aitm.attention["cart"].parameters()} <= groups[("cart", "buy")]
    assert heads["buy"] <= own["buy"] and {id(p) for p in aitm.transfers["buy"].parameters()} <= own["buy"]
    plain = _model("aitm", alpha=0.0)  # no calibrator: every head is its task's own
    _, own, groups = partition(plain)
    assert {id(p) for p in plain.task_heads["click"].parameters()} <= own["click"]
    assert list(groups) == [("cart", "buy")]


@pytest.mark.parametrize("family", ["esmm", "aitm"])
def test_images(family):
    tasks = CHAIN[:2]
    torch.manual_seed(0)
    model = FAMILIES[family].image(tasks, SPEC, conv_channels=(2, 3), kernel_size=3, hidden=(8,))
    images = torch.randint(0, 256, (16, 1, 16, 16), dtype=torch.uint8)
    assert {k: tuple(v.shape) for k, v in model(images[:5]).items()} == {"click": (5, 1), "cart": (5, 1)}
    check_partition(model, images)
    assert isinstance(build_model(family, tasks, SPEC, conv_channels=[2, 3], kernel_size=3), FAMILIES[family])


@pytest.mark.parametrize("family", ["esmm", "aitm"])
@pytest.mark.parametrize("call, message", [
    (lambda cls: cls.tabular([Task("a", "binary"), Task("b", "regression", after="a")], SCHEMA),
     "task 'b' is regression; every task of a funnel is binary"),
    (lambda cls: cls.tabular([Task("a", "binary"), Task("b", "binary", after="a"), Task("c", "binary")], SCHEMA),
     "task 'c' is in no chain"),
    (lambda cls: cls.tabular([Task("a", "binary"), Task("b", "binary")], SCHEMA), "task 'a' is in no chain"),
    (lambda cls: cls.tabular([Task("a", "binary"), Task("b", "binary", after="z")], SCHEMA),
     "task 'b': after 'z' is not one of the tasks"),
    (lambda cls: cls.tabular(CHAIN, SCHEMA, head_hidden=[0]), "head_hidden"),
    (lambda cls: cls.tabular(CHAIN, SCHEMA, hidden=[]), "hidden"),
    (lambda cls: cls.tabular(CHAIN, SCHEMA, batch_norm=1), "batch_norm"),
    (lambda cls: cls.tabular(CHAIN, SCHEMA, embedding_std=-1.0), "embedding_std"),
    (lambda cls: cls(CHAIN, MLPBlocks(SCHEMA, (8,)), shared_layers=2), "shared_layers"),
])
def test_bad_tasks_and_options_raise_naming_them(family, call, message):
    with pytest.raises(ValueError, match=message):
        call(FAMILIES[family])


def test_aitm_bad_options():
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        AITM.tabular(CHAIN, SCHEMA, alpha=-0.1)
    with pytest.raises(ValueError, match="hidden: AITM needs at least one fully connected layer"):
        AITM.image(CHAIN, SPEC, hidden=())


# ------------------------------------------------------------------------------------------------ AITM
def test_aitm_matches_a_hand_computation():
    model = lively_init(_model("aitm")).eval()
    x = _inputs(5)
    h = model.encoder(x)
    q = {t: model.towers[t].body(h) for t in model.task_names}
    z = {"click": q["click"]}
    for t, prev in (("cart", "click"), ("buy", "cart")):
        p = model.transfers[t](z[prev])
        a = model.attention[t]
        score = lambda u: (a.h1(u) * a.h2(u)).sum(-1, keepdim=True) / math.sqrt(8)  # noqa: E731
        w = torch.softmax(torch.cat([score(p), score(q[t])], 1), 1)
        z[t] = w[:, :1] * a.h3(p) + w[:, 1:] * a.h3(q[t])
    out = model(x)
    for t in model.task_names:
        torch.testing.assert_close(out[t], model.task_heads[t](z[t]), rtol=1e-5, atol=1e-6)


def test_aitm_calibrator_joins_the_later_task_loss_in_the_engine():
    tasks = CHAIN
    model = lively_init(_model("aitm", alpha=2.0))
    with torch.no_grad():  # make later steps likelier than earlier ones, so the calibrator is active
        for t, bias in (("click", -2.0), ("cart", 0.0), ("buy", 2.0)):
            model.task_heads[t][-1].bias.fill_(bias)
    x = _inputs(12)
    y = {t.name: torch.randint(0, 2, (12,)).float() for t in tasks}
    by = {t.name: t for t in tasks}
    with torch.no_grad():
        out = model(x)
    want = {t.name: by[t.name].loss(out[t.name], y[t.name]) for t in tasks}
    for t, prev in (("cart", "click"), ("buy", "cart")):
        want[t] = want[t] + 2.0 * torch.relu(torch.sigmoid(out[t]) - torch.sigmoid(out[prev])).mean()
    assert want["buy"] > by["buy"].loss(out["buy"], y["buy"])
    model.train()
    losses = autograd.backward(model, Equal(tasks), x, lambda t, o: by[t].loss(o, y[t]))
    for t in want:
        torch.testing.assert_close(losses[t], want[t], rtol=1e-5, atol=1e-6)
    engine = {n: p.grad.clone() for n, p in model.named_parameters()}
    # by hand: the plain sum of the losses and calibrators; its gradient reaches the earlier heads too
    model.zero_grad(set_to_none=True)
    out = model(x)
    total = sum(by[t].loss(out[t], y[t]) for t in by)
    total = total + sum(2.0 * torch.relu(torch.sigmoid(out[t]) - torch.sigmoid(out[prev])).mean()
                        for t, prev in (("cart", "click"), ("buy", "cart")))
    total.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(engine[n], p.grad, rtol=1e-5, atol=1e-7)
    model.zero_grad(set_to_none=True)
    assert set(model.penalties(model.task_names)) == {"cart", "buy"}  # the hand forward's, read once:
    assert model.penalties(model.task_names) == {}
    losses = autograd.backward(model, MGDA(tasks), x, lambda t, o: by[t].loss(o, y[t]))  # parameters mode
    for t in want:
        torch.testing.assert_close(losses[t], want[t], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model(x)
    assert model.penalties(model.task_names) == {}  # nothing kept without gradients


def _funnel_data(tasks, n=48, seed=0):
    x = _inputs(n, seed)
    g = torch.Generator().manual_seed(seed + 1)
    z = x["num"] @ torch.randn(5, len(tasks), generator=g)
    y, targets = None, {}
    for k, t in enumerate(tasks):
        step = (z[:, k] > -0.3).float()
        y = step if t.after is None else targets[t.after] * step  # a later step only after the earlier one
        targets[t.name] = y
    return MultiTaskData(x, targets)


@pytest.mark.filterwarnings("ignore:min_norm_simplex")
@pytest.mark.parametrize("family, balancer, mode", [
    ("esmm", "equal", None), ("esmm", "uncertainty", None), ("esmm", "mgda", "parameters"),
    ("esmm", "mgda", "features"),
    ("aitm", "equal", None), ("aitm", "uncertainty", None), ("aitm", "mgda", "parameters"),
])
def test_short_training_runs(family, balancer, mode):
    check_training(lambda: _model(family), CHAIN, _funnel_data(CHAIN), balancer, mode)


def test_aitm_refuses_features_mode_in_the_engine():
    model = _model("aitm")
    with pytest.raises(ValueError, match="AITM has no representation"):
        autograd.backward(model, MGDA(CHAIN, mode="features"), _inputs(8), lambda t, o: o.sum())
    assert MODELS["aitm"].feature_mode_error() and MODELS["esmm"].feature_mode_error() is None


# ------------------------------------------------------------------------------------------------ end to end
def test_a_funnel_run_saves_its_links_and_predict_rebuilds_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({"price": rng.normal(size=n).round(3), "hour": rng.integers(0, 24, n),
                       "device": rng.choice(["ios", "android", "web"], n)})
    df["click"] = (df["price"] + rng.normal(size=n) > 0).astype(int)
    df["buy"] = df["click"] * (rng.random(n) < 0.5).astype(int)
    df.to_csv(tmp_path / "ads.csv", index=False)
    raw = {"data": {"name": "table", "path": str(tmp_path / "ads.csv"),
                    "targets": {"click": "binary", "buy": "binary"}},
           "tasks": {"click": {}, "buy": {"after": "click"}},
           "model": {"name": "aitm", "hidden": [8], "alpha": 0.6},
           "trainer": {"epochs": 1, "batch_size": 32, "progress": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "tasks.json").read_text())
    assert {t["name"]: t.get("after") for t in saved} == {"click": None, "buy": "click"}
    df.drop(columns=["click", "buy"]).head(10).to_csv(tmp_path / "rows.csv", index=False)
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "rows.csv"),
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 10
