"""`Trainer`: fit, evaluate and predict a multi-task model with any balancer, with resumable run directories.

The trainer has no method- or architecture-specific branches: the model gives ``{task: output}``, each
`Task` gives its loss, the balancer (through `multitask.autograd`) writes the gradients.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from multitask import autograd
from multitask.balancing import Balancer, Equal
from multitask.data.dataset import MultiTaskData, batches, index_inputs, to_device
from multitask.metrics import HIGHER_IS_BETTER
from multitask.models.base import MultiTaskModel
from multitask.tasks import Task, check_unique
from multitask.training.checkpoint import load_checkpoint, save_atomic
from multitask.training.early_stopping import EarlyStopping

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "cosine")


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

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "step_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class StopTraining(Exception):
    """Raised by a callback to end `fit` cleanly after the current epoch's checkpoint."""


EpochCallback = Callable[["Trainer", dict], None]


class Trainer:
    """Trains `model` on `tasks`, trading them off with `balancer` (default: `Equal`).

    With a `run_dir`, each epoch appends to ``metrics.jsonl`` and writes ``checkpoints/last.pt`` (and
    ``best.pt`` on improvement) atomically; ``fit(..., resume=True)`` continues from ``last.pt``.
    """

    def __init__(self, model: MultiTaskModel, tasks: Sequence[Task], balancer: Balancer | None = None,
                 config: TrainerConfig | None = None, run_dir: str | Path | None = None, **overrides: Any) -> None:
        self.tasks = check_unique(tasks)
        if sorted(model.task_names) != sorted(self.tasks):
            raise ValueError(f"model has tasks {model.task_names} but the trainer was given {list(self.tasks)}")
        self.config = replace(config or TrainerConfig(), **overrides)
        self.device = torch.device(self.config.device)
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
        self._best_state: dict[str, Tensor] | None = None

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
        groups = [{"params": params, "weight_decay": c.weight_decay}]
        if balancer_params:
            groups.append({"params": balancer_params, "weight_decay": 0.0})
        if c.optimizer == "adam":
            return torch.optim.Adam(groups, lr=c.lr)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=c.lr)
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum)

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler | None:
        c = self.config
        if c.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=c.step_size, gamma=c.gamma)
        if c.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        return None

    # ------------------------------------------------------------------------------------------ training
    def fit(self, train: MultiTaskData, val: MultiTaskData | None = None, resume: bool = False,
            callbacks: Sequence[EpochCallback] = ()) -> list[dict]:
        """Train for `config.epochs` epochs (in total, counting resumed ones). Returns one record per epoch."""
        train.check_tasks(list(self.tasks.values()))
        if val is not None:
            val.check_tasks(list(self.tasks.values()))
        elif self.config.patience is not None or self.config.monitor != "loss":
            raise ValueError("early stopping (patience) and `monitor` need validation data: pass val=...")
        history: list[dict] = []
        if resume:
            history = self._resume()
        else:
            torch.manual_seed(self.config.seed)
            if self.run_dir is not None:  # a fresh start: nothing of an earlier run may be resumed by mistake
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "metrics.jsonl").write_text("")
                for stale in ("last.pt", "best.pt"):
                    (self.run_dir / "checkpoints" / stale).unlink(missing_ok=True)
        masks = {t: self.tasks[t].label_mask(y) for t, y in train.targets.items()}
        complete = {t: bool(m.all()) for t, m in masks.items()}
        c = self.config
        try:
            while self.epoch < c.epochs and not self.early.should_stop:
                record = self._train_epoch(train, masks, complete)
                if val is not None:
                    ev = self.evaluate(val)
                    record["val_loss"], record["val"] = ev["loss"], ev["metrics"]
                    value = self._monitored(ev)
                    record["monitor"] = {c.monitor: value}
                    if self.early.update(value, self.epoch):
                        self._best_state = copy.deepcopy(self.model.state_dict())
                        record["best"] = True
                if self.scheduler is not None:
                    self.scheduler.step()
                self.balancer.epoch_end(self.epoch)
                self._log(record)
                history.append(record)
                self._save(best=bool(record.get("best")))
                for cb in callbacks:
                    cb(self, record)
        except StopTraining:
            pass
        if c.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        return history

    def _train_epoch(self, train: MultiTaskData, masks: Mapping[str, Tensor],
                     complete: Mapping[str, bool]) -> dict:
        c = self.config
        self.model.train()
        self.balancer.train()
        gen = torch.Generator().manual_seed(c.seed * 1_000_003 + self.epoch)  # order depends on (seed, epoch) only
        n_batches = math.ceil(len(train) / c.batch_size)
        step_losses: list[dict[str, Tensor]] = []
        start = time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {self.epoch + 1}/{c.epochs}", leave=False,
                   disable=not c.progress, dynamic_ncols=True)
        for step, (inputs, targets, idx) in enumerate(batches(train, c.batch_size, True, gen)):
            inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
            batch_masks = {t: masks[t][idx].to(self.device) for t in self.tasks if not complete[t]}
            losses = self.train_step(inputs, targets, batch_masks)
            step_losses.append(losses)
            bar.update()
            if c.progress and step % 25 == 0:
                bar.set_postfix({t: f"{l.item():.4f}" for t, l in losses.items()}, refresh=False)
        bar.close()
        self.epoch += 1
        return {
            "epoch": self.epoch,
            "train_loss": {t: float(torch.stack([l[t].detach() for l in step_losses]).mean()) if step_losses
                           else math.nan for t in self.tasks},
            "weights": self.balancer.weights(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
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

        def loss_of(t: str, output: Tensor) -> Tensor:
            m = masks.get(t)
            return tasks[t].loss(output, targets[t], m, complete=m is None)

        present = {t: True if t not in masks else bool(masks[t].any()) for t in tasks}
        self.optimizer.zero_grad(set_to_none=True)
        losses = autograd.backward(self.model, self.balancer, inputs, loss_of, present)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return losses

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
        parts: dict[str, list[Tensor]] = {}
        for start in range(0, n, self.config.eval_batch_size):
            idx = torch.arange(start, min(start + self.config.eval_batch_size, n))
            out = self.model(to_device(index_inputs(inputs, idx), self.device), tasks)
            for t, o in out.items():
                parts.setdefault(t, []).append(o.cpu())
        return {t: torch.cat(p) for t, p in parts.items()}

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
            "model": self.model.state_dict(),
            "balancer": self.balancer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "early_stopping": self.early.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.balancer.load_state_dict(state["balancer"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.early.load_state_dict(state["early_stopping"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch = int(state["epoch"])
        if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.scheduler.T_max = self.config.epochs  # `epochs` may grow on resume: anneal over the new total

    def _save(self, best: bool) -> None:
        if self.run_dir is None:
            return
        state = self.state_dict()
        save_atomic(state, self.run_dir / "checkpoints" / "last.pt")
        if best:
            save_atomic({"epoch": self.epoch, "model": state["model"]}, self.run_dir / "checkpoints" / "best.pt")

    def _resume(self) -> list[dict]:
        if self.run_dir is None:
            raise ValueError("resume needs a run_dir")
        state = load_checkpoint(self.run_dir / "checkpoints" / "last.pt", self.device)
        self.load_state_dict(state)
        best = self.run_dir / "checkpoints" / "best.pt"
        if best.exists():
            self._best_state = load_checkpoint(best, self.device)["model"]
        # keep only the epochs the checkpoint holds (a crash may have logged one more)
        history = [r for r in read_metrics(self.run_dir) if r["epoch"] <= self.epoch]
        with open(self.run_dir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)
        return history

    def _log(self, record: dict) -> None:
        if self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.config.progress:
            tqdm.write(format_epoch(record))


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_epoch(record: dict) -> str:
    parts = [f"epoch {record['epoch']:>3}", "train " + " ".join(f"{t}={v:.4f}" for t, v in record["train_loss"].items())]
    if "val" in record:
        shown = []
        for t, ms in record["val"].items():
            m, v = next(iter(ms.items()))
            shown.append(f"{t}.{m}={v:.4f}")
        parts.append("val " + " ".join(shown))
    parts.append(f"{record['seconds']:.1f}s" + (" *" if record.get("best") else ""))
    return " | ".join(parts)


__all__ = ["Trainer", "TrainerConfig", "StopTraining", "read_metrics"]
