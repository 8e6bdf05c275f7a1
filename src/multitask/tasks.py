"""`Task`: what one target is (its kind), how it is learned (loss) and judged (metrics), and how much it matters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

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
    """

    name: str
    kind: Kind
    n_outputs: int = 1
    importance: float = 1.0
    metrics: Sequence[str] | None = None
    loss_fn: ElementLoss | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == "binary" and self.n_outputs != 1:
            raise ValueError(f"task {self.name!r}: a binary task has n_outputs=1, got {self.n_outputs}")
        if self.kind == "multiclass" and self.n_outputs < 2:
            raise ValueError(f"task {self.name!r}: a multiclass task needs n_outputs >= 2 classes")
        if self.n_outputs < 1:
            raise ValueError(f"task {self.name!r}: n_outputs must be >= 1, got {self.n_outputs}")
        if not self.importance >= 0:
            raise ValueError(f"task {self.name!r}: importance must be >= 0, got {self.importance}")
        allowed = _metrics.METRICS_BY_KIND[self.kind]
        if self.metrics is None:
            self.metrics = tuple(allowed)
        self.metrics = tuple(self.metrics)
        for m in self.metrics:
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
        """This task's metrics over labelled entries (output: raw model outputs for the whole split)."""
        scores = self.predict(output).detach().cpu().double().numpy()
        target_np = target.detach().cpu().numpy()
        mask_np = self.label_mask(target).cpu().numpy()
        return {m: _metrics.compute(self.kind, m, scores, target_np, mask_np) for m in self.metrics}

    def higher_is_better(self, metric: str) -> bool:
        return _metrics.HIGHER_IS_BETTER[metric]

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n_outputs": self.n_outputs,
                "importance": self.importance, "metrics": list(self.metrics or ())}


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
