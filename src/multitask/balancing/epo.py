"""EPO search (Mahapatra & Rajan, ICML 2020): exact Pareto optimality for a preference vector r.

The target is the point of the Pareto front where r_1 L_1 = r_2 L_2 = ... = r_T L_T (a large r_t asks for a
small L_t). Its distance from that ray is the non-uniformity
    mu(L) = KL(l_hat || 1/T) = sum_t l_hat_t log(T l_hat_t),   l_hat_t = r_t L_t / sum_s r_s L_s,
whose gradient in L is proportional to a = r * (log(T l_hat) - mu). With C = G G^T (the Gramian of the task
gradients), the update is d = sum_t beta_t g_t for beta on the simplex chosen by a linear programme:

- balance (mu > eps): maximise beta^T C a (d lowers mu fastest) subject to: the task(s) J* with the largest
  r_t L_t may not get worse ((C beta)_t >= 0); the other tasks whose loss the pure balance direction G^T a would
  raise ((C a)_t <= 0) get at least what that direction gives them ((C beta)_t >= (C a)_t). When no task
  gains along G^T a, every task must descend ((C beta)_t >= 0).
- descent (mu <= eps, on the ray): maximise 1^T C beta (descend on all tasks) subject to (C beta)_t >= 0 and
  beta^T C a >= min(max_t (C a)_t, 0) (do not drift off the ray).

The programmes are solved exactly with HiGHS (scipy.optimize.linprog). When a programme is infeasible (its
constraints cannot all hold), its constraints are relaxed in the paper's order: descent keeps only
(C beta)_t >= 0, and the last resort is the objective over the simplex alone. Gramians are scaled by their
largest diagonal entry first (the programmes are invariant to it), for the solver's tolerances.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import linprog

from multitask.balancing.base import GramianBalancer, importances
from multitask.tasks import Task

TINY = 1e-12


def non_uniformity(losses: np.ndarray, preference: np.ndarray) -> float:
    """mu = KL(l_hat || uniform) of the preference-weighted losses (0 exactly on the preference ray)."""
    rl = np.asarray(preference, float) * np.maximum(np.asarray(losses, float), TINY)
    l_hat = rl / rl.sum()
    return float(np.sum(l_hat * np.log(len(l_hat) * l_hat)))


def adjustment(losses: np.ndarray, preference: np.ndarray) -> tuple[np.ndarray, float]:
    """The direction a = r * (log(T l_hat) - mu) (proportional to d mu / d L) and mu itself."""
    r = np.asarray(preference, float)
    rl = r * np.maximum(np.asarray(losses, float), TINY)
    l_hat = rl / rl.sum()
    mu = float(np.sum(l_hat * np.log(len(l_hat) * l_hat)))
    return r * (np.log(len(l_hat) * l_hat) - mu), mu


def _lp(objective: np.ndarray, rows: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    """argmax objective^T beta over the simplex with rows @ beta >= rhs; None when infeasible."""
    n = len(objective)
    res = linprog(-objective, A_ub=-rows if len(rows) else None, b_ub=-rhs if len(rows) else None,
                  A_eq=np.ones((1, n)), b_eq=[1.0], bounds=[(0, None)] * n, method="highs")
    if res.status != 0:
        return None
    beta = np.maximum(res.x, 0.0)
    return beta / beta.sum()


def epo_weights(gramian: np.ndarray, losses: np.ndarray, preference: np.ndarray, eps: float = 1e-3
                ) -> tuple[np.ndarray, str]:
    """The EPO weights beta (on the simplex) for one step, and which programme gave them: "balance",
    "descent", or "relaxed" (a programme was infeasible and its constraints were dropped)."""
    C = np.asarray(gramian, dtype=float)
    T = len(C)
    if T == 1:
        return np.ones(1), "descent"
    scale = float(np.max(np.diag(C)))
    if not scale > 0:
        return np.full(T, 1.0 / T), "relaxed"  # every gradient is zero: nothing to steer
    C = C / scale
    a, mu = adjustment(losses, preference)
    Ca = C @ a
    if mu > eps:
        gains = Ca > 0
        rl = np.asarray(preference, float) * np.asarray(losses, float)
        worst = np.isclose(rl, rl.max(), rtol=1e-12, atol=0)
        if gains.any():
            keep = ~gains | worst
            rhs = np.where(worst, 0.0, Ca)[keep]
            beta = _lp(Ca, C[keep], rhs)
        else:
            beta = _lp(Ca, C, np.zeros(T))
        if beta is not None:
            return beta, "balance"
        beta = _lp(Ca, np.zeros((0, T)), np.zeros(0))
        return beta, "relaxed"
    total = C.sum(axis=0)  # 1^T C beta = (C 1)^T beta
    rows = np.vstack([C, Ca[None, :]])
    beta = _lp(total, rows, np.append(np.zeros(T), min(float(Ca.max()), 0.0)))
    if beta is not None:
        return beta, "descent"
    beta = _lp(total, C, np.zeros(T))
    if beta is not None:
        return beta, "relaxed"
    return _lp(total, np.zeros((0, T)), np.zeros(0)), "relaxed"


class EPO(GramianBalancer):
    """Exact Pareto optimal search: steer towards r_t L_t equal for all tasks, then descend along that ray."""

    name = "epo"

    def __init__(self, tasks: Sequence[Task], preference: Mapping[str, float] | None = None, eps: float = 1e-3,
                 mode: str = "parameters", every: int = 1) -> None:
        super().__init__(tasks, mode, every)
        chosen = importances(tasks, preference, "epo: the preference")
        bad = [k for k, v in chosen.items() if not v > 0]
        if bad:
            raise ValueError(f"epo: every preference must be > 0 (EPO divides by it); not so for {bad}")
        if not eps >= 0:
            raise ValueError(f"epo: eps must be >= 0, got {eps}")
        self.preference = np.array([chosen[t] for t in self.task_names], dtype=float)
        self.eps = float(eps)
        self.last_move = ""

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        beta, self.last_move = epo_weights(gramian, losses, self.preference[index], self.eps)
        return beta
