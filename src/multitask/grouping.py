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
- `overlap=False`: every task in exactly one network (a partition; the blocks serve themselves).
- `heuristic_search` (beyond 14 tasks): candidates = all groups of up to 3 tasks, every task's greedy
  agglomeration (add the partner that raises the group's score most) and the whole set; facility-location
  greedy (add the group with the largest gain) then swaps of one chosen group for one candidate while that
  improves the objective. No optimality guarantee; stated in the result.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from multitask.jsonio import to_json
from multitask.training.callbacks import Callback

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
                 max_nodes: int = 5_000_000, overlap: bool = True) -> Selection:
    """The best selection of at most `budget` groups, exactly (T <= 14).

    A selection induces a partition of the tasks (by serving group) and any partition into blocks served by
    groups containing them is a selection with at least that value, so the optimum is the best partition into
    at most `budget` blocks, each worth v(P) = max_{G ⊇ P} sum_{i in P} s(G, i): a dynamic programme over
    subsets (3^T pairs). With `max_cost` (`group_cost(group)` -> float) a branch and bound over partitions
    (block holding the lowest uncovered task, then its serving group among P's supersets), bounded by the
    cost-free programme, finds the best selection within the cost; `optimal` is False only if `max_nodes` was
    reached. With `overlap=False` every task is trained in exactly one network (the groups partition the
    tasks, each block served by itself). ValueError when no selection is feasible."""
    gain = _check(gain, budget)
    T = gain.shape[0]
    if T > EXACT_MAX_TASKS:
        raise ValueError(f"exact search is for up to {EXACT_MAX_TASKS} tasks ({T} given); use heuristic_search")
    start = time.perf_counter()
    full = (1 << T) - 1
    S = mask_scores(gain)
    if overlap:
        v, arg = _block_values(S)
    else:
        v, arg = np.where(np.isfinite(S), S, 0.0).sum(1), np.arange(1 << T)
        v[0] = 0.0
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
            Gs = _submasks(full & ~P) | P if overlap else np.array([P], dtype=np.int64)
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


def choose_groups(gain: np.ndarray, budget: int, group_cost: Any = None, max_cost: float | None = None,
                  overlap: bool = True) -> Selection:
    """Exact search up to EXACT_MAX_TASKS tasks, the heuristic beyond (which allows overlapping groups)."""
    gain = _check(gain, budget)
    if gain.shape[0] <= EXACT_MAX_TASKS:
        return exact_search(gain, budget, group_cost, max_cost, overlap=overlap)
    found = heuristic_search(gain, budget, group_cost, max_cost)
    if found is None:
        raise ValueError(f"the heuristic found no selection of at most {budget} groups within max_cost={max_cost}")
    return found


# ------------------------------------------------------------------------------------------ from a config
# `multitask group`: measure affinities (or pairs), choose the groups, train them, compare. Every training is an
# ordinary run directory under OUT/runs/ (reused when its final.json exists, so an interrupted search resumes).

def task_names(cfg: Any) -> list[str]:
    """The tasks a config trains, without reading data."""
    from multitask import config as cfgmod

    return [t.name for t in cfgmod.planned_tasks(cfg)]


def config_for(cfg: Any, tasks: Sequence[str], diagnostics: dict | None = None, epochs: int | None = None) -> Any:
    """`cfg` narrowed to `tasks` (their `tasks:` options kept), no baselines, `diagnostics` as given."""
    from multitask import config as cfgmod

    raw = cfg.model_dump(mode="json")
    sections = raw.get("tasks") or {}
    raw["tasks"] = {t: sections.get(t, {}) for t in tasks}
    raw["baselines"] = "none"
    raw["diagnostics"] = diagnostics
    if epochs is not None:
        raw["trainer"]["epochs"] = int(epochs)
    return cfgmod.validate(raw, deep=False)


def run_name(tasks: Sequence[str], all_tasks: Sequence[str]) -> str:
    return "all" if list(tasks) == list(all_tasks) else "+".join(tasks)


