"""`Task`: what one target is (its kind), how it is learned (loss) and judged (metrics), and how much it matters."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from multitask import metrics as _metrics

Kind = Literal["regression", "binary", "multiclass", "multilabel"]
KINDS: tuple[str, ...] = ("regression", "binary", "multiclass", "multilabel")

# An element-wise loss: (output, target) -> one loss per labelled entry (no reduction).
ElementLoss = Callable[[Tensor, Tensor], Tensor]


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return (output - target) ** 2


def _bce(output: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(output, target, reduction="none")


def _ce(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output, target.long(), reduction="none")


DEFAULT_LOSS: dict[str, ElementLoss] = {
    "regression": _mse, "binary": _bce, "multiclass": _ce, "multilabel": _bce,
}


@dataclass
class Task:
    """One prediction target of a multi-task model.

    `n_outputs` is the number of classes (multiclass), labels (multilabel) or regression outputs.
    Missing labels are NaN (float targets) or negative (integer class targets): they are masked out of the
    loss and of every metric, never guessed.

    A regression target trained in standardised units, ``(y - target_mean) / target_std``, keeps its loss
    there (so no task's units drown another's) while `evaluate` reports mse and mae in y's own units;
    ``target_std=None`` (the default) means the targets are already in the units to report.

    ``after`` names the task this one follows in a funnel (conversion after click): funnel models (ESMM,
    AITM) chain such tasks; other models ignore it. `check_dependencies` validates a list of tasks' links.
    """

    name: str
    kind: Kind
    n_outputs: int = 1
    importance: float = 1.0
    metrics: Sequence[str] | None = None
    loss_fn: ElementLoss | None = field(default=None, repr=False)
    target_mean: float = 0.0
    target_std: float | None = None
    after: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")
        if self.after is not None and (not isinstance(self.after, str) or not self.after):
            raise ValueError(f"task {self.name!r}: after must name another task, got {self.after!r}")
        if self.after == self.name:
            raise ValueError(f"task {self.name!r}: a task cannot come after itself (after: {self.after!r})")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not isinstance(self.n_outputs, numbers.Integral) or isinstance(self.n_outputs, bool):
            raise TypeError(f"task {self.name!r}: n_outputs must be an int, got {self.n_outputs!r}")
        self.n_outputs = int(self.n_outputs)  # a numpy integer becomes a plain int (it is saved as JSON)
        if not isinstance(self.importance, numbers.Real) or isinstance(self.importance, bool):
            raise TypeError(f"task {self.name!r}: importance must be a number, got {self.importance!r}")
        self.importance = float(self.importance)
        if not (math.isfinite(self.importance) and self.importance >= 0):
            raise ValueError(f"task {self.name!r}: importance must be >= 0 and finite, got {self.importance}")
        if isinstance(self.metrics, str):
            raise TypeError(f"task {self.name!r}: metrics must be a list of metric names, not the string "
                            f"{self.metrics!r} (write metrics=[{self.metrics!r}])")
        if self.kind == "binary" and self.n_outputs != 1:
            raise ValueError(f"task {self.name!r}: a binary task has n_outputs=1, got {self.n_outputs}")
        if self.kind == "multiclass" and self.n_outputs < 2:
            raise ValueError(f"task {self.name!r}: a multiclass task needs n_outputs >= 2 classes")
        if self.n_outputs < 1:
            raise ValueError(f"task {self.name!r}: n_outputs must be >= 1, got {self.n_outputs}")
        if self.target_std is not None:
            if self.kind != "regression":
                raise ValueError(f"task {self.name!r}: target_std applies to regression targets only, not {self.kind}")
            for what, v in (("target_std", self.target_std), ("target_mean", self.target_mean)):
                if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
                    raise ValueError(f"task {self.name!r}: {what} must be a finite number, got {v!r}")
            if self.target_std <= 0:
                raise ValueError(f"task {self.name!r}: target_std must be > 0, got {self.target_std}")
            self.target_std, self.target_mean = float(self.target_std), float(self.target_mean)
        allowed = _metrics.METRICS_BY_KIND[self.kind]
        if self.metrics is None:
            self.metrics = tuple(allowed)
        try:
            self.metrics = tuple(self.metrics)
        except TypeError:
            raise TypeError(f"task {self.name!r}: metrics must be a list of metric names, got "
                            f"{self.metrics!r}") from None
        for m in self.metrics:
            if not isinstance(m, str):
                raise TypeError(f"task {self.name!r}: metric names must be strings, got {m!r}; "
                                f"allowed: {', '.join(allowed)}")
            if m not in allowed:
                raise ValueError(
                    f"task {self.name!r}: metric {m!r} does not apply to a {self.kind} task; "
                    f"allowed: {', '.join(allowed)}"
                )

    # ----------------------------------------------------------------------------------------- shapes
    @property
    def out_dim(self) -> int:
        """Width of the model output this task needs."""
        return self.n_outputs

    def _squeeze(self, output: Tensor) -> Tensor:
        if self.kind in ("regression", "binary") and self.n_outputs == 1 and output.dim() > 1:
            if output.shape[-1] != 1:
                raise ValueError(f"task {self.name!r}: expected outputs of shape [N, 1] or [N], got "
                                 f"{tuple(output.shape)}")
            return output[..., 0]
        return output

    def label_mask(self, target: Tensor) -> Tensor:
        """True where a label is present: not NaN for float targets, >= 0 for integer targets."""
        if target.is_floating_point():
            return ~torch.isnan(target)
        return target >= 0

    # ----------------------------------------------------------------------------------------- targets
    def check_targets(self, target: Any) -> None:
        """Raise a ValueError / TypeError, naming this task, if `target` (its labels for a whole split) does not
        fit the task: a torch tensor of shape [N] ([N, n_outputs] for multilabel and wide regression), finite,
        with binary / multilabel labels 0 or 1 and multiclass labels whole numbers in 0..n_outputs-1.

        A missing label is NaN in a float tensor and a negative number in an integer tensor; a negative float
        is not a missing label (it is reported). Costs a few passes over the tensor.
        """
        where = f"task {self.name!r}"
        require_tensor(target, f"{where}: targets")
        if target.dtype.is_complex:
            raise TypeError(f"{where}: targets must be real numbers, got dtype {target.dtype}")
        wide = self.kind == "multilabel" or (self.kind == "regression" and self.n_outputs > 1)
        if (target.dim(), target.shape[1:]) != ((2, (self.n_outputs,)) if wide else (1, ())):
            want = f"[N, {self.n_outputs}]" if wide else "[N]"
            raise ValueError(f"{where}: targets of shape {tuple(target.shape)}; a {self.kind} task with "
                             f"n_outputs={self.n_outputs} takes {want}")
        floating = target.is_floating_point()
        missing = "NaN marks a missing label" if floating else "a negative integer marks a missing label"
        if floating:
            fail_if_any(where, torch.isinf(target), target, "infinite targets", missing)
        labelled = self.label_mask(target)
        if self.kind in ("binary", "multilabel"):
            bad = labelled & (target != 0) & (target != 1)
            negative = floating and bool((bad & (target < 0)).any())
            fail_if_any(where, bad, target, "labels other than 0/1",
                        f"a {self.kind} label is 0 or 1; "
                        + (f"{missing} in a float tensor, not a negative number" if negative else missing))
        elif self.kind == "multiclass":
            classes = f"0..{self.n_outputs - 1}"
            if floating:
                fail_if_any(where, labelled & (target != target.round()), target,
                            "class labels that are not whole numbers", f"classes are {classes}; {missing}")
                fail_if_any(where, labelled & (target < 0), target, "negative class labels",
                            f"{missing} in a float tensor (or use an integer tensor with -1 for a missing label); "
                            f"classes are {classes}")
            fail_if_any(where, labelled & (target >= self.n_outputs), target, f"class labels outside {classes}",
                        f"a multiclass task with n_outputs={self.n_outputs} takes classes {classes}; {missing}")
        elif not floating and target.dtype != torch.bool:
            fail_if_any(where, target < 0, target, "negative integer targets",
                        "a negative integer reads as a missing label; give regression targets as a float tensor "
                        "(.float()), with NaN for a missing value")

    # ----------------------------------------------------------------------------------------- loss
    def loss(self, output: Tensor, target: Tensor, mask: Tensor | None = None, complete: bool = False) -> Tensor:
        """Mean loss over the labelled entries; exactly 0 (with a graph, zero gradient) when none are labelled.

        `complete=True` is the caller's promise that every label is present (the trainer checks the whole
        dataset once), which skips the masking arithmetic.
        """
        output = self._squeeze(output)
        self._check_shapes(output, target)
        if complete:
            return self._per_entry(output, target).mean()
        if mask is None:
            mask = self.label_mask(target)
        fill = torch.zeros((), dtype=target.dtype, device=target.device)
        per_entry = self._per_entry(output, torch.where(mask, target, fill))  # masked entries must not give NaN
        m = mask.to(per_entry.dtype)
        return (per_entry * m).sum() / m.sum().clamp(min=1.0)

    def _per_entry(self, output: Tensor, target: Tensor) -> Tensor:
        """The element-wise loss; class targets stay integers, the others take the output's dtype."""
        fn = self.loss_fn or DEFAULT_LOSS[self.kind]
        return fn(output, target if self.kind == "multiclass" else target.to(output.dtype))

    def _check_shapes(self, output: Tensor, target: Tensor) -> None:
        if self.kind == "multiclass":
            if output.shape[:-1] != target.shape:
                raise ValueError(
                    f"task {self.name!r}: output shape {tuple(output.shape)} does not match class targets "
                    f"{tuple(target.shape)} (expected [N, {self.n_outputs}] and [N])"
                )
        elif output.shape != target.shape:
            raise ValueError(
                f"task {self.name!r}: output shape {tuple(output.shape)} does not match target shape "
                f"{tuple(target.shape)}"
            )

    # ----------------------------------------------------------------------------------------- predictions
    def predict(self, output: Tensor) -> Tensor:
        """What a user reads: probabilities for classification, values for regression."""
        output = self._squeeze(output)
        if self.kind in ("binary", "multilabel"):
            return torch.sigmoid(output)
        if self.kind == "multiclass":
            return torch.softmax(output, dim=-1)
        return output

    def evaluate(self, output: Tensor, target: Tensor) -> dict[str, float]:
        """This task's metrics over labelled entries (output: raw model outputs for the whole split); a
        standardised regression target's metrics are in its original units (see `target_std`)."""
        scores = self.predict(output).detach().cpu().double().numpy()
        target_np = target.detach().cpu().numpy()
        mask_np = self.label_mask(target).cpu().numpy()
        if self.target_std is not None:  # back to original units: y = z * std + mean (NaN stays NaN)
            scores = scores * self.target_std + self.target_mean
            target_np = target_np.astype("float64") * self.target_std + self.target_mean
        return {m: _metrics.compute(self.kind, m, scores, target_np, mask_np) for m in self.metrics}

    def higher_is_better(self, metric: str) -> bool:
        return _metrics.HIGHER_IS_BETTER[metric]

    def to_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "n_outputs": self.n_outputs,
               "importance": self.importance, "metrics": list(self.metrics or ())}
        if self.target_std is not None:  # absent in older run directories: Task(**d) reads them unscaled
            out.update(target_mean=self.target_mean, target_std=self.target_std)
        if self.after is not None:  # absent when unset, as in older run directories
            out["after"] = self.after
        return out


