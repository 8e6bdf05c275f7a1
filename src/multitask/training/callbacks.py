"""Callbacks: observers of training (logging, diagnostics, affinity, per-task convergence bookkeeping).

A `Callback` sees the trainer at the start and end of `fit`, before and after every optimisation step, and at
the end of every epoch. Observers never change the math of a step; a callback that needs state across a resume
returns it from `state_dict` (saved in ``checkpoints/last.pt`` under its `key`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from torch import Tensor

if TYPE_CHECKING:
    from multitask.training.trainer import Trainer


@dataclass
class StepInfo:
    """One optimisation step as a callback sees it. `losses` are detached; `skipped` is True for a step left
    out because of a non-finite value (its losses may be NaN). `masks` holds the label masks of tasks with
    missing labels in this batch (a task absent from it is fully labelled); `present` says which tasks had any."""

    step: int                   # trainer.global_step after this step (1 for the first step of a run)
    epoch: int                  # the epoch in progress, counted from 0
    inputs: Any
    targets: Mapping[str, Tensor]
    masks: Mapping[str, Tensor]
    losses: Mapping[str, Tensor]
    present: Mapping[str, bool]
    skipped: bool = False


class Callback:
    """Base class: every hook does nothing. Override the ones you need."""

    @property
    def key(self) -> str:
        """Where this callback's state lives in a checkpoint; one callback per key in a run."""
        return type(self).__name__

    def on_fit_start(self, trainer: "Trainer") -> None:
        """After set-up (and after a resume restored the trainer), before the first epoch runs."""

    def on_step_start(self, trainer: "Trainer", inputs: Any, targets: Mapping[str, Tensor],
                      masks: Mapping[str, Tensor]) -> None:
        """Before a step's forward pass, with the parameters the step starts from (inputs on the device)."""

    def on_step_end(self, trainer: "Trainer", info: StepInfo) -> None:
        """After the optimiser's update (or after a skipped step)."""

    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None:
        """After validation, before the epoch is logged and checkpointed: keys added to `record` are logged
        to metrics.jsonl, and the state returned by `state_dict` now is in this epoch's checkpoint. Raise
        `StopTraining` to end `fit` after this epoch is saved."""

    def on_fit_end(self, trainer: "Trainer", history: Sequence[dict]) -> None:
        """After the last epoch (and after the best weights were restored, when they are)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (called on resume, before `on_fit_start`)."""


EpochCallback = Callable[["Trainer", dict], None]


class _AfterEpoch(Callback):
    """A plain function ``f(trainer, record)`` called after each epoch's checkpoint (the older form)."""

    def __init__(self, fn: EpochCallback) -> None:
        self.fn = fn

    @property
    def key(self) -> str:
        return f"function:{getattr(self.fn, '__qualname__', repr(self.fn))}"


def as_callbacks(callbacks: Sequence[Callback | EpochCallback]) -> list[Callback]:
    """Callbacks as `Callback` objects (a plain function becomes one called after each checkpoint); two
    callbacks with the same `key` are refused, since their saved states would overwrite each other."""
    out: list[Callback] = []
    for cb in callbacks:
        if isinstance(cb, Callback):
            out.append(cb)
        elif callable(cb):
            out.append(_AfterEpoch(cb))
        else:
            raise TypeError(f"a callback must be a multitask.training.Callback or a function (trainer, record); "
                            f"got {type(cb).__name__}")
    keys = [cb.key for cb in out if not isinstance(cb, _AfterEpoch)]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"two callbacks share the key {dupes[0]!r}: give one a different `key` so that their "
                         "saved states do not overwrite each other")
    return out


__all__ = ["Callback", "StepInfo", "EpochCallback", "as_callbacks"]