def train_group(cfg: Any, tasks: Sequence[str], out: Path, all_tasks: Sequence[str],
                diagnostics: dict | None = None, epochs: int | None = None, name: str | None = None) -> dict:
    """Train `cfg` on `tasks` into out/runs/<name> (reusing a finished run, unless `diagnostics` are asked for
    and it has none: it is trained again, to the same weights, with them); returns its final.json plus
    the validation loss per task at the best epoch (`val_loss`) and the run directory."""
    from multitask import experiment
    from multitask.training import read_metrics

    run_dir = Path(out) / "runs" / (name or run_name(tasks, all_tasks))
    from multitask.diagnostics import FILE

    if (run_dir / "final.json").exists() and (diagnostics is None or (run_dir / FILE).exists()):
        final = experiment.read_final(run_dir / "final.json")
    else:
        final = experiment.run(config_for(cfg, tasks, diagnostics, epochs), run_dir)
    history = read_metrics(run_dir)
    best = [r for r in history if r.get("best")]
    record = best[-1] if best else (history[-1] if history else {})
    final = dict(final)
    final["val_loss"] = {t: float(record.get("val_loss", {}).get(t, math.nan)) for t in tasks}
    final["run_dir"] = str(run_dir)
    final["tasks"] = list(tasks)
    return final


def measure_affinity(cfg: Any, out: Path, affinity_every: int = 10, epochs: int | None = None,
                     lr: float | None = None, normalized: bool = True) -> dict:
    """TAG: train all tasks together with the lookahead affinity recorded every `affinity_every` steps (this
    run is also the all-in-one model). Returns the mean affinity (`normalized`: see
    `Diagnostics.mean_affinity`), the run and the diagnostics' own seconds."""
    from multitask.diagnostics import read_diagnostics
    from multitask.training import read_metrics

    tasks = task_names(cfg)
    name = "all" if epochs is None else f"all-affinity-{epochs}ep"
    final = train_group(cfg, tasks, out, tasks, {"every": None, "affinity_every": affinity_every, "lr": lr},
                        epochs, name=name)
    D = read_diagnostics(final["run_dir"], tasks)
    history = read_metrics(final["run_dir"])
    extra = (history[-1].get("diagnostics_seconds") or {}) if history else {}
    return {"tasks": tasks, "affinity": D.mean_affinity(normalized), "run": final,
            "train_seconds": float(sum(r["seconds"] for r in history)),
            "diagnostics_seconds": float(sum(extra.values())) if extra else math.nan,
            "records": int(len(D.affinity_steps))}


def measure_pairs(cfg: Any, out: Path) -> dict:
    """Standley: train every task alone and every pair; gain[j, i] from task i's validation loss (best epoch)."""
    tasks = task_names(cfg)
    T = len(tasks)
    singles = {t: train_group(cfg, [t], out, tasks) for t in tasks}
    pair_loss = np.full((T, T), np.nan)
    seconds = 0.0
    for a, b in itertools.combinations(range(T), 2):
        run = train_group(cfg, [tasks[a], tasks[b]], out, tasks)
        pair_loss[a, b], pair_loss[b, a] = run["val_loss"][tasks[a]], run["val_loss"][tasks[b]]
        seconds += float(run.get("wall_time_s", 0.0))
    single = [singles[t]["val_loss"][t] for t in tasks]
    return {"tasks": tasks, "gain": gains_from_pairs(single, pair_loss), "singles": singles,
            "pair_seconds": seconds, "single_seconds": float(sum(r.get("wall_time_s", 0.0) for r in singles.values()))}


def parameter_costs(cfg: Any) -> tuple[float, dict[str, float]]:
    """(shared, per-task) parameter counts of the configured model built for all tasks: a group's network
    costs shared + the sum of its tasks' own parameters (exact for hard sharing)."""
    from multitask import experiment

    bundle = experiment.load_data(cfg)  # the real input schema (the planned one is a placeholder)
    tasks = bundle.tasks
    model = experiment.build_model(cfg, tasks, bundle.preprocessor.schema)
    shared = float(sum(p.numel() for p in model.shared_parameters()))
    own = {t.name: float(sum(p.numel() for p in model.task_parameters(t.name))) for t in tasks}
    return shared, own


