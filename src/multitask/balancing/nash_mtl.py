"""Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution between tasks.

The update d = sum_i a_i g_i with a > 0 solving G G^T a = 1/a (element-wise), i.e. every task's share
g_i . d = 1/a_i. That is the stationary point of the strictly convex f(a) = 1/2 a^T K a - sum_i log a_i, so
Newton's method on the T x T Gramian finds it to machine precision in a few steps (warm-started from the
previous solution) instead of the paper's sequence of convex programs. `every` reuses the weights between
solves, as the paper's implementation does; clip the update with the trainer's `grad_clip` (the paper's max_norm).

Accuracy: the system is solved on the unit-diagonal Gramian D^-1 K D^-1 (D: the gradient norms; with
b = D a it reads the same, so a = b / ||g||), where badly scaled tasks are as well posed as any, and with no
ridge. It returns when the residual max_i |a_i (K a)_i - 1| is <= 1e-10 (plus the round-off of the products);
otherwise it warns (`SolverWarning`). A solution exists unless some positive combination of the gradients is
0 (e.g. two opposite gradients); then f has no minimum, a ridge of 1e-10 (relative to the unit diagonal) is
added to get finite weights, and the warning says so.
"""
from __future__ import annotations

import warnings

import numpy as np

from multitask.balancing.base import GramianBalancer
from multitask.balancing.solvers import ULP, SolverWarning, gradient_norms


def _newton(Kh: np.ndarray, b: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, float]:
    """Damped Newton on f(b) = 1/2 b^T Kh b - sum log b from b > 0; (b, residual less its round-off)."""
    T = len(Kh)
    diag = np.diag_indices(T)
    roundoff = 8 * T * ULP

    def residual(x: np.ndarray) -> tuple[float, np.ndarray]:
        Kx = Kh @ x
        r = np.abs(x * Kx - 1.0)
        if r.max() > tol:  # only then does the round-off allowance matter
            r = r - roundoff * x * (np.abs(Kh) @ x)
        return float(r.max()), Kx

    def f(x: np.ndarray, Kx: np.ndarray) -> float:
        return 0.5 * float(x @ Kx) - float(np.sum(np.log(x)))

    res, Kb = residual(b)
    fb = None
    for _ in range(max_iter):
        if res <= tol:
            break
        grad = Kb - 1.0 / b
        H = Kh.copy()
        H[diag] += 1.0 / b ** 2
        try:
            step = np.linalg.solve(H, grad)
        except np.linalg.LinAlgError:
            break
        decrement = float(grad @ step)
        t = 1.0
        while np.any(b - t * step <= 0):
            t *= 0.5
        if decrement < 1e-6 and t == 1.0:  # the quadratic phase: full steps, judged by the residual
            new = b - step
            res_new, K_new = residual(new)
            if res_new < res:
                b, res, Kb, fb = new, res_new, K_new, None
                continue
        if fb is None:
            fb = f(b, Kb)
        while True:  # Armijo backtracking
            new = b - t * step
            K_new = Kh @ new
            f_new = f(new, K_new)
            if f_new <= fb - 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        res_new, K_new = residual(new)
        if not (f_new < fb or res_new < res):
            break
        b, fb, res, Kb = new, f_new, res_new, K_new
        if b.max() > 1e8:  # diverging: f has no minimum
            break
    return b, res


def nash_weights(K: np.ndarray, init: np.ndarray | None = None, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """The a > 0 with K a = 1/a (residual max_i |a_i (K a)_i - 1| <= tol), by damped Newton on the
    unit-diagonal Gramian; every row of K must be non-zero."""
    K = np.asarray(K, dtype=np.float64)
    T = len(K)
    n = gradient_norms(K)
    Kh = K / np.outer(n, n)
    start = init * n if init is not None and len(init) == T and np.all(init > 0) and np.all(np.isfinite(init)) \
        else np.ones(T)
    b, res = _newton(Kh, start, max_iter, tol)
    # the residual is known to 8 T ulps of the size of its terms, max_i b_i (|Khat| b)_i; where that is not small
    # the terms cancel to 1 from ever larger values: Newton is running off towards a minimum that does not exist
    determined = 8 * T * ULP * float(np.max(b * (np.abs(Kh) @ b))) <= 1e-3
    if res <= tol and determined:
        return b / n
    if not determined or b.max() > 1e7 or not np.all(np.isfinite(b)):
        # no minimum (a positive combination of the gradients is 0): the smallest ridge that makes one
        ridge = 1e-10
        b, res = _newton(Kh + ridge * np.eye(T), np.ones(T), max_iter, tol)
        true_res = float(np.max(np.abs(b * (Kh @ b) - 1.0)))
        warnings.warn(f"nash_weights (Nash-MTL): K a = 1/a has no solution (a positive combination of the task "
                      f"gradients is 0, to round-off); solved with a ridge of {ridge:g} on the unit-diagonal "
                      f"Gramian, residual max|a_i (K a)_i - 1| = {true_res:.3g} against a tolerance of {tol:.3g} "
                      f"(T = {T})", SolverWarning, stacklevel=2)
        return b / n
    warnings.warn(f"nash_weights (Nash-MTL): Newton stopped with residual max|a_i (K a)_i - 1| = {res:.3g} against "
                  f"a tolerance of {tol:.3g} (T = {T}); returning the best point found", SolverWarning, stacklevel=2)
    return b / n


class NashMTL(GramianBalancer):
    """Bargaining weights: K a = 1/a."""

    name = "nash_mtl"

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        T = len(gramian)
        diag = np.diag(gramian)
        alive = diag > 1e-20 * max(float(diag.max()), 1e-300)  # a task with no gradient gets weight 0
        w = np.zeros(T)
        if not alive.any():
            return w
        K = gramian[np.ix_(alive, alive)]
        previous = self.cached_weights.cpu().numpy()[index][alive]  # the engine keeps the last weights (a warm start)
        w[alive] = nash_weights(K, previous if np.all(previous > 0) and self.steps > 1 else None)
        return w
