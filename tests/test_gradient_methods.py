"""Every gradient-based method against its defining property, on hand-made and random Jacobians,
checked with independent solvers (scipy) where the method solves an optimisation problem."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from multitask import Task
from multitask.balancing import (DBMTL, IMTLG, MGDA, AlignedMTL, CAGrad, GradDrop, GradNorm, GradVac, NashMTL,
                                 PCGrad, UPGrad)
from multitask.balancing.cagrad import cagrad_objective
from multitask.balancing.solvers import min_norm_simplex, nonneg_qp, nonneg_qp_many, project_simplex

rng = np.random.default_rng(0)


def tasks(n):
    return [Task(f"t{i}", "regression") for i in range(n)]


def random_jacobian(T, P=20, conflict=True):
    G = rng.normal(size=(T, P))
    if not conflict:
        G = np.abs(G)  # all gradients in the positive orthant: no conflict at all
    return G


def solve(method, G, losses=None):
    T = len(G)
    losses = np.ones(T) if losses is None else losses
    return method.solve(G @ G.T, losses, np.arange(T))


def simplex_qp(K, A_ub=None):
    """An independent solve of min w^T K w on the simplex (and A_ub w <= 0): SLSQP from several starts."""
    T = len(K)
    cons = [{"type": "eq", "fun": lambda w: w.sum() - 1}]
    if A_ub is not None:
        cons.append({"type": "ineq", "fun": lambda w: -(A_ub @ w)})
    best = None
    for start in [np.full(T, 1 / T)] + [project_simplex(rng.random(T)) for _ in range(4)]:
        r = minimize(lambda w: w @ K @ w, start, jac=lambda w: 2 * K @ w, bounds=[(0, 1)] * T,
                     constraints=cons, method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000})
        if best is None or r.fun < best.fun:
            best = r
    return best.x, best.fun


# ----------------------------------------------------------------------------------------------- MGDA
@pytest.mark.parametrize("T", range(2, 11))
def test_mgda_is_the_min_norm_point(T):
    for P in (T - 1, 3 * T):  # rank-deficient and full-rank gradient systems
        G = random_jacobian(T, max(P, 1))
        K = G @ G.T
        w = solve(MGDA(tasks(T)), G)
        _, qp = simplex_qp(K)
        assert w.min() >= -1e-12 and abs(w.sum() - 1) < 1e-9
        assert w @ K @ w <= qp + 1e-7 * max(np.trace(K), 1)


@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_mgda_direction_conflicts_with_no_task(T):
    G = random_jacobian(T, 50, conflict=False) + 0.3 * rng.normal(size=(T, 50))
    w = solve(MGDA(tasks(T)), G)
    d = w @ G
    assert np.linalg.norm(d) > 1e-6  # a common descent direction exists here
    assert (G @ d).min() >= -1e-8 * np.linalg.norm(d) ** 2


def test_mgda_two_tasks_closed_form():
    g1, g2 = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    w = solve(MGDA(tasks(2)), np.stack([g1, g2]))
    # min ||a g1 + (1-a) g2||^2 = a^2 + 4 (1-a)^2  ->  a = 4/5
    assert w == pytest.approx([0.8, 0.2])


@pytest.mark.parametrize("normalize", ["none", "l2", "loss", "loss+"])
def test_mgda_normalisations(normalize):
    G = random_jacobian(4, 12)
    losses = rng.uniform(0.5, 2.0, size=4)
    w = solve(MGDA(tasks(4), normalize=normalize), G, losses)
    norms = np.linalg.norm(G, axis=1)
    n = {"none": np.ones(4), "l2": norms, "loss": losses, "loss+": losses * norms}[normalize]
    Gn = G / n[:, None]
    u, qp = simplex_qp(Gn @ Gn.T)
    # the weights act on the raw gradients: w = u / n for the min-norm u of the normalised ones
    assert (w * n) @ (Gn @ Gn.T) @ (w * n) <= qp + 1e-8


def test_mgda_importance_constraints_hold_and_are_optimal():
    T = 4
    names = [t.name for t in tasks(T)]
    G = random_jacobian(T, 15)
    K = G @ G.T
    constraints = [["t0", 2.0, "t1"], ["t2", 1.0, "t3"]]
    w = solve(MGDA(tasks(T), constraints=constraints), G)
    assert w[0] >= 2 * w[1] - 1e-9 and w[2] >= w[3] - 1e-9
    A = np.zeros((2, T))
    A[0, names.index("t0")], A[0, names.index("t1")] = -1, 2
    A[1, names.index("t2")], A[1, names.index("t3")] = -1, 1
    _, qp = simplex_qp(K, A)
    assert w @ K @ w <= qp + 1e-7
    with pytest.raises(ValueError, match="unknown task 'zz'"):
        MGDA(tasks(T), constraints=[["t0", 1.0, "zz"]])


# ----------------------------------------------------------------------------------------------- PCGrad
def test_pcgrad_by_hand_two_tasks():
    g1, g2 = np.array([1.0, 0.0]), np.array([-1.0, 1.0])
    # g1.g2 = -1 < 0: g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1); d = (0.5, 1.5)
    w = solve(PCGrad(tasks(2)), np.stack([g1, g2]))
    assert w @ np.stack([g1, g2]) == pytest.approx([0.5, 1.5])
    # no conflict: plain sum
    w = solve(PCGrad(tasks(2)), np.stack([g1, np.array([1.0, 1.0])]))
    assert w == pytest.approx([1.0, 1.0])


def test_pcgrad_projections_match_explicit_vectors():
    torch.manual_seed(3)
    G = random_jacobian(5, 8)
    w = solve(PCGrad(tasks(5)), G)
    torch.manual_seed(3)  # replay the same random orders on explicit vectors
    expected = np.zeros(8)
    for i in range(5):
        gi = G[i].copy()
        for j in [j for j in torch.randperm(5).tolist() if j != i]:
            dot = gi @ G[j]
            if dot < 0:
                gi -= dot / (G[j] @ G[j]) * G[j]
        expected += gi
    assert w @ G == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------- CAGrad
@pytest.mark.parametrize("T", [2, 3, 6, 10])
def test_cagrad_objective_matches_an_independent_solve(T):
    G = random_jacobian(T, 30)
    K = G @ G.T
    c = 0.4
    m = CAGrad(tasks(T), c=c, rescale=False)
    weights = solve(m, G)
    w = m.last_w.numpy()
    cons = [{"type": "eq", "fun": lambda v: v.sum() - 1}]
    ref = min((minimize(lambda v: cagrad_objective(v, K, c), s, bounds=[(0, 1)] * T, constraints=cons,
                        method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000})
               for s in [np.full(T, 1 / T), project_simplex(rng.random(T))]), key=lambda r: r.fun)
    assert cagrad_objective(w, K, c) <= ref.fun + 1e-7 * abs(ref.fun) + 1e-9
    # d = g0 + sqrt(phi)/||g_w|| g_w
    g0 = G.mean(0)
    gw = w @ G
    d = g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw
    assert weights @ G == pytest.approx(d, rel=1e-6, abs=1e-9)


# ----------------------------------------------------------------------------------------------- Nash-MTL
@pytest.mark.parametrize("T", [2, 3, 5, 10])
def test_nash_mtl_bargaining_condition(T):
    G = random_jacobian(T, 40)
    K = G @ G.T
    a = solve(NashMTL(tasks(T)), G)
    assert (a > 0).all()
    assert K @ a == pytest.approx(1 / a, rel=1e-6)


def test_nash_mtl_is_scale_consistent_and_survives_zero_gradients():
    G = random_jacobian(3, 10)
    a = solve(NashMTL(tasks(3)), G)
    b = solve(NashMTL(tasks(3)), 10 * G)
    assert b == pytest.approx(a / 10, rel=1e-6)
    G[1] = 0
    w = solve(NashMTL(tasks(3)), G)
    assert w[1] == 0 and np.isfinite(w).all()


# ----------------------------------------------------------------------------------------------- UPGrad
@pytest.mark.parametrize("T", [2, 3, 5, 10])
def test_upgrad_conflicts_with_no_task_and_ignores_task_order(T):
    G = random_jacobian(T, 3 * T)
    w = solve(UPGrad(tasks(T)), G)
    d = w @ G
    assert (G @ d).min() >= -1e-9 * np.linalg.norm(d) * np.linalg.norm(G, axis=1).max()
    perm = rng.permutation(T)
    w2 = solve(UPGrad(tasks(T)), G[perm])
    assert w2 @ G[perm] == pytest.approx(d, rel=1e-7, abs=1e-10)


def test_upgrad_projection_is_the_dual_cone_projection():
    G = random_jacobian(4, 6)
    K = G @ G.T
    for i in range(4):
        # independent: min ||x - g_i||^2 s.t. G x >= 0, by SLSQP in parameter space
        r = minimize(lambda x: ((x - G[i]) ** 2).sum(), G[i], jac=lambda x: 2 * (x - G[i]),
                     constraints=[{"type": "ineq", "fun": lambda x: G @ x, "jac": lambda x: G}],
                     method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
        v = nonneg_qp(K, K[:, i].copy())
        v[i] += 1
        assert v @ G == pytest.approx(r.x, abs=1e-6)


@pytest.mark.parametrize("rank", [3, 8])
def test_batched_nonneg_qp_matches_one_by_one_with_any_guess(rank):
    # right, wrong, empty and full guessed supports; a rank-deficient Gramian makes some faces singular
    rng = np.random.default_rng(rank)
    G = rng.normal(size=(8, rank)) @ rng.normal(size=(rank, 30))
    K = G @ G.T
    Q = -K.T.copy()  # UPGrad's problems: project each gradient
    for trial in range(5):
        guesses = rng.random((8, 8)) < [0.0, 0.3, 0.6, 1.0, 0.5][trial]
        X = nonneg_qp_many(K, Q, guesses)
        for i in range(8):
            ref = nonneg_qp(K, Q[i])
            value = lambda x: 0.5 * x @ K @ x + Q[i] @ x
            assert np.all(X[i] >= 0)
            assert value(X[i]) == pytest.approx(value(ref), rel=1e-7, abs=1e-7 * np.trace(K))


def test_upgrad_without_conflict_is_the_mean():
    G = random_jacobian(4, 10, conflict=False)
    assert solve(UPGrad(tasks(4)), G) == pytest.approx(np.full(4, 0.25))


# ----------------------------------------------------------------------------------------------- IMTL-G
@pytest.mark.parametrize("T", [2, 3, 7])
def test_imtl_g_gives_equal_projections(T):
    G = random_jacobian(T, 25)
    a = solve(IMTLG(tasks(T)), G)
    d = a @ G
    proj = G @ d / np.linalg.norm(G, axis=1)
    assert proj == pytest.approx(np.full(T, proj[0]), rel=1e-8)
    assert a.sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- Aligned-MTL
def test_aligned_mtl_equalises_singular_values():
    G = random_jacobian(4, 12) * np.array([[10.0], [1.0], [0.1], [1.0]])
    K = G @ G.T
    lam, V = np.linalg.eigh(K)
    sigma = np.sqrt(lam)
    B = sigma.min() * (V / sigma) @ V.T
    aligned = B @ G
    assert np.linalg.svd(aligned, compute_uv=False) == pytest.approx(np.full(4, sigma.min()), rel=1e-8)
    w = solve(AlignedMTL(tasks(4)), G)
    assert w @ G == pytest.approx(aligned.sum(0), rel=1e-8)


# ----------------------------------------------------------------------------------------------- GradVac
def test_gradvac_with_zero_targets_is_pcgrad_on_conflicts():
    # with phi_ij = 0 the correction for cos < 0 is -(g_i'.g_j)/||g_j||^2 g_j, exactly PCGrad's projection
    G = random_jacobian(2, 6)
    G[1] = -G[0] + 0.1 * rng.normal(size=6)
    torch.manual_seed(0)
    w_vac = solve(GradVac(tasks(2), beta=0.5), G)
    torch.manual_seed(0)
    w_pc = solve(PCGrad(tasks(2)), G)
    assert w_vac @ G == pytest.approx(w_pc @ G)


def test_gradvac_matches_explicit_vectors_over_steps():
    # the paper's rule on explicit gradient vectors, with the targets' moving average carried over 3 steps
    beta, T = 0.3, 5
    m = GradVac(tasks(T), beta=beta)
    phi = np.zeros((T, T))
    for step in range(3):
        G = random_jacobian(T, 12)
        torch.manual_seed(step)
        w = solve(m, G)
        torch.manual_seed(step)  # replay the same random orders
        expected = np.zeros(12)
        for i in range(T):
            gi = G[i].copy()
            for j in [j for j in torch.randperm(T).tolist() if j != i]:
                cos = gi @ G[j] / (np.linalg.norm(gi) * np.linalg.norm(G[j]))
                if cos < phi[i, j]:
                    t = phi[i, j]
                    gi = gi + (np.linalg.norm(gi) * (t * np.sqrt(1 - cos ** 2) - cos * np.sqrt(1 - t ** 2))
                               / (np.linalg.norm(G[j]) * np.sqrt(1 - t ** 2))) * G[j]
                phi[i, j] = (1 - beta) * phi[i, j] + beta * cos
            expected += gi
        assert w @ G == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert m.targets.numpy() == pytest.approx(phi, rel=1e-9, abs=1e-12)


def test_gradvac_raises_similarity_to_its_target():
    m = GradVac(tasks(2), beta=0.5)
    m.targets[0, 1] = m.targets[1, 0] = 0.5
    G = np.array([[1.0, 0.0], [0.0, 1.0]])  # cos = 0 < 0.5
    c = solve(m, G)
    # g_1' = g_1 + coef g_2 must have cos(g_1', g_2) = 0.5 exactly; check via the first task alone
    m2 = GradVac(tasks(2), beta=0.5)
    m2.targets[0, 1] = 0.5
    m2.targets[1, 0] = 5.0  # never reached: the second task is left untouched
    w = solve(m2, G)
    g1_new = G[0] + (w[1] - 1.0) * G[1]
    assert (g1_new @ G[1]) / np.linalg.norm(g1_new) == pytest.approx(0.5)
    assert m.targets[0, 1].item() == pytest.approx(0.5 * 0.5 + 0.5 * 0.0)  # EMA of the observed cosine
    assert np.isfinite(c).all()


# ----------------------------------------------------------------------------------------------- GradNorm
def test_gradnorm_weight_gradient_by_hand():
    m = GradNorm(tasks(2), alpha=1.0)
    G = np.array([[3.0, 0.0], [0.0, 1.0]])  # norms 3 and 1
    w = solve(m, G, losses=np.array([1.0, 1.0]))  # first step: L(0) = L, r = 1
    assert w == pytest.approx([1.0, 1.0])
    # G_i = (3, 1), mean 2, targets 2: sign(G - 2) * norm = (+3, -1)
    assert m.w.grad.tolist() == pytest.approx([3.0, -1.0])
    with torch.no_grad():
        m.w.copy_(torch.tensor([0.5, 2.5]))
    m.w.grad = None
    w = solve(m, G, losses=np.array([0.5, 1.0]))
    assert w.sum() == pytest.approx(2.0)  # renormalised to sum T
    # r = (0.5, 1) / 0.75; G = (w0 * 3, w1 * 1) with w = (0.5, 2.5) * 2 / 3
    w_exp = np.array([0.5, 2.5]) * 2 / 3.0
    Gn = w_exp * np.array([3.0, 1.0])
    target = Gn.mean() * np.array([0.5, 1.0]) / 0.75
    assert m.w.grad.numpy() == pytest.approx(np.sign(Gn - target) * np.array([3.0, 1.0]))


# ----------------------------------------------------------------------------------------------- Jacobian methods
def test_graddrop_keeps_one_sign_per_coordinate():
    torch.manual_seed(0)
    J = torch.randn(4, 1000)
    d = GradDrop(tasks(4)).aggregate(J, torch.ones(4), np.arange(4))
    pos = torch.where(J > 0, J, torch.zeros_like(J)).sum(0)
    neg = torch.where(J < 0, J, torch.zeros_like(J)).sum(0)
    assert all(torch.isclose(d[k], pos[k]) or torch.isclose(d[k], neg[k]) for k in range(1000))
    agree = torch.rand(3, 50).abs()
    assert torch.allclose(GradDrop(tasks(3)).aggregate(agree, torch.ones(3), np.arange(3)), agree.sum(0))


def test_graddrop_equals_the_per_task_masks_of_the_paper():
    # the literal definition: per task and coordinate keep g_i where (g_i > 0 and P > U) or (g_i < 0 and P < U)
    J = torch.randn(5, 3000, generator=torch.Generator().manual_seed(1))
    J[:, :100] = 0.0  # coordinates with no gradient at all
    for leak in (0.0, 0.3):
        torch.manual_seed(7)
        d = GradDrop(tasks(5), leak=leak).aggregate(J, torch.ones(5), np.arange(5))
        torch.manual_seed(7)
        purity = 0.5 * (1 + J.sum(0) / J.abs().sum(0).clamp_min(1e-30))
        u = torch.rand(purity.shape)
        keep = ((J > 0) & (purity > u)) | ((J < 0) & (purity < u))
        keep = leak + (1 - leak) * keep.float()
        assert torch.allclose(d, (J * keep).sum(0), atol=1e-5)


def test_db_mtl_first_step_by_hand():
    J = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    L = torch.tensor([1.0, 0.5])
    d = DBMTL(tasks(2)).aggregate(J, L, np.arange(2))
    g = J / L[:, None]  # log-loss gradients: norms 5 and 2
    assert torch.allclose(d, g[0] + 5 / 2 * g[1])


def test_db_mtl_moving_averages_over_steps_with_missing_tasks():
    beta, gen = 0.8, torch.Generator().manual_seed(3)
    m = DBMTL(tasks(3), beta=beta)
    ema, seen = torch.zeros(3, 6), [False] * 3
    for index in ([0, 1, 2], [0, 2], [1, 2], [0, 1, 2]):
        J, L = torch.randn(len(index), 6, generator=gen), torch.rand(len(index), generator=gen) + 0.5
        d = m.aggregate(J, L, np.array(index))
        for row, t in enumerate(index):  # the definition, task by task
            g = J[row] / L[row]
            ema[t] = beta * ema[t] + (1 - beta) * g if seen[t] else g
            seen[t] = True
        norms = ema[index].norm(dim=1)
        assert torch.allclose(d, ((norms.max() / norms)[:, None] * ema[index]).sum(0), atol=1e-5)


def test_mgda_constraints_hold_on_the_returned_weights_with_normalisation():
    G = np.array([[1.0, 0.0], [0.0, 10.0]])
    T3 = np.vstack([G, [[3.0, 3.0]]])
    w = MGDA(tasks(3), normalize="l2", constraints=[["t0", 1.0, "t1"]]).solve(T3 @ T3.T, np.ones(3), np.arange(3))
    assert w[0] >= w[1] - 1e-9


def test_gramian_of_dependent_tasks_is_exact_enough():
    # g3 = g1 + g2: a rank-2 system; float32 round-off alone must not flip Aligned-MTL's weights
    from multitask.autograd import _gram

    g = torch.randn(2, 5000)
    M = torch.cat([g, g.sum(0, keepdim=True)])
    K = _gram(M).numpy()
    Kd = (M.double() @ M.double().T).numpy()
    wa = AlignedMTL(tasks(3)).solve(K, np.ones(3), np.arange(3))
    wd = AlignedMTL(tasks(3)).solve(Kd, np.ones(3), np.arange(3))
    assert wa == pytest.approx(wd, rel=1e-6)