def require_tensor(x: Any, what: str, verb: str = "are") -> None:
    """`x` is a torch tensor with at least one dimension (the rows); `what` (with `verb`) names it in the error.

    Arrays are not converted silently: a numpy array (or list, Series, ...) is a TypeError that says how."""
    if not isinstance(x, Tensor):
        kind = "a numpy array" if isinstance(x, np.ndarray) else f"a {type(x).__name__}"
        raise TypeError(f"{what} {verb} {kind}; pass a torch tensor (torch.as_tensor(...) converts an array)")
    if x.dim() == 0:
        raise ValueError(f"{what} {verb} a 0-dim tensor (a single number); give one row per example, "
                         "shape [N, ...]")


def _examples(values: Tensor, k: int = 3) -> str:
    """Up to `k` distinct values, smallest first, as text."""
    vals = torch.unique(values.detach().cpu())[:k].tolist()
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals)


def fail_if_any(where: str, bad: Tensor, target: Tensor, what: str, allowed: str) -> None:
    """Raise if any entry is `bad`: how many rows (with one bad entry or more), some bad values, what is allowed."""
    if not bool(bad.any()):
        return
    rows = int(bad.reshape(bad.shape[0], -1).any(1).sum())
    verb = "row has" if rows == 1 else "rows have"
    raise ValueError(f"{where}: {rows} {verb} {what} (e.g. {_examples(target[bad])}); {allowed}")


