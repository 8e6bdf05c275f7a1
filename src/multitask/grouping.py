"""Which tasks to train together: network selection from task affinities (TAG, Fifty et al. 2021) or from
measured pair results (Standley et al. 2020), and where to branch a shared network.

The search. `gain[j, i]` is what task i gains from sharing a network with task j: a TAG affinity Z_{j->i}
(averaged over training, `multitask.diagnostics`) or a pair result, the relative improvement of i's loss when
trained with j over i trained alone. A group G serves its member i with the score s(G, i) = the mean of
gain[j, i] over the other members j (Standley's estimate of a higher-order group from its pairs; TAG's
"total affinity onto i"); alone, s({i}, i) = 0. Choose at most `budget` groups, covering every task, that
maximise sum_i max_{G chosen, i in G} s(G, i): each task is served by its best chosen group (groups may
overlap). Optional: a cost per group (e.g. its parameters, i.e. inference cost) and a ceiling on the sum.

- `exact_search` (T <= 14): a selection induces a partition of the tasks (by serving group), so the optimum
  is the best partition into at most `budget` blocks, a block P worth v(P) = max_{G ⊇ P} sum_{i in P} s(G, i).
  Without a cost ceiling: a dynamic programme over subsets (3^T block/rest pairs, vectorised: ~3 s at T = 14).
  With one: branch and bound over partitions (each block and its serving group), bounded by that programme.
- `heuristic_search` (beyond 14 tasks): candidates = all groups of up to 3 tasks, every task's greedy
  agglomeration (add the partner that raises the group's score most) and the whole set; facility-location
  greedy (add the group with the largest gain) then swaps of one chosen group for one candidate while that
  improves the objective. No optimality guarantee; stated in the result.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

EXACT_MAX_TASKS = 14


# ------------------------------------------------------------------------------------------ scores
def groups_of(n_tasks: int, max_size: int | None = None) -> list[tuple[int, ...]]:
    """All non-empty groups of tasks 0..n-1 (up to `max_size` tasks), as sorted index tuples."""
    top = n_tasks if max_size is None else min(max_size, n_tasks)
    return [g for k in range(1, top + 1) for g in itertools.combinations(range(n_tasks), k)]


def group_scores(gain: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """(len(groups), T): s(G, i) = mean_{j in G, j != i} gain[j, i] for members i (0 alone), -inf elsewhere."""
    gain = np.asarray(gain, dtype=np.float64)
    T = gain.shape[0]
    off = np.where(np.eye(T, dtype=bool), 0.0, np.nan_to_num(gain, nan=0.0))
    S = np.full((len(groups), T), -np.inf)
    for k, g in enumerate(groups):
        idx = list(g)
        if len(idx) == 1:
            S[k, idx[0]] = 0.0
        else:
            S[k, idx] = off[np.ix_(idx, idx)].sum(0) / (len(idx) - 1)
    return S


def gains_from_pairs(single_loss: Sequence[float], pair_loss: np.ndarray) -> np.ndarray:
    """Standley's pair results as gains: gain[j, i] = (L_i alone - L_i trained with j) / L_i alone (lower loss
    is better; relative, so that tasks on different scales add up). `pair_loss[i, j]`: task i's loss in the
    network it shared with task j."""
    single = np.asarray(single_loss, dtype=np.float64)
    P = np.asarray(pair_loss, dtype=np.float64)
    G = (single[:, None] - P) / single[:, None]   # [i, j]: i's gain from j
    np.fill_diagonal(G, 0.0)
    return G.T                                      # [j, i]


# ------------------------------------------------------------------------------------------ the result
@dataclass
class Selection:
    """The chosen groups (task index tuples), which group serves each task, the objective and how it was found."""

    groups: list[tuple[int, ...]]
    served_by: list[int]          # per task, the index into `groups` of its best group
    value: float                  # sum over tasks of their score in their serving group
    cost: float
    method: str                   # "exact" or "heuristic"
    optimal: bool
    nodes: int = 0
    seconds: float = 0.0
    task_scores: list[float] = field(default_factory=list)

    def named(self, tasks: Sequence[str]) -> dict[str, Any]:
        """The selection as JSON-ready data with task names."""
        return {"groups": [[tasks[i] for i in g] for g in self.groups],
                "served_by": {tasks[i]: [tasks[j] for j in self.groups[k]] for i, k in enumerate(self.served_by)},
                "task_scores": {tasks[i]: s for i, s in enumerate(self.task_scores)},
                "value": self.value, "cost": self.cost, "method": self.method, "optimal": self.optimal,
                "nodes": self.nodes, "seconds": self.seconds}


def _selection(S: np.ndarray, groups: list, chosen: Sequence[int], costs: np.ndarray, method: str, optimal: bool,
               nodes: int, seconds: float) -> Selection:
    chosen = sorted(chosen, key=lambda k: (len(groups[k]), groups[k]))
    sub = S[chosen]
    best = sub.argmax(0)
    scores = sub[best, np.arange(S.shape[1])]
    return Selection([tuple(groups[k]) for k in chosen], [int(b) for b in best], float(scores.sum()),
                     float(costs[chosen].sum()), method, optimal, nodes, seconds, [float(x) for x in scores])


def _check(gain: np.ndarray, budget: int) -> np.ndarray:
    gain = np.asarray(gain, dtype=np.float64)
    if gain.ndim != 2 or gain.shape[0] != gain.shape[1] or gain.shape[0] < 1:
        raise ValueError(f"the gain (affinity) matrix must be square T x T, got shape {gain.shape}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be an integer >= 1 (networks), got {budget!r}")
    return gain


def _costs(groups: list, group_cost: Any) -> np.ndarray:
    if group_cost is None:
        return np.ones(len(groups))
    return np.array([float(group_cost(g)) for g in groups])


# ------------------------------------------------------------------------------------------ exact search
def _bits(T: int) -> np.ndarray:
    """(2^T, T) membership of each task in each mask."""
    return ((np.arange(1 << T)[:, None] >> np.arange(T)) & 1).astype(bool)


def mask_scores(gain: np.ndarray) -> np.ndarray:
    """(2^T, T): s(G, i) for every group given as a bit mask (row 0, the empty group, is -inf)."""
    T = gain.shape[0]
    off = np.where(np.eye(T, dtype=bool), 0.0, np.nan_to_num(np.asarray(gain, dtype=np.float64), nan=0.0))
    member = _bits(T)
    size = member.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.where(size[:, None] > 1, (member.astype(np.float64) @ off) / np.maximum(size - 1, 1)[:, None], 0.0)
    return np.where(member, S, -np.inf)


def _block_values(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """v[P] = max over groups G ⊇ P of sum_{i in P} s(G, i) (a block P of tasks served together by one group)
    and the argmax group, for every mask P: 3^T (group, sub-block) pairs, vectorised per group."""
    n, T = S.shape
    v = np.full(n, -np.inf)
    arg = np.zeros(n, dtype=np.int64)
    patterns = {k: _bits(k) for k in range(T + 1)}
    for G in range(1, n):
        members = [i for i in range(T) if G >> i & 1]
        pat = patterns[len(members)]
        masks = pat.astype(np.int64) @ (1 << np.array(members, dtype=np.int64))
        sums = pat.astype(np.float64) @ S[G, members]
        better = sums > v[masks]
        v[masks[better]] = sums[better]
        arg[masks[better]] = G
    v[0] = 0.0
    return v, arg


def _submasks(m: int) -> np.ndarray:
    """Every submask of `m` (the empty one included)."""
    members = [i for i in range(m.bit_length()) if m >> i & 1]
    return _bits(len(members)).astype(np.int64) @ (1 << np.array(members, dtype=np.int64)) if members \
        else np.zeros(1, dtype=np.int64)


def _partition_dp(v: np.ndarray, T: int, budget: int) -> np.ndarray:
    """dp[b, M]: the best sum of block values over partitions of the tasks in M into at most b blocks (-inf
    when impossible). Each step extends a partition of R by a block P below all of R's tasks... concretely, P
    holds the lowest task of M = P | R, so every partition is counted once; 3^T (block, rest) pairs."""
    n = 1 << T
    blocks, rests = [], []
    for P in range(1, n):
        low = P & -P
        allowed = (n - 1) & ~P & ~((low << 1) - 1)   # tasks above P's lowest that P leaves out
        R = _submasks(allowed)
        blocks.append(np.full(len(R), P, dtype=np.int64))
        rests.append(R)
    block, rest = np.concatenate(blocks), np.concatenate(rests)
    target = block | rest
    order = np.argsort(target, kind="stable")
    block, rest, target = block[order], rest[order], target[order]
    starts = np.flatnonzero(np.r_[True, target[1:] != target[:-1]])
    dp = np.full((budget + 1, n), -np.inf)
    dp[:, 0] = 0.0
    for b in range(1, budget + 1):
        cand = v[block] + dp[b - 1][rest]
        best = np.maximum.reduceat(cand, starts)
        dp[b][target[starts]] = np.maximum(dp[b - 1][target[starts]], best)
    return dp


def exact_search(gain: np.ndarray, budget: int, group_cost: Any = None, max_cost: float | None = None,
                 max_nodes: int = 5_000_000) -> Selection:
    """The best selection of at most `budget` groups, exactly (T <= 14).

    A selection induces a partition of the tasks (by serving group) and any partition into blocks served by
    groups containing them is a selection with at least that value, so the optimum is the best partition into
    at most `budget` blocks, each worth v(P) = max_{G ⊇ P} sum_{i in P} s(G, i): a dynamic programme over
    subsets (3^T pairs). With `max_cost` (`group_cost(group)` -> float) a branch and bound over partitions
    (block holding the lowest uncovered task, then its serving group among P's supersets), bounded by the
    cost-free programme, finds the best selection within the cost; `optimal` is False only if `max_nodes` was
    reached. ValueError when no selection is feasible."""
    gain = _check(gain, budget)
    T = gain.shape[0]
    if T > EXACT_MAX_TASKS:
        raise ValueError(f"exact search is for up to {EXACT_MAX_TASKS} tasks ({T} given); use heuristic_search")
    start = time.perf_counter()
    full = (1 << T) - 1
    S = mask_scores(gain)
    v, arg = _block_values(S)
    budget = min(budget, T)
    dp = _partition_dp(v, T, budget)
    tol = 1e-9
    if max_cost is None:
        chosen, M, b = [], full, budget  # trace the programme back
        while M:
            low = M & -M
            Ps = [P for P in _submasks(M).tolist() if P & low]
            P = max(Ps, key=lambda P: v[P] + dp[b - 1][M & ~P])
            chosen.append(int(arg[P]))
            M, b = M & ~P, b - 1
        return _mask_selection(S, chosen, group_cost, "exact", True, 0, time.perf_counter() - start)
    cap = float(max_cost)
    cost_of: dict[int, float] = {}

    def cost(G: int) -> float:
        if G not in cost_of:
            cost_of[G] = 1.0 if group_cost is None else float(group_cost(tuple(i for i in range(T) if G >> i & 1)))
        return cost_of[G]

    servers: dict[int, list[tuple[float, float, int]]] = {}

    def pareto(P: int) -> list[tuple[float, float, int]]:
        """(score, cost, G) of P's supersets that no cheaper superset scores as well as, best score first."""
        if P not in servers:
            members = [i for i in range(T) if P >> i & 1]
            Gs = _submasks(full & ~P) | P
            scores = S[np.ix_(Gs, members)].sum(1)
            items = sorted(((float(s), cost(int(G)), int(G)) for s, G in zip(scores, Gs)), key=lambda x: (x[1], -x[0]))
            front, top = [], -math.inf
            for s, c, G in items:
                if s > top + tol:
                    front.append((s, c, G))
                    top = s
            servers[P] = sorted(front, key=lambda x: -x[0])
        return servers[P]

    best = {"value": -math.inf, "chosen": None}
    nodes = 0

    def visit(M: int, left: int, spent: float, value: float, chosen: list[int]) -> None:
        nonlocal nodes
        nodes += 1
        if M == 0:
            if value > best["value"] + tol:
                best["value"], best["chosen"] = value, list(chosen)
            return
        if left == 0 or nodes >= max_nodes or value + dp[left][M] <= best["value"] + tol:
            return
        low = M & -M
        Ps = [P for P in _submasks(M).tolist() if P & low]
        Ps.sort(key=lambda P: -(v[P] + dp[left - 1][M & ~P]))
        for P in Ps:
            if value + v[P] + dp[left - 1][M & ~P] <= best["value"] + tol:
                break  # sorted: no later block can do better
            for s, c, G in pareto(P):
                if spent + c > cap + tol or G in chosen:
                    continue
                if value + s + dp[left - 1][M & ~P] <= best["value"] + tol:
                    break
                chosen.append(G)
                visit(M & ~P, left - 1, spent + c, value + s, chosen)
                chosen.pop()

    visit(full, budget, 0.0, 0.0, [])
    if best["chosen"] is None:
        raise ValueError(f"no selection of at most {budget} groups covers every task within max_cost={max_cost}")
    return _mask_selection(S, best["chosen"], group_cost, "exact", nodes < max_nodes, nodes,
                           time.perf_counter() - start)


def _mask_selection(S: np.ndarray, chosen: list[int], group_cost: Any, method: str, optimal: bool, nodes: int,
                    seconds: float) -> Selection:
    T = S.shape[1]
    groups = [tuple(i for i in range(T) if G >> i & 1) for G in sorted(set(chosen))]
    rows = group_scores_from_masks(S, sorted(set(chosen)))
    costs = _costs(groups, group_cost)
    return _selection(rows, groups, list(range(len(groups))), costs, method, optimal, nodes, seconds)


def group_scores_from_masks(S: np.ndarray, masks: list[int]) -> np.ndarray:
    return S[np.asarray(masks, dtype=np.int64)]


# ------------------------------------------------------------------------------------------ heuristic
def heuristic_search(gain: np.ndarray, budget: int, group_cost: Any = None,
                     max_cost: float | None = None) -> Selection | None:
    """Greedy facility-location selection plus one-for-one swaps over a candidate pool (groups of up to three,
    each task's greedy agglomeration, the whole set). None when it finds no feasible selection."""
    gain = _check(gain, budget)
    T = gain.shape[0]
    start = time.perf_counter()
    cands = set(groups_of(T, 3)) | {tuple(range(T))}
    G = np.where(np.eye(T, dtype=bool), 0.0, np.nan_to_num(gain, nan=0.0))
    for i in range(T):  # grow i's group by the partner that keeps i's and the group's scores highest
        g = [i]
        while len(g) < T:
            rest = [j for j in range(T) if j not in g]
            score = [group_scores(G, [tuple(sorted(g + [j]))])[0] for j in rest]
            total = [np.where(np.isfinite(s), s, 0).sum() for s in score]
            g = sorted(g + [rest[int(np.argmax(total))]])
            cands.add(tuple(g))
    groups = sorted(cands, key=lambda g: (len(g), g))
    S = group_scores(gain, groups)
    costs = _costs(groups, group_cost)
    cap = math.inf if max_cost is None else float(max_cost)

    def value(chosen: Sequence[int]) -> float:
        return float(S[list(chosen)].max(0).sum()) if chosen else -math.inf

    chosen: list[int] = []
    cur = np.full(T, -np.inf)
    spent = 0.0
    while len(chosen) < budget:
        new = np.maximum(S, cur)
        ok = (costs + spent <= cap + 1e-12) & (new > cur).any(1)
        if not ok.any():
            break
        uncovered = ~np.isfinite(cur)
        # cover first (most uncovered tasks per unit cost), then the largest gain
        covers = (np.isfinite(S) & uncovered).sum(1)
        with np.errstate(invalid="ignore"):
            gains = np.where(np.isfinite(new) & np.isfinite(cur), new - cur, 0.0).sum(1)
        key = np.where(ok, covers * 1e6 + gains, -np.inf) if uncovered.any() else np.where(ok, gains, -np.inf)
        if uncovered.any() and covers[ok].max() == 0:
            break
        k = int(np.argmax(key))
        if not uncovered.any() and gains[k] <= 1e-12:
            break
        chosen.append(k)
        cur, spent = new[k], spent + costs[k]
    if not np.isfinite(cur).all():
        return None
    improved = True
    while improved:  # one-for-one swaps (and plain additions while slots are free)
        improved = False
        base = value(chosen)
        for a in range(len(chosen) + (1 if len(chosen) < budget else 0)):
            others = chosen[:a] + chosen[a + 1:]
            rest = S[others].max(0) if others else np.full(T, -np.inf)
            vals = np.maximum(S, rest).sum(1)
            spend = costs[others].sum() + costs
            vals = np.where(spend <= cap + 1e-12, vals, -np.inf)
            k = int(np.argmax(vals))
            if vals[k] > base + 1e-12 and k not in others:
                chosen = others + [k]
                improved = True
                break
    return _selection(S, list(groups), chosen, costs, "heuristic", False, 0, time.perf_counter() - start)


def choose_groups(gain: np.ndarray, budget: int, group_cost: Any = None, max_cost: float | None = None) -> Selection:
    """Exact search up to EXACT_MAX_TASKS tasks, the heuristic beyond."""
    gain = _check(gain, budget)
    if gain.shape[0] <= EXACT_MAX_TASKS:
        return exact_search(gain, budget, group_cost, max_cost)
    found = heuristic_search(gain, budget, group_cost, max_cost)
    if found is None:
        raise ValueError(f"the heuristic found no selection of at most {budget} groups within max_cost={max_cost}")
    return found
