"""Small exact solvers on T x T Gramians (NumPy, float64): the convex problems behind gradient balancing.

All work on the Gramian K = G G^T of the task gradients, never on the gradients themselves, so their cost
depends on the number of tasks only.

Accuracy. Each solver checks an optimality certificate before it returns, with tolerances that do not depend
on the scale of the gradients (multiplying one task's gradient, or all of them, by any factor changes nothing):

- min-norm point on the simplex (MGDA, `min_norm_simplex`): the Frank-Wolfe (duality) gap,
  max_i (w^T K w - (K w)_i) <= tol * w^T K w, so that f(w) - f* <= 2 tol f(w); on a polytope
  (`min_norm_polytope`) the same gap over its vertices;
- non-negative QP (UPGrad, `nonneg_qp`, `nonneg_qp_many`): the KKT conditions, each entry of the gradient
  K x + q compared with the size of the terms that make it up;
- a convex function on the simplex (CAGrad, `minimize_on_simplex`): the Frank-Wolfe gap, against a tolerance
  the caller states (CAGrad: relative to the size of its objective's two terms);
- Nash-MTL (in nash_mtl.py): the residual max_i |a_i (K a)_i - 1|.

Every test also allows the round-off of its own terms (a few ulps of sum_j |K_ij| w_j), which is what makes a
zero gradient or 0 inside the convex hull certifiable at all. The linear algebra runs on the unit-diagonal
Gramian D^-1 K D^-1 (D: the gradient norms), where a task with a tiny or huge gradient is as well conditioned
as any other. A solver that stops without its certificate (iteration limit, or no more progress in floating
point) returns its best point and says so with a `SolverWarning` that names the solver, the residual it
reached and the tolerance.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np

ULP = float(np.finfo(np.float64).eps)
TINY = 1e-300


class SolverWarning(UserWarning):
    """A Gramian solver returned without meeting its optimality certificate."""


def _warn(message: str) -> None:
    warnings.warn(message, SolverWarning, stacklevel=3)


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1.0), 0.0)


def gradient_norms(K: np.ndarray) -> np.ndarray:
    """||g_i|| = sqrt(K_ii) (0 for a zero or round-off-negative diagonal)."""
    return np.sqrt(np.maximum(np.diag(K), 0.0))


# ------------------------------------------------------------------------------------------ min-norm point
def _simplex_gap(K: np.ndarray, n: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Per vertex i, how much moving to vertex i would lower w^T K w beyond round-off: w^T K w - (K w)_i less
    the round-off of those two numbers (16 T ulps of ||g_i|| sum_j ||g_j|| w_j and of (sum_j ||g_j|| w_j)^2)."""
    Kw = K @ w
    value = float(w @ Kw)
    nw = float(n @ np.abs(w))
    return value - Kw - 16 * len(w) * ULP * nw * (n + nw), value


def _relative(excess: float, value: float) -> float:
    return max(excess, 0.0) / max(value, TINY) if excess > 0 else 0.0


def _affine_min(K: np.ndarray, n: np.ndarray, S: list[int]) -> np.ndarray:
    """The weights v on face S (summing to 1) of the min-norm point of the affine hull of {g_i, i in S}.

    Solved on the unit-diagonal Gramian of the face by an eigendecomposition: v ~ D^-1 Khat^-1 D^-1 1, with
    eigenvalues at round-off level lifted to it (a linearly dependent face: its null directions carry the
    solution, whose norm is then 0 to round-off)."""
    ns = n[S]
    if np.any(ns == 0):  # a zero gradient in the face: the point 0 itself
        v = (ns == 0).astype(float)
        return v / v.sum()
    lam, Q = np.linalg.eigh(K[np.ix_(S, S)] / np.outer(ns, ns))
    y = (Q.T @ (1.0 / ns)) / np.maximum(lam, len(S) * ULP * max(float(lam[-1]), TINY))
    v = (Q @ y) / ns
    return v / v.sum()


def _corral(K: np.ndarray, n: np.ndarray, w: np.ndarray, S: list[int]) -> tuple[np.ndarray, list[int]]:
    """Wolfe's minor cycle: from w (supported on S) towards the affine minimiser of S, dropping the vertices
    whose weight reaches 0, until that minimiser has positive weights; never increases w^T K w."""
    for _ in range(len(S) + 1):
        v = _affine_min(K, n, S)
        if v.min() > 0:
            w = np.zeros(len(w))
            w[S] = v
            return w, S
        ws = w[S]
        neg = np.nonzero(v <= 0)[0]
        ratios = ws[neg] / (ws[neg] - v[neg])
        k = int(np.argmin(ratios))
        new = ws + ratios[k] * (v - ws)
        new[neg[k]] = 0.0
        keep = new > 0
        S = [i for i, kp in zip(S, keep) if kp]
        w = np.zeros(len(w))
        w[S] = new[keep] / new[keep].sum()
    return w, S


