"""Pareto tools against their definitions and brute force: the simplex grid, non-domination, the exact
hypervolume (2-D sweep, 3-D and 4-D slicing) against cell counting and Monte Carlo, EPO's linear programmes
against a grid search and its fixed point on a problem with a known front, and the sweep end to end."""
import itertools
import json
import math

import numpy as np
import pytest
import yaml

from multitask import pareto
from multitask.balancing.epo import EPO, adjustment, epo_weights, non_uniformity
from multitask.config import ConfigError
from multitask.pareto import (as_costs, default_reference, front_summary, hypervolume, hypervolume_2d,
                              hypervolume_3d, lattice_size, nondominated, simplex_grid, simplex_lattice)
from multitask.tasks import Task


# ------------------------------------------------------------------------------------------ preferences
@pytest.mark.parametrize("T,H", [(2, 1), (2, 5), (3, 1), (3, 4), (4, 3), (5, 2)])
def test_simplex_lattice_is_every_point_of_the_grid(T, H):
    grid = simplex_lattice(T, H)
    assert len(grid) == lattice_size(T, H) == math.comb(H + T - 1, T - 1)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    steps = grid * H
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-12)  # multiples of 1/H
    assert (grid >= 0).all() and len({tuple(r) for r in np.round(steps).astype(int)}) == len(grid)
    # independent enumeration: all non-negative integer vectors summing to H
    expected = {c for c in itertools.product(range(H + 1), repeat=T) if sum(c) == H}
    assert {tuple(r) for r in np.round(steps).astype(int)} == expected


def test_simplex_grid_sizes_and_spacing():
    np.testing.assert_allclose(simplex_grid(2, 5)[:, 0], [0, 0.25, 0.5, 0.75, 1.0])
    assert len(simplex_grid(3, 10)) == 10 and len(simplex_grid(3, 14)) == 10 and len(simplex_grid(3, 15)) == 15
    assert len(simplex_grid(3, 3)) == 3  # the corners only
    inner = simplex_grid(2, 3, interior=True)
    np.testing.assert_allclose(inner[:, 0], [0.25, 0.5, 0.75])  # evenly spaced, off the faces
    inner3 = simplex_grid(3, 10, interior=True)
    assert len(inner3) == 10 and (inner3 > 0).all()
    np.testing.assert_allclose(inner3.sum(axis=1), 1.0)
    d = np.diff(np.unique(inner3[:, 0]))
    np.testing.assert_allclose(d, d[0])  # even spacing on each axis
    np.testing.assert_allclose(simplex_grid(3, 2, interior=True), [[1 / 3] * 3])
    with pytest.raises(ValueError, match="at least 3"):
        simplex_grid(3, 2)
    with pytest.raises(ValueError, match="two tasks"):
        simplex_grid(1, 5)


# ------------------------------------------------------------------------------------------ dominance
def _dominated_brute(costs):
    n = len(costs)
    return np.array([not any(all(costs[j] <= costs[i]) and any(costs[j] < costs[i]) for j in range(n) if j != i)
                     for i in range(n)])


@pytest.mark.parametrize("seed", range(5))
def test_nondominated_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 5, size=(30, 1 + seed % 3 + 1)).astype(float)  # ties and duplicates on purpose
    np.testing.assert_array_equal(nondominated(pts), _dominated_brute(pts))


def test_nondominated_hand_cases():
    pts = np.array([[1, 2], [2, 1], [2, 2], [1, 2], [3, 3]], float)
    assert nondominated(pts).tolist() == [True, True, False, True, False]  # both copies of (1,2) stay


def test_costs_and_reference():
    c = as_costs([[0.9, 0.2], [0.8, 0.1]], [True, False])
    np.testing.assert_allclose(c, [[-0.9, 0.2], [-0.8, 0.1]])
    np.testing.assert_allclose(default_reference(c), [-0.8 + 0.01, 0.2 + 0.01])
    np.testing.assert_allclose(default_reference(np.array([[2.0, 0.0]])), [2.2, 0.1])  # no spread: |worst| or 1


