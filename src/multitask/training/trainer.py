"""`Trainer`: fit, evaluate and predict a multi-task model with any balancer, with resumable run directories.

The trainer has no method-, architecture- or source-specific branches: the model gives ``{task: output}``,
each `Task` gives its loss, the balancer (through `multitask.autograd`) writes the gradients, and the training
data is a `MultiTaskData` (the default shuffled batcher), a `BatchPlan` (e.g. tasks from several sources,
`multitask.data.sampling`) or any iterable of ``(inputs, targets)`` batches (e.g. a DataLoader).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from multitask import autograd
from multitask.balancing import Balancer, Equal
from multitask.data.dataset import MultiTaskData, index_inputs, n_rows, to_device
from multitask.data.sampling import BatchPlan, ShuffledBatches, epoch_generator
from multitask.errors import NonFiniteError
from multitask.jsonio import nulls_to_nan, to_json, write_json, write_text_atomic
from multitask.metrics import HIGHER_IS_BETTER
from multitask.models.base import MultiTaskModel
from multitask.tasks import Task, check_unique
from multitask.training.checkpoint import (NEXT_BEST, load_run_state, load_weights, remove_temporaries,
                                           resolve_best, save_atomic)
from multitask.training import distributed
from multitask.training.accumulation import PartAccumulator
from multitask.training.callbacks import Callback, EpochCallback, StepInfo, _AfterEpoch, as_callbacks
from multitask.training.convergence import PROTECT, TaskConvergence
from multitask.training.distillation import Distillation, LossTerm
from multitask.training.early_stopping import EarlyStopping
from multitask.training.loggers import check_loggers, logger_callbacks
from multitask.training.precision import (autocast, compile_backend, compile_model, compile_problem, make_scaler,
                                          normalise_precision, precision_problem)
from multitask.errors import message

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "cosine")
NONFINITE = ("raise", "skip")
RESUME_KEYS = ("epoch", "model", "balancer", "optimizer", "early_stopping", "rng")


@dataclass
class TrainerConfig:
    """Everything about how to train; the YAML `trainer:` section maps onto it one to one."""

    epochs: int = 10
    batch_size: int = 256
    eval_batch_size: int = 8192
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9          # sgd only
    scheduler: str = "none"        # none | step (x gamma every step_size epochs) | cosine (over `epochs`)
    step_size: int = 10
    gamma: float = 0.1
    grad_clip: float | None = None  # max global gradient norm
    patience: int | None = None     # early stopping: epochs without improvement of `monitor`
    monitor: str = "loss"           # "loss" (mean validation loss) or "<task>.<metric>"
    restore_best: bool = True       # end `fit` with the weights of the best validation epoch
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    nonfinite: str = "raise"        # a NaN/inf loss or gradient: "raise" (stop, naming task and step) or "skip"
    max_skips: int = 10             # with "skip": stop after this many skipped steps in a row
    # UberNet-style accumulation (multitask.training.accumulation): the shared parameters step once they have
    # seen `accumulate_shared` rows, each task's own parameters once `accumulate_task` of its labelled rows;
    # None for both: every part steps every step (the default). One of them alone sets both.
    accumulate_shared: int | None = None
    accumulate_task: int | None = None
    # multitask.training.precision: autocast dtype of the forward ("32", "bf16", "fp16": fp16 with loss scaling)
    precision: str = "32"
    compile: bool | str = False     # torch.compile what the engine calls (true: inductor; or a backend name)
    # multitask.training.loggers: metrics.jsonl is always written; "tensorboard" and "mlflow" add their own
    loggers: Sequence[str] = ("jsonl",)
    # per-task convergence (multitask.training.convergence): a task whose first validation metric has not
    # improved for `per_task_patience` epochs stops (its head back to its best and frozen); `protect: distill`
    # then makes its loss the distillation of the model at its best epoch. Not combined with `patience`.
    per_task_patience: int | None = None
    protect: str = "none"

    def __post_init__(self) -> None:
        self.precision = normalise_precision(self.precision)
        compile_backend(self.compile)
        self.loggers = check_loggers(self.loggers)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE}, got {self.nonfinite!r}")
        for name in ("accumulate_shared", "accumulate_task", "per_task_patience"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {v!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "step_size", "max_skips"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.protect not in PROTECT:
            raise ValueError(f"protect must be one of {PROTECT}, got {self.protect!r}")
        if self.per_task_patience is not None and self.patience is not None:
            raise ValueError("per_task_patience and patience exclude each other: per-task convergence stops each "
                             "task on its own (and training when all have stopped); drop one of them")
        if self.protect != "none" and self.per_task_patience is None:
            raise ValueError(f"protect: {self.protect} applies to tasks stopped by per_task_patience; set it too")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"patience must be None or an integer >= 1, got {self.patience!r}")
        for name, low, strict in (("lr", 0.0, True), ("weight_decay", 0.0, False), ("momentum", 0.0, False),
                                  ("gamma", 0.0, True), ("grad_clip", 0.0, True)):
            v = getattr(self, name)
            if v is None and name == "grad_clip":
                continue
            ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                  and (v > low if strict else v >= low))
            if not ok:
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {v!r}")


class StopTraining(Exception):
    """Raised by a callback to end `fit` cleanly after the current epoch's checkpoint."""


