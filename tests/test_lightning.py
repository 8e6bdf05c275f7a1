"""multitask.lightning: a Lightning Trainer on the same model, tasks, balancer and batches gives the weights and
parameters of multitask's own Trainer (a loss balancer by automatic, a gradient balancer by manual optimisation)."""
import copy
import warnings

import pytest
import torch

pytest.importorskip("lightning")

from conftest import synthetic  # noqa: E402
from multitask import BALANCERS, HardSharing, InputSchema, Trainer  # noqa: E402
from multitask.lightning import MultiTaskModule  # noqa: E402


def _lightning_trainer(**kw):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


@pytest.mark.parametrize("name", ["uncertainty", "mgda"])
def test_lightning_matches_multitask_trainer(name):
    tasks, data = synthetic(384, missing=0.1)  # some labels missing: masks and partial batches as in real data
    batches = [(data.inputs[i:i + 64], {t: y[i:i + 64] for t, y in data.targets.items()}) for i in range(0, 384, 64)]
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
    ours = Trainer(copy.deepcopy(model), tasks, BALANCERS[name](tasks), epochs=2, lr=1e-2, progress=False)
    history = ours.fit(batches)  # a list of batches: the same 6 batches, in order, every epoch
    module = MultiTaskModule(copy.deepcopy(model), tasks, BALANCERS[name](tasks), lr=1e-2)
    assert module.automatic_optimization == (name == "uncertainty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on dataloader workers
        _lightning_trainer(max_epochs=2).fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    for t, w in history[-1]["weights"].items():
        assert module.balancer.weights()[t] == pytest.approx(w, rel=1e-5, abs=1e-7)
    for (n, p), q in zip(ours.model.named_parameters(), module.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), n
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), module.model.parameters()))  # it trained


def test_lightning_validation_logs_task_metrics_and_bf16_runs_a_gradient_balancer():
    tasks, data = synthetic(256)
    batches = [(data.inputs[i:i + 128], {t: y[i:i + 128] for t, y in data.targets.items()}) for i in (0, 128)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,))
    module = MultiTaskModule(model, tasks, BALANCERS["upgrad"](tasks), lr=1e-2)
    trainer = _lightning_trainer(max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader, loader)
    logged = trainer.callback_metrics
    assert {"val_loss/reg", "val/bin/auc", "val/cls/accuracy", "weights/cls", "train_loss/reg_epoch"} <= set(logged)
    # Lightning's bf16 autocast around training_step: the engine leaves it for its own algebra
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _lightning_trainer(max_epochs=2, precision="bf16-mixed").fit(module, loader)
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert all(0 < w < 10 for w in module.balancer.weights().values())


@pytest.mark.parametrize("world_size,precision,match", [(2, "32-true", "processes"), (1, "16-mixed", "bf16-mixed")])
def test_gradient_balancers_refuse_what_the_engine_cannot_follow(world_size, precision, match):
    """Multi-process strategies and fp16 loss scaling act in Lightning's backward, which the engine bypasses
    (a stand-in for the Lightning Trainer: on CPU, Lightning itself turns 16-mixed into bf16)."""
    import types

    tasks, _ = synthetic(64)
    module = MultiTaskModule(HardSharing.tabular(tasks, InputSchema(8), hidden=(8,)), tasks, BALANCERS["mgda"](tasks))
    module.trainer = types.SimpleNamespace(world_size=world_size, precision=precision)
    with pytest.raises(RuntimeError, match=match):
        module.on_fit_start()
    loss_based = MultiTaskModule(HardSharing.tabular(tasks, InputSchema(8), hidden=(8,)), tasks,
                                 BALANCERS["uncertainty"](tasks))
    loss_based.trainer = module.trainer
    loss_based.on_fit_start()  # Lightning handles both for a loss balancer
