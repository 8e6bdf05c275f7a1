"""MGDA (Désidéri 2012; Sener & Koltun, NeurIPS 2018): the min-norm point of the convex hull of the task
gradients, d = sum_i w_i g_i with w = argmin_{w in simplex} ||sum_i w_i g_i||^2.

Solved exactly by Wolfe's min-norm-point (active-set) algorithm, to a relative Frank-Wolfe gap of 1e-10
(closed form for two tasks; see solvers.py for the certificate). `normalize` rescales each
gradient before the solve, as in the paper: "none", "l2" (g/||g||), "loss" (g/L), "loss+" (g/(L ||g||)).
The weights returned act on the raw gradients: with normalisation factors n_i the update is the min-norm
point of the normalised gradients, sum_i u_i g_i / n_i, i.e. weights u_i / n_i. (The authors' code instead
applies the simplex weights u_i to the raw losses, which is not the min-norm point of anything when n varies.)
`constraints` adds importance relations [task_i, c, task_j] meaning w_i >= c * w_j on the returned weights;
the feasible set stays a convex polytope and Frank-Wolfe's linear step becomes a small LP.
With ``mode="features"`` this is MGDA-UB, the paper's one-backward upper bound.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from multitask.balancing.base import GramianBalancer
from multitask.balancing.solvers import constraint_matrix, min_norm_polytope, min_norm_simplex
from multitask.tasks import Task

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def gradient_scales(K: np.ndarray, losses: np.ndarray, normalize: str) -> np.ndarray:
    """The factor n_i each gradient is divided by."""
    norms = np.sqrt(np.maximum(np.diag(K), 0.0))
    if normalize == "none":
        n = np.ones(len(K))
    elif normalize == "l2":
        n = norms
    elif normalize == "loss":
        n = np.abs(losses)
    elif normalize == "loss+":
        n = np.abs(losses) * norms
    else:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    return np.where(n > 1e-20, n, 1.0)  # a zero gradient or loss is left as it is


class MGDA(GramianBalancer):
    """Multiple-gradient descent: the common descent direction of least norm."""

    name = "mgda"

    def __init__(self, tasks: Sequence[Task], mode: str = "parameters", every: int = 1, normalize: str = "none",
                 constraints: Sequence[Sequence] = ()) -> None:
        super().__init__(tasks, mode, every)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"mgda: normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.normalize = normalize
        self.constraints = [list(c) for c in constraints]
        self._A = constraint_matrix(self.task_names, self.constraints)

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        n = gradient_scales(gramian, losses, self.normalize)
        Kn = gramian / np.outer(n, n)
        init = self.cached_weights.cpu().numpy()[index] * n  # the last solution, in normalised coordinates
        init = init / init.sum() if init.sum() > 0 else None
        here = np.zeros(len(self.task_names), dtype=bool)
        here[index] = True
        # a constraint that names a task without labels in this batch is dropped for the step
        # rows act on the returned weights w = u / n, so in the solver's coordinates u they read (r / n) u <= 0
        rows = [r[index] / n for r in self._A if here[r != 0].all()]
        if rows:
            w = min_norm_polytope(Kn, np.array(rows), init)
        else:
            w = min_norm_simplex(Kn, init)
        return w / n  # weights on the original gradients
