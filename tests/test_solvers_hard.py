"""The Gramian solvers on hard inputs, against independent references.

Input classes (seeded): random, correlated rows (a common component plus small noise), ill-conditioned
(cond(K) up to 1e12), badly scaled (row norms 1e-3 ... 1e3), both at once, zero rows, duplicate rows and
rank-deficient systems (0 inside the convex hull); T = 2..10, P = 20 and 300.

References, none of which shares code with the solvers:
- min-norm point of the simplex: every support is enumerated, its KKT system solved in float64 to find the
  candidates, and the best candidates are re-solved and verified (feasibility, optimality) with mpmath at
  40 digits;
- min-norm point of a polytope (MGDA with importance constraints): its vertices are enumerated, and the
  problem becomes the simplex problem on them;
- non-negative least squares (UPGrad's projections): scipy.optimize.nnls on the gradients themselves;
- CAGrad: scipy's SLSQP from several starts, and the Frank-Wolfe gap computed here;
- Nash-MTL: the residual of K a = 1/a, computed with mpmath.
"""
from __future__ import annotations

import itertools
import warnings

import mpmath
import numpy as np
import pytest
import torch
from scipy.optimize import minimize, nnls

from multitask import Task, autograd
from multitask.balancing import MGDA, AlignedMTL, CAGrad, NashMTL, UPGrad
from multitask.balancing.nash_mtl import nash_weights
from multitask.balancing.solvers import (SolverWarning, min_norm_polytope, min_norm_simplex, minimize_on_simplex,
                                         nonneg_qp, nonneg_qp_many)

KINDS = ("random", "correlated", "illcond", "scaled", "scaled_correlated", "zero_rows", "duplicates", "rank_deficient")


