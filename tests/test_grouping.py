"""Grouping: the exact search against brute force (the objective by enumeration), the heuristic's
feasibility, the pair (Standley) gains, and the CLI path."""
import itertools

import numpy as np
import pytest

from multitask.grouping import (exact_search, gains_from_pairs, group_scores, groups_of, heuristic_search,
                                choose_groups)


def objective(gain, selection):
    """sum_i max over chosen groups containing i of mean_{j in G, j != i} gain[j, i] (0 alone); -inf uncovered."""
    T = gain.shape[0]
    total = 0.0
    for i in range(T):
        scores = [0.0 if len(g) == 1 else np.mean([gain[j, i] for j in g if j != i]) for g in selection if i in g]
        if not scores:
            return -np.inf
        total += max(scores)
    return total


def brute_selections(gain, budget, cost=None, max_cost=None):
    """The best value over every selection of at most `budget` groups (direct enumeration; small T only)."""
    groups = groups_of(gain.shape[0])
    best = -np.inf
    for b in range(1, budget + 1):
        for sel in itertools.combinations(groups, b):
            if max_cost is not None and sum(cost(g) for g in sel) > max_cost + 1e-12:
                continue
            best = max(best, objective(gain, sel))
    return best


def partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for p in partitions(rest):
        yield [[first]] + p
        for k in range(len(p)):
            yield p[:k] + [[first] + p[k]] + p[k + 1:]


def brute_partitions(gain, budget):
    """The best value by enumerating partitions into <= budget blocks, each block served by its best superset
    (every selection induces such a partition, and each partition is realised by a selection)."""
    T = gain.shape[0]
    groups = groups_of(T)
    score = {G: {i: 0.0 if len(G) == 1 else np.mean([gain[j, i] for j in G if j != i]) for i in G} for G in groups}
    block_value = {P: max(sum(score[G][i] for i in P) for G in groups if set(P) <= set(G)) for P in groups}
    return max(sum(block_value[tuple(sorted(b))] for b in p) for p in partitions(list(range(T))) if len(p) <= budget)


@pytest.mark.parametrize("T,seed", [(3, 0), (4, 1), (5, 2)])
def test_exact_search_equals_enumeration_of_selections(T, seed):
    gain = np.random.default_rng(seed).normal(size=(T, T))
    for budget in range(1, (T if T < 5 else 3) + 1):
        found = exact_search(gain, budget)
        assert found.value == pytest.approx(brute_selections(gain, budget), abs=1e-9)
        assert objective(gain, found.groups) == pytest.approx(found.value, abs=1e-9)  # the reported groups do it
        assert len(found.groups) <= budget and found.optimal


@pytest.mark.parametrize("T,seed", [(6, 3), (7, 4), (8, 5)])
def test_exact_search_equals_brute_force_up_to_eight_tasks(T, seed):
    gain = np.random.default_rng(seed).normal(scale=0.1, size=(T, T))
    for budget in range(1, T + 1):
        found = exact_search(gain, budget)
        assert found.value == pytest.approx(brute_partitions(gain, budget), abs=1e-9)
        assert objective(gain, found.groups) == pytest.approx(found.value, abs=1e-9)
        assert len(found.groups) <= budget


@pytest.mark.parametrize("T,seed", [(4, 6), (5, 7)])
def test_exact_search_with_a_cost_ceiling(T, seed):
    gain = np.random.default_rng(seed).normal(size=(T, T))
    cost = lambda g: 1.0 + 0.3 * len(g)  # a trunk plus a head per task
    for budget in range(1, 4):
        for max_cost in (1.0 + 0.3 * T, 2.9, 4.0):
            expected = brute_selections(gain, budget, cost, max_cost)
            if not np.isfinite(expected):
                with pytest.raises(ValueError, match="no selection"):
                    exact_search(gain, budget, cost, max_cost)
                continue
            found = exact_search(gain, budget, cost, max_cost)
            assert found.value == pytest.approx(expected, abs=1e-9)
            assert found.cost <= max_cost + 1e-9 and found.optimal


def test_heuristic_is_feasible_and_never_beats_the_optimum():
    rng = np.random.default_rng(8)
    for T in (6, 9):
        gain = rng.normal(size=(T, T))
        for budget in (1, 2, 3, T):
            h = heuristic_search(gain, budget)
            e = exact_search(gain, budget)
            covered = sorted({i for g in h.groups for i in g})
            assert covered == list(range(T)) and len(h.groups) <= budget
            assert h.value <= e.value + 1e-9 and objective(gain, h.groups) == pytest.approx(h.value)
            assert not h.optimal
        assert heuristic_search(gain, T).value == pytest.approx(exact_search(gain, T).value)  # each task its best
    assert choose_groups(rng.normal(size=(16, 16)), 4).method == "heuristic"


def test_known_clusters_are_found():
    gain = np.full((6, 6), -0.5)
    for c in ((0, 1, 2), (3, 4, 5)):
        for i in c:
            for j in c:
                gain[i, j] = 1.0
    assert exact_search(gain, 2).groups == [(0, 1, 2), (3, 4, 5)]


