"""CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent.

With g0 the average gradient and g_w = sum_i w_i g_i, solve min_{w in simplex} g_w . g0 + sqrt(phi) ||g_w||,
phi = c^2 ||g0||^2; the update is d = g0 + (sqrt(phi) / ||g_w||) g_w (divided by 1 + c^2 when `rescale`,
as the authors' code does). It stays within a ball around g0 while maximising the worst task's improvement.
The T-dimensional problem is solved directly on the Gramian (an active-set method with exact face solves,
warm-started from the previous solution), never by building a generic convex program. It returns
when the Frank-Wolfe gap is below 1e-10 of the size of the objective's two terms (else a `SolverWarning`).
A task whose gradient is zero makes g_w = 0 reachable: when no combination of the other tasks' gradients has
a negative objective, the optimum is that point, where the direction is g0 (the authors' code gives the same).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from multitask.balancing.base import GramianBalancer
from multitask.balancing.solvers import ULP, gradient_norms, minimize_on_simplex
from multitask.tasks import Task


def cagrad_objective(w: np.ndarray, K: np.ndarray, c: float) -> float:
    T = len(K)
    g0_sq = float(K.sum()) / T ** 2
    return float(w @ K.sum(1) / T + c * np.sqrt(g0_sq) * np.sqrt(max(w @ K @ w, 0.0)))


def face_optimum(K: np.ndarray, b: np.ndarray, s: float, S: np.ndarray) -> np.ndarray | None:
    """The exact minimiser of f(w) = b.w + s sqrt(w^T K w) on the simplex face S (None where it has none).

    f is positively homogeneous, so at a stationary point b_S + s K_S w / r = f(w) 1 (r = sqrt(w^T K w)).
    With v = (s / r) w_S this reads K_S v = mu 1 - b_S, v^T K_S v = s^2: v = mu p - q (p = K_S^-1 1,
    q = K_S^-1 b_S) and alpha mu^2 - 2 beta mu + gamma = s^2 (alpha = 1.p, beta = 1.q, gamma = b_S.q), whose
    root with sum v = alpha mu - beta > 0 is mu = (beta + sqrt(beta^2 - alpha (gamma - s^2))) / alpha.
    Solved on the face's unit-diagonal Gramian (a pseudo-inverse where it is singular; the caller verifies)."""
    n = gradient_norms(K)[S]
    if len(S) == 0 or np.any(n == 0) or s <= 0:
        return None
    lam, Q = np.linalg.eigh(K[np.ix_(S, S)] / np.outer(n, n))
    inv = np.where(lam > len(S) * ULP * max(float(lam[-1]), 1e-300), 1.0 / np.maximum(lam, 1e-300), 0.0)
    P = (Q * inv) @ Q.T
    p, q = (P @ (1.0 / n)) / n, (P @ (b[S] / n)) / n
    alpha, beta, gamma = float(p.sum()), float(q.sum()), float(b[S] @ q)
    disc = beta * beta - alpha * (gamma - s * s)
    if not (alpha > 0 and disc > 0):
        return None
    v = (beta + np.sqrt(disc)) / alpha * p - q
    if not v.min() > 0:
        return None
    w = np.zeros(len(K))
    w[S] = v / v.sum()
    return w


def _line_min(f, w: np.ndarray, delta: np.ndarray, K: np.ndarray, b: np.ndarray, s: float) -> np.ndarray | None:
    """The minimiser of the convex f(w + t delta), 0 < t <= t_max (the simplex's edge), in closed form: with
    q(t) = A + 2 B t + C t^2 = ||g_{w + t delta}||^2, f' = 0 reads s^2 (B + C t)^2 = beta^2 q(t), a quadratic
    in t. None when no t lowers f."""
    neg = delta < 0
    t_max = float(np.min(w[neg] / -delta[neg])) if neg.any() else 1.0
    Kd = K @ delta
    A, B, C, beta = float(w @ K @ w), float(w @ Kd), float(delta @ Kd), float(b @ delta)
    k = s * s * C - beta * beta
    cands = [t_max]
    roots = np.roots([C * k, 2 * B * k, s * s * B * B - beta * beta * A]) if C * k != 0 else []
    cands += [float(t.real) for t in np.atleast_1d(roots) if abs(t.imag) <= 1e-12 * abs(t) and 0 < t.real < t_max]
    f0 = f(w)
    best, f_best = None, f0
    for t in cands:
        x = np.maximum(w + t * delta, 0.0)
        x /= x.sum()
        fx = f(x)
        if fx < f_best:
            best, f_best = x, fx
    return best


