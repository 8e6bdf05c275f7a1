"""The Pareto front of a multi-task problem: preference vectors, non-dominated points, hypervolume, and the
`sweep` that trains one model per preference.

Without an explicit importance of the tasks there is no single best model, only a front of trade-offs. A sweep
trains one model per preference vector p on the simplex, either by linear scalarisation (the `static` balancer,
L = sum_t p_t L_t) or by EPO search (the `epo` balancer, Mahapatra & Rajan 2020, which steers towards the point
where p_t L_t is equal for every task), then reads each run's metrics and keeps the non-dominated ones.

Every objective is turned into a cost (lower is better: a metric where higher is better is negated), so the
hypervolume is the measure of the region dominated by the points and bounded by a reference point r:
HV(P) = vol( union_{p in P} [p, r] ). 2-D is exact by a sweep over the sorted points, 3-D exact by slicing along
the third axis (a 2-D hypervolume per slab), higher dimensions exactly by recursive slicing (fine for the
handful of points a sweep makes).
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from multitask.metrics import HIGHER_IS_BETTER

METHODS = ("linear", "epo")


# ------------------------------------------------------------------------------------------ preferences
def simplex_lattice(n_tasks: int, divisions: int) -> np.ndarray:
    """All vectors on the simplex whose entries are multiples of 1/divisions (Das & Dennis 1998), sorted
    lexicographically from the last task's corner; C(divisions + n_tasks - 1, n_tasks - 1) rows."""
    if n_tasks < 1 or divisions < 1:
        raise ValueError(f"simplex lattice needs n_tasks >= 1 and divisions >= 1, got {n_tasks}, {divisions}")
    rows = [c for c in itertools.product(range(divisions + 1), repeat=n_tasks - 1) if sum(c) <= divisions]
    grid = np.array([[*c, divisions - sum(c)] for c in rows], dtype=float) / divisions
    return grid


def lattice_size(n_tasks: int, divisions: int) -> int:
    """How many points `simplex_lattice(n_tasks, divisions)` has."""
    return math.comb(divisions + n_tasks - 1, n_tasks - 1)


def simplex_grid(n_tasks: int, n: int, interior: bool = False) -> np.ndarray:
    """An even grid of preference vectors on the simplex: the finest lattice with at most `n` points (exactly
    `n` for two tasks). `interior` keeps the grid off the faces (every entry > 0), for methods such as EPO that
    divide by the preference: the lattice of n_tasks + divisions divisions, shifted by one step in every entry."""
    if n_tasks < 2:
        raise ValueError(f"a preference sweep needs at least two tasks, got {n_tasks}")
    least = 1 if interior else n_tasks
    if n < least:
        raise ValueError(f"--preferences must be at least {least} for {n_tasks} tasks"
                         f"{'' if interior else ' (the corners of the simplex)'}, got {n}")
    if interior:  # points p = (c + 1) / (H + T) with sum(c) = H: every entry at least 1 / (H + T)
        h = 0
        while lattice_size(n_tasks, h + 1) <= n:
            h += 1
        if h == 0:
            return np.full((1, n_tasks), 1.0 / n_tasks)
        return (simplex_lattice(n_tasks, h) * h + 1.0) / (h + n_tasks)
    h = 1
    while lattice_size(n_tasks, h + 1) <= n:
        h += 1
    return simplex_lattice(n_tasks, h)


# ------------------------------------------------------------------------------------------ dominance
def as_costs(values: np.ndarray, higher_is_better: Sequence[bool]) -> np.ndarray:
    """Objectives as costs (lower is better): columns where higher is better are negated."""
    values = np.asarray(values, dtype=float)
    sign = np.array([-1.0 if h else 1.0 for h in higher_is_better])
    return values * sign


