"""PyTorch Lightning adapter (extra ``[lightning]``): train a multitask model with a Lightning `Trainer`.

`MultiTaskModule` wraps the same model, tasks and balancer that `multitask.Trainer` uses, so a Lightning user
keeps their Trainer, callbacks, loggers and checkpointing:

- a loss balancer (Equal, Uncertainty, DWA, ...) uses Lightning's automatic optimisation: `training_step`
  returns ``balancer.combine(losses)`` and Lightning does the backward, the step, mixed precision, gradient
  clipping, accumulation and multi-device strategies (DDP) as for any module;
- a gradient balancer (MGDA, PCGrad, UPGrad, ...) uses manual optimisation: `training_step` calls the gradient
  engine `multitask.autograd.backward`, which writes every parameter's ``.grad``, then steps the optimiser.
  The engine runs the model itself, outside Lightning's backward, so with a gradient balancer this module
  refuses fp16 loss scaling ("16-mixed"; use "bf16-mixed") and multi-process strategies (use multitask's own
  `torchrun` support), and Lightning's ``gradient_clip_val`` / ``accumulate_grad_batches`` do not apply.

Batches are ``(inputs, targets)`` with ``targets = {task: Tensor}`` (NaN / -1 for missing labels), as
`multitask.data.loading.collate` makes them. Logged: ``train_loss/<task>``, ``weights/<task>`` per step,
``val_loss/<task>`` and ``val/<task>/<metric>`` per validation epoch.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from multitask import autograd
from multitask.balancing import Balancer, Equal
from multitask.balancing.base import LossBalancer
from multitask.data.dataset import n_rows
from multitask.models.base import MultiTaskModel
from multitask.tasks import Task, check_unique
from multitask.training.trainer import make_optimizer

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ImportError("multitask.lightning needs PyTorch Lightning: pip install 'multitask[lightning]'") from None


class MultiTaskModule(pl.LightningModule):
    """A LightningModule training `model` on `tasks` with `balancer` (automatic optimisation for loss
    balancers, manual optimisation through the gradient engine for gradient balancers)."""

    def __init__(self, model: MultiTaskModel, tasks: Sequence[Task], balancer: Balancer | None = None,
                 optimizer: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.9) -> None:
        super().__init__()
        self.tasks = check_unique(tasks)
        if sorted(model.task_names) != sorted(self.tasks):
            raise ValueError(f"model has tasks {model.task_names} but the module was given {list(self.tasks)}")
        if optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be adam, adamw or sgd, got {optimizer!r}")
        self.model = model
        self.balancer = balancer or Equal(list(self.tasks.values()))
        if sorted(self.balancer.task_names) != sorted(self.tasks):
            raise ValueError(f"balancer has tasks {self.balancer.task_names}; the module has {list(self.tasks)}")
        self.optimizer_name, self.lr, self.weight_decay, self.momentum = optimizer, lr, weight_decay, momentum
        self.automatic_optimization = isinstance(self.balancer, LossBalancer)
        self._val: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def forward(self, inputs: Any, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        return self.model(inputs, tasks)

    # ------------------------------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        if self.automatic_optimization:
            return
        name = type(self.balancer).__name__
        if self.trainer.world_size > 1:
            raise RuntimeError(f"{name} is a gradient balancer: its engine runs outside Lightning's backward, so "
                               "Lightning strategies cannot synchronise it across processes; train on one device "
                               "here, or use `multitask train --nproc N` (torchrun) for distributed runs")
        if str(self.trainer.precision) in ("16-mixed", "16", "16-true"):
            raise RuntimeError(f"{name} is a gradient balancer: fp16 loss scaling would change the gradients it "
                               "sees; use precision='bf16-mixed' or 32")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        inputs, targets = batch[0], batch[1]
        loss_of, present = self._loss_of(targets)
        if self.automatic_optimization:
            outputs = self.model(inputs)
            losses = {t: loss_of(t, outputs[t]) for t in self.tasks}
            total = self.balancer.combine(losses, present)
            self._log_step(losses, present, n_rows(inputs))
            return total
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        losses = autograd.backward(self.model, self.balancer, inputs, loss_of, present)  # writes every .grad
        optimizer.step()
        self._log_step(losses, present, n_rows(inputs))
        return None

    def on_train_epoch_end(self) -> None:
        self.balancer.epoch_end(self.current_epoch)  # e.g. DWA re-weights per epoch, as multitask's Trainer does

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The model's parameters with weight decay, the balancer's own (log-variances, ...) without, as in
        `multitask.Trainer`; override for schedulers or another optimiser."""
        return make_optimizer(self.optimizer_name, list(self.model.parameters()), list(self.balancer.parameters()),
                              self.lr, self.weight_decay, self.momentum)

    # ------------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        inputs, targets = batch[0], batch[1]
        outputs = self.model(inputs)
        for t in self.tasks:
            self._val.setdefault(t, []).append((outputs[t].detach().float(), targets[t].detach()))

    def on_validation_epoch_end(self) -> None:
        """Per-task loss and metrics over the whole validation split (as `multitask.Trainer.evaluate`)."""
        for t, parts in self._val.items():
            out, y = torch.cat([o for o, _ in parts]), torch.cat([y for _, y in parts])
            self.log(f"val_loss/{t}", float(self.tasks[t].loss(out, y)), batch_size=len(y))
            for metric, value in self.tasks[t].evaluate(out.cpu(), y.cpu()).items():
                self.log(f"val/{t}/{metric}", float(value), batch_size=len(y))
        self._val = {}

    # ------------------------------------------------------------------------------------------ helpers
    def _loss_of(self, targets: Mapping[str, Tensor]) -> tuple[Any, dict[str, bool]]:
        """The per-task loss function of this batch (missing labels masked) and which tasks have labels."""
        masks = {}
        for t, task in self.tasks.items():
            m = task.label_mask(targets[t])
            if not bool(m.all()):
                masks[t] = m
        present = {t: True if t not in masks else bool(masks[t].any()) for t in self.tasks}

        def loss_of(t: str, output: Tensor) -> Tensor:
            m = masks.get(t)
            return self.tasks[t].loss(output, targets[t], m, complete=m is None)
        return loss_of, present

    def _log_step(self, losses: Mapping[str, Tensor], present: Mapping[str, bool], rows: int) -> None:
        for t, loss in losses.items():
            if present[t]:
                self.log(f"train_loss/{t}", loss.detach().float(), on_step=True, on_epoch=True, batch_size=rows)
        for t, w in self.balancer.weights().items():
            self.log(f"weights/{t}", float(w), on_step=True, on_epoch=False, batch_size=rows)


__all__ = ["MultiTaskModule"]