class Trainer:
    """Trains `model` on `tasks`, trading them off with `balancer` (default: `Equal`).

    With a `run_dir`, each epoch appends to ``metrics.jsonl`` and writes ``checkpoints/last.pt`` (and
    ``best.pt`` on improvement) atomically; ``fit(..., resume=True)`` continues from ``last.pt``.

    `distill`: a `multitask.training.distillation.Distillation` (a teacher whose outputs are distilled into the
    rows without labels; its state is saved in the checkpoints).
    """

    def __init__(self, model: MultiTaskModel, tasks: Sequence[Task], balancer: Balancer | None = None,
                 config: TrainerConfig | None = None, run_dir: str | Path | None = None,
                 distill: Distillation | None = None, **overrides: Any) -> None:
        self.tasks = check_unique(tasks)
        if sorted(model.task_names) != sorted(self.tasks):
            raise ValueError(f"model has tasks {model.task_names} but the trainer was given {list(self.tasks)}")
        self.config = replace(config or TrainerConfig(), **overrides)
        self.device = distributed.rank_device(self.config.device)
        # torch.distributed with more than one rank (torchrun): this rank's shard of each batch, global weights
        self.dist = distributed.current(self.device)
        self.main = self.dist is None or self.dist.rank == 0  # the rank that writes files and prints
        self.model = model.to(self.device)
        self.balancer = (balancer or Equal(list(self.tasks.values()))).to(self.device)
        if sorted(self.balancer.task_names) != sorted(self.tasks):
            raise ValueError(f"balancer has tasks {self.balancer.task_names}; the trainer has {list(self.tasks)}")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.monitor_higher = self._monitor_direction(self.config.monitor)
        self.optimizer = self._make_optimizer(list(self.model.parameters()), list(self.balancer.parameters()))
        self.scheduler = self._make_scheduler()
        self.early = EarlyStopping(self.config.patience, self.monitor_higher)
        self.epoch = 0  # epochs completed
        self.global_step = 0  # optimisation steps attempted, skipped ones included
        self.skipped_steps = 0  # steps left out because of a non-finite loss or gradient (nonfinite: skip)
        self._skips_in_a_row = 0
        self._best_state: dict[str, Tensor] | None = None
        self._present: dict[str, bool] = {}  # which tasks had labels in the last step
        self.callbacks: list[Callback] = []  # those of the current `fit`
        self._own_params: dict[str, list[torch.nn.Parameter]] | None = None
        c = self.config
        problem = precision_problem(c.precision, self.device, self.balancer) or compile_problem(
            compile_backend(c.compile), self.device)
        if problem:
            raise ValueError(problem)
        self.scaler = make_scaler(c.precision, self.device)  # fp16 only
        self.compiled = compile_model(self.model, self.balancer, compile_backend(c.compile)) if c.compile else None
        self.accumulator: PartAccumulator | None = None
        if c.accumulate_shared is not None or c.accumulate_task is not None:
            self.accumulator = PartAccumulator(self.model, list(self.tasks), c.accumulate_shared or c.accumulate_task,
                                               c.accumulate_task or c.accumulate_shared)
        self.distill = distill
        if distill is not None:
            distill.check_tasks(self.tasks)
            distill.teacher.bind(self.model)
            distill.teacher.to(self.device)
        self.convergence = (TaskConvergence(self.model, self.tasks, c.per_task_patience, c.protect)
                            if c.per_task_patience is not None else None)
        if self.dist is not None and (distill is not None or self.convergence is not None):
            # their loss terms are means over a step's unlabelled rows, which the ranks' shares do not yet reduce
            raise ValueError("distillation (distill:) and per-task convergence (trainer.per_task_patience) run in "
                             "one process only; train without torchrun/--nproc, or without these options")

    # ------------------------------------------------------------------------------------------ set-up
    def _monitor_direction(self, monitor: str) -> bool:
        if monitor == "loss":
            return False
        task, _, metric = monitor.partition(".")
        if task not in self.tasks or metric not in (self.tasks[task].metrics or ()):
            options = ["loss"] + [f"{t}.{m}" for t, tk in self.tasks.items() for m in tk.metrics or ()]
            raise ValueError(f"monitor {monitor!r} is not available; choose one of {options}")
        return HIGHER_IS_BETTER[metric]

    def _make_optimizer(self, params: list[torch.nn.Parameter],
                        balancer_params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The model's parameters with the configured weight decay; a balancer's own parameters (learned
        log-variances, loss scales, GradNorm weights) in a group without decay, which would bias them."""
        c = self.config
        return make_optimizer(c.optimizer, params, balancer_params, c.lr, c.weight_decay, c.momentum)

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler | None:
        c = self.config
        if c.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=c.step_size, gamma=c.gamma)
        if c.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        return None

    # ------------------------------------------------------------------------------------------ training
    def fit(self, train: MultiTaskData | BatchPlan | Iterable[Any], val: MultiTaskData | None = None,
            resume: bool = False, callbacks: Sequence[Callback | EpochCallback] = ()) -> list[dict]:
        """Train for `config.epochs` epochs (in total, counting resumed ones). Returns one record per epoch.

        `train`: a `MultiTaskData` (shuffled batches of `batch_size`, the fast default), a `BatchPlan` (rows of
        its `data` chosen per step, e.g. `SourceBatches`), or any iterable of ``(inputs, targets)`` batches,
        e.g. a DataLoader with `multitask.data.loading.collate`, iterated once per epoch (each batch checked,
        label masks computed per batch; `set_epoch(epoch)` is called on it or on its batch sampler / sampler
        when they have one, so an order seeded by the epoch is the same after a resume).

        `callbacks`: `multitask.training.Callback` objects (observers of steps and epochs, whose state is saved
        with each checkpoint) or plain functions ``f(trainer, record)`` called after each epoch's checkpoint."""
        self.callbacks = as_callbacks([*callbacks, *logger_callbacks(self.config.loggers, self.run_dir, callbacks)])
        tasks = list(self.tasks.values())
        if isinstance(train, MultiTaskData):
            train = ShuffledBatches(train)
        if isinstance(train, BatchPlan):
            train.data.check_tasks(tasks, what="the training data")
        elif not isinstance(train, Iterable):
            raise TypeError(f"train must be a MultiTaskData, a BatchPlan or an iterable of (inputs, targets) "
                            f"batches; got {type(train).__name__}")
        if val is not None:
            val.check_tasks(tasks, what="the validation data")
        elif (self.config.patience is not None or self.config.monitor != "loss"
              or self.config.per_task_patience is not None):
            raise ValueError("early stopping (patience, per_task_patience) and `monitor` need validation data: "
                             "pass val=...")
        history: list[dict] = []
        if resume:
            history = self._resume()
        else:
            torch.manual_seed(self.config.seed if self.dist is None else distributed.rank_seed(self.config.seed,
                                                                                                self.dist.rank))
            self.balancer.generator = distributed.balancer_generator(self.config.seed)
            if self.dist is not None:  # every rank starts from rank 0's weights (as DDP does)
                self.dist.broadcast_module(self.model)
            if self.distill is not None:
                self.distill.teacher.start(self.model)
            if self.run_dir is not None and self.main:  # a fresh start: no earlier run may be resumed by mistake
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "metrics.jsonl").write_text("")
                for stale in ("last.pt", "best.pt", NEXT_BEST):
                    (self.run_dir / "checkpoints" / stale).unlink(missing_ok=True)
                remove_temporaries(self.run_dir / "checkpoints")
        if self.run_dir is not None and self.main:
            self._describe_run()
        if isinstance(train, BatchPlan):  # label masks of the whole split, once
            masks = {t: self.tasks[t].label_mask(y) for t, y in train.data.targets.items()}
            complete = {t: bool(m.all()) for t, m in masks.items()}
        c = self.config
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            while self.epoch < c.epochs and not self.early.should_stop and not (
                    self.convergence is not None and self.convergence.all_stopped):
                batches = (self._planned(train, masks, complete) if isinstance(train, BatchPlan)
                           else self._iterated(train))
                record = self._train_epoch(batches, train)
                if val is not None:
                    ev = self.evaluate(val)
                    record["val_loss"], record["val"] = ev["loss"], ev["metrics"]
                    value = self._monitored(ev)
                    record["monitor"] = {c.monitor: value}
                    if self.convergence is not None:  # each task stops on its own; no whole-model best
                        stopping = self.convergence.update(self.epoch, ev["metrics"])
                        record["stopped"] = dict(self.convergence.stopped)
                        if stopping:
                            record["stopping"] = stopping
                    elif self.early.update(value, self.epoch):
                        self._best_state = copy.deepcopy(self.model.state_dict())
                        record["best"] = True
                if self.scheduler is not None:
                    self.scheduler.step()
                self.balancer.epoch_end(self.epoch)
                stop = False
                for cb in self.callbacks:
                    if not isinstance(cb, _AfterEpoch):
                        try:
                            cb.on_epoch_end(self, record)
                        except StopTraining:
                            stop = True  # the epoch is still logged and saved
                self._log(record)
                history.append(record)
                self._save(best=bool(record.get("best")))
                for cb in self.callbacks:
                    if isinstance(cb, _AfterEpoch):
                        cb.fn(self, record)
                if stop:
                    break
        except StopTraining:
            pass
        if c.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        for cb in self.callbacks:
            cb.on_fit_end(self, history)
        return history

    def _planned(self, plan: BatchPlan, masks: Mapping[str, Tensor],
                 complete: Mapping[str, bool]) -> tuple[int, Iterator[tuple[Any, dict, dict]]]:
        """(steps, batches) of an in-memory plan: rows indexed out of its data, masks out of the split's."""
        c = self.config
        data, device = plan.data, self.device
        order = plan.epoch(c.batch_size, epoch_generator(c.seed, self.epoch))  # depends on (seed, epoch) only

        def gen() -> Iterator[tuple[Any, dict, dict]]:
            for idx in order:
                if self.dist is not None:  # this rank's contiguous shard of the global batch
                    idx = self.dist.shard(idx)
                yield (index_inputs(data.inputs, idx), {t: y[idx] for t, y in data.targets.items()},
                       {t: masks[t][idx].to(device) for t in self.tasks if not complete[t]})

        return plan.steps(c.batch_size), gen()

    def _iterated(self, batches: Iterable[Any]) -> tuple[int | None, Iterator[tuple[Any, dict, dict]]]:
        """(steps if known, batches) of an iterable of (inputs, targets): each batch checked and masked."""
        if self.dist is not None and isinstance(getattr(batches, "sampler", None),
                                                torch.utils.data.DistributedSampler):
            raise ValueError("under torch.distributed the trainer shards each global batch itself: give every rank "
                             "the same loader of global batches, without a DistributedSampler")
        for obj in (batches, getattr(batches, "batch_sampler", None), getattr(batches, "sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(self.epoch)
                break
        tasks = list(self.tasks.values())
        try:
            steps = len(batches)  # type: ignore[arg-type]
        except TypeError:
            steps = None

        def gen() -> Iterator[tuple[Any, dict, dict]]:
            for k, batch in enumerate(batches):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise TypeError(f"training batch {k + 1}: expected (inputs, targets), got "
                                    f"{type(batch).__name__}; use multitask.data.loading.collate")
                inputs, targets = batch[0], dict(batch[1])
                try:
                    MultiTaskData(inputs, targets).check_tasks(tasks, what=f"training batch {k + 1}")
                except (ValueError, TypeError, KeyError) as e:
                    reason = message(e)
                    raise type(e)(f"training batch {k + 1}: {reason}") from None
                if self.dist is not None:  # every rank reads the global batch and keeps its shard of the rows
                    idx = self.dist.shard(torch.arange(n_rows(inputs)))
                    inputs, targets = index_inputs(inputs, idx), {t: y[idx] for t, y in targets.items()}
                masks = {}
                for t, task in self.tasks.items():
                    m = task.label_mask(targets[t])
                    if not bool(m.all()):
                        masks[t] = m.to(self.device)
                yield inputs, targets, masks

        return steps, gen()

    def _train_epoch(self, batches: tuple[int | None, Iterator[tuple[Any, dict, dict]]], train: Any) -> dict:
        c = self.config
        self.model.train()
        self.balancer.train()
        n_batches, feed = batches
        step_losses: list[dict[str, Tensor]] = []
        absent: dict[str, set[int]] = {t: set() for t in self.tasks}  # steps without labels, per task
        skipped_at_start = self.skipped_steps
        updates_at_start = dict(self.accumulator.updates) if self.accumulator is not None else {}
        start = time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {self.epoch + 1}/{c.epochs}", leave=False,
                   disable=not (c.progress and self.main), dynamic_ncols=True)
        steps = 0
        for step, (inputs, targets, batch_masks) in enumerate(feed):
            inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
            skipped = self.skipped_steps
            for cb in self.callbacks:
                cb.on_step_start(self, inputs, targets, batch_masks)
            losses = self.train_step(inputs, targets, batch_masks)
            if self.callbacks:
                info = StepInfo(self.global_step, self.epoch, inputs, targets, batch_masks,
                                {t: l.detach() for t, l in losses.items()}, dict(self._present),
                                skipped=self.skipped_steps != skipped)
                for cb in self.callbacks:
                    cb.on_step_end(self, info)
            if self.skipped_steps == skipped:  # a skipped step's losses are not finite: left out of the means
                step_losses.append(losses)
                if not all(self._present.values()):  # a task without labels in this step: its 0 is no loss
                    for t, here in self._present.items():
                        if not here:
                            absent[t].add(len(step_losses) - 1)
            steps += 1
            bar.update()
            if c.progress and step % 25 == 0 and step_losses:
                bar.set_postfix({t: f"{l.item():.4f}" for t, l in step_losses[-1].items()
                                 if self._present.get(t, True)}, refresh=False)
        bar.close()
        if steps == 0:
            raise ValueError(f"epoch {self.epoch + 1}: the training batches are empty (an iterable that can be "
                             "iterated only once, like a generator, gives nothing the second time)")
        self._check_parameters()
        self.epoch += 1
        if self.distill is not None:
            self.distill.teacher.after_epoch(self.model, self.epoch)
        kept = {t: [k for k in range(len(step_losses)) if k not in absent[t]] if absent[t]
                else range(len(step_losses)) for t in self.tasks}
        return {
            "epoch": self.epoch,
            "train_loss": {t: float(torch.stack([step_losses[k][t].detach() for k in kept[t]]).mean()) if kept[t]
                           else math.nan for t in self.tasks},
            "weights": self.balancer.weights(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
            "steps": steps,
            "steps_per_task": {t: len(k) for t, k in kept.items()},  # steps with labels (a loss, a gradient)
            **(train.log() if isinstance(train, BatchPlan) else {}),
            **({"updates_per_part": {p: n - updates_at_start[p] for p, n in self.accumulator.updates.items()}}
               if self.accumulator is not None else {}),
            **({"skipped_steps": self.skipped_steps - skipped_at_start} if c.nonfinite == "skip" else {}),
            **(self.distill.epoch_log() if self.distill is not None else {}),
        }

    def train_step(self, inputs: Any, targets: Mapping[str, Tensor],
                   masks: Mapping[str, Tensor | None] | None = None) -> dict[str, Tensor]:
        """One optimisation step on one batch; returns the per-task losses.

        `masks` holds the label masks of the tasks that have missing labels; a task absent from it is
        taken to be fully labelled in this batch. Without `masks`, every task's mask is read off its targets.
        """
        tasks = self.tasks
        if masks is None:
            masks = {t: tasks[t].label_mask(y) for t, y in targets.items()}

        extra = self._loss_terms(inputs, masks)  # distillation; stopped tasks' losses (before the forward)

        def loss_of(t: str, output: Tensor) -> Tensor:
            term = extra.get(t)
            if term is not None and term.replace:
                return term.fn(output)
            m = masks.get(t)
            loss = tasks[t].loss(output, targets[t], m, complete=m is None)
            return loss if term is None else loss + term.fn(output)

        present = {t: True if t not in masks else bool(masks[t].any()) for t in tasks}
        present.update({t: term.present for t, term in extra.items()})  # a distilled task has a loss
        counts = None  # (rows, labelled rows per task), for the accumulator: counted only where needed
        if self.dist is not None:  # global counts; each rank's loss becomes its share of the global mean loss
            loss_of, present, counts = self._shares(inputs, targets, masks, loss_of)
        self._present = present
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        saved = self._buffers_snapshot() if self.config.nonfinite == "skip" else None
        try:
            with autocast(self.config.precision, self.device):
                losses = autograd.backward(self.model, self.balancer, inputs, loss_of, present, self.dist,
                                           scale=self.scaler.scale if self.scaler is not None else None)
            if self.dist is not None:  # the model's gradient: the sum of the ranks' shares
                self.dist.reduce_gradients(self.model.parameters())
            if self.scaler is not None:  # fp16: true gradients; an overflow is the scaler's to skip, not an error
                self.scaler.unscale_(self.optimizer)
            problem = self._nonfinite_problem(losses, check_grads=self.scaler is None)
        except NonFiniteError as e:  # the engine stops before its solvers see NaN
            losses, problem = None, (str(e), e.tasks)
        if problem is not None:
            self._skip_or_raise(*problem, saved)
            return losses if losses is not None else {t: torch.full((), math.nan) for t in tasks}
        self._skips_in_a_row = 0
        kept_rows = self._freeze_absent(present) if not all(present.values()) else []
        if self.convergence is not None:
            self.convergence.drop_grads()  # a stopped task's head stays as it was kept
        if self.accumulator is not None:  # only the parts that reached their sample count keep a .grad
            self.accumulator.add(*(counts or self._labelled_rows(inputs, masks)))
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the unscaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            for target, idx, saved in kept_rows:  # absent tasks' rows of the balancer's own parameters
                target[idx] = saved
        if self.distill is not None:
            self.distill.teacher.after_step(self.model, self.global_step)
        if self.dist is not None:  # running statistics (batch norm) are rank 0's, as with DDP's broadcast_buffers
            self.dist.broadcast_module(self.model, buffers_only=True)
        return losses

    def _labelled_rows(self, inputs: Any, masks: Mapping[str, Tensor]) -> tuple[int, dict[str, int]]:
        """(rows of the batch, per task its rows with at least one label, and per group part of the accumulator
        its rows with a label for at least one of the group's tasks): what the accumulator counts."""
        rows = n_rows(inputs)
        labelled_rows = {t: None if masks.get(t) is None else masks[t] if masks[t].dim() == 1
                         else masks[t].flatten(1).any(1) for t in self.tasks}
        counts = {t: rows if m is None else int(m.sum()) for t, m in labelled_rows.items()}
        for part, group in (self.accumulator.groups.items() if self.accumulator is not None else ()):
            ms = [labelled_rows.get(t) for t in group]
            union = None if any(m is None for m in ms) else torch.stack(ms).any(0)
            counts[part] = rows if union is None else int(union.sum())
        return rows, counts

    def _shares(self, inputs: Any, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                loss_of: Callable[[str, Tensor], Tensor]
                ) -> tuple[Callable, dict[str, bool], tuple[int, dict[str, int]]]:
        """Under torch.distributed: one all-reduce of this shard's rows and labelled entries per task gives the
        global batch's; this rank's loss for task t is then n_t / N_t times its mean over its n_t labelled
        entries (exactly 0, with a graph, when it has none), so the global mean loss is the sum over ranks.
        Returns (loss_of, global presence, (global rows, global labelled rows per task) for the accumulator)."""
        tasks = list(self.tasks)
        rows, labelled = self._labelled_rows(inputs, masks)
        entries = [float(targets[t].numel() if masks.get(t) is None else masks[t].sum()) for t in tasks]
        parts = list(labelled)  # the tasks, then the accumulator's groups
        total = self.dist.shares([rows] + entries + [float(labelled[p]) for p in parts])
        global_entries = dict(zip(tasks, total[1:1 + len(tasks)]))
        local = dict(zip(tasks, entries))
        self.dist.row_share = rows / total[0] if total[0] > 0 else 0.0

        def share_of(t: str, output: Tensor) -> Tensor:
            if local[t] == 0:  # no labels in this shard: the mean over no entries is exactly 0, with a graph
                return self.tasks[t].loss(output, targets[t], torch.zeros(targets[t].shape, dtype=torch.bool,
                                                                          device=targets[t].device))
            return loss_of(t, output) * (local[t] / global_entries[t])

        present = {t: global_entries[t] > 0 for t in tasks}
        return share_of, present, (int(total[0]), {p: int(v) for p, v in zip(parts, total[1 + len(tasks):])})

    def _loss_terms(self, inputs: Any, masks: Mapping[str, Tensor]) -> dict[str, LossTerm]:
        """What this step adds to or puts in place of task losses: the distillation terms of the rows without
        labels (`self.distill`), and the losses of tasks stopped by per-task convergence (which take over)."""
        extra: dict[str, LossTerm] = {}
        if self.distill is not None:
            extra.update(self.distill.terms(self.tasks, inputs, masks))
        if self.convergence is not None:
            extra.update(self.convergence.terms(inputs, masks))
        return extra

    def _freeze_absent(self, present: Mapping[str, bool]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """A task without labels in this batch (e.g. a step drawn from another source) leaves its own
        parameters as they are: their zero gradients are dropped, so momentum and weight decay do not move them
        either (the optimiser skips a parameter whose .grad is None). The balancer's per-task parameters (one
        row per task, e.g. Uncertainty's log-variances) share a tensor with the present tasks, so their absent
        rows, and those rows of the optimiser state, are returned as (tensor, rows, values) to be put back
        after the step."""
        if self._own_params is None:
            try:
                self._own_params = {t: list(self.model.task_parameters(t)) for t in self.tasks}
            except NotImplementedError:  # a model that does not say which parameters are a task's own
                self._own_params = {t: [] for t in self.tasks}
            self._own_params.update({group: list(ps) for group, ps in self.model.group_parameters().items()})
        for t, here in present.items():
            if not here:
                for p in self._own_params[t]:
                    p.grad = None
        for group, params in self._own_params.items():  # a branch shared by tasks none of which has labels
            if isinstance(group, tuple) and not any(present.get(t, True) for t in group):
                for p in params:
                    p.grad = None
        rows = torch.tensor([i for i, t in enumerate(self.balancer.task_names) if not present[t]], dtype=torch.long)
        kept = []
        for p in self.balancer.per_task_parameters():
            idx = rows.to(p.device)
            kept.append((p.data, idx, p.data[idx].clone()))
            for v in self.optimizer.state.get(p, {}).values():  # Adam's moments, SGD's momentum: per element
                if isinstance(v, Tensor) and v.shape == p.shape:
                    kept.append((v, idx, v[idx].clone()))
        return kept

    # ------------------------------------------------------------------------------------------ non-finite values
    def _nonfinite_problem(self, losses: Mapping[str, Tensor], check_grads: bool = True
                           ) -> tuple[str, tuple[str, ...]] | None:
        """None when every loss and gradient is finite, else what is not (naming the task or parameter).
        One finite sum proves a whole set finite (NaN and inf propagate); the names are looked for only when not."""
        values = torch.stack([l.detach().float() for l in losses.values()])
        if not bool(torch.isfinite(values).all()):
            bad = [t for t, l in losses.items() if not math.isfinite(float(l.detach()))]
            shown = ", ".join(f"{t!r} ({float(losses[t].detach()):g})" for t in bad)
            return f"the loss of task {shown} is not finite", tuple(bad)
        if not check_grads:
            return None
        grads = [(n, p.grad) for n, p in self._named_trainable() if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack([g.sum() for _, g in grads]).sum())):
            bad = [n for n, g in grads if not bool(torch.isfinite(g).all())]
            if bad:
                shown = ", ".join(f"{t}={float(l.detach()):.4g}" for t, l in losses.items())
                return (f"the gradient of {bad[0]}{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''} is not "
                        f"finite although every loss is ({shown})"), ()
        return None

    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return ([(f"model.{n}", p) for n, p in self.model.named_parameters()]
                + [(f"balancer.{n}", p) for n, p in self.balancer.named_parameters()])

    def _skip_or_raise(self, problem: str, bad_tasks: tuple[str, ...], saved: dict[str, Tensor] | None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None and self.scaler.is_enabled():  # this step's unscale_ is dropped with it
            try:
                self.scaler.update(self.scaler.get_scale())
            except AssertionError:  # no scale yet: the engine stopped before the first loss was scaled
                pass
        where = f"step {self.global_step} (epoch {self.epoch + 1})"
        hint = ("lower trainer.lr, set trainer.grad_clip, check the data, or set trainer.nonfinite: skip to skip "
                "such steps")
        if self.config.nonfinite == "raise":
            raise NonFiniteError(f"{where}: {problem}; {hint}", bad_tasks)
        if saved is not None:  # a skipped step leaves no trace: balancer statistics and model buffers as before
            self._buffers_restore(saved)
        self.skipped_steps += 1
        self._skips_in_a_row += 1
        if self._skips_in_a_row >= self.config.max_skips:
            raise NonFiniteError(f"{self._skips_in_a_row} steps in a row had non-finite values (trainer.max_skips); "
                                 f"the last, {where}: {problem}", bad_tasks)
        if self.main and (self.config.progress or self.skipped_steps <= 3):
            tqdm.write(f"[multitask] skipped {where}: {problem} ({self.skipped_steps} skipped so far)")

    def _buffers_snapshot(self) -> dict[str, Tensor]:
        out = {f"balancer.{k}": v.detach().clone() for k, v in self.balancer.state_dict().items()}
        out.update({f"model.{k}": v.detach().clone() for k, v in self.model.named_buffers()})
        return out

    def _buffers_restore(self, saved: Mapping[str, Tensor]) -> None:
        self.balancer.load_state_dict({k[len("balancer."):]: v for k, v in saved.items() if k.startswith("balancer.")})
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            for k, v in saved.items():
                if k.startswith("model."):
                    buffers[k[len("model."):]].copy_(v)

    def _check_parameters(self) -> None:
        """Once per epoch: an update that overflowed the weights themselves is caught before it is evaluated."""
        params = [(n, p) for n, p in self._named_trainable()]
        if params and not bool(torch.isfinite(torch.stack([p.detach().sum() for _, p in params]).sum())):
            bad = [n for n, p in params if not bool(torch.isfinite(p).all())]
            if bad:
                raise NonFiniteError(f"epoch {self.epoch + 1}: parameter {bad[0]}"
                                     f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''} became non-finite "
                                     "after an update; lower trainer.lr or set trainer.grad_clip")

    def _monitored(self, ev: dict) -> float:
        if self.config.monitor == "loss":
            return float(sum(ev["loss"].values()) / len(ev["loss"]))
        task, _, metric = self.config.monitor.partition(".")
        return float(ev["metrics"][task][metric])

    # ------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def outputs(self, inputs: Any, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Raw model outputs for many rows, computed in evaluation batches."""
        self.model.eval()
        n = next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0]
        # under torch.distributed each rank computes a contiguous shard of the rows and the shards are gathered:
        # every rank gets all the outputs, so metrics are those of the whole split, equal to one process's
        lo, hi = (0, n) if self.dist is None else distributed.shard_range(n, self.dist.rank, self.dist.world_size)
        parts: dict[str, list[Tensor]] = {}
        for start in range(lo, hi, self.config.eval_batch_size) if hi > lo else [lo]:
            idx = torch.arange(start, min(start + self.config.eval_batch_size, hi))
            with autocast(self.config.precision, self.device):
                out = self.model(to_device(index_inputs(inputs, idx), self.device), tasks)
            for t, o in out.items():  # autocast's half-precision outputs back to float32 for the metrics
                o = o.float() if o.dtype in (torch.bfloat16, torch.float16) else o
                parts.setdefault(t, []).append(o.cpu())
        out = {t: torch.cat(p) for t, p in parts.items()}
        if self.dist is not None:
            out = {t: self.dist.gather_rows(o, 0, "evaluation")[0] for t, o in out.items()}
        return out

    def evaluate(self, data: MultiTaskData) -> dict[str, dict]:
        """Per-task loss (mean over labelled entries) and metrics on a whole split."""
        data.check_tasks(list(self.tasks.values()))
        out = self.outputs(data.inputs)
        losses, metrics = {}, {}
        for t, task in self.tasks.items():
            with torch.no_grad():
                losses[t] = float(task.loss(out[t], data.targets[t]))
            metrics[t] = task.evaluate(out[t], data.targets[t])
        return {"loss": losses, "metrics": metrics}

    def predict(self, inputs: Any, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Probabilities (classification) or values (regression), running only the requested tasks' heads."""
        out = self.outputs(inputs, tasks)
        return {t: self.tasks[t].predict(o) for t, o in out.items()}

    # ------------------------------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
            "model": self.model.state_dict(),
            "balancer": self.balancer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "early_stopping": self.early.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "balancer_rng": self.balancer.generator.get_state() if self.balancer.generator is not None else None,
            "config": asdict(self.config),
            **({"accumulator": self.accumulator.state_dict()} if self.accumulator is not None else {}),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **({"distill": self.distill.state_dict()} if self.distill is not None else {}),
            **({"convergence": self.convergence.state_dict()} if self.convergence is not None else {}),
            "callbacks": {cb.key: cb.state_dict() for cb in self.callbacks
                          if not isinstance(cb, _AfterEpoch)},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_weights(self.model, state["model"], "checkpoint")
        self.balancer.load_state_dict(state["balancer"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.early.load_state_dict(state["early_stopping"])
        torch.set_rng_state(self._own_rng(state))
        if self.device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.balancer.generator = distributed.balancer_generator(self.config.seed)
        if state.get("balancer_rng") is not None:
            self.balancer.generator.set_state(state["balancer_rng"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state.get("global_step", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.accumulator is not None and state.get("accumulator") is not None:
            self.accumulator.load_state_dict(state["accumulator"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.distill is not None and state.get("distill") is not None:
            self.distill.load_state_dict(state["distill"])
        if self.convergence is not None and state.get("convergence") is not None:
            self.convergence.load_state_dict(state["convergence"])
            self.convergence.to(self.device)
        saved = state.get("callbacks") or {}
        for cb in self.callbacks:
            if cb.key in saved:
                cb.load_state_dict(saved[cb.key])
        if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.scheduler.T_max = self.config.epochs  # `epochs` may grow on resume: anneal over the new total

    def _own_rng(self, state: Mapping[str, Any]) -> Tensor:
        """This rank's saved state of torch's global generator: rank r's of `rng_ranks` when the run had as many
        ranks; else rank 0 takes `rng` and the other ranks a state seeded by (seed, rank, epoch)."""
        ranks = state.get("rng_ranks")
        if self.dist is None or (ranks is None and self.dist.rank == 0):
            return state["rng"]
        if ranks is not None and len(ranks) == self.dist.world_size:
            return ranks[self.dist.rank]
        if self.dist.rank == 0:
            return ranks[0]
        seed = distributed.rank_seed(self.config.seed, self.dist.rank) + int(state["epoch"])
        return torch.Generator().manual_seed(seed).get_state()

    def _save(self, best: bool) -> None:
        """last.pt and best.pt as a consistent pair (see `multitask.training.checkpoint`): new best weights to
        best.next.pt, then last.pt (naming the best epoch), then the rename to best.pt. Under torch.distributed
        every rank's generator state is gathered and rank 0 alone writes."""
        if self.run_dir is None:
            return
        ranks = self.dist.all_gather_object(torch.get_rng_state()) if self.dist is not None else None
        if not self.main:
            return
        folder = self.run_dir / "checkpoints"
        state = self.state_dict()
        if ranks is not None:
            state["rng_ranks"] = ranks
        if best:
            save_atomic({"epoch": self.epoch, "model": state["model"]}, folder / NEXT_BEST)
        save_atomic(state, folder / "last.pt")
        if best:
            os.replace(folder / NEXT_BEST, folder / "best.pt")

    def _resume(self) -> list[dict]:
        if self.run_dir is None:
            raise ValueError("resume needs a run_dir")
        folder = self.run_dir / "checkpoints"
        if self.dist is not None:  # rank 0 may still be writing the checkpoint of a run that just stopped
            self.dist.barrier()
        state = load_run_state(folder / "last.pt", self.device, RESUME_KEYS)
        self.load_state_dict(state)
        if self.main:
            remove_temporaries(folder)
            best = resolve_best(folder, self.early.best_epoch)
        if self.dist is not None:  # rank 0 has finished (or discarded) an interrupted best write: now the others
            self.dist.barrier()
            if not self.main:
                best = resolve_best(folder, self.early.best_epoch, finish=False)
        if best is not None:
            saved = load_run_state(best, self.device)
            if int(saved.get("epoch", -1)) == self.early.best_epoch:
                self._best_state = saved["model"]
        # keep only the epochs the checkpoint holds (a crash may have logged one more, or half a line)
        history = [r for r in read_metrics(self.run_dir) if r["epoch"] <= self.epoch]
        if self.dist is not None:
            self.dist.barrier()  # every rank has read metrics.jsonl before rank 0 rewrites it
        if self.main:
            write_text_atomic(self.run_dir / "metrics.jsonl", "".join(to_json(r) + "\n" for r in history))
        return history

    def restore(self, run_dir: str | Path, checkpoint: str = "best") -> int:
        """Load the weights of a run directory written by a Trainer (`checkpoint`: "best" or "last") into this
        trainer's model; returns the epoch they are from. The model must be built as it was for that run."""
        if checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
        folder = Path(run_dir) / "checkpoints"
        last = load_run_state(folder / "last.pt", self.device)
        path = folder / "last.pt"
        if checkpoint == "best":
            best_epoch = int(last.get("early_stopping", {}).get("best_epoch", -1))
            found = resolve_best(folder, best_epoch, finish=False)
            if found is None:
                raise FileNotFoundError(f"{folder} has no best.pt (the run had no validation data, or no epoch "
                                        "finished); use checkpoint='last'")
            path = found
        state = last if path.name == "last.pt" else load_run_state(path, self.device)
        load_weights(self.model, state["model"], path)
        return int(state.get("epoch", -1))

    def _describe_run(self) -> None:
        """trainer.json: what a run directory holds and how it was trained, written atomically at every start."""
        write_json(self.run_dir / "trainer.json", {
            "tasks": [t.to_dict() for t in self.tasks.values()],
            "model": type(self.model).__name__,
            "balancer": type(self.balancer).__name__,
            "config": asdict(self.config),
            "world_size": 1 if self.dist is None else self.dist.world_size,  # processes (torch.distributed)
        })

    def _log(self, record: dict) -> None:
        if not self.main:
            return
        if self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(to_json(record) + "\n")
        if self.config.progress:
            tqdm.write(format_epoch(record))


def make_optimizer(name: str, params: list[torch.nn.Parameter], balancer_params: list[torch.nn.Parameter],
                   lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the model's parameters (with `weight_decay`) and a balancer's own parameters
    (in a group without decay, which would bias learned log-variances or loss scales)."""
    groups = [{"params": params, "weight_decay": weight_decay}]
    if balancer_params:
        groups.append({"params": balancer_params, "weight_decay": 0.0})
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def read_metrics(run_dir: Path) -> list[dict]:
    """The epoch records of metrics.jsonl; a last line cut short by a kill is left out (nulls read as NaN)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(nulls_to_nan(json.loads(line)))
        except json.JSONDecodeError:
            break  # only the last line can be incomplete (appends are in order)
    return out


def format_epoch(record: dict) -> str:
    parts = [f"epoch {record['epoch']:>3}", "train " + " ".join(f"{t}={_fmt(v)}" for t, v in record["train_loss"].items())]
    if "val" in record:
        shown = []
        for t, ms in record["val"].items():
            m, v = next(iter(ms.items()))
            shown.append(f"{t}.{m}={_fmt(v)}")
        parts.append("val " + " ".join(shown))
    if "steps_per_source" in record:  # tasks from several sources: where the steps went
        parts.append("steps " + " ".join(f"{s}={n}" for s, n in record["steps_per_source"].items())
                     + " (tasks " + " ".join(f"{t}={n}" for t, n in record.get("steps_per_task", {}).items()) + ")")
    parts.append(f"{record['seconds']:.1f}s" + (" *" if record.get("best") else ""))
    return " | ".join(parts)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"


__all__ = ["Trainer", "TrainerConfig", "StopTraining", "read_metrics"]
