"""Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution between tasks.

The update d = sum_i a_i g_i with a > 0 solving G G^T a = 1/a (element-wise), i.e. every task's share
g_i . d = 1/a_i. That is the stationary point of the strictly convex f(a) = 1/2 a^T K a - sum_i log a_i, so
Newton's method on the T x T Gramian finds it to machine precision in a few steps (warm-started from the
previous solution) instead of the paper's sequence of convex programs. `every` reuses the weights between
solves, as the paper's implementation does; clip the update with the trainer's `grad_clip` (the paper's max_norm).
"""
from __future__ import annotations

import numpy as np

from multitask.balancing.base import GramianBalancer


def nash_weights(K: np.ndarray, init: np.ndarray | None = None, max_iter: int = 100, tol: float = 1e-12) -> np.ndarray:
    """The a > 0 with K a = 1/a, by damped Newton on f(a) = 1/2 a^T K a - sum log a."""
    T = len(K)
    scale = max(float(np.trace(K)) / T, 1e-300)
    Ks = K / scale + 1e-10 * np.eye(T)  # scale-free; a tiny ridge keeps a rank-deficient system solvable
    a = init * np.sqrt(scale) if init is not None and np.all(init > 0) and len(init) == T else np.ones(T)

    def f(x: np.ndarray) -> float:
        return 0.5 * float(x @ Ks @ x) - float(np.sum(np.log(x)))

    fa = f(a)
    for _ in range(max_iter):
        grad = Ks @ a - 1.0 / a
        H = Ks + np.diag(1.0 / a ** 2)
        step = np.linalg.solve(H, grad)
        decrement = float(grad @ step)
        if decrement / 2 <= tol:
            break
        t = 1.0
        while np.any(a - t * step <= 0):
            t *= 0.5
        while True:  # Armijo backtracking
            new = a - t * step
            f_new = f(new)
            if f_new <= fa - 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        a, fa = new, f_new
    return a / np.sqrt(scale)


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
