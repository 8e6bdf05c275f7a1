import math

import pytest
import torch

from multitask import Equal, Static, Task, Uncertainty
from multitask.balancing import BALANCERS

TASKS = [Task("r", "regression"), Task("b", "binary"), Task("c", "multiclass", n_outputs=3, importance=2.0)]


def _losses():
    return {"r": torch.tensor(0.8), "b": torch.tensor(0.3), "c": torch.tensor(1.7)}


def test_equal_is_the_plain_sum():
    assert Equal(TASKS).combine(_losses()).item() == pytest.approx(0.8 + 0.3 + 1.7)


def test_static_uses_importance_and_overrides():
    assert Static(TASKS).combine(_losses()).item() == pytest.approx(0.8 + 0.3 + 2 * 1.7)
    s = Static(TASKS, weights={"b": 0.5})
    assert s.combine(_losses()).item() == pytest.approx(0.8 + 0.5 * 0.3 + 2 * 1.7)
    assert s.weights() == {"r": 1.0, "b": 0.5, "c": 2.0}
    with pytest.raises(KeyError, match="unknown task"):
        Static(TASKS, weights={"zz": 1.0})
    with pytest.raises(ValueError, match="must be >= 0"):
        Static(TASKS, weights={"r": -1.0})


def test_uncertainty_matches_kendall_formula():
    u = Uncertainty(TASKS)
    s = torch.tensor([0.4, -0.3, 1.1])
    with torch.no_grad():
        u.log_vars.copy_(s)
    L = _losses()
    # regression: 1/(2 sigma^2) L + log sigma ; classification: 1/sigma^2 L + log sigma ; s = log sigma^2
    sigma2 = torch.exp(s)
    expected = (L["r"] / (2 * sigma2[0]) + torch.log(sigma2[0].sqrt())
                + L["b"] / sigma2[1] + torch.log(sigma2[1].sqrt())
                + L["c"] / sigma2[2] + torch.log(sigma2[2].sqrt()))
    assert u.combine(L).item() == pytest.approx(expected.item(), rel=1e-6)
    w = u.weights()
    assert w["r"] == pytest.approx(0.5 / math.exp(0.4)) and w["b"] == pytest.approx(1 / math.exp(-0.3))


def test_uncertainty_optimum_is_sigma_squared_equal_loss():
    # d/ds [c e^{-s} L + s/2] = 0  ->  s* = log(2 c L): the learned variance tracks the task's loss
    u = Uncertainty([Task("r", "regression")])
    opt = torch.optim.SGD(u.parameters(), lr=0.1)
    for _ in range(2000):
        opt.zero_grad()
        u.combine({"r": torch.tensor(3.0)}).backward()
        opt.step()
    assert u.log_vars.item() == pytest.approx(math.log(2 * 0.5 * 3.0), abs=1e-3)


def test_uncertainty_ignores_tasks_without_labels_in_the_batch():
    u = Uncertainty(TASKS)
    present = {"r": True, "b": False, "c": True}
    u.combine(_losses(), present).backward()
    assert u.log_vars.grad[1].item() == 0.0 and u.log_vars.grad[0].item() != 0.0


def test_uncertainty_state_is_checkpointable():
    u = Uncertainty(TASKS)
    with torch.no_grad():
        u.log_vars.add_(1.5)
    v = Uncertainty(TASKS)
    v.load_state_dict(u.state_dict())
    assert torch.equal(v.log_vars, u.log_vars)


def test_losses_must_match_tasks():
    with pytest.raises(KeyError, match="missing tasks"):
        Equal(TASKS).combine({"r": torch.tensor(1.0)})


def test_registry_names():
    assert set(BALANCERS) == {"equal", "static", "uncertainty", "dwa", "rlw", "gls", "imtl_l", "famo", "gradnorm",
                              "mgda", "pcgrad", "gradvac", "graddrop", "cagrad", "imtl_g", "aligned_mtl",
                              "nash_mtl", "upgrad", "db_mtl", "epo"}


