"""Diagnostics of task relationships during training: gradient conflict and TAG lookahead affinity (a callback).

`Diagnostics` (a `multitask.training.Callback`, off unless passed to `Trainer.fit` or configured with a YAML
``diagnostics:`` section) writes ``diagnostics.jsonl`` in the run directory, one JSON object per line:

- ``{"kind": "gradients", "step", "epoch", "tasks", "cosine", "norms", "weights"}`` every `every` steps: the
  pairwise cosines and norms of the task gradients on the shared parameters (or on the shared representation,
  matching a gradient balancer's ``mode``) for the tasks with labels in that step, and the balancer's weights
  after the step. With a gradient-based balancer the Gramian the engine formed anyway is used (free, on the
  steps where the balancer recomputes); otherwise the per-task gradients are computed here, at the parameters
  the step starts from.
- ``{"kind": "affinity", "step", "epoch", "tasks", "affinity"}`` every `affinity_every` steps: inter-task
  affinity by lookahead (TAG, Fifty et al. 2021), Z[i][j] = 1 - L_j(θ_s - η ∇_{θ_s} L_i) / L_j(θ_s) on the
  step's batch, where θ_s are the shared parameters; row i is the task whose gradient step is taken, column j
  the task whose loss is measured. Positive: a step for i lowers j's loss.

Observers never change training: parameters, buffers, model mode and the random number generators are put
back exactly after the extra passes (the weights are bit-identical with and without the callback).
`read_diagnostics(run_dir)` reads the file back into arrays (NaN where a task was absent from a step).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from multitask import autograd
from multitask.balancing.base import GradientBalancer, JacobianBalancer
from multitask.jsonio import to_json, write_text_atomic
from multitask.training.callbacks import Callback, StepInfo

if TYPE_CHECKING:
    from multitask.training.trainer import Trainer

FILE = "diagnostics.jsonl"
MODES = ("auto", "parameters", "features")


# ------------------------------------------------------------------------------------------ reading
@dataclass
class Diagnostics:
    """The contents of a run's diagnostics.jsonl as arrays over all tasks (NaN where a task was absent)."""

    tasks: list[str]
    steps: np.ndarray            # (S,) steps of the gradient records
    cosine: np.ndarray           # (S, T, T)
    norms: np.ndarray            # (S, T)
    weights: np.ndarray          # (S, T) the balancer's weights after each recorded step
    affinity_steps: np.ndarray   # (A,)
    affinity: np.ndarray         # (A, T, T) Z[i, j]: the effect of a step for task i on the loss of task j

    def mean_cosine(self) -> np.ndarray:
        """(T, T) mean cosine over the recorded steps where both tasks were present (NaN: never together)."""
        return _nanmean(self.cosine)

    def conflict_frequency(self) -> np.ndarray:
        """(T, T) share of the recorded steps (both tasks present) whose gradient cosine was negative."""
        present = ~np.isnan(self.cosine)
        counts = present.sum(0)
        neg = np.where(present, self.cosine < 0, False).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, neg / np.maximum(counts, 1), np.nan)

    def mean_affinity(self, normalized: bool = False) -> np.ndarray:
        """(T, T) TAG affinity averaged over training (NaN where a pair was never measured); the diagonal is
        a task's own lookahead gain. `normalized`: each record's Z[i, j] divided by Z[j, j] first (the share of
        j's own-step gain that a step for i gives; NaN where j's own step did not lower its loss), so that
        every measurement weighs the same whatever the scale of the losses at that point of training."""
        if not normalized:
            return _nanmean(self.affinity)
        own = np.einsum("sjj->sj", self.affinity)[:, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            return _nanmean(np.where(own > 0, self.affinity / np.where(own > 0, own, 1.0), np.nan))

    def norm_ratios(self) -> np.ndarray:
        """(S, T) each task's gradient norm over the mean norm of the tasks present at that step."""
        with np.errstate(invalid="ignore"):
            return self.norms / np.nanmean(self.norms, axis=1, keepdims=True)


def _nanmean(x: np.ndarray) -> np.ndarray:
    if x.shape[0] == 0:
        return np.full(x.shape[1:], np.nan)
    counts = (~np.isnan(x)).sum(0)
    total = np.where(np.isnan(x), 0.0, x).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def read_records(run_dir: str | Path) -> list[dict]:
    """The records of ``diagnostics.jsonl`` (a last line cut short by a kill is left out); FileNotFoundError
    when the run wrote no diagnostics."""
    path = Path(run_dir) / FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run was trained without diagnostics (add a "
                                "`diagnostics:` section to its config, or pass multitask.diagnostics.DiagnosticsCallback "
                                "to Trainer.fit)")
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # only the last line can be incomplete (appends are in order)
    return out


def read_diagnostics(run_dir: str | Path, tasks: Sequence[str] | None = None) -> Diagnostics:
    """A run's diagnostics as arrays over `tasks` (default: every task named in the file, in order of first
    appearance). Raises FileNotFoundError when the run has no diagnostics.jsonl."""
    return records_to_data(read_records(run_dir), tasks)


def records_to_data(records: Sequence[Mapping[str, Any]], tasks: Sequence[str] | None = None) -> Diagnostics:
    """Arrays from diagnostics records (as written to diagnostics.jsonl)."""
    if tasks is None:
        seen: list[str] = []
        for r in records:
            seen += [t for t in r["tasks"] if t not in seen]
        tasks = seen
    tasks = list(tasks)
    pos = {t: k for k, t in enumerate(tasks)}
    T = len(tasks)
    grads = [r for r in records if r.get("kind") == "gradients"]
    aff = [r for r in records if r.get("kind") == "affinity"]
    cos = np.full((len(grads), T, T), np.nan)
    norms = np.full((len(grads), T), np.nan)
    weights = np.full((len(grads), T), np.nan)
    for s, r in enumerate(grads):
        idx = [pos[t] for t in r["tasks"]]
        cos[s][np.ix_(idx, idx)] = _array(r["cosine"])
        norms[s, idx] = _array(r["norms"])
        for t, w in (r.get("weights") or {}).items():
            if t in pos:
                weights[s, pos[t]] = np.nan if w is None else float(w)
    A = np.full((len(aff), T, T), np.nan)
    for a, r in enumerate(aff):
        idx = [pos[t] for t in r["tasks"]]
        A[a][np.ix_(idx, idx)] = _array(r["affinity"])
    return Diagnostics(tasks, np.array([int(r["step"]) for r in grads], dtype=np.int64), cos, norms, weights,
                           np.array([int(r["step"]) for r in aff], dtype=np.int64), A)


def _array(x: Any) -> np.ndarray:
    """A JSON list (of lists) of numbers with nulls as NaN."""
    a = np.array(x, dtype=object)
    return np.where(a == None, np.nan, a).astype(float)  # noqa: E711 (elementwise test for null)


# ------------------------------------------------------------------------------------------ the callback
class DiagnosticsCallback(Callback):
    """Records gradient cosines, norms and balancer weights every `every` steps and TAG affinity every
    `affinity_every` steps (None: off) into ``diagnostics.jsonl``; `lr` is the lookahead's step size (None:
    the optimiser's learning rate); `mode`: ``"auto"`` (the gradient balancer's mode, else parameters),
    ``"parameters"`` or ``"features"`` (the shared representation). Without a run directory the records are
    kept in `records` only."""

    def __init__(self, every: int | None = 10, affinity_every: int | None = 50, lr: float | None = None,
                 mode: str = "auto", path: str | Path | None = None) -> None:
        for name, v in (("every", every), ("affinity_every", affinity_every)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"diagnostics.{name} must be None or an integer >= 1, got {v!r}")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                               or lr <= 0):
            raise ValueError(f"diagnostics.lr must be None or a finite number > 0, got {lr!r}")
        if mode not in MODES:
            raise ValueError(f"diagnostics.mode must be one of {MODES}, got {mode!r}")
        self.every, self.affinity_every, self.lr, self.mode = every, affinity_every, lr, mode
        self.path = Path(path) if path is not None else None
        self.records: list[dict] = []
        self._pending: dict | None = None   # a gradients record computed at a step's start, written at its end
        self._free = False                  # this step's Gramian comes from the engine
        # running sums over training (kept across a resume): affinity and conflict counts
        self.sums: dict[str, Any] = {}
        self.seconds = {"gradients": 0.0, "affinity": 0.0}

    # -------------------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: "Trainer") -> None:
        self._file = self.path or (trainer.run_dir / FILE if trainer.run_dir is not None else None)
        self._tasks = list(trainer.tasks)
        if not self.sums:
            self.sums = _empty_sums(len(self._tasks))
        if self._file is not None:  # keep only the lines of the steps the trainer has done (a resume may repeat some)
            self._file.parent.mkdir(parents=True, exist_ok=True)
            kept = ([r for r in read_records(self._file.parent) if int(r["step"]) <= trainer.global_step]
                    if self._file.exists() and trainer.global_step > 0 and self._file.name == FILE else [])
            write_text_atomic(self._file, "".join(to_json(r) + "\n" for r in kept))
        if isinstance(trainer.balancer, GradientBalancer):
            autograd.keep_gramian(trainer.balancer, self.every is not None)

    def on_step_start(self, trainer: "Trainer", inputs: Any, targets: Mapping[str, Tensor],
                      masks: Mapping[str, Tensor]) -> None:
        step = trainer.global_step + 1
        due_g = self.every is not None and step % self.every == 0
        due_a = self.affinity_every is not None and step % self.affinity_every == 0
        self._pending, self._free = None, False
        if not (due_g or due_a):
            return
        present = [t for t in self._tasks if t not in masks or bool(masks[t].any())]
        balancer = trainer.balancer
        if isinstance(balancer, GradientBalancer):
            autograd.last_gramian(balancer, clear=True)
            index = np.array([self._tasks.index(t) for t in present])
            self._free = due_g and (isinstance(balancer, JacobianBalancer) or balancer.recompute_now(index))
        mode = self._mode(trainer)
        if len(present) == 0:
            return
        start = time.perf_counter()
        with Restored(trainer) as r:
            grads = losses = None
            if due_g and not self._free:
                r.fork()
                losses, grads = task_gradients(trainer, inputs, targets, masks, present, mode)
                self._pending = _gradient_record(present, grads)
                self.seconds["gradients"] += time.perf_counter() - start
            if due_a:
                t0 = time.perf_counter()
                if mode != "parameters" or grads is None:
                    r.fork()
                    losses, grads = task_gradients(trainer, inputs, targets, masks, present, "parameters")
                Z = lookahead_affinity(trainer, inputs, targets, masks, present, grads, losses, self._lr(trainer),
                                       r.rng)
                self._write({"kind": "affinity", "step": step, "epoch": trainer.epoch, "tasks": present,
                             "affinity": Z.tolist()})
                self._add(present, affinity=Z)
                self.seconds["affinity"] += time.perf_counter() - t0

    def on_step_end(self, trainer: "Trainer", info: StepInfo) -> None:
        record = self._pending
        if self._free:
            kept = autograd.last_gramian(trainer.balancer, clear=True)
            if kept is not None:
                K, index = kept
                record = _record_from_gram([self._tasks[i] for i in index], K)
        self._pending, self._free = None, False
        if record is None or info.skipped:
            return
        record = {"kind": "gradients", "step": info.step, "epoch": info.epoch, **record,
                  "weights": trainer.balancer.weights()}
        self._write(record)
        self._add(record["tasks"], cosine=np.array(record["cosine"], dtype=float))

    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None:
        """The diagnostics' own time so far (seconds, cumulative), logged with the epoch: their cost."""
        record["diagnostics_seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}

    def on_fit_end(self, trainer: "Trainer", history: Sequence[dict]) -> None:
        if isinstance(trainer.balancer, GradientBalancer):
            autograd.keep_gramian(trainer.balancer, False)

    # -------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.sums.items()},
                "seconds": dict(self.seconds)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = {k: np.array(v, dtype=float) for k, v in state.get("sums", {}).items()}
        self.seconds = dict(state.get("seconds", self.seconds))

    def summary(self) -> dict[str, Any]:
        """Means over training from the running sums: affinity (T x T) and conflict frequency (T x T)."""
        s = self.sums or _empty_sums(len(getattr(self, "_tasks", [])))
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"tasks": list(getattr(self, "_tasks", [])),
                    "mean_affinity": np.where(s["aff_n"] > 0, s["aff_sum"] / np.maximum(s["aff_n"], 1), np.nan),
                    "conflict_frequency": np.where(s["cos_n"] > 0, s["neg"] / np.maximum(s["cos_n"], 1), np.nan),
                    "mean_cosine": np.where(s["cos_n"] > 0, s["cos_sum"] / np.maximum(s["cos_n"], 1), np.nan),
                    "seconds": dict(self.seconds)}

    # -------------------------------------------------------------------------------------- helpers
    def _mode(self, trainer: "Trainer") -> str:
        if self.mode != "auto":
            mode = self.mode
        else:
            mode = getattr(trainer.balancer, "mode", "parameters")
        return mode if trainer.model.shares_representation else "parameters"

    def _lr(self, trainer: "Trainer") -> float:
        return float(self.lr) if self.lr is not None else float(trainer.optimizer.param_groups[0]["lr"])

    def _write(self, record: dict) -> None:
        self.records.append(record)
        if self._file is not None:
            with open(self._file, "a") as f:
                f.write(to_json(record) + "\n")
                f.flush()

    def _add(self, present: Sequence[str], cosine: np.ndarray | None = None, affinity: np.ndarray | None = None) -> None:
        idx = np.ix_([self._tasks.index(t) for t in present], [self._tasks.index(t) for t in present])
        s = self.sums
        for key, value in (("cos", cosine), ("aff", affinity)):
            if value is None:
                continue
            ok = np.isfinite(value)
            s[f"{key}_sum"][idx] += np.where(ok, value, 0.0)
            s[f"{key}_n"][idx] += ok
            if key == "cos":
                s["neg"][idx] += ok & (value < 0)