def compare(cfg: Any, tasks: Sequence[str], groups: Sequence[Sequence[str]], out: Path) -> dict:
    """Train the chosen groups, the all-in-one model and one model per task; each task served by the chosen
    group with its lowest validation loss. Per task: test metrics and Δm (%) of grouped and all-in-one
    against one-per-task; in total: Δm, parameters and networks run per input row."""
    from multitask.metrics import delta_m, delta_m_terms

    singles = {t: train_group(cfg, [t], out, tasks) for t in tasks}
    everything = train_group(cfg, list(tasks), out, tasks)
    runs = {tuple(g): (everything if list(g) == list(tasks) else singles[g[0]] if len(g) == 1
                       else train_group(cfg, list(g), out, tasks)) for g in groups}
    served = {}
    for t in tasks:
        options = [g for g in runs if t in g]
        served[t] = min(options, key=lambda g: (runs[g]["val_loss"][t] if math.isfinite(runs[g]["val_loss"][t])
                                                else math.inf, len(g)))
    base = {t: singles[t]["test"][t] for t in tasks}
    grouped = {t: runs[served[t]]["test"][t] for t in tasks}
    together = {t: everything["test"][t] for t in tasks}

    def per_task(results: dict) -> dict[str, float]:
        out_ = {}
        for t in tasks:
            terms, _ = delta_m_terms({t: results[t]}, {t: base[t]})
            out_[t] = 100.0 * float(np.mean(list(terms.values()))) if terms else math.nan
        return out_

    def solution(results: dict, used: Sequence[dict]) -> dict:
        return {"delta_m": delta_m(results, base), "delta_m_per_task": per_task(results),
                "parameters": int(sum(r.get("parameters", 0) for r in used)), "networks": len(used),
                "test": results, "train_seconds": float(sum(r.get("wall_time_s", 0.0) for r in used))}

    used = [runs[g] for g in {served[t] for t in tasks}]
    return {
        "served_by": {t: list(served[t]) for t in tasks},
        "grouped": {**solution(grouped, used), "groups": [list(g) for g in runs],
                    "trained_groups_parameters": int(sum(r.get("parameters", 0) for r in runs.values()))},
        "all_in_one": solution(together, [everything]),
        "one_per_task": solution(base, list(singles.values())),
        "runs": {"+".join(g): r["run_dir"] for g, r in runs.items()},
    }


def group_from_config(cfg: Any, out: str | Path, budget: int, method: str = "affinity", affinity_every: int = 10,
                      affinity_epochs: int | None = None, max_cost: float | None = None, train: bool = True,
                      lr: float | None = None, normalized: bool = True, overlap: bool = True) -> dict:
    """`multitask group`: measure (TAG affinity, `normalized` per measurement by default, or Standley pairs),
    search (`overlap`: a task may sit in several chosen groups, served by its best; else a partition), train the
    chosen groups and compare; writes OUT/grouping.json and returns it."""
    from multitask.jsonio import write_json

    out = Path(out)
    if max_cost is not None:  # the cheapest cover is the all-in-one network: refuse before any training
        shared, own = parameter_costs(cfg)
        if shared + sum(own.values()) > max_cost:
            raise ValueError(f"max_cost {max_cost:g} is below the all-in-one network's {shared + sum(own.values()):.0f} "
                             "parameters, the cheapest way to serve every task")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if method == "affinity":
        measured = measure_affinity(cfg, out, affinity_every, affinity_epochs, lr, normalized)
        gain = measured["affinity"]
        found = {"affinity": gain.tolist(), "affinity_records": measured["records"],
                 "affinity_run": measured["run"]["run_dir"], "affinity_train_seconds": measured["train_seconds"],
                 "diagnostics_seconds": measured["diagnostics_seconds"]}
    elif method == "pairs":
        measured = measure_pairs(cfg, out)
        gain = measured["gain"]
        found = {"pair_gain": gain.tolist(), "pair_train_seconds": measured["pair_seconds"],
                 "single_train_seconds": measured["single_seconds"]}
    else:
        raise ValueError(f"method must be 'affinity' or 'pairs', got {method!r}")
    tasks = measured["tasks"]
    measure_seconds = time.perf_counter() - start
    cost = None
    if max_cost is not None:
        shared, own = parameter_costs(cfg)
        cost = lambda g: shared + sum(own[tasks[i]] for i in g)  # noqa: E731
    gain = np.nan_to_num(np.asarray(gain, dtype=np.float64), nan=0.0)
    selection = choose_groups(gain, budget, cost, max_cost, overlap)
    result = {"tasks": tasks, "method": method, "budget": budget, "max_cost": max_cost, "overlap": overlap,
              "normalized_affinity": normalized if method == "affinity" else None, **found,
              "selection": selection.named(tasks), "measure_seconds": measure_seconds,
              "search_seconds": selection.seconds}
    if train:
        result["comparison"] = compare(cfg, tasks, [[tasks[i] for i in g] for g in selection.groups], out)
    write_json(out / "grouping.json", result)
    return result