# ------------------------------------------------------------------------------------------ hypervolume
def _cells(points, ref):
    """Exact hypervolume of integer points with an integer reference: count the unit cells [c, c+1) that some
    point dominates (p <= c on every axis)."""
    lo = np.min(points, axis=0).astype(int) if len(points) else np.asarray(ref, int)
    ranges = [range(lo[k], ref[k]) for k in range(len(ref))]
    return sum(1 for c in itertools.product(*ranges) if any(all(p[k] <= c[k] for k in range(len(ref)))
                                                             for p in points))


def test_hypervolume_hand_cases():
    assert hypervolume_2d(np.array([[1.0, 2.0]]), [3, 3]) == 2.0
    two = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert hypervolume_2d(two, [3, 3]) == 3.0  # 2 + 2 - 1 overlap
    assert hypervolume_2d(np.vstack([two, [[2.5, 2.5]], [[1.0, 2.0]]]), [3, 3]) == 3.0  # dominated + duplicate
    assert hypervolume_2d(np.array([[4.0, 0.0], [3.0, 1.0]]), [3, 3]) == 0.0  # beyond / on the reference
    assert hypervolume_2d(np.zeros((0, 2)), [1, 1]) == 0.0
    assert hypervolume_3d(np.array([[0.0, 0.0, 0.0]]), [1, 2, 3]) == 6.0
    cube = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], float)  # three unit-cube slabs of a 2-cube
    assert hypervolume_3d(cube, [2, 2, 2]) == pytest.approx(3 * 2 - 3 * 1 + 1)  # inclusion-exclusion
    assert hypervolume(np.array([[0.5]]), [2.0]) == 1.5
    with pytest.raises(ValueError, match="NaN"):
        hypervolume(np.array([[np.nan, 1.0]]), [2, 2])


@pytest.mark.parametrize("d,seed", [(2, s) for s in range(4)] + [(3, s) for s in range(4)] + [(4, 0), (4, 1)])
def test_hypervolume_equals_cell_counting(d, seed):
    rng = np.random.default_rng(seed)
    side = 8 if d < 4 else 5
    pts = rng.integers(0, side, size=(12 if d < 4 else 7, d)).astype(float)
    pts = np.vstack([pts, pts[:2]])  # duplicates
    ref = [side] * d
    assert hypervolume(pts, ref) == pytest.approx(_cells(pts.astype(int), ref))


@pytest.mark.parametrize("d", [2, 3])
def test_hypervolume_against_monte_carlo(d):
    rng = np.random.default_rng(10 + d)
    pts = rng.random((15, d))
    pts = pts[np.argsort(pts.sum(1))][:10]  # a mix of front and dominated points
    ref = np.full(d, 1.1)
    n = 200_000
    samples = rng.random((n, d)) * ref
    hit = np.zeros(n, dtype=bool)
    for p in pts:
        hit |= np.all(samples >= p, axis=1)
    box = float(np.prod(ref))
    estimate = box * hit.mean()
    sigma = box * math.sqrt(hit.mean() * (1 - hit.mean()) / n)
    assert abs(hypervolume(pts, ref) - estimate) < 4 * sigma


def test_hypervolume_ignores_dominated_points_and_order():
    rng = np.random.default_rng(3)
    pts = rng.random((20, 3))
    ref = [1.2, 1.2, 1.2]
    front = pts[nondominated(pts)]
    assert hypervolume(pts, ref) == pytest.approx(hypervolume(front, ref))
    assert hypervolume(pts[::-1], ref) == pytest.approx(hypervolume(pts, ref))


def test_front_summary_of_runs():
    finals = [{"test": {"a": {"auc": 0.9}, "b": {"mse": 2.0}}}, {"test": {"a": {"auc": 0.8}, "b": {"mse": 1.0}}},
              {"test": {"a": {"auc": 0.7}, "b": {"mse": 3.0}}}, {"test": {"a": {"auc": None}, "b": {"mse": 1.0}}}]
    names = pareto.objective_names(finals[0])
    assert names == ["a.auc", "b.mse"]
    s = front_summary(finals, names)
    assert s["on_front"] == [True, True, False, False]  # the NaN run is never on the front
    assert s["reference_cost"] == pytest.approx([-0.7 + 0.02, 3.2])
    # in costs: (-0.9, 2), (-0.8, 1) below (-0.68, 3.2): 0.22*1.2 + 0.12*(2-1)
    assert s["hypervolume"] == pytest.approx(0.22 * 1.2 + 0.12 * 1.0)
    with pytest.raises(KeyError, match="a.mse"):
        pareto.objective_names(finals[0], ["a.mse", "b.mse"])


