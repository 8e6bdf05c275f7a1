"""Soft layer ordering (`soft_order`) and DSelect-k gates (`dselect_k`): each checked against a computation of
its paper's formula written out here, plus their options, YAML configs and balancing modes."""
import itertools
import json
import math
import warnings

import pytest
import torch
import yaml

from multitask import DSelectK, ImageSpec, InputSchema, SoftOrder, Task, Trainer, config
from multitask.balancing import BALANCERS
from multitask.config import ConfigError
from multitask.models import MODELS, build_model
from multitask.models.dselect_k import DSelectGate, binary_codes, smooth_step
from multitask.models.soft_order import SameConv

TASKS = [Task("a", "binary"), Task("b", "multiclass", n_outputs=3), Task("c", "regression")]
SCHEMA = InputSchema(4, (5, 3))
SPEC = ImageSpec(1, 16, 16)


def _inputs(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"num": torch.randn(n, 4, generator=g),
            "cat": torch.stack([torch.randint(0, 5, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1)}


def _targets(tasks, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {t.name: (torch.randint(0, 3, (n,), generator=g) if t.kind == "multiclass" else
                     torch.randint(0, 2, (n,), generator=g).float() if t.kind == "binary" else
                     torch.randn(n, generator=g)) for t in tasks}


def test_registered_and_exported():
    assert MODELS["soft_order"] is SoftOrder and MODELS["dselect_k"] is DSelectK
    assert isinstance(build_model("soft_order", TASKS, SPEC), SoftOrder)
    assert isinstance(build_model("dselect_k", TASKS, SCHEMA), DSelectK)


# ---------------------------------------------------------------- smooth-step

def _s_closed(t: float, gamma: float) -> float:
    if t <= -gamma / 2:
        return 0.0
    if t >= gamma / 2:
        return 1.0
    return -2 * t ** 3 / gamma ** 3 + 3 * t / (2 * gamma) + 0.5


def _ds_closed(t: float, gamma: float) -> float:
    return 0.0 if abs(t) >= gamma / 2 else -6 * t ** 2 / gamma ** 3 + 3 / (2 * gamma)


@pytest.mark.parametrize("gamma", [0.1, 1.0, 3.0])
def test_smooth_step_matches_its_closed_form(gamma):
    ts = [gamma * u for u in (-5, -0.5, -0.49, -0.3, -0.01, 0.0, 0.01, 0.2, 0.49, 0.5, 0.51, 7)] + [-1e30, 1e30]
    t = torch.tensor(ts, dtype=torch.float64, requires_grad=True)
    s = smooth_step(t, gamma)
    (ds,) = torch.autograd.grad(s.sum(), t)
    for i, ti in enumerate(ts):
        assert s[i].item() == pytest.approx(_s_closed(ti, gamma), abs=1e-12), ti
        assert ds[i].item() == pytest.approx(_ds_closed(ti, gamma), abs=1e-9), ti
    assert torch.isfinite(s).all() and torch.isfinite(ds).all()  # no overflow of the cubic far outside
    assert smooth_step(torch.tensor(0.0), gamma).item() == 0.5


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_smooth_step_and_its_derivative_are_continuous_at_the_ends(gamma):
    eps = 1e-7
    for edge, value in ((-gamma / 2, 0.0), (gamma / 2, 1.0)):
        t = torch.tensor([edge - eps, edge, edge + eps], dtype=torch.float64, requires_grad=True)
        s = smooth_step(t, gamma)
        (ds,) = torch.autograd.grad(s.sum(), t)
        assert s.detach().sub(value).abs().max() < 1e-6
        assert ds.abs().max() < 1e-5  # the cubic part's slope is 0 where it meets the constants
        # and the closed form's one-sided slopes agree there
        assert abs(_ds_closed(edge + math.copysign(eps, -edge), gamma)) < 1e-5
    # monotone on a fine grid, strictly inside
    grid = torch.linspace(-gamma, gamma, 2001, dtype=torch.float64)
    assert (smooth_step(grid, gamma).diff() >= 0).all()


# ---------------------------------------------------------------- the gate

def _expert_of(code: int, n: int, m: int) -> int:
    """The documented handling of n not a power of 2: a code with no expert names expert code - 2^(m-1)."""
    return code if code < n else code - 2 ** (m - 1)


def _brute_force_gate(gate: DSelectGate, x: torch.Tensor, n: int, k: int, gamma: float) -> list[list[float]]:
    """The paper's q(x) = sum_i softmax(alpha)_i r(z_i), r(z)_l = prod_j [b_lj S(z_j) + (1 - b_lj)(1 - S(z_j))],
    in plain Python floats, one row, selector, code and bit at a time."""
    m = max(1, math.ceil(math.log2(n)))
    Wz, bz = gate.selector_logits.weight.double().tolist(), gate.selector_logits.bias.double().tolist()
    rows = []
    for row in x.double().tolist():
        z = [sum(w * v for w, v in zip(Wz[o], row)) + bz[o] for o in range(k * m)]
        if k > 1:
            Wa, ba = gate.weight_logits.weight.double().tolist(), gate.weight_logits.bias.double().tolist()
            a = [sum(w * v for w, v in zip(Wa[i], row)) + ba[i] for i in range(k)]
            top = max(a)
            e = [math.exp(v - top) for v in a]
            alpha = [v / sum(e) for v in e]
        else:
            alpha = [1.0]
        q = [0.0] * n
        for i in range(k):
            for code in range(2 ** m):
                bits = [int(b) for b in format(code, f"0{m}b")]
                p = 1.0
                for j, b in enumerate(bits):
                    s = _s_closed(z[i * m + j], gamma)
                    p *= s if b else 1 - s
                q[_expert_of(code, n, m)] += alpha[i] * p
        rows.append(q)
    return rows


def test_binary_codes():
    bits, fold = binary_codes(4)
    assert bits.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and torch.equal(fold, torch.eye(4))
    bits, fold = binary_codes(5)  # 3 bits; codes 5, 6, 7 name experts 1, 2, 3
    assert bits.shape == (8, 3)
    assert fold.argmax(1).tolist() == [0, 1, 2, 3, 4, 1, 2, 3] and fold.sum(1).tolist() == [1.0] * 8
    assert binary_codes(2)[0].tolist() == [[0], [1]]


@pytest.mark.parametrize("n,k", [(2, 1), (2, 2), (3, 2), (4, 2), (5, 3), (6, 1), (7, 4), (8, 3)])
def test_gate_matches_the_papers_formula(n, k):
    torch.manual_seed(n * 10 + k)
    gamma = 1.5
    gate = DSelectGate(6, n, k, gamma).double()
    with torch.no_grad():  # logits spread over the cubic region and beyond it (saturated bits)
        for p in gate.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(5, 6, dtype=torch.float64)
    weights, selectors = gate(x)
    expected = torch.tensor(_brute_force_gate(gate, x, n, k, gamma), dtype=torch.float64)
    assert torch.allclose(weights, expected, atol=1e-12)
    assert torch.allclose(weights.sum(1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(selectors.sum(-1), torch.ones(5, k, dtype=torch.float64), atol=1e-12)
    assert (weights >= 0).all() and (selectors >= 0).all()


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_weights_sum_to_one_for_any_logits(n):
    torch.manual_seed(n)
    gate = DSelectGate(4, n, min(3, n), 1.0)
    with torch.no_grad():
        for p in gate.parameters():
            p.mul_(0).add_(100 * torch.randn_like(p))  # far out: most bits saturated
    weights, _ = gate(torch.randn(64, 4))
    assert torch.allclose(weights.sum(1), torch.ones(64), atol=1e-6) and (weights >= 0).all()


def _saturate(gate: DSelectGate, codes: list[int]) -> None:
    """Selector i's logits: +gamma for the 1-bits of codes[i], -gamma for the 0-bits, for every input."""
    m, g = gate.n_bits, gate.gamma
    with torch.no_grad():
        gate.selector_logits.weight.zero_()
        gate.selector_logits.bias.copy_(torch.tensor(
            [g if int(b) else -g for c in codes for b in format(c, f"0{m}b")], dtype=torch.float32))


@pytest.mark.parametrize("n,codes", [(8, [1, 6, 3]), (4, [2, 0]), (5, [0, 4]), (5, [6, 2]), (7, [7, 2, 5]),
                                     (8, [3, 3, 5]), (5, [5, 1])])
def test_saturated_selectors_pick_exactly_their_experts(n, codes):
    """After driving the selector logits beyond +-gamma/2, exactly the experts the selectors name have a
    nonzero weight: k of them, or fewer when two selectors name the same one (a code >= n names expert
    code - 2^(m-1): (5, [6, 2]) both name expert 2, (5, [5, 1]) both expert 1)."""
    k = len(codes)
    torch.manual_seed(0)
    gate = DSelectGate(3, n, k, 2.0)
    _saturate(gate, codes)
    weights, selectors = gate(torch.randn(10, 3))
    m = gate.n_bits
    named = {_expert_of(c, n, m) for c in codes}
    for row in weights:
        assert {i for i, w in enumerate(row.tolist()) if w != 0} == named
    assert torch.allclose(weights.sum(1), torch.ones(10))
    assert ((selectors == 0) | (selectors == 1)).all()  # each selector is one-hot
    # the weights of the named experts are the softmax weights of the selectors that name them
    alpha = torch.softmax(gate.weight_logits(torch.zeros(1, 3)), -1)[0] if k > 1 else torch.ones(1)
    x0 = torch.zeros(1, 3)
    w0, _ = gate(x0)
    for e in named:
        assert w0[0, e].item() == pytest.approx(sum(alpha[i].item() for i, c in enumerate(codes)
                                                    if _expert_of(c, n, m) == e), abs=1e-6)


def test_gate_starts_smooth_and_gets_gradients():
    """The selector logits start inside the cubic region (an even spread over the experts, nonzero gradients)."""
    torch.manual_seed(0)
    gate = DSelectGate(10, 8, 2, 1.0)
    x = torch.randn(32, 10)
    weights, _ = gate(x)
    assert weights.min() > 0.5 / 8 and weights.max() < 2.0 / 8
    (weights * torch.randn(8)).sum().backward()
    assert gate.selector_logits.weight.grad.abs().sum() > 0 and gate.weight_logits.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- the DSelect-k model

def _dselect(**options):
    torch.manual_seed(0)
    opts = {"n_experts": 5, "k": 2, "expert_hidden": (8,), "tower_hidden": (4,), **options}
    return DSelectK.tabular(TASKS, SCHEMA, **opts)


def test_dselect_output_is_the_gated_mixture_of_experts():
    model = _dselect(batch_norm=False).eval()
    x = _inputs()
    out = model(x)
    enc = model.encoder(x)
    experts = [e(enc) for e in model.experts]
    for t in model.task_names:
        w = model.expert_weights(x, t)
        mixed = sum(w[:, i:i + 1] * experts[i] for i in range(len(experts)))
        assert torch.allclose(out[t], model.towers[t](mixed), atol=1e-6)
        assert torch.allclose(w.sum(1), torch.ones(8), atol=1e-6)


def test_entropy_penalty_is_the_selectors_entropy_and_trains_the_gate_only():
    model = _dselect(entropy_reg=0.5).train()
    x = _inputs()
    model(x)
    terms = model.penalties(["a", "c"])
    assert set(terms) == {"a", "c"}
    enc = model.encoder(x).detach()
    for t in ("a", "c"):
        r = model.gates[t].selectors(enc).double()
        h = -(r * torch.log(r + 1e-6)).sum((1, 2)).mean()  # k selectors' entropies, summed, mean over rows
        assert terms[t].item() == pytest.approx(0.5 * h.item(), rel=1e-5)
        assert terms[t].item() > 0
        grads = torch.autograd.grad(terms[t], list(model.parameters()), allow_unused=True)
        reached = {id(p) for p, g in zip(model.parameters(), grads) if g is not None and g.abs().sum() > 0}
        assert reached and reached <= {id(p) for p in model.gates[t].parameters()}
    assert model.penalties(["a"]) == {}  # read once per step
    model.eval()
    model(x)
    assert model.penalties(["a"]) == {}  # no penalty outside training
    model.train()
    with torch.no_grad():
        model(x)
    assert model.penalties(["a"]) == {}
    plain = _dselect().train()
    plain(x)
    assert plain.penalties(["a"]) == {}  # entropy_reg 0: no term


def test_entropy_penalty_vanishes_at_saturation():
    model = _dselect(entropy_reg=1.0, gamma=1.0).train()
    _saturate(model.gates["a"], [1, 4])
    model(_inputs())
    assert model.penalties(["a"])["a"].item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("mode", ["parameters", "features"])
def test_dselect_trains_with_the_penalty_in_both_modes(mode):
    model = _dselect(entropy_reg=0.1)
    trainer = Trainer(model, TASKS, BALANCERS["mgda"](TASKS, mode=mode), progress=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = trainer.train_step(_inputs(), _targets(TASKS))
    assert all(torch.isfinite(v) for v in losses.values())
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("gates.a.selector_logits") for n in moved)
    assert any(n.startswith("experts.") for n in moved)


@pytest.mark.parametrize("option,value,match", [
    ("k", 0, "k must be an integer in 1..n_experts"), ("k", 6, r"k must be .*\(5\)"), ("k", True, "k must"),
    ("gamma", 0.0, "gamma must be a number > 0"), ("gamma", float("inf"), "gamma"),
    ("entropy_reg", -0.1, "entropy_reg must be a number >= 0"), ("n_experts", 1, "n_experts must be an integer >= 2"),
])
def test_dselect_bad_options_name_the_option(option, value, match):
    with pytest.raises(ValueError, match=match):
        _dselect(**{option: value})
    with pytest.raises(ValueError, match=match):
        DSelectK.image(TASKS, SPEC, conv_channels=(2,), kernel_size=3, **{"n_experts": 5, option: value})


# ---------------------------------------------------------------- soft ordering

def _soft(depth=3, **options):
    torch.manual_seed(0)
    model = SoftOrder.tabular(TASKS, SCHEMA, width=6, depth=depth, head_hidden=(4,), **options)
    with torch.no_grad():
        for t in model.task_names:
            model.order[t].copy_(torch.randn(depth, depth))
    return model


def test_soft_order_matches_the_papers_formula():
    """h_t^d = sum_k softmax(s_t[d])_k layer_k(h_t^(d-1)), h^0 the stem output, written out with explicit
    exponentials and loops."""
    model = _soft(depth=3)
    x = _inputs()
    out = model(x)
    h0 = model.stem(x)
    for t in model.task_names:
        s = model.order[t].tolist()
        h = h0
        for d in range(3):
            e = [math.exp(v) for v in s[d]]
            h = sum((e[k] / sum(e)) * model.layers[k](h) for k in range(3))
        assert torch.allclose(out[t], model.task_heads[t](h), atol=1e-6)


def test_one_hot_orders_are_fixed_hierarchies():
    """With one-hot rows, a task runs the shared layers in a hard order (here: 2, 0, 1 for a; 1, 1, 1 for b)."""
    model = _soft(depth=3)
    orders = {"a": [2, 0, 1], "b": [1, 1, 1], "c": [0, 1, 2]}
    with torch.no_grad():
        for t, order in orders.items():
            model.order[t].copy_(1e4 * torch.nn.functional.one_hot(torch.tensor(order), 3).float())
    x = _inputs()
    out = model(x)
    for t, order in orders.items():
        h = model.stem(x)
        for k in order:
            h = model.layers[k](h)
        assert torch.allclose(out[t], model.task_heads[t](h), atol=1e-6)


def test_soft_order_starts_as_an_even_mix():
    model = SoftOrder.tabular(TASKS, SCHEMA, width=6, depth=4)
    for t in model.task_names:
        assert torch.allclose(model.mixing_weights(t), torch.full((4, 4), 0.25))


@pytest.mark.parametrize("asked", [None, ["b"], ["a", "c"]])
def test_soft_order_layer_calls(asked):
    """Depth 0 runs each layer once on the stem output for every task; each later depth runs every layer once
    per asked task: D + T' * D * (D - 1) calls."""
    depth = 3
    model = _soft(depth=depth)
    calls = []
    handles = [layer.register_forward_hook(lambda *_a: calls.append(1)) for layer in model.layers]
    model(_inputs(), tasks=asked)
    for h in handles:
        h.remove()
    n_asked = len(asked) if asked else 3
    assert len(calls) == depth + n_asked * depth * (depth - 1)


@pytest.mark.parametrize("kernel_size", [2, 3, 4, 5])
def test_same_conv_matches_pytorchs_same_padding(kernel_size):
    torch.manual_seed(0)
    layer = SameConv(3, kernel_size)
    x = torch.randn(2, 3, 7, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns about even kernels with padding='same'
        ref = torch.relu(torch.nn.functional.conv2d(x, layer.conv.weight, layer.conv.bias, padding="same"))
    assert torch.allclose(layer(x), ref, atol=1e-6)


def test_soft_order_images_keep_the_shape_through_the_shared_layers():
    model = SoftOrder.image(TASKS, ImageSpec(1, 36, 36), depth=2)  # stem 36 -> 16 -> 6: 20 x 6 x 6
    x = torch.randint(0, 256, (3, 1, 36, 36), dtype=torch.uint8)
    h = model.stem(x)
    assert tuple(h.shape) == (3, 20, 6, 6)
    assert all(tuple(layer(h).shape) == (3, 20, 6, 6) for layer in model.layers)
    assert {t: tuple(y.shape) for t, y in model(x).items()} == {"a": (3, 1), "b": (3, 3), "c": (3, 1)}
    even = SoftOrder.image(TASKS, SPEC, conv_channels=(2, 3), kernel_size=4, depth=2)  # 'same' with an even kernel
    assert {t: tuple(y.shape) for t, y in even(torch.rand(2, 1, 16, 16)).items()}["b"] == (2, 3)


def test_soft_order_refuses_features_mode_by_name():
    model = _soft()
    assert "mode: parameters" in SoftOrder.feature_mode_error()
    trainer = Trainer(model, TASKS, BALANCERS["mgda"](TASKS, mode="features"), progress=False)
    with pytest.raises(ValueError, match="SoftOrder has no representation that every task reads"):
        trainer.train_step(_inputs(), _targets(TASKS))
    trainer = Trainer(model, TASKS, BALANCERS["mgda"](TASKS, mode="parameters"), progress=False)
    before = [p.detach().clone() for p in model.order.values()]
    trainer.train_step(_inputs(), _targets(TASKS))
    assert all(not torch.equal(p.detach(), b) for p, b in zip(model.order.values(), before))


@pytest.mark.parametrize("kind,option,value,match", [
    ("table", "depth", 0, "depth must be an integer >= 1"), ("table", "depth", True, "depth must"),
    ("table", "width", 0, "width must be an integer >= 1"), ("table", "head_hidden", [0], "head_hidden"),
    ("table", "dropout", 1.5, "dropout"), ("image", "depth", -1, "depth must be an integer >= 1"),
    ("image", "batch_norm", 1, "batch_norm must be true or false"), ("image", "conv_channels", [], "conv_channels"),
])
def test_soft_order_bad_options_name_the_option(kind, option, value, match):
    with pytest.raises(ValueError, match=match):
        if kind == "table":
            SoftOrder.tabular(TASKS, SCHEMA, **{option: value})
        else:
            SoftOrder.image(TASKS, SPEC, **{"conv_channels": (2,), "kernel_size": 3, option: value})


# ---------------------------------------------------------------- configs

OPTIONS = {"soft_order": ({"width": 16, "depth": 2, "head_hidden": [8]}, {"depth": 2, "conv_channels": [4, 8]}),
           "dselect_k": ({"n_experts": 5, "k": 2, "gamma": 2.0, "entropy_reg": 1e-3, "expert_hidden": [16]},
                         {"n_experts": 3, "k": 3, "expert_hidden": [16]})}
BAD = {"soft_order": [("depth", 0, "model: depth must"), ("head_hidden", [-3], "model: head_hidden"),
                      ("hidden", [8], "model.hidden")],
       "dselect_k": [("k", 9, "model: k must"), ("gamma", -1, "model: gamma must"),
                     ("entropy_reg", -1, "model: entropy_reg must"), ("k", "two", "model.k")]}


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("image", [False, True])
def test_config_validates_options(name, image):
    data = {"name": "multi-fashion"} if image else {"name": "yeast"}
    options = OPTIONS[name][1 if image else 0]
    raw = {"data": data, "model": {"name": name, **options}, "balancer": {"name": "mgda"}}
    assert config.validate(raw).model.options == options
    for option, value, match in BAD[name]:
        with pytest.raises(ConfigError, match=match):
            config.validate({**raw, "model": {**raw["model"], option: value}})
    features = {**raw, "balancer": {"name": "mgda", "mode": "features"}}
    if name == "dselect_k":
        config.validate(features)
    else:
        with pytest.raises(ConfigError, match="balancer.mode: SoftOrder .*mode: parameters"):
            config.validate(features)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_cli_trains_from_yaml_and_refuses_bad_options(name, tmp_path, capsys):
    from multitask.cli import main

    raw = {"data": {"name": "census-income", "limit": 600},
           "model": {"name": name, **OPTIONS[name][0], "embedding_dim": 4},
           "balancer": {"name": "pcgrad"}, "baselines": "none",
           "trainer": {"epochs": 1, "batch_size": 128, "progress": False}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert set(final["test"]) == {"income", "marital"}
    option, value, match = BAD[name][0]
    cfg.write_text(yaml.safe_dump({**raw, "model": {**raw["model"], option: value}}))
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(tmp_path / "bad")]) == 2
    assert match in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_methods_lists_both(capsys):
    from multitask.cli import main

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(x.split()[:2] == ["soft_order", "Soft"] for x in lines)
    assert any(x.split()[:2] == ["dselect_k", "DSelect-k"] for x in lines)


def test_every_pair_of_selectors_coinciding_leaves_one_expert():
    """k selectors that all name one expert give it weight 1, whatever their softmax weights."""
    for n, code in itertools.product([3, 4, 6], [0, 1, 2]):
        gate = DSelectGate(2, n, 3, 1.0)
        _saturate(gate, [code] * 3)
        weights, _ = gate(torch.randn(4, 2))
        assert torch.allclose(weights, torch.nn.functional.one_hot(torch.full((4,), code), n).float(), atol=1e-6)