# ------------------------------------------------------------------------------------------ where to branch
# Affinity at several depths: the TAG lookahead with only one trunk layer moved, Z^l[i, j] = 1 - L_j(θ with
# layer l stepped along -lr ∇_l L_i) / L_j(θ), recorded while training the all-shared network. Then a branching
# tree (the `branches:` option of the `branched` model) is grown greedily under a parameter budget.

LAYER_FILE = "layer_affinity.jsonl"


class LayerAffinity(Callback):
    """Records Z^l for every trunk layer l of a `Branched` model whose layers are all shared, every `every`
    steps, into ``layer_affinity.jsonl`` (records of kind "layer_affinity" with a "layer" index)."""

    def __init__(self, every: int, lr: float | None = None) -> None:
        self.every, self.lr = every, lr
        self.records: list[dict] = []

    @property
    def key(self) -> str:
        return "LayerAffinity"

    def on_fit_start(self, trainer: Any) -> None:
        self.file = trainer.run_dir / LAYER_FILE if trainer.run_dir is not None else None
        if self.file is not None:
            self.file.write_text("")
        model = trainer.model
        if getattr(model, "trunk", None) is None or getattr(model, "depth", 0) != model.blocks.n_layers:
            raise ValueError("affinity by depth needs a branched model whose layers are all shared")
        self.layers = [list(layer.parameters()) for layer in model.trunk]
        self.offsets, k = {}, 0
        for p in (p for p in model.shared_parameters() if p.requires_grad):
            self.offsets[id(p)] = (k, k + p.numel())
            k += p.numel()

    def on_step_start(self, trainer: Any, inputs: Any, targets: Any, masks: Any) -> None:
        from multitask.diagnostics import Restored, lookahead_affinity, task_gradients

        step = trainer.global_step + 1
        if step % self.every:
            return
        present = [t for t in trainer.tasks if t not in masks or bool(masks[t].any())]
        if not present:
            return
        eta = float(self.lr) if self.lr is not None else float(trainer.optimizer.param_groups[0]["lr"])
        with Restored(trainer) as r:
            r.fork()
            losses, grads = task_gradients(trainer, inputs, targets, masks, present, "parameters")
            for depth, params in enumerate(self.layers):
                sliced = [torch.cat([g[slice(*self.offsets[id(p)])] for p in params]) for g in grads]
                Z = lookahead_affinity(trainer, inputs, targets, masks, present, sliced, losses, eta, r.rng, params)
                rec = {"kind": "layer_affinity", "step": step, "epoch": trainer.epoch, "layer": depth,
                       "tasks": present, "affinity": Z.tolist()}
                self.records.append(rec)
                if self.file is not None:
                    with open(self.file, "a") as f:
                        f.write(to_json(rec) + "\n")


