"""The gradient engine: turns per-task losses into `.grad` on every parameter, computing only what the
balancer `requires`. It knows no particular method.

Requirements served now: ``"losses"`` (one backward of the balancer's combined objective).
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor

from multitask.balancing.base import Balancer
from multitask.models.base import MultiTaskModel


def backward(losses: Mapping[str, Tensor], balancer: Balancer, model: MultiTaskModel,
             present: Mapping[str, Tensor] | None = None) -> Tensor:
    """Write `.grad` for one step; returns the scalar that was differentiated (for logging)."""
    if balancer.requires == "losses":
        total = balancer.combine(losses, present)
        total.backward()
        return total.detach()
    raise ValueError(
        f"balancer {type(balancer).__name__} requires {balancer.requires!r}, which this engine does not provide"
    )