def test_pair_gains_follow_standley():
    single = [1.0, 2.0]
    pair = np.array([[np.nan, 0.8], [2.5, np.nan]])  # task 0 improves with 1 (0.8 < 1), task 1 gets worse
    G = gains_from_pairs(single, pair)
    assert G[1, 0] == pytest.approx(0.2) and G[0, 1] == pytest.approx(-0.25)
    S = group_scores(G, [(0, 1), (0,), (1,)])
    assert S[0].tolist() == pytest.approx([0.2, -0.25]) and S[1, 0] == 0.0 and S[1, 1] == -np.inf
    best = exact_search(G, 2)
    assert best.groups == [(1,), (0, 1)] and best.served_by == [1, 0]  # task 0 from the pair, task 1 alone


def test_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        exact_search(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="budget"):
        exact_search(np.zeros((3, 3)), 0)


def test_tree_splits_where_the_affinity_turns_negative():
    from multitask.grouping import propose_tree

    agree = np.full((4, 4), 0.5)
    split = np.full((4, 4), -0.5)
    split[:2, :2] = split[2:, 2:] = 0.5
    A = np.stack([agree, agree, split])          # layers 0-1: all agree; layer 2: two clusters
    tree = propose_tree(A, [100, 100, 100], max_params=400)
    assert tree.layout == [[(0, 1, 2, 3)], [(0, 1, 2, 3)], [(0, 1), (2, 3)]]
    assert tree.params == 400
    assert propose_tree(A, [100, 100, 100], max_params=399).layout == [[(0, 1, 2, 3)]] * 3  # no room to branch
    both = np.stack([split, split, split])
    assert propose_tree(both, [100, 100, 100], 1000).layout[0] == [(0, 1), (2, 3)]  # split from the first layer


def test_group_and_tree_from_the_cli(tmp_path):
    import json

    from multitask.cli import main
    from multitask.diagnostics import read_diagnostics

    cfg = tmp_path / "y.yaml"
    cfg.write_text("data: {name: yeast, limit: 300}\n"
                   "tasks: {class1: {}, class2: {}, class3: {}}\n"
                   "model: {name: hard_sharing, hidden: [16, 8], head_hidden: [8]}\n"
                   "trainer: {epochs: 1, batch_size: 64, progress: false}\n")
    assert main(["group", str(cfg), "--budget", "2", "--out", str(tmp_path / "g"), "--affinity-every", "1"]) == 0
    result = json.loads((tmp_path / "g" / "grouping.json").read_text())
    assert len(result["selection"]["groups"]) <= 2
    comp = result["comparison"]
    assert set(comp["served_by"]) == {"class1", "class2", "class3"}
    assert comp["one_per_task"]["delta_m"] == 0.0 and comp["one_per_task"]["networks"] == 3
    assert comp["all_in_one"]["networks"] == 1
    D = read_diagnostics(tmp_path / "g" / "runs" / "all")
    assert np.allclose(np.nan_to_num(D.mean_affinity(normalized=True)), np.nan_to_num(np.array(result["affinity"])))
    assert main(["group", str(cfg), "--tree", "--out", str(tmp_path / "t"), "--affinity-every", "1"]) == 0
    tree = json.loads((tmp_path / "t" / "tree.json").read_text())
    assert len(tree["branches"]) == 2 and tree["trunk_parameters"] <= 2.0 * tree["all_shared_trunk_parameters"]
    assert main(["train", str(tmp_path / "t" / "tree.yaml"), "--out", str(tmp_path / "tr")]) == 0
    final = json.loads((tmp_path / "tr" / "final.json").read_text())
    assert final["model"] == "branched" and set(final["test"]) == {"class1", "class2", "class3"}
    assert main(["group", str(cfg), "--budget", "0"]) == 2


@pytest.mark.parametrize("T,seed", [(5, 9), (7, 10)])
def test_partition_search_equals_brute_force(T, seed):
    gain = np.random.default_rng(seed).normal(size=(T, T))

    def own(P):
        return sum(0.0 if len(P) == 1 else np.mean([gain[j, i] for j in P if j != i]) for i in P)

    for budget in range(1, T + 1):
        expected = max(sum(own(b) for b in p) for p in partitions(list(range(T))) if len(p) <= budget)
        found = exact_search(gain, budget, overlap=False)
        assert found.value == pytest.approx(expected, abs=1e-9)
        assert sorted(i for g in found.groups for i in g) == list(range(T))  # a partition
        assert exact_search(gain, budget).value >= found.value - 1e-12      # overlapping groups can only add


def test_pairs_with_a_parameter_ceiling(tmp_path):
    from multitask import config as cfgmod
    from multitask.grouping import group_from_config, parameter_costs

    cfg = cfgmod.validate({"data": {"name": "yeast", "limit": 200}, "tasks": {"class1": {}, "class2": {}, "class3": {}},
                           "model": {"name": "hard_sharing", "hidden": [8], "head_hidden": [4]},
                           "trainer": {"epochs": 1, "batch_size": 64, "progress": False}})
    shared, own = parameter_costs(cfg)
    ceiling = 2 * shared + sum(own.values()) + min(own.values())  # room for two networks, one of them a pair at most
    result = group_from_config(cfg, tmp_path, 3, method="pairs", max_cost=ceiling)
    sel = result["selection"]
    assert len(result["pair_gain"]) == 3 and sel["cost"] <= ceiling and len(sel["groups"]) <= 2
    # the cost model (shared trunk + the tasks' heads) is the trained networks' exact parameter count
    assert result["comparison"]["grouped"]["trained_groups_parameters"] == sel["cost"]
    with pytest.raises(ValueError, match="below the all-in-one"):
        group_from_config(cfg, tmp_path / "x", 2, max_cost=shared)