def _min_norm_two(K: np.ndarray) -> np.ndarray:
    """Closed form for two vectors: gamma * g1 + (1 - gamma) * g2 of least norm."""
    a, b, c = K[0, 0], K[0, 1], K[1, 1]
    denom = a - 2 * b + c
    if denom <= 4 * ULP * (a + c):  # equal vectors to round-off: any point; take the shorter one
        gamma = 0.5 if a == c else (1.0 if a < c else 0.0)
    else:
        gamma = float(np.clip((c - b) / denom, 0.0, 1.0))
    return np.array([gamma, 1.0 - gamma])


def min_norm_simplex(K: np.ndarray, init: np.ndarray | None = None, max_iter: int = 1000,
                     tol: float = 1e-10) -> np.ndarray:
    """argmin_{w in simplex} w^T K w: the min-norm point of the convex hull of the gradients (MGDA).

    Wolfe's min-norm-point algorithm (an active-set method, exact and finite): the current face's affine
    minimiser is solved exactly, the vertex that most violates optimality joins the face, and vertices leave
    it when their weight reaches 0. Closed form for two tasks. Starts from `init` (a warm start; consecutive
    training steps mostly share the optimal face, which is then solved in one step) or from the shortest
    gradient. Returns when the relative Frank-Wolfe gap max_i (w^T K w - (K w)_i) / w^T K w is <= `tol` (plus
    round-off); otherwise warns (`SolverWarning`) and returns the best point.
    """
    K = np.asarray(K, dtype=np.float64)
    T = K.shape[0]
    if T == 1:
        return np.ones(1)
    n = gradient_norms(K)
    if T == 2:
        w = _min_norm_two(K)
        excess, value = _simplex_gap(K, n, w)
        if excess.max() <= tol * max(value, 0.0):
            return w
        init = w
    if init is not None and init.shape == (T,) and np.all(init >= 0) and init.sum() > 0:
        w = np.asarray(init, dtype=np.float64) / init.sum()
    else:
        w = np.zeros(T)
        w[int(np.argmin(n))] = 1.0
    w, S = _corral(K, n, w, list(np.nonzero(w > 0)[0]))
    excess, value = _simplex_gap(K, n, w)
    why = f"no convergence in {max_iter} iterations"
    for _ in range(max_iter):
        if excess.max() <= tol * max(value, 0.0):
            return w
        j = int(np.argmax(excess))
        if j in S:  # a vertex of the face itself looks improving: round-off, no progress is possible
            why = "no further progress in floating point"
            break
        w_new, S_new = _corral(K, n, w, S + [j])
        excess_new, value_new = _simplex_gap(K, n, w_new)
        if not value_new < value:  # round-off hid the progress Wolfe's step makes: an exact line search to j
            Kw = K @ w
            curv = value - 2 * Kw[j] + K[j, j]
            gamma = 1.0 if curv <= 0 else float(np.clip((value - Kw[j]) / curv, 0.0, 1.0))
            w_new = (1 - gamma) * w
            w_new[j] += gamma
            S_new = list(np.nonzero(w_new > 0)[0])
            excess_new, value_new = _simplex_gap(K, n, w_new)
            if not value_new < value:
                why = "no further progress in floating point"
                break
        w, S, excess, value = w_new, S_new, excess_new, value_new
    if excess.max() > tol * max(value, 0.0):
        _warn(f"min_norm_simplex (MGDA): {why}; relative Frank-Wolfe gap {_relative(excess.max(), value):.3g} "
              f"against a tolerance of {tol:.3g} (T = {T}); returning the best point found")
    return w