def _empty_sums(T: int) -> dict[str, np.ndarray]:
    return {k: np.zeros((T, T)) for k in ("cos_sum", "cos_n", "neg", "aff_sum", "aff_n")}


def _record_from_gram(tasks: list[str], K: np.ndarray) -> dict:
    """tasks, cosine and norms from a Gramian of task gradients (a zero gradient's cosines are NaN)."""
    K = np.asarray(K, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diag(K), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = K / np.outer(norms, norms)
    cos = np.where(np.outer(norms, norms) > 0, np.clip(cos, -1.0, 1.0), np.nan)
    return {"tasks": list(tasks), "cosine": cos.tolist(), "norms": norms.tolist()}


def _gradient_record(tasks: list[str], grads: list[Tensor]) -> dict:
    G = torch.stack([g.double() for g in grads])
    return _record_from_gram(tasks, (G @ G.T).cpu().numpy())


# ------------------------------------------------------------------------------------------ the computations
class Restored:
    """Puts back, on exit, what extra forward passes may change: the model's buffers (BatchNorm statistics)
    and mode, the balancer's state, and the random number generators (so dropout in training draws the same
    masks as without diagnostics)."""

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer

    def __enter__(self) -> "Restored":
        model = self.trainer.model
        self.rng = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.modes = {n: m.training for n, m in model.named_modules()}
        return self

    def __exit__(self, *exc: Any) -> None:
        model = self.trainer.model
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in self.buffers:
                    b.copy_(self.buffers[n])
        for n, m in model.named_modules():
            if n in self.modes:
                m.training = self.modes[n]
        torch.set_rng_state(self.rng)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)

    def fork(self) -> None:
        """The generators as at entry: each extra forward pass draws the same dropout masks."""
        torch.set_rng_state(self.rng)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _loss_fn(trainer: "Trainer", targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]):
    def loss_of(t: str, output: Tensor) -> Tensor:
        m = masks.get(t)
        return trainer.tasks[t].loss(output, targets[t], m, complete=m is None)
    return loss_of


