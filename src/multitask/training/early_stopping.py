"""Early stopping on one monitored validation quantity, with its state kept in the checkpoint."""
from __future__ import annotations

import math
from dataclasses import dataclass


def improves(value: float, best: float, higher_is_better: bool, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` (a NaN value never does; anything beats a NaN best)."""
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best + min_delta if higher_is_better else value < best - min_delta


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without improvement of the monitored value (None: never stop)."""

    patience: int | None
    higher_is_better: bool
    min_delta: float = 0.0
    best: float = math.nan
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record this epoch's value; True when it is the best so far."""
        improved = improves(value, self.best, self.higher_is_better, self.min_delta)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