def min_norm_polytope(K: np.ndarray, A_ub: np.ndarray, init: np.ndarray | None = None,
                      max_iter: int = 200, tol: float = 1e-10) -> np.ndarray:
    """argmin w^T K w over {w >= 0, sum w = 1, A_ub w <= 0} (importance relations such as w_i >= c w_j).

    Frank-Wolfe with a linear-programming step, in its fully corrective form (simplicial decomposition):
    the vertices found so far span a sub-polytope on which the min-norm problem is again a simplex problem
    in vertex coordinates, solved by `min_norm_simplex`; it stops when the LP finds no vertex that lowers
    the objective by more than the relative gap `tol` (the certificate: max over the polytope's vertices v of
    w^T K w - v^T K w <= tol w^T K w, plus round-off), and warns (`SolverWarning`) if it cannot get there.
    The LP runs in the coordinates u_i = ||g_i|| w_i, in which every cost is ||d|| cos(g_i, d), so that its
    tolerances mean the same for tiny and huge gradients.
    """
    from scipy.optimize import linprog

    K = np.asarray(K, dtype=np.float64)
    T = K.shape[0]
    n = gradient_norms(K)
    sc = np.where(n > 0, n, max(float(n.max()), 1.0))  # u = sc * w
    A_u, b_ub = A_ub / sc, np.zeros(A_ub.shape[0])
    A_eq, b_eq = (1.0 / sc)[None, :], np.ones(1)
    options = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}

    def lmo(g: np.ndarray) -> np.ndarray:
        cost = g / sc
        top = float(np.abs(cost).max())
        res = linprog(cost / top if top > 0 else cost, A_ub=A_u, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq,
                      bounds=(0, None), method="highs", options=options)
        if res.status != 0:
            raise ValueError(f"the importance constraints leave no feasible weights ({res.message})")
        v = np.maximum(res.x / sc, 0.0)
        return v / v.sum()

    feasible = (init is not None and init.shape == (T,) and np.all(init >= -1e-12)
                and abs(init.sum() - 1) < 1e-9 and np.all(A_ub @ init <= 1e-9))
    vertices = [lmo(np.zeros(T))] + ([np.maximum(init, 0.0) / np.maximum(init, 0.0).sum()] if feasible else [])
    u = None
    why = f"no convergence in {max_iter} iterations"
    gap = value = np.inf
    for _ in range(max_iter):
        V = np.array(vertices)
        start = None if u is None else np.append(u, np.zeros(len(V) - len(u)))[:len(V)]
        with warnings.catch_warnings():  # the certificate below is the one that counts
            warnings.simplefilter("ignore", SolverWarning)
            u = min_norm_simplex(V @ K @ V.T, start, tol=tol / 4)
        w = u @ V
        keep = u > 0
        vertices, u = [v for v, k in zip(vertices, keep) if k], u[keep]
        Kw = K @ w
        value = float(w @ Kw)
        v = lmo(Kw)
        nw, nv = float(n @ w), float(n @ v)
        gap = value - float(Kw @ v) - 16 * T * ULP * nw * (nv + nw)
        if gap <= tol * max(value, 0.0):
            return w
        if any(np.abs(v - x).max() <= 1e-12 for x in vertices):
            why = "the LP step returns a vertex already in use (LP tolerance)"
            break
        vertices.append(v)
        u = np.append(u, 0.0)
    _warn(f"min_norm_polytope (MGDA with constraints): {why}; relative Frank-Wolfe gap {_relative(gap, value):.3g} "
          f"against a tolerance of {tol:.3g} (T = {T}); returning the best point found")
    return w