def cagrad_simplex(K: np.ndarray, b: np.ndarray, s: float, w0: np.ndarray | None = None, tol: float = 1e-10,
                   max_iter: int = 200) -> np.ndarray:
    """argmin_{w in simplex} b.w + s sqrt(w^T K w) (CAGrad: b = K 1 / T, s = c ||g0||) to a Frank-Wolfe gap
    <= tol (|b.w| + s sqrt(w^T K w)) plus the round-off of the gradient's entries; warm-started from w0.

    An active-set method like Wolfe's for the min-norm point (f is convex): the current face's stationary point
    is solved exactly (`face_optimum`); if it lies outside the simplex the iterate moves towards it until a
    weight reaches 0 and that vertex leaves the face; then the vertex of least gradient joins. Where a face has
    no stationary point, a pairwise step (weight from the face's worst vertex to the best one, exact line
    search). If it still has no certificate, the accelerated projected gradient (`minimize_on_simplex`)
    continues from its best point, and warns if it too cannot certify it."""
    T = len(K)
    n = gradient_norms(K)
    floor = 64 * T * ULP * (float(np.abs(b).max()) + s * float(n.max()))

    def f(w: np.ndarray) -> float:
        return float(w @ b) + s * np.sqrt(max(float(w @ K @ w), 0.0))

    def f_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        Kw = K @ w
        norm = np.sqrt(max(float(w @ Kw), 1e-300))
        return float(w @ b) + s * norm, b + s * Kw / norm

    def tolerance(w: np.ndarray, fw: float, g: np.ndarray) -> float:
        return tol * (abs(float(w @ b)) + s * np.sqrt(max(float(w @ K @ w), 0.0))) + floor

    def corral(w: np.ndarray, S: list[int]) -> tuple[np.ndarray, list[int], bool]:
        for _ in range(len(S) + 1):
            v = face_optimum(K, b, s, np.array(S))
            if v is None:
                return w, S, False
            if v[S].min() > 0:
                return (v, S, True) if f(v) <= f(w) else (w, S, False)
            ws, vs = w[S], v[S]
            neg = np.nonzero(vs <= 0)[0]
            ratios = ws[neg] / (ws[neg] - vs[neg])
            k = int(np.argmin(ratios))
            new = ws + ratios[k] * (vs - ws)
            new[neg[k]] = 0.0
            keep = new > 0
            S = [i for i, kp in zip(S, keep) if kp]
            w = np.zeros(T)
            w[S] = new[keep] / new[keep].sum()
        return w, S, False

    if w0 is not None and w0.shape == (T,) and np.all(np.isfinite(w0)) and np.all(w0 >= 0) and w0.sum() > 0:
        w = w0 / w0.sum()
    else:
        w = np.zeros(T)
        w[int(np.argmin(b + s * n))] = 1.0  # the best vertex
    w, S, solved = corral(w, list(np.nonzero(w > 0)[0]))
    for _ in range(max_iter):
        fw, g = f_and_grad(w)
        if float(g @ w - g.min()) <= tolerance(w, fw, g):
            return w
        if not solved:  # after a line search: first the exact optimum of the face it is on
            w_new, S_new, solved = corral(w, S)
            if solved and f(w_new) < fw:
                w, S = w_new, S_new
                continue
        j = int(np.argmin(g))
        if j not in S:
            w_new, S_new, solved = corral(w, S + [j])
            if solved and f(w_new) < fw:
                w, S = w_new, S_new
                continue
        # no exact face step: a pairwise step, weight from the face's worst vertex to the best vertex
        a = S[int(np.argmax(g[S]))]
        delta = np.zeros(T)
        delta[j], delta[a] = 1.0, -1.0
        w_new = _line_min(f, w, delta, K, b, s) if a != j else None
        if w_new is None:
            break
        w, S, solved = w_new, list(np.nonzero(w_new > 0)[0]), False
    return minimize_on_simplex(f_and_grad, w, tol=tol, tolerance=tolerance,
                               polish=lambda S: face_optimum(K, b, s, S), name="CAGrad")


class CAGrad(GramianBalancer):
    """Conflict-averse direction in a ball of radius c ||g0|| around the average gradient."""

    name = "cagrad"

    def __init__(self, tasks: Sequence[Task], mode: str = "parameters", every: int = 1, c: float = 0.4,
                 rescale: bool = True) -> None:
        super().__init__(tasks, mode, every)
        if not c >= 0:
            raise ValueError(f"cagrad: c must be >= 0, got {c}")
        self.c, self.rescale = float(c), bool(rescale)
        # the last solution on the simplex (a warm start; kept in checkpoints so resumed runs match)
        self.register_buffer("last_w", torch.full((len(tasks),), float("nan"), dtype=torch.float64))

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        T = len(gramian)
        diag = np.diag(gramian)
        alive = diag > 1e-20 * max(float(diag.max()), 1e-300)  # tasks with a (numerically) non-zero gradient
        if not alive.any():
            return np.full(T, 1.0 / (1 + self.c ** 2) if self.rescale else 1.0) / T
        scale = float(np.trace(gramian)) / T
        K = gramian / scale  # the solution does not depend on the scale; this keeps the solver well-posed
        b = K.sum(1) / T
        sqrt_phi = self.c * np.sqrt(max(float(K.sum()) / T ** 2, 0.0))
        w0 = self.last_w.cpu().numpy()[index][alive]
        Ka = K[np.ix_(alive, alive)]
        # CAGrad's objective restricted to the live tasks (b and phi still those of all T tasks)
        wa = cagrad_simplex(Ka, b[alive], sqrt_phi, w0)
        w = np.zeros(T)
        w[alive] = wa
        gw_norm = np.sqrt(max(float(w @ K @ w), 0.0))
        degenerate = not alive.all() and float(wa @ b[alive]) + sqrt_phi * gw_norm >= 0
        if degenerate:  # a zero gradient does at least as well: g_w = 0 and the direction is g0
            w = (~alive).astype(float) / (~alive).sum()
        self.last_w[torch.as_tensor(index, device=self.last_w.device)] = torch.as_tensor(w, device=self.last_w.device)
        weights = np.full(T, 1.0 / T)
        if not degenerate and gw_norm > 0:
            weights = weights + (sqrt_phi / gw_norm) * w
        return weights / (1 + self.c ** 2) if self.rescale else weights
