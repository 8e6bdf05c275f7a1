"""Preference sweeps on VLMOP2, LibMOON's synthetic two-objective problem with a concave Pareto front:
linear scalarisation, multitask's EPO (balancing/epo.py) and LibMOON's EPO_LP, from the same starts with the
same optimiser. Does each method land on the front, on its preference ray, and how much of the front does the
set cover (hypervolume)?

    f1(x) = 1 - exp(-||x - 1/sqrt(n)||^2),  f2(x) = 1 - exp(-||x + 1/sqrt(n)||^2),  x in R^n, n = 10.

The Pareto set is x = t/sqrt(n) * (1, ..., 1), t in [-1, 1], so the front is (1 - exp(-(1-t)^2),
1 - exp(-(1+t)^2)). EPO's target for preference r is the front point with r1 f1 = r2 f2. Linear scalarisation
minimises r1 f1 + r2 f2, which on a concave front can only reach its two ends.

Each run: x0 ~ U[-1, 1]^n (seeded per preference, the same for every method), 1,500 Adam steps (lr 0.01,
written out in numpy so both environments run the identical loop), direction sum_i w_i grad f_i with w from
the method. LibMOON's LP runs in a separate Python with numpy, cvxpy and cvxopt (EPO_PYTHON), read from a
checkout (LIBMOON_PATH, LIBMOON_COMMIT), as in benchmarks/epo_libmoon.py; without them its column is left out.
    EPO_PYTHON=... LIBMOON_PATH=... LIBMOON_COMMIT=... python benchmarks/pareto_vlmop2.py
Writes docs/benchmarks/pareto_vlmop2.{md,json,png}.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from multitask.balancing.epo import epo_weights, non_uniformity
from multitask.pareto import hypervolume, simplex_grid

N_VAR, STEPS, LR, N_PREFS = 10, 1500, 0.01, 8

LOOP = r"""
import numpy as np
def vlmop2(x):
    n = len(x)
    a, b = x - 1 / np.sqrt(n), x + 1 / np.sqrt(n)
    ea, eb = np.exp(-(a @ a)), np.exp(-(b @ b))
    return np.array([1 - ea, 1 - eb]), np.stack([2 * a * ea, 2 * b * eb])
def run(x0, r, weights, steps, lr):
    x = np.array(x0, float); m = np.zeros_like(x); v = np.zeros_like(x)
    for k in range(1, steps + 1):
        f, G = vlmop2(x)
        d = weights(G, f, r) @ G
        m = 0.9 * m + 0.1 * d; v = 0.999 * v + 0.001 * d * d
        x = x - lr * (m / (1 - 0.9 ** k)) / (np.sqrt(v / (1 - 0.999 ** k)) + 1e-8)
    return vlmop2(x)[0].tolist()
"""

THEIRS = r"""
import json, sys
import numpy as np
import cvxpy as cp
import cvxopt
import cvxopt.glpk
source = open(sys.argv[1]).read()
exec(source[source.index("class EPO_LP"):source.index("def solve_epo")])
exec(sys.argv[2])
job = json.load(sys.stdin)
out = []
for x0, r in zip(job["starts"], job["prefs"]):
    lp = EPO_LP(m=2, n=len(x0), r=np.array(r), eps=1e-3)
    def weights(G, f, r):
        a = lp.get_alpha(f, G=G @ G.T, C=True)
        return np.array(r) / np.sum(r) if a is None else np.asarray(a)  # LibMOON's own fallback
    out.append(run(x0, r, weights, job["steps"], job["lr"]))