# ------------------------------------------------------------------------------------------ EPO
def _feasible_grid_max(C, losses, r, eps, res=400):
    """max of EPO's objective over a fine simplex grid (T = 2 or 3), among points meeting its constraints."""
    T = len(C)
    scale = np.max(np.diag(C))
    C = C / scale
    a, mu = adjustment(losses, r)
    Ca = C @ a
    grid = simplex_lattice(T, res if T == 2 else 60)
    best = -np.inf
    for b in grid:
        cb = C @ b
        if mu > eps:
            rl = r * losses
            worst = np.isclose(rl, rl.max())
            if (Ca > 0).any():
                ok = all(cb[j] >= -1e-9 if worst[j] else (Ca[j] > 0 or cb[j] >= Ca[j] - 1e-9) for j in range(T))
            else:
                ok = (cb >= -1e-9).all()
            val = b @ Ca
        else:
            ok = (cb >= -1e-9).all() and b @ Ca >= min(Ca.max(), 0) - 1e-9
            val = cb.sum()
        if ok:
            best = max(best, val)
    return best, Ca


@pytest.mark.parametrize("seed", range(8))
def test_epo_linear_programme_is_optimal_against_a_grid(seed):
    rng = np.random.default_rng(seed)
    T = 2 + seed % 2
    G = rng.normal(size=(T, 5))
    C = G @ G.T
    losses = rng.uniform(0.2, 2.0, T)
    r = rng.uniform(0.5, 2.0, T)
    beta, move = epo_weights(C, losses, r, eps=1e-3)
    assert beta.min() >= -1e-12 and beta.sum() == pytest.approx(1.0)
    grid_best, Ca = _feasible_grid_max(C, losses, r, 1e-3)
    if move == "relaxed":
        assert grid_best == -np.inf  # relaxed only when the programme has no feasible point
        return
    Cs = C / np.max(np.diag(C))
    value = beta @ Ca if move == "balance" else (Cs @ beta).sum()
    assert value >= grid_best - 1e-6  # at least as good as every feasible grid point
    assert value <= grid_best + 0.05 * (abs(grid_best) + 1)  # and the grid gets close to it


