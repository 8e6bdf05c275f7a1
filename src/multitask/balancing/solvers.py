"""Small exact solvers on T x T Gramians (NumPy, float64): the convex problems behind gradient balancing.

All work on the Gramian K = G G^T of the task gradients, never on the gradients themselves, so their cost
depends on the number of tasks only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

EPS = 1e-12


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1.0), 0.0)


def _min_norm_two(K: np.ndarray) -> np.ndarray:
    """Closed form for two vectors: gamma * g1 + (1 - gamma) * g2 of least norm."""
    a, b, c = K[0, 0], K[0, 1], K[1, 1]
    denom = a - 2 * b + c
    if denom <= EPS * max(a, c, EPS):
        gamma = 0.5 if abs(a - c) <= EPS * max(a, c, EPS) else (1.0 if a < c else 0.0)
    else:
        gamma = float(np.clip((c - b) / denom, 0.0, 1.0))
    return np.array([gamma, 1.0 - gamma])


def _polish_on_face(K: np.ndarray, w: np.ndarray, tol: float) -> np.ndarray:
    """Exact minimiser on the face that Frank-Wolfe found (the KKT system on its support), kept only if it
    is feasible and optimal for the whole simplex; otherwise the Frank-Wolfe point is returned."""
    support = np.nonzero(w > 1e-12)[0]
    n = len(support)
    A = np.zeros((n + 1, n + 1))
    A[:n, :n] = 2 * K[np.ix_(support, support)]
    A[:n, n] = A[n, :n] = 1.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    try:  # the candidate is verified below, so a fast solve is safe; lstsq when the face is degenerate
        sol = np.linalg.solve(A, rhs)[:n]
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(A, rhs, rcond=None)[0][:n]
    if np.any(sol < -1e-12):
        return w
    cand = np.zeros_like(w)
    cand[support] = np.maximum(sol, 0.0)
    cand /= cand.sum()
    Kc = K @ cand
    value = float(cand @ Kc)
    # optimal on the simplex iff no vertex improves: (K w)_i >= w^T K w for every i
    if Kc.min() >= value - tol * max(value, float(np.max(np.diag(K))), EPS) and value <= float(w @ K @ w) + EPS:
        return cand
    return w


def _best_pair(K: np.ndarray) -> np.ndarray:
    """The paper's starting point: the min-norm point of the best pair of tasks (all pairs at once)."""
    T = K.shape[0]
    i, j = np.triu_indices(T, 1)
    a, b, c = K[i, i], K[i, j], K[j, j]
    denom = a - 2 * b + c
    safe = denom > EPS * np.maximum(np.maximum(a, c), EPS)
    gamma = np.where(safe, np.clip((c - b) / np.where(safe, denom, 1.0), 0.0, 1.0), np.where(a < c, 1.0, 0.5))
    values = gamma ** 2 * a + 2 * gamma * (1 - gamma) * b + (1 - gamma) ** 2 * c
    k = int(np.argmin(values))
    w = np.zeros(T)
    w[i[k]], w[j[k]] = gamma[k], 1.0 - gamma[k]
    return w