def nondominated(costs: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (another row <= everywhere and < somewhere). Duplicates
    of a non-dominated point are all kept."""
    costs = np.asarray(costs, dtype=float)
    keep = np.ones(len(costs), dtype=bool)
    for i, c in enumerate(costs):
        dominated_by = np.all(costs <= c, axis=1) & np.any(costs < c, axis=1)
        keep[i] = not dominated_by.any()
    return keep


def default_reference(costs: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """A reference point just beyond the worst cost on each axis: worst + margin * range (or + margin * |worst|,
    or + margin, where every point ties), so that the extreme points of the front count too."""
    costs = np.asarray(costs, dtype=float)
    worst, best = costs.max(axis=0), costs.min(axis=0)
    span = worst - best
    span = np.where(span > 0, span, np.where(worst != 0, np.abs(worst), 1.0))
    return worst + margin * span


# ------------------------------------------------------------------------------------------ hypervolume
def _clip(costs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The points that dominate part of the box below the reference (strictly better on every axis)."""
    costs = np.asarray(costs, dtype=float).reshape(-1, len(reference))
    if not np.all(np.isfinite(costs)):
        raise ValueError("hypervolume: the points hold NaN or infinite values")
    return costs[np.all(costs < reference, axis=1)]


def hypervolume_2d(costs: np.ndarray, reference: Sequence[float]) -> float:
    """Exact 2-D hypervolume: sort by the first cost, sweep, add the rectangle each new best second cost adds."""
    ref = np.asarray(reference, dtype=float)
    pts = _clip(costs, ref)
    if len(pts) == 0:
        return 0.0
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    area, level = 0.0, ref[1]
    for x, y in pts:
        if y < level:  # a point that lowers the staircase; dominated and duplicate points add nothing
            area += (ref[0] - x) * (level - y)
            level = y
    return float(area)


def hypervolume_3d(costs: np.ndarray, reference: Sequence[float]) -> float:
    """Exact 3-D hypervolume by slicing along the third axis: between consecutive third costs z_k < z_{k+1}
    the dominated region's cross-section is the 2-D hypervolume of the points with z <= z_k."""
    return _slices(costs, reference)


def _slices(costs: np.ndarray, reference: Sequence[float]) -> float:
    """Hypervolume in d >= 3 dimensions: slabs along the last axis, each a (d-1)-dimensional hypervolume."""
    ref = np.asarray(reference, dtype=float)
    pts = _clip(costs, ref)
    if len(pts) == 0:
        return 0.0
    pts = np.unique(pts[nondominated(pts)], axis=0)  # dominated points and duplicates add nothing
    pts = pts[np.argsort(pts[:, -1], kind="mergesort")]
    levels = np.append(np.unique(pts[:, -1]), ref[-1])
    total = 0.0
    for k in range(len(levels) - 1):
        below = pts[pts[:, -1] <= levels[k], :-1]
        total += hypervolume(below, ref[:-1]) * (levels[k + 1] - levels[k])
    return float(total)


def hypervolume(costs: np.ndarray, reference: Sequence[float]) -> float:
    """The exact hypervolume dominated by `costs` (rows are points, lower is better) below `reference`."""
    ref = np.asarray(reference, dtype=float)
    if ref.ndim != 1 or len(ref) < 1:
        raise ValueError(f"hypervolume: reference must be a vector, got shape {ref.shape}")
    if len(ref) == 1:
        pts = _clip(costs, ref)
        return float(ref[0] - pts[:, 0].min()) if len(pts) else 0.0
    if len(ref) == 2:
        return hypervolume_2d(costs, ref)
    return _slices(costs, ref)


# ------------------------------------------------------------------------------------------ fronts of runs
def objective_names(final: dict[str, Any], objectives: Sequence[str] | None = None, split: str = "test",
                    limit: int = 3) -> list[str]:
    """The objectives ("task.metric") a front is drawn in: the given ones (checked), or the first metric of each
    of the first `limit` tasks of the run."""
    metrics = final.get(split) or {}
    if objectives:
        for o in objectives:
            task, _, metric = o.partition(".")
            if task not in metrics or metric not in metrics[task]:
                have = ", ".join(f"{t}.{m}" for t, ms in metrics.items() for m in ms)
                raise KeyError(f"objective {o!r} is not a {split} metric of the runs; they have {have}")
        return list(objectives)
    return [f"{t}.{next(iter(ms))}" for t, ms in list(metrics.items())[:limit] if ms]


def objective_values(final: dict[str, Any], objectives: Sequence[str], split: str = "test") -> np.ndarray:
    """The values of the objectives in one run's final.json (NaN where the run lacks one)."""
    metrics = final.get(split) or {}
    out = []
    for o in objectives:
        task, _, metric = o.partition(".")
        v = (metrics.get(task) or {}).get(metric)
        out.append(math.nan if v is None else float(v))
    return np.array(out, dtype=float)


def higher_is_better(objectives: Sequence[str]) -> list[bool]:
    """Whether each "task.metric" objective is better when higher."""
    return [HIGHER_IS_BETTER[o.partition(".")[2]] for o in objectives]


def front_summary(finals: Sequence[dict[str, Any]], objectives: Sequence[str], split: str = "test",
                  reference: Sequence[float] | None = None) -> dict[str, Any]:
    """Objectives, each run's values, which runs are on the front, the reference point (in costs) and the
    hypervolume, for a set of runs' final.json records."""
    values = np.array([objective_values(f, objectives, split) for f in finals])
    finite = np.all(np.isfinite(values), axis=1)
    costs = as_costs(values, higher_is_better(objectives))
    front = np.zeros(len(values), dtype=bool)
    front[finite] = nondominated(costs[finite])
    ref = (np.asarray(reference, dtype=float) if reference is not None
           else default_reference(costs[finite]) if finite.any() else None)
    if ref is not None and len(ref) != len(objectives):
        raise ValueError(f"reference has {len(ref)} values for {len(objectives)} objectives")
    hv = hypervolume(costs[finite], ref) if ref is not None else math.nan
    return {"split": split, "objectives": list(objectives), "higher_is_better": higher_is_better(objectives),
            "values": values.tolist(), "on_front": front.tolist(),
            "reference_cost": None if ref is None else ref.tolist(), "hypervolume": hv}


# ------------------------------------------------------------------------------------------ the sweep
def preference_config(raw: dict[str, Any], tasks: Sequence[str], preference: Sequence[float], method: str,
                      baseline: str | None) -> dict[str, Any]:
    """A run's config (as a dict) for one preference vector: the balancer set by the method, baselines read
    from the sweep's shared baseline run instead of trained again."""
    weights = {t: float(p) for t, p in zip(tasks, preference)}
    out = {**raw}
    if method == "linear":
        out["balancer"] = {"name": "static", "weights": weights}
    elif method == "epo":
        keep = {k: v for k, v in (raw.get("balancer") or {}).items()
                if raw.get("balancer", {}).get("name") == "epo" and k not in ("name", "preference")}
        out["balancer"] = {"name": "epo", **keep, "preference": weights}
    else:
        raise ValueError(f"sweep method must be one of {METHODS}, got {method!r}")
    if baseline is not None:
        out["baselines"] = baseline
    return out


def sweep(config_path: str | Path, n: int, out: str | Path, method: str = "linear",
          overrides: Sequence[str] = (), objectives: Sequence[str] | None = None, split: str = "test",
          report: bool = True, run_reports: bool = True, interior: bool = False,
          resume: bool = False) -> dict[str, Any]:
    """Train one run per preference vector of `simplex_grid` into `out/pref-XX`, the single-task baselines once
    (into `out/baseline`, when the config asks for them), and write `out/sweep.json` (preferences, runs, the
    front and its hypervolume) and `out/report.html` with the Pareto plot (`report`), and each run's own
    report.html (`run_reports`; a failure there is a warning). `interior` keeps the grid off the simplex's faces
    (no task weighted 0; always so for EPO). `resume` keeps the runs (and baseline) of an interrupted sweep
    that finished with the same config, and trains the others. Returns the sweep record."""
    from multitask import config as cfgmod
    from multitask import experiment
    from multitask.config import ConfigError
    from multitask.jsonio import write_json

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    cfg = cfgmod.load(config_path, list(overrides))
    out = Path(out)
    experiment.prepare_run_dir(out)
    bundle_tasks = _task_names(cfg)
    try:
        prefs = simplex_grid(len(bundle_tasks), n, interior=interior or method == "epo")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for o in objectives or ():  # checked before any training: a typo must not cost a whole sweep
        task, _, metric = o.partition(".")
        if task not in bundle_tasks or metric not in HIGHER_IS_BETTER:
            raise ConfigError(f"--objectives: {o!r} is not TASK.METRIC with a task of this config "
                              f"({', '.join(bundle_tasks)}) and a metric ({', '.join(HIGHER_IS_BETTER)})")
    raw = cfg.model_dump(mode="json")
    baseline = None
    if cfg.baselines == "auto" and cfg.model.name != "independent":
        base_cfg = experiment.baseline_config(cfg)
        if resume and _finished(out / "baseline", base_cfg):
            print(f"[multitask] sweep: keeping the finished baselines in {out / 'baseline'}")
        else:
            print(f"[multitask] sweep: single-task baselines once, into {out / 'baseline'}")
            experiment.run(base_cfg, out / "baseline")
        baseline = str(out / "baseline" / "final.json")
    runs = []
    for k, p in enumerate(prefs):
        run_cfg = cfgmod.validate(preference_config(raw, bundle_tasks, p, method, baseline))
        run_dir = out / f"pref-{k:02d}"
        shown = ", ".join(f"{t}={v:.2f}" for t, v in zip(bundle_tasks, p))
        if resume and _finished(run_dir, run_cfg):
            print(f"[multitask] sweep {k + 1}/{len(prefs)}: preference {shown}: finished before, kept")
            final = experiment.read_final(run_dir / "final.json")
        else:
            print(f"[multitask] sweep {k + 1}/{len(prefs)}: preference {shown}")
            final = experiment.run(run_cfg, run_dir)
            if run_reports:
                _run_report(run_dir)
        runs.append({"dir": run_dir.name, "preference": dict(zip(bundle_tasks, map(float, p))), "final": final})
    names = objective_names(runs[0]["final"], objectives, split)
    front = front_summary([r["final"] for r in runs], names, split)
    record = {"config": str(config_path), "method": method, "interior": bool(interior or method == "epo"),
              "tasks": bundle_tasks,
              "preferences": prefs.tolist(), "runs": [{k: v for k, v in r.items() if k != "final"} for r in runs],
              "front": front}
    write_json(out / "sweep.json", record)
    if report:
        from multitask.report import write_report

        write_report([out / r["dir"] for r in runs], out / "report.html", objectives=names, split=split,
                     title=f"Preference sweep ({method}) of {Path(config_path).name}")
    return record


def _finished(run_dir: Path, cfg: Any) -> bool:
    """Whether `run_dir` holds a finished run (final.json) of exactly this config."""
    from multitask import config as cfgmod

    saved = run_dir / "config.yaml"
    if not (run_dir / "final.json").exists() or not saved.exists():
        return False
    try:
        return saved.read_text(encoding="utf-8") == cfgmod.dump(cfg)
    except (OSError, UnicodeDecodeError):
        return False


def _run_report(run_dir: Path) -> None:
    """A run's own report.html; a failure is a warning (the run's files are written)."""
    import sys

    from multitask.report import write_run_report

    try:
        write_run_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the run is complete whatever the report's problem
        print(f"multitask: warning: {run_dir}: its report was not written ({' '.join(str(e).split())})",
              file=sys.stderr)


def format_front(record: dict[str, Any]) -> str:
    """A sweep's runs as a plain-text table: preference, objective values, whether on the front; then the
    hypervolume and its reference point."""
    front = record["front"]
    names = front["objectives"]
    head = ["run", "preference"] + [f"{n} ({'↑' if h else '↓'})" for n, h in zip(names, front["higher_is_better"])] + ["front"]
    rows = []
    for run, vals, on in zip(record["runs"], front["values"], front["on_front"]):
        pref = "(" + ", ".join(f"{v:.2f}" for v in run["preference"].values()) + ")"
        rows.append([run["dir"], pref] + [f"{v:.4f}" for v in vals] + ["*" if on else ""])
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ref = front["reference_cost"]
    if ref is not None:
        shown = ", ".join(f"{-c if h else c:.4g}" for c, h in zip(ref, front["higher_is_better"]))
        lines += ["", f"{sum(front['on_front'])} of {len(rows)} runs on the front; hypervolume "
                      f"{front['hypervolume']:.4g} (reference point {shown}, {front['split']} metrics)"]
    return "\n".join(lines)


def _task_names(cfg: Any) -> list[str]:
    """The tasks a config trains, in order (reading the data's task list when the config does not name them)."""
    if cfg.tasks:
        return list(cfg.tasks)
    from multitask import experiment

    return [t.name for t in experiment.load_data(cfg).tasks]