print(json.dumps(out))
"""

namespace: dict = {}
exec(LOOP, namespace)
run = namespace["run"]


def front(n: int = 2001) -> np.ndarray:
    t = np.linspace(-1, 1, n)
    return np.stack([1 - np.exp(-(1 - t) ** 2), 1 - np.exp(-(1 + t) ** 2)], axis=1)


def distance_to_front(points: np.ndarray, curve: np.ndarray) -> np.ndarray:
    return np.min(np.linalg.norm(points[:, None, :] - curve[None], axis=2), axis=1)


def main() -> None:
    prefs = simplex_grid(2, N_PREFS, interior=True)
    starts = [np.random.default_rng(k).uniform(-1, 1, N_VAR) for k in range(len(prefs))]
    results: dict[str, list[list[float]]] = {}
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    results["linear scalarisation"] = [run(x0, p, lambda G, f, r: np.asarray(r), STEPS, LR)
                                       for x0, p in zip(starts, prefs)]
    seconds["linear scalarisation"] = time.perf_counter() - t
    t = time.perf_counter()
    results["EPO (multitask)"] = [run(x0, p, lambda G, f, r: epo_weights(G @ G.T, f, r)[0], STEPS, LR)
                                  for x0, p in zip(starts, prefs)]
    seconds["EPO (multitask)"] = time.perf_counter() - t
    python, libmoon = os.environ.get("EPO_PYTHON"), os.environ.get("LIBMOON_PATH")
    if python and libmoon:
        source = Path(libmoon) / "libmoon" / "solver" / "gradient" / "methods" / "epo_solver.py"
        job = {"starts": [s.tolist() for s in starts], "prefs": prefs.tolist(), "steps": STEPS, "lr": LR}
        t = time.perf_counter()
        results["EPO (LibMOON EPO_LP)"] = json.loads(subprocess.run(
            [python, "-c", THEIRS, str(source), LOOP], input=json.dumps(job), text=True, capture_output=True,
            check=True).stdout)
        seconds["EPO (LibMOON EPO_LP)"] = time.perf_counter() - t
    curve = front()
    rows = []
    for name, pts in results.items():
        pts = np.array(pts)
        mus = [non_uniformity(f, p) for f, p in zip(pts, prefs)]
        rows.append({"method": name, "hypervolume": hypervolume(pts, [1.0, 1.0]),
                     "max_distance_to_front": float(distance_to_front(pts, curve).max()),
                     "median_mu": float(np.median(mus)), "max_mu": float(np.max(mus)),
                     "distinct_points": int(len(np.unique(np.round(pts, 3), axis=0))),
                     "seconds": seconds[name], "points": pts.tolist()})
    best = hypervolume(curve, [1.0, 1.0])
    commit = os.environ.get("LIBMOON_COMMIT", "")
    lines = ["# Preference sweep on VLMOP2 (concave front): linear scalarisation against EPO", "",
             f"n = {N_VAR} variables, {len(prefs)} preferences r = (k/9, 1 - k/9), k = 1..8 (the interior grid "
             f"of `multitask.pareto.simplex_grid`), {STEPS} Adam steps (lr {LR}) from the same seeded start per "
             "preference. mu: EPO's non-uniformity KL(r*f / sum || uniform), 0 exactly on the preference ray. "
             f"Hypervolume at reference (1, 1); the whole front's is {best:.4f}. "
             + (f"LibMOON at commit {commit}. " if commit else "")
             + "Times: wall seconds for all preferences, one process, 2 CPUs shared with other work.", "",
             "| method | hypervolume | distinct end points | max distance to the front | median mu | max mu | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['hypervolume']:.4f} | {r['distinct_points']} | "
                     f"{r['max_distance_to_front']:.1e} | {r['median_mu']:.1e} | {r['max_mu']:.1e} | "
                     f"{r['seconds']:.1f} |")
    if len(rows) == 3:
        diff = np.abs(np.array(rows[1]["points"]) - np.array(rows[2]["points"])).max()
        lines += ["", f"Largest difference between the end points of the two EPO implementations: {diff:.1e}."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    (out / "pareto_vlmop2.md").write_text(text)
    (out / "pareto_vlmop2.json").write_text(json.dumps({"preferences": prefs.tolist(), "rows": rows}, indent=2) + "\n")
    _plot(curve, prefs, rows, out / "pareto_vlmop2.png")


def _plot(curve: np.ndarray, prefs: np.ndarray, rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot(curve[:, 0], curve[:, 1], color="#999999", linewidth=1, label="Pareto front")
    for p in prefs:  # the ray r1 f1 = r2 f2, i.e. f2 = (r1 / r2) f1
        s = np.linspace(0, 1, 2)
        ax.plot(s, s * p[0] / p[1], color="#dddddd", linewidth=0.8, linestyle="--")
    marks = {"linear scalarisation": ("s", "#d62728", 60), "EPO (multitask)": ("o", "#1f77b4", 50),
             "EPO (LibMOON EPO_LP)": ("x", "#000000", 40)}
    for r in rows:
        pts = np.array(r["points"])
        m, c, s = marks[r["method"]]
        ax.scatter(pts[:, 0], pts[:, 1], marker=m, s=s, label=r["method"],
                   **({"facecolors": "none", "edgecolors": c} if m != "x" else {"color": c}))
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("f1")
    ax.set_ylabel("f2")
    ax.set_title("VLMOP2: end points per preference (dashed: preference rays)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