def read_layer_affinity(run_dir: str | Path, tasks: Sequence[str], normalized: bool = True) -> np.ndarray:
    """(L, T, T): the mean Z^l over the recorded steps (NaN where never measured); `normalized`: each record's
    Z^l[i, j] divided by Z^l[j, j] first, as in `Diagnostics.mean_affinity`."""
    from multitask.diagnostics import _array

    path = Path(run_dir) / LAYER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: no affinity by depth was recorded in {run_dir}")
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            break
    L = 1 + max((r["layer"] for r in recs), default=-1)
    pos = {t: k for k, t in enumerate(tasks)}
    total, count = np.zeros((L, len(tasks), len(tasks))), np.zeros((L, len(tasks), len(tasks)))
    for r in recs:
        idx = [pos[t] for t in r["tasks"]]
        Z = _array(r["affinity"])
        if normalized:
            own = np.diag(Z)[None, :]
            with np.errstate(invalid="ignore", divide="ignore"):
                Z = np.where(own > 0, Z / np.where(own > 0, own, 1.0), np.nan)
        ok = np.isfinite(Z)
        total[r["layer"]][np.ix_(idx, idx)] += np.where(ok, Z, 0.0)
        count[r["layer"]][np.ix_(idx, idx)] += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclass
class Tree:
    """A branching layout: per layer, the groups of task indices sharing one copy of it."""

    layout: list[list[tuple[int, ...]]]
    score: float
    params: float
    steps: list[str] = field(default_factory=list)

    def branches(self, tasks: Sequence[str]) -> list[list[list[str]]]:
        """The `branches:` option of the `branched` model."""
        return [[[tasks[i] for i in g] for g in layer] for layer in self.layout]


def _tree_score(layout: list[list[tuple[int, ...]]], pair: np.ndarray) -> float:
    return float(sum(pair[l][np.ix_(g, g)][np.triu_indices(len(g), 1)].sum() for l, groups in enumerate(layout)
                     for g in groups))


def propose_tree(layer_affinity: np.ndarray, layer_params: Sequence[float], max_params: float) -> Tree:
    """Grow a branching tree greedily (a stated heuristic, Vandenhende et al. 2020 in spirit): start from all
    layers shared; a move splits one group at layer l into two (and so at every later layer), choosing the
    split whose tasks' affinities across it at layers >= l sum lowest (all bipartitions of the group up to 12
    tasks, else a spectral split). Take the move that raises the score, sum over layers and groups of the
    within-group pairwise affinity (Z^l symmetrised), most, as long as the copies' parameters stay within
    `max_params`; stop when no move raises it."""
    A = np.nan_to_num(np.asarray(layer_affinity, dtype=np.float64), nan=0.0)
    L, T, _ = A.shape
    pair = (A + A.transpose(0, 2, 1)) / 2
    sizes = np.asarray(layer_params, dtype=np.float64)
    if len(sizes) != L:
        raise ValueError(f"layer_params has {len(sizes)} entries for {L} layers")
    layout = [[tuple(range(T))] for _ in range(L)]

    def params_of(lay: list) -> float:
        return float(sum(len(groups) * sizes[l] for l, groups in enumerate(lay)))

    if params_of(layout) > max_params:
        raise ValueError(f"the all-shared network already needs {params_of(layout):.0f} trunk parameters "
                         f"(> max_params {max_params:.0f})")
    steps = []
    while True:
        best = None
        for l in range(L):
            for g in layout[l]:
                if len(g) < 2:
                    continue
                for a in _bipartitions(g, pair[l:].sum(0)):
                    b = tuple(i for i in g if i not in a)
                    new = [list(groups) for groups in layout]
                    for m in range(l, L):
                        out = []
                        for h in new[m]:
                            if set(h) <= set(g):
                                out += [x for x in (tuple(i for i in h if i in a), tuple(i for i in h if i in b)) if x]
                            else:
                                out.append(h)
                        new[m] = sorted(out)
                    gain = _tree_score(new, pair) - _tree_score(layout, pair)
                    if gain > 1e-12 and params_of(new) <= max_params + 1e-9 and (best is None or gain > best[0]):
                        best = (gain, new, f"split {list(g)} at layer {l} into {list(a)} / {list(b)} (+{gain:.4g})")
        if best is None:
            break
        layout = best[1]
        steps.append(best[2])
    return Tree(layout, _tree_score(layout, pair), params_of(layout), steps)


