"""Static weighting: L = sum_t w_t L_t with fixed weights (by default each task's `importance`)."""
from __future__ import annotations

from typing import Mapping, Sequence

from multitask.balancing.base import WeightedSum, importances
from multitask.tasks import Task


class Static(WeightedSum):
    """Fixed weights chosen by the user; `weights` overrides the tasks' importance."""

    name = "static"

    def __init__(self, tasks: Sequence[Task], weights: Mapping[str, float] | None = None) -> None:
        chosen = importances(tasks, weights, "static weights")
        negative = [k for k, v in chosen.items() if not v >= 0]
        if negative:
            raise ValueError(f"static weights must be >= 0; negative or NaN for {negative}")
        super().__init__(tasks, chosen)