# ------------------------------------------------------------------------------------------ input classes
def hard_jacobian(kind: str, T: int, P: int, seed: int) -> np.ndarray:
    """A T x P float64 gradient matrix of the given class."""
    rng = np.random.default_rng([seed, T, P, KINDS.index(kind)])
    if kind == "random":
        return rng.normal(size=(T, P))
    if kind == "correlated":  # cond(K) ~ T / sigma^2: 1e5 ... 1e7
        sigma = 10 ** rng.uniform(-3, -2)
        return rng.normal(size=P) + sigma * rng.normal(size=(T, P))
    if kind == "illcond":  # singular values from 1 down to 1e-4 ... 1e-6
        U = np.linalg.qr(rng.normal(size=(T, T)))[0]
        V = np.linalg.qr(rng.normal(size=(P, T)))[0]
        s = np.logspace(0, -rng.uniform(4, 6), T)
        return (U * s) @ V.T
    if kind in ("scaled", "scaled_correlated"):  # row norms 1e-3 ... 1e3, the extremes always present
        G = hard_jacobian("random" if kind == "scaled" else "correlated", T, P, seed)
        norms = 10 ** rng.uniform(-3, 3, T)
        norms[:2] = 1e-3, 1e3
        rng.shuffle(norms)
        return G / np.linalg.norm(G, axis=1, keepdims=True) * norms[:, None]
    if kind == "zero_rows":
        G = rng.normal(size=(T, P))
        G[rng.choice(T, size=max(1, T // 4), replace=False)] = 0.0
        return G
    if kind == "duplicates":
        G = rng.normal(size=(T, P))
        for i in rng.choice(T, size=max(1, T // 3), replace=False):
            G[i] = G[rng.integers(T)]
        return G
    if kind == "rank_deficient":  # fewer dimensions than tasks: 0 is often inside the hull
        return rng.normal(size=(T, max(1, T // 2))) @ rng.normal(size=(max(1, T // 2), P))
    raise ValueError(kind)


def cases(kinds=KINDS, Ts=(2, 3, 5, 10), seeds=(0, 1), P=(20, 300)):
    return [(k, T, p, s) for k in kinds for T in Ts for p in P for s in seeds
            if not (k == "zero_rows" and T < 3)]


# ------------------------------------------------------------------------------------------ references
def _mp(x):
    return mpmath.mpf(float(x))


def _mp_kkt_on_support(K: np.ndarray, S: tuple[int, ...]):
    """Exact (40 digits) minimiser of w^T K w on the affine hull of face S; None where singular."""
    n = len(S)
    A = mpmath.matrix(n + 1, n + 1)
    for a, i in enumerate(S):
        for b, j in enumerate(S):
            A[a, b] = _mp(K[i, j])
        A[a, n] = A[n, a] = 1
    rhs = mpmath.matrix(n + 1, 1)
    rhs[n] = 1
    try:
        sol = mpmath.lu_solve(A, rhs)
    except ZeroDivisionError:
        return None
    return [sol[a] for a in range(n)]


def reference_min_norm(K: np.ndarray) -> tuple[np.ndarray, float]:
    """argmin_{w in simplex} w^T K w by enumeration of supports; (w, value), verified at 40 digits.

    There is always an optimal w whose support vectors are affinely independent, and then the KKT system on
    the support is non-singular; enumeration finds it. float64 solves pick the candidates, mpmath decides.
    """
    T = len(K)
    n = np.sqrt(np.maximum(np.diag(K), 0.0))
    candidates = []
    for size in range(1, T + 1):
        for S in itertools.combinations(range(T), size):
            A = np.zeros((size + 1, size + 1))
            A[:size, :size] = K[np.ix_(S, S)]
            A[:size, size] = A[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            try:
                sol = np.linalg.solve(A, rhs)[:size]
            except np.linalg.LinAlgError:
                continue
            if not np.all(np.isfinite(sol)) or sol.min() < -1e-4:
                continue
            w = np.zeros(T)
            w[list(S)] = sol
            Kw = K @ w
            value = float(w @ Kw)
            slack = Kw - value
            if np.all(slack >= -1e-4 * (n * (n @ np.abs(w)) + abs(value))):
                candidates.append((value, S))
    candidates.sort()
    best = None
    with mpmath.workdps(40):
        Kmp = mpmath.matrix(K.tolist())
        for value, S in candidates:  # a verified KKT point of this convex problem is its minimum: stop there
            ws = _mp_kkt_on_support(K, S)
            if ws is None or min(ws) < 0:
                continue
            w = mpmath.matrix(T, 1)
            for a, i in enumerate(S):
                w[i] = ws[a]
            Kw = Kmp * w
            lam = mpmath.fsum(w[i] * Kw[i] for i in range(T))
            # K holds float64 round-off of G G^T, so it can be indefinite by ~1e-16 |g_i| |g_j|: optimality
            # is verified to 1e-14 of the terms of (K w)_i
            nw = mpmath.fsum(_mp(n[j]) * w[j] for j in range(T))
            if all(Kw[i] - lam >= -mpmath.mpf("1e-14") * _mp(n[i]) * nw for i in range(T)):
                best = (np.array([float(w[i]) for i in range(T)]), lam)
                break
    assert best is not None, "the enumeration found no verified optimum"
    return best[0], float(best[1])


def polytope_vertices(A_ub: np.ndarray) -> np.ndarray:
    """Vertices of {w >= 0, sum w = 1, A_ub w <= 0} by enumeration of active constraints."""
    T = A_ub.shape[1]
    rows = np.vstack([-np.eye(T), A_ub])  # rows @ w <= 0
    out = []
    for act in itertools.combinations(range(len(rows)), T - 1):
        M = np.vstack([rows[list(act)], np.ones((1, T))])
        if abs(np.linalg.det(M)) < 1e-12:
            continue
        v = np.linalg.solve(M, np.eye(T)[-1])
        if np.all(rows @ v <= 1e-12) and not any(np.allclose(v, u, atol=1e-12) for u in out):
            out.append(np.maximum(v, 0.0) / np.maximum(v, 0.0).sum())
    return np.array(out)


def mp_value(K: np.ndarray, w: np.ndarray) -> float:
    """w^T K w with exact products (40 digits), so that tiny values of badly scaled problems are right."""
    with mpmath.workdps(40):
        return float(mpmath.fsum(_mp(K[i, j]) * _mp(w[i]) * _mp(w[j]) for i in range(len(w)) for j in range(len(w))))


def mp_Kw(K: np.ndarray, w: np.ndarray) -> np.ndarray:
    with mpmath.workdps(40):
        return np.array([float(mpmath.fsum(_mp(K[i, j]) * _mp(w[j]) for j in range(len(w)))) for i in range(len(w))])


def min_norm_errors(K: np.ndarray, w: np.ndarray, w_ref: np.ndarray, value_ref: float) -> dict:
    """Scale-invariant errors of a simplex point w against the reference optimum (f(w) = w^T K w, d = G^T w,
    s = sum_i w*_i ||g_i|| + 1e-8 max_i ||g_i||, the size of the terms that cancel in d, and of weights' round-off):

    excess: (f(w) - f*) / (f* + 1e-6 s^2): at most 1e-8 means relative 1e-8, or 1e-14 s^2 where f* ~ 0;
    direction: ||d - d*|| / (||d*|| + 1e-3 s) (d* is unique even where w* is not; K only gives ||d||^2, so
        ||d - d*|| is resolved to about 1e-8 s);
    kkt: max_i (f(w) - (K w)_i) / (f(w) + 1e-6 ||g_i|| s): the Frank-Wolfe gap, relative.
    """
    n = np.sqrt(np.maximum(np.diag(K), 0.0))
    size = float(n @ np.abs(w_ref)) + 1e-8 * float(n.max())
    value = mp_value(K, w)
    return {"excess": (value - value_ref) / max(value_ref + 1e-6 * size ** 2, 1e-300),
            "direction": np.sqrt(max(mp_value(K, w - w_ref), 0.0)) / max(np.sqrt(max(value_ref, 0.0)) + 1e-3 * size,
                                                                         1e-300),
            "kkt": float(np.max(np.maximum(value - mp_Kw(K, w), 0.0)
                                / np.maximum(max(value, 0.0) + 1e-6 * n * float(n @ np.abs(w)), 1e-300)))}


def nnls_reference(G: np.ndarray, i: int) -> np.ndarray:
    """UPGrad's i-th problem, min_{x >= 0} ||G^T x + g_i||^2, by scipy's NNLS on the gradients."""
    return nnls(G.T, -G[i], maxiter=50 * len(G))[0]


def cagrad_f(K: np.ndarray, c: float):
    T = len(K)
    b = K.sum(1) / T
    s = c * np.sqrt(max(float(K.sum()) / T ** 2, 0.0))

    def f(w):
        return float(w @ b) + s * np.sqrt(max(float(w @ K @ w), 0.0))

    def grad(w):
        r = np.sqrt(max(float(w @ K @ w), 1e-300))
        return b + s * (K @ w) / r

    return f, grad, b, s


def cagrad_reference(K: np.ndarray, c: float, seed: int = 0) -> float:
    """The CAGrad objective's minimum on the simplex by SLSQP from several starts (a generic solver)."""
    f, grad, _, _ = cagrad_f(K, c)
    T = len(K)
    rng = np.random.default_rng(seed)
    starts = [np.full(T, 1 / T)] + [np.eye(T)[i] * 0.9 + 0.1 / T for i in range(T)] + [rng.dirichlet(np.ones(T))]
    best = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s0 in starts:
            r = minimize(f, s0, jac=grad, bounds=[(0, 1)] * T, method="SLSQP",
                         constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1, "jac": lambda v: np.ones(T)}],
                         options={"ftol": 1e-15, "maxiter": 2000})
            w = np.maximum(r.x, 0.0)
            w /= w.sum()
            best = min(best, f(w))
    return best


def nash_residual(K: np.ndarray, a: np.ndarray) -> float:
    """max_i |a_i (K a)_i - 1|, with exact products."""
    return float(np.max(np.abs(a * mp_Kw(K, a) - 1.0)))


# ------------------------------------------------------------------------------------------ the solvers
def tasks(n):
    return [Task(f"t{i}", "regression") for i in range(n)]


def _ids(case):
    return "-".join(str(c) for c in case)


@pytest.fixture(autouse=True)
def _solver_warnings_are_errors():
    """On these inputs every solver must meet its certificate: a SolverWarning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverWarning)
        yield


@pytest.mark.parametrize("case", cases(), ids=_ids)
def test_min_norm_simplex_matches_exact_enumeration(case):
    G = hard_jacobian(*case)
    K = G @ G.T
    T = len(K)
    w_ref, value_ref = reference_min_norm(K)
    rng = np.random.default_rng(7)
    near = np.maximum(w_ref + 0.01 * rng.random(T) * (w_ref > 0), 0.0)  # the right face, not its optimum
    for init in (None, np.full(T, 1.0 / T), rng.dirichlet(np.ones(T)), near, np.eye(T)[T - 1]):
        w = min_norm_simplex(K, init)
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
        err = min_norm_errors(K, w, w_ref, value_ref)
        assert err["excess"] <= 1e-8 and err["kkt"] <= 1e-8 and err["direction"] <= 1e-4, (init, err)


@pytest.mark.parametrize("case", cases(Ts=(3, 4, 6), P=(20,), seeds=(0, 1)), ids=_ids)
def test_min_norm_polytope_matches_vertex_enumeration(case):
    G = hard_jacobian(*case)
    K = G @ G.T
    T = len(K)
    rng = np.random.default_rng([9, case[3], T])
    A = np.zeros((2, T))
    for r in range(2):  # w_i >= c w_j
        i, j = rng.choice(T, 2, replace=False)
        A[r, i], A[r, j] = -1.0, rng.choice([0.5, 1.0, 2.0])
    V = polytope_vertices(A)
    u, value_ref = reference_min_norm(V @ K @ V.T)
    for init in (None, np.full(T, 1.0 / T)):
        w = min_norm_polytope(K, A, init)
        assert w.min() >= 0 and (A @ w).max() <= 1e-12 and w.sum() == pytest.approx(1.0, abs=1e-12)
        err = min_norm_errors(K, w, u @ V, value_ref)
        assert err["excess"] <= 1e-7, err


@pytest.mark.parametrize("case", cases(), ids=_ids)
def test_nonneg_qp_matches_scipy_nnls(case):
    # UPGrad's problems on the trace-normalised Gramian: min_{x >= 0} ||G^T x + g_i||^2
    G = hard_jacobian(*case)
    T = len(G)
    Gs = G / np.sqrt(max(np.trace(G @ G.T) / T, 1e-300))
    K = Gs @ Gs.T
    n = np.linalg.norm(Gs, axis=1)
    for guess in (np.zeros((T, T), bool), np.ones((T, T), bool), np.eye(T, dtype=bool)):
        X = nonneg_qp_many(K, K.T.copy(), guess)
        for i in range(T):
            for x in (X[i], nonneg_qp(K, K[:, i].copy(), guess=guess[i])):
                assert x.min() >= 0
                p, p_ref = x @ Gs + Gs[i], nnls_reference(Gs, i) @ Gs + Gs[i]
                size = float(n @ x + n[i])  # the terms that cancel in p
                assert p @ p - p_ref @ p_ref <= 1e-8 * (p_ref @ p_ref) + 1e-14 * size ** 2
                # the projection conflicts with no task, to 1e-10 of the size of its terms
                assert (Gs @ p).min() >= -1e-10 * n.max() * size


@pytest.mark.parametrize("case", cases(kinds=("scaled", "scaled_correlated", "illcond"), Ts=(5, 10), P=(20, 300)),
                         ids=_ids)
def test_upgrad_direction_conflicts_with_no_task_on_hard_inputs(case):
    G = hard_jacobian(*case)
    d = UPGrad(tasks(len(G))).solve(G @ G.T, np.ones(len(G)), np.arange(len(G))) @ G
    n = np.linalg.norm(G, axis=1)
    cos = (G @ d) / (n * np.linalg.norm(d))
    assert cos.min() >= -1e-8


@pytest.mark.parametrize("case", cases(Ts=(2, 3, 5, 10), P=(20,), seeds=(0,)), ids=_ids)
def test_cagrad_certificate_and_a_generic_solver(case):
    G = hard_jacobian(*case)
    T = len(G)
    K = G @ G.T
    Kn = K / (np.trace(K) / T)
    f, grad, b, s = cagrad_f(Kn, 0.4)
    ref = cagrad_reference(Kn, 0.4)
    m = CAGrad(tasks(T), c=0.4, rescale=False)
    for start in ("cold", "warm", "vertex", "other vertex"):  # the last solution, then simplex vertices
        if start.endswith("vertex"):
            m.last_w.zero_()
            m.last_w[0 if start == "vertex" else T - 1] = 1.0
        weights = m.solve(K, np.ones(T), np.arange(T))
        w = m.last_w.numpy().copy()
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
        r = np.sqrt(max(w @ Kn @ w, 0.0))
        size = abs(w @ b) + s * r
        assert f(w) <= ref + 1e-9 * size + 1e-14, start
        if r > 0:  # the Frank-Wolfe gap, an upper bound on f(w) - min f (f is smooth where g_w != 0)
            g = grad(w)
            assert g @ w - g.min() <= 1e-8 * size, start
            g0 = G.mean(0)
            d = g0 + 0.4 * np.linalg.norm(g0) * (w @ G) / np.linalg.norm(w @ G)
            assert np.linalg.norm(weights @ G - d) <= 1e-7 * np.linalg.norm(d), start
        else:  # a zero gradient won: the live tasks cannot make f negative, and the direction is g0
            assert (K[w > 0] == 0).all() and ref >= -1e-9
            assert weights == pytest.approx(np.full(T, 1.0 / T))


def _ratio_jacobian(ratio, T, seed):
    rng = np.random.default_rng([seed, T, int(np.log10(ratio))])
    G = rng.normal(size=(T, 100))
    norms = np.logspace(0, np.log10(ratio), T)[rng.permutation(T)]
    return G / np.linalg.norm(G, axis=1, keepdims=True) * norms[:, None]


NASH = ([("case", c) for c in cases(kinds=[k for k in KINDS if k != "rank_deficient"], P=(20, 300), seeds=(0,))]
        + [("ratio", (r, T, s)) for r in (1e4, 1e5, 1e6) for T in (3, 10) for s in (0, 1)])


@pytest.mark.parametrize("source,spec", NASH, ids=[f"{a}-{_ids(b)}" for a, b in NASH])
def test_nash_weights_solve_the_bargaining_system(source, spec):
    G = hard_jacobian(*spec) if source == "case" else _ratio_jacobian(*spec)
    K = G @ G.T
    T = len(K)
    m = NashMTL(tasks(T))
    a = m.solve(K, np.ones(T), np.arange(T))
    alive = np.diag(K) > 0
    assert (a[~alive] == 0).all() and (a[alive] > 0).all()
    Ka, aa = K[np.ix_(alive, alive)], a[alive]
    # exact residual against 1e-9 plus what rounding a to float64 alone can cause (16 T ulps of the terms)
    terms = float(np.max(aa * (np.abs(Ka) @ aa)))
    assert nash_residual(Ka, aa) <= 1e-9 + 16 * T * 2.2e-16 * terms
    # a warm start (the engine's previous weights) meets the same certificate
    m.steps += 2
    m.cached_weights.copy_(torch.as_tensor(a * 1.1))
    aw = m.solve(K, np.ones(T), np.arange(T))[alive]
    assert nash_residual(Ka, aw) <= 1e-9 + 16 * T * 2.2e-16 * float(np.max(aw * (np.abs(Ka) @ aw)))


@pytest.mark.parametrize("T", [3, 10])
def test_nash_weights_without_a_solution_warn(T):
    G = hard_jacobian("rank_deficient", T, 20, 0)  # 0 is a positive combination of the gradients
    with pytest.warns(SolverWarning, match=r"nash_weights \(Nash-MTL\): K a = 1/a has no solution.*tolerance"):
        a = nash_weights(G @ G.T)
    assert np.all(np.isfinite(a)) and np.all(a > 0)


def test_each_solver_warns_when_stopped_short():
    G = hard_jacobian("illcond", 10, 30, 0)
    K = G @ G.T
    with pytest.warns(SolverWarning, match=r"min_norm_simplex \(MGDA\): no convergence in 1 iterations; relative "
                                           r"Frank-Wolfe gap \S+ against a tolerance of 1e-10"):
        min_norm_simplex(K, max_iter=1)
    with pytest.warns(SolverWarning, match=r"nonneg_qp \(UPGrad\): .*relative KKT residual \S+ against a tolerance"):
        nonneg_qp(K, K[:, 0].copy(), max_iter=1)
    with pytest.warns(SolverWarning, match=r"nash_weights \(Nash-MTL\): Newton stopped with residual"):
        nash_weights(K, max_iter=1)
    with pytest.warns(SolverWarning, match=r"CAGrad-test: no convergence in 2 iterations; Frank-Wolfe gap"):
        f, grad, _, _ = cagrad_f(K / np.trace(K), 0.4)
        minimize_on_simplex(lambda w: (f(w), grad(w)), np.full(10, 0.1), max_iter=2, name="CAGrad-test")
    with pytest.warns(SolverWarning, match=r"min_norm_polytope \(MGDA with constraints\): no convergence in 1 "):
        A = np.zeros((1, 10))
        A[0, 0], A[0, 1] = -1.0, 1.0
        min_norm_polytope(K, A, max_iter=1)


# ------------------------------------------------------------------------------------------ the Gramian
def _gram_inputs():
    g = torch.Generator().manual_seed(0)
    T, P = 10, 20_000
    unit = lambda J: J / J.norm(dim=1, keepdim=True)  # noqa: E731
    norms = torch.logspace(-3, 3, T)[:, None]
    U = torch.linalg.qr(torch.randn(T, T, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(P, T, generator=g, dtype=torch.float64))[0]
    return {
        "correlated": (torch.randn(P, generator=g) + 1e-2 * torch.randn(T, P, generator=g), False),
        "scaled": (unit(torch.randn(T, P, generator=g)) * norms, False),
        "correlated_scaled": (unit(torch.randn(P, generator=g) + 1e-2 * torch.randn(T, P, generator=g)) * norms, False),
        "illcond": ((U * torch.logspace(0, -4, T, dtype=torch.float64)) @ V.T, True),
        "duplicates": (torch.randn(T, P, generator=g)[[0, 1, 2, 3, 4, 5, 6, 7, 0, 1]], True),
    }


@pytest.mark.parametrize("name", ["correlated", "scaled", "correlated_scaled", "illcond", "duplicates"])
def test_gramian_is_accurate_and_float64_only_where_needed(name, monkeypatch):
    M, needs_f64 = _gram_inputs()[name]
    M = M.float().contiguous()
    exact = M.double() @ M.double().T
    calls = []
    original = autograd._exact_gram
    monkeypatch.setattr(autograd, "_exact_gram", lambda X: calls.append(1) or original(X))
    K = autograd._gram(M)
    scale = torch.outer(exact.diag().sqrt(), exact.diag().sqrt())
    # badly scaled or merely correlated gradients: blocked float32 products, entries within 1e-7 of |g_i| |g_j|
    # (a single float32 product: ~1e-6); singular or ill-conditioned correlations: float64 products
    assert bool(calls) == needs_f64
    assert float(((K - exact).abs() / scale).max()) <= (1e-15 if needs_f64 else 1e-7)
    # a method that rests on the smallest eigenvalues asks for float64 earlier
    strict = autograd._stricter(AlignedMTL(tasks(10)), K, lambda: original(M))
    assert float(((strict - exact).abs() / scale).max()) <= (1e-15 if name != "scaled" else 1e-7)
    assert autograd._stricter(MGDA(tasks(10)), K, lambda: original(M)) is K