def test_epo_descends_on_the_ray_and_balances_off_it():
    C = np.array([[1.0, 0.2], [0.2, 1.0]])
    # on the ray (r1 l1 = r2 l2): the descent programme; both tasks descend
    beta, move = epo_weights(C, np.array([1.0, 2.0]), np.array([2.0, 1.0]))
    assert move == "descent" and (C @ beta >= -1e-12).all()
    # off the ray, task 0 behind (r0 l0 largest): the balance programme puts more weight on task 0
    beta, move = epo_weights(C, np.array([3.0, 1.0]), np.array([1.0, 1.0]))
    assert move == "balance" and beta[0] > beta[1]
    assert non_uniformity(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("r", [(1.0, 3.0), (4.0, 1.0)])
def test_epo_reaches_the_exact_preference_point(r):
    """Two quadratics ||x - c_i||^2 share x: the front is the segment c1..c2, and the point with r1 L1 = r2 L2
    is x = c1 + t (c2 - c1) with t = sqrt(r2) / (sqrt(r1) + sqrt(r2))."""
    r = np.array(r)
    c = np.array([[0.0, 0.0], [2.0, 1.0]])
    x = np.array([3.0, -2.0])
    for _ in range(300):
        G = 2 * (x - c)
        losses = ((x - c) ** 2).sum(1)
        beta, _ = epo_weights(G @ G.T, losses, r, eps=1e-6)
        x = x - 0.06 * beta @ G
    t = math.sqrt(r[1]) / (math.sqrt(r[0]) + math.sqrt(r[1]))
    np.testing.assert_allclose(x, c[0] + t * (c[1] - c[0]), atol=2e-3)
    losses = ((x - c) ** 2).sum(1)
    assert r[0] * losses[0] == pytest.approx(r[1] * losses[1], rel=5e-3)


def test_epo_balancer_options_and_registry():
    from multitask.balancing import BALANCERS

    tasks = [Task("a", "binary"), Task("b", "binary"), Task("c", "binary")]
    assert BALANCERS["epo"] is EPO
    e = EPO(tasks, preference={"a": 2.0})
    np.testing.assert_allclose(e.preference, [2.0, 1.0, 1.0])
    # a batch without task b's labels: the Gramian of a and c, with their preferences
    C = np.array([[1.0, 0.1], [0.1, 2.0]])
    w = e.solve(C, np.array([1.0, 1.0]), np.array([0, 2]))
    expected, _ = epo_weights(C, np.array([1.0, 1.0]), np.array([2.0, 1.0]), 1e-3)
    np.testing.assert_allclose(w, expected)
    with pytest.raises(ValueError, match="> 0"):
        EPO(tasks, preference={"a": 0.0})
    with pytest.raises(KeyError, match="unknown"):
        EPO(tasks, preference={"z": 1.0})


def test_preference_config():
    raw = {"balancer": {"name": "epo", "eps": 0.01, "preference": {"a": 1}}, "baselines": "auto"}
    lin = pareto.preference_config(raw, ["a", "b"], [0.25, 0.75], "linear", "base/final.json")
    assert lin["balancer"] == {"name": "static", "weights": {"a": 0.25, "b": 0.75}}
    assert lin["baselines"] == "base/final.json"
    epo = pareto.preference_config(raw, ["a", "b"], [0.25, 0.75], "epo", None)
    assert epo["balancer"] == {"name": "epo", "eps": 0.01, "preference": {"a": 0.25, "b": 0.75}}
    assert epo["baselines"] == "auto"


# ------------------------------------------------------------------------------------------ the sweep
CENSUS = {
    "data": {"name": "census-income", "limit": 1200},
    "model": {"name": "hard_sharing", "hidden": [8], "embedding_dim": 2},
    "trainer": {"epochs": 1, "batch_size": 256, "progress": False},
    "baselines": "auto",
}


def test_sweep_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from multitask.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CENSUS))
    out = tmp_path / "sweep"
    assert main(["sweep", str(cfg), "--preferences", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "hypervolume" in text and "sweep directory" in text
    record = json.loads((out / "sweep.json").read_text())
    assert record["preferences"] == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    assert [r["dir"] for r in record["runs"]] == ["pref-00", "pref-01", "pref-02"]
    assert (out / "baseline" / "final.json").exists()  # trained once, shared by every run
    for r, p in zip(record["runs"], record["preferences"]):
        run_cfg = yaml.safe_load((out / r["dir"] / "config.yaml").read_text())
        assert run_cfg["balancer"] == {"name": "static", "weights": dict(zip(record["tasks"], p))}
        final = json.loads((out / r["dir"] / "final.json").read_text())
        assert final["baseline"]["source"].endswith("baseline/final.json") and final["delta_m"] is not None
    front = record["front"]
    assert front["objectives"] == ["income.auc", "marital.auc"] and any(front["on_front"])
    finals = [json.loads((out / r["dir"] / "final.json").read_text()) for r in record["runs"]]
    assert front["hypervolume"] == pytest.approx(front_summary(finals, front["objectives"])["hypervolume"])
    page = (out / "report.html").read_text()
    assert "Pareto front" in page and "static (weights={income: 0.5, marital: 0.5})" in page
    assert main(["sweep", str(cfg), "--preferences", "3", "--out", str(out)]) == 2  # already holds a sweep
    assert "--overwrite" in capsys.readouterr().err
    assert not (out / "pref-00" / "report.html").exists()  # MULTITASK_NO_REPORT (conftest) skips run reports
    # an interrupted sweep: --resume keeps what finished with the same config and trains the rest
    kept = (out / "pref-00" / "final.json").read_text()
    stamp = (out / "pref-00" / "final.json").stat().st_mtime_ns
    (out / "pref-02" / "final.json").unlink()
    assert main(["sweep", str(cfg), "--preferences", "3", "--out", str(out), "--resume"]) == 0
    text = capsys.readouterr().out
    assert text.count("finished before, kept") == 2 and "keeping the finished baselines" in text
    assert (out / "pref-00" / "final.json").stat().st_mtime_ns == stamp and (out / "pref-02" / "final.json").exists()
    assert json.loads((out / "sweep.json").read_text())["front"]["values"][0] == pytest.approx(
        front_summary([json.loads(kept)], front["objectives"])["values"][0])
    (out / "report.html").unlink()
    assert main(["report", str(out), "--objectives", "marital.auc,income.auc"]) == 0  # a sweep dir: its runs
    assert "3 runs compared" in (out / "report.html").read_text()


def test_sweep_with_epo_and_bad_input(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from multitask.cli import main

    monkeypatch.delenv("MULTITASK_NO_REPORT", raising=False)
    raw = {**CENSUS, "baselines": "none"}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "epo"
    assert main(["sweep", str(cfg), "--preferences", "2", "--out", str(out), "--method", "epo",
                 "--objectives", "marital.auc,income.auc"]) == 0
    record = json.loads((out / "sweep.json").read_text())
    np.testing.assert_allclose(record["preferences"], [[1 / 3, 2 / 3], [2 / 3, 1 / 3]])
    run_cfg = yaml.safe_load((out / "pref-00" / "config.yaml").read_text())
    assert run_cfg["balancer"]["name"] == "epo"
    assert run_cfg["balancer"]["preference"] == pytest.approx(dict(zip(record["tasks"], [1 / 3, 2 / 3])))
    assert record["front"]["objectives"] == ["marital.auc", "income.auc"]
    assert (out / "pref-00" / "report.html").exists() and (out / "pref-01" / "figures" / "losses.png").exists()
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--preferences", "1", "--out", str(tmp_path / "x")]) == 2
    assert "at least 2" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        pareto.sweep(cfg, 3, tmp_path / "y", method="nope")
    assert main(["sweep", str(cfg), "--preferences", "2", "--out", str(tmp_path / "z"), "--objectives",
                 "income.auc,marrital.auc"]) == 2  # before any training
    assert "marrital.auc" in capsys.readouterr().err and not (tmp_path / "z" / "pref-00").exists()


def test_epo_options_are_checked_before_any_work(tmp_path, no_work):
    from multitask import config

    raw = {**CENSUS, "balancer": {"name": "epo", "preference": {"income": 0.0}}}
    with pytest.raises(ConfigError, match="balancer.*> 0"):
        config.validate(raw)
    raw["balancer"] = {"name": "epo", "preference": {"income": 2.0}, "eps": -1}
    with pytest.raises(ConfigError, match="eps"):
        config.validate(raw)


def test_pareto_plot_of_three_objectives():
    pytest.importorskip("matplotlib")
    from multitask.report.figures import pareto_plot

    values = np.array([[0.9, 0.1, 2.0], [0.8, 0.2, 1.0], [0.7, 0.3, 3.0], [0.9, 0.1, 2.0]])
    names = ["a.auc", "b.mse", "c.mae"]
    s = front_summary([{"test": {"a": {"auc": v[0]}, "b": {"mse": v[1]}, "c": {"mae": v[2]}}} for v in values],
                      names)
    assert s["on_front"] == [True, True, False, True]  # (0.7, 0.3, 3.0) is worse everywhere than (0.8, 0.2, 1.0)
    fig = pareto_plot(values, names, s["on_front"], ["p0", "p1", "p2", "p3"], s["hypervolume"])
    axes = fig.axes
    assert len(axes) == 3
    assert not axes[0].xaxis_inverted() and axes[0].yaxis_inverted()  # mse: lower is better, inverted
    assert "hypervolume" in fig._suptitle.get_text()