def _bipartitions(g: tuple[int, ...], pair: np.ndarray) -> list[tuple[int, ...]]:
    """One side of every split of `g` into two non-empty parts (up to 12 tasks), else of the spectral split."""
    g = tuple(g)
    if len(g) <= 12:
        first, rest = g[0], g[1:]
        out = []
        for k in range(0, len(rest)):
            for c in itertools.combinations(rest, k):
                out.append((first,) + c)
        return out
    W = pair[np.ix_(g, g)]
    vals, vecs = np.linalg.eigh(np.diag(W.sum(1)) - W)
    side = vecs[:, 1] >= 0
    return [tuple(i for i, s in zip(g, side) if s)]


def branched_config(cfg: Any, branches: Any = None) -> Any:
    """`cfg` with its model replaced by `branched` (the options `branched` shares with the configured model
    kept) and the given `branches` (None: every layer shared, i.e. hard sharing)."""
    import inspect

    from multitask import config as cfgmod
    from multitask.models.branched import Branched

    kind = cfgmod.input_kind(cfg)
    accepted = set(inspect.signature(Branched.image if kind == "image" else Branched.tabular).parameters)
    raw = cfg.model_dump(mode="json")
    options = {k: v for k, v in cfg.model.options.items() if k in accepted and k != "branches"}
    raw["model"] = {"name": "branched", **options, **({"branches": branches} if branches is not None else {})}
    raw["baselines"] = "none"
    raw["diagnostics"] = None
    return cfgmod.validate(raw, deep=False)


def tree_from_config(cfg: Any, out: str | Path, param_budget: float = 2.0, every: int = 10,
                     epochs: int | None = None, lr: float | None = None, normalized: bool = True) -> dict:
    """`multitask group --tree`: train the all-shared branched network recording affinity by depth, grow a
    tree within `param_budget` x the all-shared trunk's parameters, and write OUT/tree.yaml (a config that
    `multitask train` runs) and OUT/tree.json."""
    from multitask import config as cfgmod
    from multitask import experiment
    from multitask.jsonio import write_json, write_text_atomic
    from multitask.training import Trainer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shared_cfg = branched_config(cfg)
    if epochs is not None:
        shared_cfg = cfgmod.validate({**shared_cfg.model_dump(mode="json"),
                                      "trainer": {**shared_cfg.trainer.model_dump(), "epochs": int(epochs)}}, deep=False)
    run = out / "runs" / "depth-affinity"
    experiment.prepare_run_dir(run)
    bundle = experiment.load_data(shared_cfg)
    experiment.write_run_files(run, shared_cfg, bundle)
    tasks = [t.name for t in bundle.tasks]
    model = experiment.build_model(shared_cfg, bundle.tasks, bundle.preprocessor.schema)
    trainer = Trainer(model, bundle.tasks, experiment.build_balancer(shared_cfg, bundle.tasks),
                      experiment.trainer_config(shared_cfg), run_dir=run)
    trainer.fit(bundle.training_data(), bundle.val, callbacks=[LayerAffinity(every, lr)])
    A = read_layer_affinity(run, tasks, normalized)
    sizes = [float(sum(p.numel() for p in layer.parameters())) for layer in model.trunk]
    tree = propose_tree(A, sizes, param_budget * sum(sizes))
    branches = tree.branches(tasks)
    tree_cfg = branched_config(cfg, branches)
    write_text_atomic(out / "tree.yaml", cfgmod.dump(tree_cfg))
    result = {"tasks": tasks, "branches": branches, "score": tree.score, "trunk_parameters": tree.params,
              "all_shared_trunk_parameters": float(sum(sizes)), "param_budget": param_budget, "moves": tree.steps,
              "layer_affinity": A.tolist(), "normalized_affinity": normalized, "seconds": time.perf_counter() - start, "config": str(out / "tree.yaml")}
    write_json(out / "tree.json", result)
    return result
