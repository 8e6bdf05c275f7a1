"""Equal weighting: the plain sum of task losses, the baseline every balancing method is measured against."""
from __future__ import annotations

from typing import Sequence

from multitask.balancing.base import WeightedSum
from multitask.tasks import Task


class Equal(WeightedSum):
    """L = sum_t L_t."""

    name = "equal"

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__(tasks, {t.name: 1.0 for t in tasks})
