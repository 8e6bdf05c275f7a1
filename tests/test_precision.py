"""trainer.precision (autocast bf16/fp16, loss scaling) and trainer.compile on CPU."""
import math

import pytest
import torch

from conftest import synthetic
from multitask import BALANCERS, CrossStitch, HardSharing, InputSchema, Trainer, autograd, config
from multitask.training.precision import compile_problem, cpp_compiler, normalise_precision

# bf16 keeps float32's exponent range with an 8-bit mantissa (~0.4% per rounding); after 9 steps the weights of
# every method below agree with float32's to well within 2% of the largest weight (measured: <= 1.2% for UPGrad)
WEIGHT_TOL = 0.02


def _fit(name, precision, epochs=3, options=None, **kw):
    tasks, data = synthetic()
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(32,), head_hidden=(16,))
    trainer = Trainer(model, tasks, BALANCERS[name](tasks, **(options or {})), epochs=epochs, batch_size=128,
                      lr=1e-2, progress=False, precision=precision, **kw)
    return trainer, trainer.fit(data)


@pytest.mark.parametrize("name,options", [("uncertainty", {}), ("dwa", {}), ("mgda", {}), ("upgrad", {}),
                                          ("pcgrad", {}), ("db_mtl", {}), ("mgda", {"mode": "features"})])
def test_bf16_weights_match_float32_and_losses_fall(name, options):
    """Loss-based (Uncertainty, DWA), Gramian (MGDA, UPGrad, PCGrad; parameters and features mode) and
    Jacobian (DB-MTL) balancers."""
    _, full = _fit(name, "32", options=options)
    trainer, half = _fit(name, "bf16", options=options)
    w32, w16 = full[-1]["weights"], half[-1]["weights"]
    scale = max(abs(v) for v in w32.values())
    assert all(abs(w16[t] - w32[t]) <= WEIGHT_TOL * scale for t in w32), (w32, w16)
    for rec in half:
        assert all(math.isfinite(v) for v in rec["train_loss"].values())
    assert all(half[-1]["train_loss"][t] < half[0]["train_loss"][t] for t in w32)  # training still works
    # the parameters stay float32 (autocast casts copies) and evaluation returns float32 outputs
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    tasks, data = synthetic(64, seed=1)
    assert all(o.dtype == torch.float32 for o in trainer.outputs(data.inputs).values())


def test_bf16_forward_really_runs_in_bf16():
    tasks, data = synthetic(64)
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
    seen = []
    model.register_forward_hook(lambda m, a, out: seen.append({t: o.dtype for t, o in out.items()}))
    Trainer(model, tasks, BALANCERS["equal"](tasks), epochs=1, batch_size=64, progress=False,
            precision="bf16").fit(data)
    assert seen and all(d == torch.bfloat16 for d in seen[0].values())


def test_fp16_on_cpu_scales_losses_and_saves_the_scaler(tmp_path):
    trainer, history = _fit("uncertainty", "fp16", epochs=6, run_dir=tmp_path)
    # GradScaler starts at 2**16 and halves on every overflow (that step is skipped), so it ends lower
    assert 1 < trainer.scaler.get_scale() < 2 ** 16
    assert all(history[-1]["train_loss"][t] < history[0]["train_loss"][t] for t in trainer.tasks)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["scaler"]["scale"] == trainer.scaler.get_scale()


def test_fp16_unscaled_gradients_are_the_float32_ones():
    """The engine's `scale` multiplies the combined loss; after unscale_ the gradients are the true ones."""
    tasks, data = synthetic(128)
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(32,), head_hidden=(16,))
    balancer = BALANCERS["uncertainty"](tasks)
    loss_of = lambda t, out: {x.name: x for x in tasks}[t].loss(out, data.targets[t])  # noqa: E731
    autograd.backward(model, balancer, data.inputs, loss_of)
    exact = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with torch.autocast("cpu", dtype=torch.float16):
        autograd.backward(model, balancer, data.inputs, loss_of, scale=scaler.scale)
    assert any(p.grad.abs().max() > 10 * g.abs().max() for p, g in zip(model.parameters(), exact))  # scaled
    scaler.unscale_(optimizer)
    got, want = torch.cat([p.grad.flatten() for p in model.parameters()]), torch.cat([g.flatten() for g in exact])
    assert float((got - want).norm()) <= 1e-2 * float(want.norm())  # fp16 forward rounding, not the scale
    with pytest.raises(ValueError, match="loss balancers only"):
        autograd.backward(model, BALANCERS["mgda"](tasks), data.inputs, loss_of, scale=scaler.scale)


def test_fp16_is_refused_for_gradient_balancers_and_bad_values_are_named(no_work):
    with pytest.raises(ValueError, match="bf16"):
        _fit("mgda", "fp16")
    raw = {"data": {"name": "yeast"}, "balancer": {"name": "pcgrad"}, "trainer": {"precision": "fp16"}}
    with pytest.raises(config.ConfigError, match="trainer.precision: fp16 needs loss scaling"):
        config.validate(raw)
    raw["trainer"]["precision"] = "int8"
    with pytest.raises(config.ConfigError, match="trainer.precision"):
        config.validate(raw)
    raw["trainer"] = {"precision": 32, "compile": "no_such_backend"}
    with pytest.raises(config.ConfigError, match="trainer.compile: unknown torch.compile backend"):
        config.validate(raw)
    assert normalise_precision(32) == "32" and normalise_precision("bf16") == "bf16"
    assert config.validate({"data": {"name": "yeast"}, "trainer": {"precision": 32}}).trainer.precision == "32"


@pytest.mark.parametrize("family,compiled", [(HardSharing, "shared trunk"), (CrossStitch, "whole model")])
def test_compile_aot_eager_matches_eager_for_a_gradient_balancer(family, compiled):
    """The gradient engine through a compiled trunk (HardSharing: representation path) or a compiled whole
    model (CrossStitch: one backward per task through it), captured by dynamo and AOT autograd without code
    generation: the same weights and losses as eager, to float32 rounding."""
    tasks, data = synthetic()
    runs = []
    for backend in (False, "aot_eager"):
        torch.manual_seed(0)
        model = family.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
        trainer = Trainer(model, tasks, BALANCERS["mgda"](tasks), epochs=1, batch_size=128, lr=1e-2,
                          progress=False, compile=backend)
        runs.append(trainer.fit(data)[-1])
    assert trainer.compiled.startswith(compiled)
    eager, traced = runs
    for t, w in eager["weights"].items():
        assert traced["weights"][t] == pytest.approx(w, rel=1e-4, abs=1e-6)
        assert traced["train_loss"][t] == pytest.approx(eager["train_loss"][t], rel=1e-5)


@pytest.mark.skipif(compile_problem("inductor", "cpu") is not None or cpp_compiler() is None,
                    reason="inductor cannot compile on this machine (no C++ compiler)")
def test_compile_inductor_matches_eager_for_a_loss_balancer(tmp_path):
    """The whole model compiled by inductor (generated C++): same losses as eager; checkpoints keep plain keys."""
    _, eager = _fit("equal", "32", epochs=1)
    trainer, compiled = _fit("equal", "32", epochs=1, compile=True, run_dir=tmp_path)
    assert trainer.compiled == "whole model"
    for t, v in eager[-1]["train_loss"].items():
        assert compiled[-1]["train_loss"][t] == pytest.approx(v, rel=1e-4)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert not any(k.startswith("_orig_mod") for k in state["model"])