def min_norm_simplex(K: np.ndarray, init: np.ndarray | None = None, max_iter: int = 1000,
                     tol: float = 1e-10) -> np.ndarray:
    """argmin_{w in simplex} w^T K w by Frank-Wolfe with exact line search (Sener & Koltun 2018, Alg. 2),
    with away steps (Lacoste-Julien & Jaggi 2015) so that vertices can leave the support and convergence is
    linear instead of sublinear. Closed form for two tasks. Starts from `init` (a warm start) or from the best pair of tasks; stops on a
    small duality gap, then solves the face it found exactly (so the result is the min-norm point, not an
    approximation of it, whenever the face is right).
    """
    T = K.shape[0]
    if T == 1:
        return np.ones(1)
    if T == 2:
        return _min_norm_two(K)
    if init is not None and init.shape == (T,) and np.all(init >= 0) and init.sum() > 0:
        w = init / init.sum()
        polished = _polish_on_face(K, w, tol)  # consecutive steps mostly share the optimal face: try it first
        if polished is not w:
            return polished
    else:
        w = _best_pair(K)
    scale = max(float(np.max(np.diag(K))), EPS)
    Kw = K @ w
    for it in range(max_iter):
        wKw = float(w @ Kw)
        t = int(np.argmin(Kw))
        support = np.nonzero(w > 0)[0]
        a = int(support[np.argmax(Kw[support])])
        gap_toward, gap_away = wKw - float(Kw[t]), float(Kw[a]) - wKw
        if gap_toward <= tol * scale:  # Frank-Wolfe duality gap: optimal
            break
        if it % 5 == 4:  # try to finish exactly on the current face
            polished = _polish_on_face(K, w, tol)
            if polished is not w:
                return polished
        if gap_toward >= gap_away:  # toward step: move to vertex t (the paper's step)
            slope, curv, gamma_max = float(Kw[t]) - wKw, float(K[t, t]) - 2 * float(Kw[t]) + wKw, 1.0
        else:  # away step: move weight off the worst vertex in use, possibly dropping it
            slope, curv = wKw - float(Kw[a]), wKw - 2 * float(Kw[a]) + float(K[a, a])
            gamma_max = w[a] / (1.0 - w[a]) if w[a] < 1 else np.inf
        gamma = gamma_max if curv <= EPS * scale else float(np.clip(-slope / curv, 0.0, gamma_max))
        if gamma <= 0:
            break
        if gap_toward >= gap_away:
            w = (1 - gamma) * w
            w[t] += gamma
            Kw = (1 - gamma) * Kw + gamma * K[:, t]
        else:
            w = (1 + gamma) * w
            w[a] -= gamma
            if gamma == gamma_max:
                w[a] = 0.0
            Kw = (1 + gamma) * Kw - gamma * K[:, a]
    return _polish_on_face(K, w, tol)