def dependency_error(tasks: Sequence[Task]) -> tuple[str, str] | None:
    """(task name, message) for the first task whose `after` names no task of `tasks` or closes a cycle;
    None when the links form a forest (every chain ends at a task without `after`)."""
    names = [t.name for t in tasks]
    after = {t.name: t.after for t in tasks}
    for t in tasks:
        if t.after is not None and t.after not in after:
            return t.name, (f"task {t.name!r}: after {t.after!r} is not one of the tasks "
                            f"({', '.join(names)})")
    for t in tasks:
        path, node = [t.name], t.after
        while node is not None:
            path.append(node)
            if node == t.name:
                return t.name, f"task {t.name!r}: after: the tasks {' -> '.join(map(repr, path))} form a cycle"
            node = after[node]
    return None


def check_dependencies(tasks: Sequence[Task]) -> dict[str, str | None]:
    """Each task's `after` (None for a task that follows none), checked: a known task, no cycle."""
    problem = dependency_error(tasks)
    if problem is not None:
        raise ValueError(problem[1])
    return {t.name: t.after for t in tasks}


def check_unique(tasks: Sequence[Task]) -> dict[str, Task]:
    """Tasks by name; duplicate names are an error."""
    out: dict[str, Task] = {}
    for t in tasks:
        if t.name in out:
            raise ValueError(f"duplicate task name {t.name!r}")
        out[t.name] = t
    if not out:
        raise ValueError("at least one task is needed")
    return out