def shared_parameters(trainer: "Trainer") -> list[torch.nn.Parameter]:
    """The model's trainable shared parameters (θ_s)."""
    return [p for p in trainer.model.shared_parameters() if p.requires_grad]


def task_gradients(trainer: "Trainer", inputs: Any, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                   tasks: Sequence[str], mode: str = "parameters") -> tuple[dict[str, float], list[Tensor]]:
    """(losses, flattened gradients) of each of `tasks` at the current parameters: on the shared parameters
    (`mode` "parameters") or on the shared representation ("features"). Leaves `.grad` untouched."""
    model, loss_of = trainer.model, _loss_fn(trainer, targets, masks)
    if mode == "features":
        rep = model.shared(inputs)
        parts = [p for p in (rep if isinstance(rep, (tuple, list)) else (rep,))
                 if isinstance(p, Tensor) and p.requires_grad]
        outputs = model.heads(rep, list(trainer.tasks))
        wrt: list[Tensor] = parts
    else:
        outputs = model(inputs)
        wrt = shared_parameters(trainer)
    losses = {t: loss_of(t, outputs[t]) for t in tasks}
    grads = []
    for k, t in enumerate(tasks):
        if not wrt or not losses[t].requires_grad:
            grads.append(torch.zeros(sum(w.numel() for w in wrt) or 1, dtype=torch.float64))
            continue
        gs = torch.autograd.grad(losses[t], wrt, retain_graph=k < len(tasks) - 1, allow_unused=True)
        grads.append(torch.cat([(g if g is not None else torch.zeros_like(w)).reshape(-1) for g, w in zip(gs, wrt)]))
    return {t: float(l.detach()) for t, l in losses.items()}, grads