def min_norm_polytope(K: np.ndarray, A_ub: np.ndarray, init: np.ndarray | None = None,
                      max_iter: int = 200, tol: float = 1e-10) -> np.ndarray:
    """argmin w^T K w over {w >= 0, sum w = 1, A_ub w <= 0} (importance relations such as w_i >= c w_j).

    Frank-Wolfe with a linear-programming step, in its fully corrective form (simplicial decomposition):
    the vertices found so far span a sub-polytope on which the min-norm problem is again a simplex problem
    in vertex coordinates, solved by `min_norm_simplex`; it stops when the LP finds no better vertex.
    """
    from scipy.optimize import linprog

    T = K.shape[0]
    A_eq, b_eq, b_ub = np.ones((1, T)), np.ones(1), np.zeros(A_ub.shape[0])

    def lmo(g: np.ndarray) -> np.ndarray:
        res = linprog(g, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        if res.status != 0:
            raise ValueError(f"the importance constraints leave no feasible weights ({res.message})")
        return res.x

    feasible = (init is not None and init.shape == (T,) and np.all(init >= -1e-12)
                and abs(init.sum() - 1) < 1e-9 and np.all(A_ub @ init <= 1e-9))
    vertices = [lmo(np.zeros(T))] + ([init] if feasible else [])
    w = vertices[-1]
    scale = max(float(np.max(np.diag(K))), EPS)
    for _ in range(max_iter):
        V = np.array(vertices)
        u = min_norm_simplex(V @ K @ V.T)
        w = u @ V
        vertices = [v for v, ui in zip(vertices, u) if ui > 1e-12] or [w]
        grad = 2 * K @ w
        v = lmo(grad)
        if float(grad @ (w - v)) <= tol * scale:
            break
        vertices.append(v)
    return w


def nonneg_qp(K: np.ndarray, q: np.ndarray, tol: float = 1e-12, max_iter: int = 1000,
              guess: np.ndarray | None = None) -> np.ndarray:
    """argmin_{x >= 0} 1/2 x^T K x + q^T x for PSD K: Lawson-Hanson active set on the Gramian form.

    Exact up to round-off; usually a few iterations, zero when x = 0 already satisfies the KKT conditions.
    `guess` (a boolean support, e.g. the previous step's) is tried first and kept if it is optimal.
    """
    T = K.shape[0]
    x = np.zeros(T)
    passive = np.zeros(T, dtype=bool)
    scale = max(float(np.max(np.abs(np.diag(K)))), EPS)
    if guess is not None and guess.any():
        idx = np.nonzero(guess)[0]
        try:  # the KKT check below verifies the guess, so a fast solve is safe here
            s = np.linalg.solve(K[np.ix_(idx, idx)], -q[idx])
        except np.linalg.LinAlgError:
            s = np.linalg.lstsq(K[np.ix_(idx, idx)], -q[idx], rcond=None)[0]
        if np.all(s > 0) and np.all(np.isfinite(s)):
            x[idx] = s
            passive = guess.copy()
    grad = K @ x + q
    for _ in range(max_iter):
        cand = np.where(~passive, -grad, -np.inf)
        j = int(np.argmax(cand))
        if cand[j] <= tol * scale:
            break
        passive[j] = True
        while True:
            idx = np.nonzero(passive)[0]
            s = np.zeros(T)
            s[idx] = np.linalg.lstsq(K[np.ix_(idx, idx)], -q[idx], rcond=None)[0]
            if np.all(s[idx] > 0):
                x = s
                break
            neg = idx[s[idx] <= 0]
            alpha = np.min(x[neg] / (x[neg] - s[neg]))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
        grad = K @ x + q
    return x


def nonneg_qp_many(K: np.ndarray, Q: np.ndarray, guesses: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Row i: argmin_{x >= 0} 1/2 x^T K x + Q[i]^T x, for several linear terms at once (UPGrad's T projections).

    The guessed supports (e.g. last step's) are solved together in one batched call and checked against the
    KKT conditions; only the problems whose guess fails go through `nonneg_qp` one by one.
    """
    m, T = Q.shape
    passive = guesses.astype(bool)
    both = passive[:, :, None] & passive[:, None, :]
    M = np.where(both, K[None], np.eye(T)[None])  # K on the support, identity elsewhere: x = 0 off it
    rhs = np.where(passive, -Q, 0.0)
    X = np.zeros((m, T))
    todo = np.ones(m, dtype=bool)
    try:
        with np.errstate(all="ignore"):
            X = np.linalg.solve(M, rhs[:, :, None])[:, :, 0]
        scale = max(float(np.max(np.abs(np.diag(K)))), EPS)
        grad = X @ K + Q
        feasible = np.all(np.where(passive, X > 0, True), axis=1) & np.all(np.isfinite(X), axis=1)
        optimal = np.all(np.where(passive, True, -grad <= tol * scale), axis=1)
        todo = ~(feasible & optimal)
    except np.linalg.LinAlgError:  # a singular face somewhere: solve every problem on its own
        pass
    for i in np.nonzero(todo)[0]:
        X[i] = nonneg_qp(K, Q[i], tol=tol, guess=passive[i])
    return X


def minimize_on_simplex(f_and_grad, w0: np.ndarray, max_iter: int = 500, tol: float = 1e-12) -> np.ndarray:
    """Accelerated projected gradient (FISTA with backtracking and restarts) for a convex f on the simplex."""
    w = project_simplex(w0)
    y, t_k, L = w.copy(), 1.0, 1.0
    fw, _ = f_and_grad(w)
    for _ in range(max_iter):
        fy, gy = f_and_grad(y)
        while True:
            w_new = project_simplex(y - gy / L)
            diff = w_new - y
            f_new, _ = f_and_grad(w_new)
            if f_new <= fy + gy @ diff + 0.5 * L * diff @ diff + 1e-15:
                break
            L *= 2.0
        if f_new > fw:  # restart momentum when the objective goes up
            y, t_k = w.copy(), 1.0
            L *= 2.0
            continue
        t_next = (1 + np.sqrt(1 + 4 * t_k * t_k)) / 2
        y = w_new + ((t_k - 1) / t_next) * (w_new - w)
        converged = np.max(np.abs(w_new - w)) < tol or fw - f_new < tol * max(abs(fw), 1e-30)
        w, fw, t_k = w_new, f_new, t_next
        L = max(L / 1.5, 1e-12)
        if converged:
            break
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