def test_dwa_weights_by_hand():
    from multitask.balancing import DWA

    d = DWA(TASKS[:2], temperature=2.0)
    for epoch_losses in ([1.0, 2.0], [0.5, 1.5]):  # two epochs of one step each
        d.combine({"r": torch.tensor(epoch_losses[0]), "b": torch.tensor(epoch_losses[1])})
        assert d.weights() == {"r": 1.0, "b": 1.0}  # the first two epochs are unweighted
        d.epoch_end(0)
    r = torch.tensor([0.5 / 1.0, 1.5 / 2.0])
    expected = 2 * torch.softmax(r / 2.0, 0)
    d.combine({"r": torch.tensor(0.4), "b": torch.tensor(1.0)})
    assert list(d.weights().values()) == pytest.approx(expected.tolist(), rel=1e-6)


def test_gls_is_the_geometric_mean_and_skips_tasks_without_labels():
    from multitask.balancing import GeometricMean

    g = GeometricMean(TASKS)
    assert g.combine(_losses()).item() == pytest.approx((0.8 * 0.3 * 1.7) ** (1 / 3))
    assert g.combine(_losses(), {"r": True, "b": False, "c": True}).item() == pytest.approx((0.8 * 1.7) ** 0.5)


def test_famo_weights():
    from multitask.balancing import FAMO

    f = FAMO(TASKS)
    total = f.combine(_losses())
    w = f.weights()
    inv = {t: 1 / v.item() for t, v in _losses().items()}  # z uniform at the start: w_i ∝ 1/l_i
    assert [w[t] for t in inv] == pytest.approx([v / sum(inv.values()) for v in inv.values()], rel=1e-5)
    assert total.item() == pytest.approx(sum(w[t] * _losses()[t].item() for t in inv), rel=1e-5)
    # after a step in which task 'r' improved most, its logit falls relative to the others
    f.combine({"r": torch.tensor(0.4), "b": torch.tensor(0.3), "c": torch.tensor(1.7)})
    assert f.xi[0] < f.xi[1] and f.xi[0] < f.xi[2]


def test_rlw_weights_are_a_random_softmax():
    from multitask.balancing import RLW

    r = RLW(TASKS)
    torch.manual_seed(0)
    r.combine(_losses())
    torch.manual_seed(0)
    expected = torch.softmax(torch.randn(3), 0)
    assert list(r.weights().values()) == pytest.approx(expected.tolist())


def test_imtl_l_formula():
    from multitask.balancing import IMTLL

    m = IMTLL(TASKS)
    with torch.no_grad():
        m.s.copy_(torch.tensor([0.1, -0.2, 0.3]))
    L = _losses()
    s = [0.1, -0.2, 0.3]
    expected = sum(math.exp(si) * L[t].item() - si for si, t in zip(s, ["r", "b", "c"]))
    assert m.combine(L).item() == pytest.approx(expected, rel=1e-6)


def test_log_loss_methods_refuse_negative_losses_by_name():
    from multitask.balancing import GeometricMean

    with pytest.raises(ValueError, match=r"task\(s\) \['b'\] have negative"):
        GeometricMean(TASKS).combine({"r": torch.tensor(1.0), "b": torch.tensor(-0.5), "c": torch.tensor(1.0)})


def test_famo_takes_a_lower_bound_per_task():
    from multitask.balancing import FAMO

    f = FAMO(TASKS, min_loss={"r": -1.0, "b": 0.0, "c": 0.5})
    f.combine(_losses())
    w = f.weights()
    l = {"r": 0.8 + 1.0, "b": 0.3, "c": 1.7 - 0.5}
    inv = {t: 1 / v for t, v in l.items()}
    assert [w[t] for t in inv] == pytest.approx([v / sum(inv.values()) for v in inv.values()], rel=1e-4)
    with pytest.raises(KeyError, match="unknown task"):
        FAMO(TASKS, min_loss={"zz": 1.0})