@torch.no_grad()
def lookahead_affinity(trainer: "Trainer", inputs: Any, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                       tasks: Sequence[str], grads: Sequence[Tensor], losses: Mapping[str, float],
                       lr: float, rng: Tensor | None = None,
                       params: Sequence[torch.nn.Parameter] | None = None) -> np.ndarray:
    """TAG: Z[i, j] = 1 - L_j(θ_s - lr g_i) / L_j(θ_s) for the present `tasks`, `grads` being g_i on the shared
    parameters at θ_s and `losses` the L_j(θ_s) of the same forward pass. Every forward draws the same random
    numbers, from the generator state `rng` (default: the current one), which should be the state the forward
    pass of `grads` started from. `params` (default: every shared parameter) are the parameters moved, in the
    order of `grads`' entries (e.g. one layer's, for affinity by depth). They are put back exactly."""
    model, loss_of = trainer.model, _loss_fn(trainer, targets, masks)
    shared = list(params) if params is not None else shared_parameters(trainer)
    saved = [p.detach().clone() for p in shared]
    rng = torch.get_rng_state() if rng is None else rng
    Z = np.full((len(tasks), len(tasks)), np.nan)
    try:
        for i, g in enumerate(grads):
            offset = 0
            for p in shared:
                n = p.numel()
                p.sub_(lr * g[offset:offset + n].view_as(p).to(p.dtype))
                offset += n
            torch.set_rng_state(rng)
            out = model(inputs)
            for j, t in enumerate(tasks):
                base = losses[t]
                after = float(loss_of(t, out[t]))
                Z[i, j] = 1.0 - after / base if base != 0 and math.isfinite(base) else np.nan
            for p, s in zip(shared, saved):
                p.copy_(s)
    finally:
        for p, s in zip(shared, saved):
            p.copy_(s)
    return Z


__all__ = ["Diagnostics", "DiagnosticsCallback", "read_diagnostics", "read_records", "records_to_data",
           "lookahead_affinity", "task_gradients", "FILE"]