# ------------------------------------------------------------------------------------------ non-negative QP
def _nnqp_residual(Kh: np.ndarray, qh: np.ndarray, x: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """KKT violation of x >= 0 for min 1/2 x^T Kh x + qh^T x, per entry and relative to the size of the terms
    of the gradient entry ((|Kh| x)_j + |qh_j|): -grad_j off the support, |grad_j| on it."""
    grad = Kh @ x + qh
    mag = np.abs(Kh) @ x + np.abs(qh)
    viol = np.where(x > 0, np.abs(grad), -grad) - 8 * len(x) * ULP * mag
    return np.where(alive, viol / np.maximum(mag, TINY), 0.0)


def _face_solve(Kh: np.ndarray, qh: np.ndarray, idx: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(Kh[np.ix_(idx, idx)], -qh[idx])
    except np.linalg.LinAlgError:  # a singular face (duplicate gradients): a least-squares solution
        return np.linalg.lstsq(Kh[np.ix_(idx, idx)], -qh[idx], rcond=None)[0]


def _scaled(K: np.ndarray, q: np.ndarray):
    n = gradient_norms(K)
    sc = np.where(n > 0, n, 1.0)
    return K / np.outer(sc, sc), q / sc, sc, n > 0


def nonneg_qp(K: np.ndarray, q: np.ndarray, tol: float = 1e-12, max_iter: int = 1000,
              guess: np.ndarray | None = None) -> np.ndarray:
    """argmin_{x >= 0} 1/2 x^T K x + q^T x for PSD K: Lawson-Hanson active set on the Gramian form.

    Solved in the variables ||g_j|| x_j on the unit-diagonal Gramian (badly scaled tasks are then as well
    posed as any); exact up to round-off, usually a few iterations, none when x = 0 already satisfies the
    KKT conditions. `guess` (a boolean support, e.g. the previous step's) is tried first and kept if optimal.
    The certificate: every KKT condition holds to `tol` relative to the size of the terms of its gradient
    entry, (|K| x)_j + |q_j|; else a `SolverWarning`. A task with a zero gradient gets x_j = 0.
    """
    K, q = np.asarray(K, dtype=np.float64), np.asarray(q, dtype=np.float64)
    Kh, qh, sc, alive = _scaled(K, q)
    x = _nnqp_scaled(Kh, qh, alive, tol, max_iter, guess)
    return x / sc


def _nnqp_scaled(Kh: np.ndarray, qh: np.ndarray, alive: np.ndarray, tol: float, max_iter: int,
                 guess: np.ndarray | None) -> np.ndarray:
    T = len(qh)
    x = np.zeros(T)
    passive = np.zeros(T, dtype=bool)
    if guess is not None and (guess & alive).any():
        idx = np.nonzero(guess & alive)[0]
        s = _face_solve(Kh, qh, idx)
        if np.all(s > 0) and np.all(np.isfinite(s)):
            x[idx] = s
            passive[idx] = True
    why = f"no convergence in {max_iter} iterations"
    for _ in range(max_iter):
        grad = Kh @ x + qh
        mag = np.abs(Kh) @ x + np.abs(qh)
        cand = np.where(~passive & alive, -grad - (tol + 8 * T * ULP) * mag, -np.inf)
        j = int(np.argmax(cand))
        if cand[j] <= 0:
            break
        passive[j] = True
        while True:
            idx = np.nonzero(passive)[0]
            s = np.zeros(T)
            s[idx] = _face_solve(Kh, qh, idx)
            if np.all(s[idx] > 0):
                x = s
                break
            neg = idx[s[idx] <= 0]
            ratios = x[neg] / (x[neg] - s[neg])
            k = int(np.argmin(ratios))
            x = x + ratios[k] * (s - x)
            x[neg[k]] = 0.0
            passive &= x > 0
            x[~passive] = 0.0
        if not passive[j]:  # the entering variable left at once: round-off, no progress is possible
            why = "no further progress in floating point"
            break
    res = _nnqp_residual(Kh, qh, x, alive)
    if res.max() > tol:
        _warn(f"nonneg_qp (UPGrad): {why}; relative KKT residual {res.max():.3g} against a tolerance of "
              f"{tol:.3g} (T = {T}); returning the best point found")
    return x


def nonneg_qp_many(K: np.ndarray, Q: np.ndarray, guesses: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Row i: argmin_{x >= 0} 1/2 x^T K x + Q[i]^T x, for several linear terms at once (UPGrad's T projections).

    The guessed supports (e.g. last step's) are solved together in one batched call (on the unit-diagonal
    Gramian, as in `nonneg_qp`) and checked against the same KKT certificate; only the problems whose guess
    fails go through `nonneg_qp` one by one.
    """
    K, Q = np.asarray(K, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    m, T = Q.shape
    n = gradient_norms(K)
    alive = n > 0
    sc = np.where(alive, n, 1.0)
    Kh, Qh = K / np.outer(sc, sc), Q / sc
    passive = guesses.astype(bool) & alive
    both = passive[:, :, None] & passive[:, None, :]
    M = np.where(both, Kh[None], np.eye(T)[None])  # Kh on the support, identity elsewhere: x = 0 off it
    rhs = np.where(passive, -Qh, 0.0)
    X = np.zeros((m, T))
    todo = np.ones(m, dtype=bool)
    try:
        with np.errstate(all="ignore"):
            X = np.linalg.solve(M, rhs[:, :, None])[:, :, 0]
        grad = X @ Kh + Qh
        mag = X @ np.abs(Kh) + np.abs(Qh)
        viol = np.where(passive, np.abs(grad), -grad) - (tol + 8 * T * ULP) * mag
        feasible = np.all(np.where(passive, X > 0, True), axis=1) & np.all(np.isfinite(X), axis=1)
        optimal = np.all(np.where(alive, viol <= 0, True), axis=1)
        todo = ~(feasible & optimal)
    except np.linalg.LinAlgError:  # a singular face somewhere: solve every problem on its own
        pass
    for i in np.nonzero(todo)[0]:
        X[i] = _nnqp_scaled(Kh, Qh[i], alive, tol, 1000, passive[i])
    return X / sc


# ------------------------------------------------------------------------------------------ convex f on the simplex
def minimize_on_simplex(f_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]], w0: np.ndarray,
                        max_iter: int = 500, tol: float = 1e-10,
                        tolerance: Callable[[np.ndarray, float, np.ndarray], float] | None = None,
                        polish: Callable[[np.ndarray], np.ndarray | None] | None = None,
                        name: str = "minimize_on_simplex") -> np.ndarray:
    """Accelerated projected gradient (FISTA with backtracking and restarts) for a convex f on the simplex.

    Certificate: the Frank-Wolfe gap g.w - min_i g_i (g the gradient at w), an upper bound on f(w) - min f;
    it returns as soon as the gap is <= `tolerance(w, f(w), g)` (default: tol * max(|f(w)|, sum_i |g_i| w_i)).
    `polish(support)`, if given, proposes the exact minimiser on a face (tried at the start, which makes a warm
    start on the right face cost one call, and whenever the support has been stable for a few iterations); a
    proposal is kept only when it passes the certificate. Warns (`SolverWarning`, naming `name`) when it
    stops without the certificate.
    """
    def gap_tol(w: np.ndarray, f: float, g: np.ndarray) -> tuple[float, float]:
        limit = tolerance(w, f, g) if tolerance is not None else tol * max(abs(f), float(np.abs(g) @ w), TINY)
        return float(g @ w - g.min()), limit

    tried: set[tuple[int, ...]] = set()

    def polished(w: np.ndarray, f: float) -> np.ndarray | None:
        support = tuple(np.nonzero(w > 0)[0])
        if polish is None or support in tried:
            return None
        tried.add(support)
        cand = polish(np.array(support))
        if cand is None:
            return None
        fc, gc = f_and_grad(cand)
        gap, limit = gap_tol(cand, fc, gc)
        return cand if gap <= limit and fc <= f + abs(f) * 1e-12 + limit else None

    w = project_simplex(np.asarray(w0, dtype=np.float64))
    fw, gw = f_and_grad(w)
    gap, limit = gap_tol(w, fw, gw)
    if gap <= limit:
        return w
    cand = polished(w, fw)
    if cand is not None:
        return cand
    y, t_k, L = w.copy(), 1.0, 1.0
    stable, support = 0, None
    why = f"no convergence in {max_iter} iterations"
    for _ in range(max_iter):
        fy, gy = f_and_grad(y)
        while True:
            w_new = project_simplex(y - gy / L)
            diff = w_new - y
            f_new, g_new = f_and_grad(w_new)
            if f_new <= fy + gy @ diff + 0.5 * L * diff @ diff + 8 * ULP * abs(fy) or L > 1e30:
                break
            L *= 2.0
        if not f_new <= fw:  # restart momentum when the objective goes up
            if np.array_equal(y, w):  # even a plain gradient step goes up: round-off, no more progress
                why = "no further progress in floating point"
                break
            y, t_k = w.copy(), 1.0
            continue
        t_next = (1 + np.sqrt(1 + 4 * t_k * t_k)) / 2
        y = w_new + ((t_k - 1) / t_next) * (w_new - w)
        w, fw, gw, t_k = w_new, f_new, g_new, t_next
        L = max(L / 1.5, 1e-12)
        gap, limit = gap_tol(w, fw, gw)
        if gap <= limit:
            return w
        new_support = tuple(np.nonzero(w > 0)[0])
        stable = stable + 1 if new_support == support else 0
        support = new_support
        if stable >= 2:
            cand = polished(w, fw)
            if cand is not None:
                return cand
    _warn(f"{name}: {why}; Frank-Wolfe gap {gap:.3g} against a tolerance of {limit:.3g} at this point "
          f"(relative tolerance {tol:.3g}, T = {len(w)}); returning the best point found")
    return w


def constraint_matrix(task_names: Sequence[str], constraints: Sequence[Sequence]) -> np.ndarray:
    """Rows of A_ub (A w <= 0) from triples (i, c, j) meaning weight_i >= c * weight_j."""
    rows = []
    for con in constraints:
        if len(con) != 3:
            raise ValueError(f"an importance constraint is [task_i, c, task_j] (w_i >= c * w_j); got {con!r}")
        i, c, j = con
        for name in (i, j):
            if name not in task_names:
                raise ValueError(f"importance constraint {con!r} names unknown task {name!r}; tasks: {list(task_names)}")
        if not float(c) >= 0:
            raise ValueError(f"importance constraint {con!r}: c must be >= 0")
        row = np.zeros(len(task_names))
        row[task_names.index(i)] -= 1.0
        row[task_names.index(j)] += float(c)
        rows.append(row)
    return np.array(rows).reshape(len(rows), len(task_names))
