"""multitask.pareto.hypervolume against pymoo's HV indicator (the one LibMOON's `compute_hv` calls), on seeded
point sets in 2-5 objectives: the largest relative difference, and the median time of each (5 repeats).

pymoo is not a dependency of multitask: it runs in its own environment, given by PYMOO_PYTHON, e.g.
    python3 -m venv /tmp/pymoo-venv && /tmp/pymoo-venv/bin/pip install pymoo
    PYMOO_PYTHON=/tmp/pymoo-venv/bin/python python benchmarks/hypervolume.py
Writes docs/benchmarks/hypervolume.{md,json}.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from multitask.pareto import hypervolume, nondominated

CASES = [(2, 20), (2, 200), (3, 20), (3, 100), (4, 20), (4, 50), (5, 15)]
REPEATS = 5

PYMOO_SCRIPT = r"""
import json, sys, time, statistics
import numpy as np
from pymoo.indicators.hv import HV
cases = json.load(sys.stdin)
out = []
for c in cases:
    pts, ref = np.array(c["points"]), np.array(c["reference"])
    times = []
    for _ in range(c["repeats"]):
        t = time.perf_counter(); v = float(HV(ref_point=ref)(pts)); times.append(time.perf_counter() - t)
    out.append({"hv": v, "seconds": statistics.median(times)})
import pymoo
print(json.dumps({"version": pymoo.__version__, "results": out}))
"""


def point_set(d: int, n: int, seed: int) -> np.ndarray:
    """n points: about half on a concave front (the unit sphere's positive part), the rest dominated copies
    moved away from it, plus two duplicates."""
    rng = np.random.default_rng(seed)
    k = n // 2
    front = np.abs(rng.normal(size=(k, d)))
    front /= np.linalg.norm(front, axis=1, keepdims=True)
    behind = front[rng.integers(0, k, n - k - 2)] + rng.uniform(0.01, 0.3, (n - k - 2, d))
    return np.vstack([front, behind, front[:2]])


def main() -> None:
    python = os.environ.get("PYMOO_PYTHON")
    if not python:
        sys.exit("set PYMOO_PYTHON to a Python with pymoo installed (see the module docstring)")
    cases = []
    for seed, (d, n) in enumerate(CASES):
        pts = point_set(d, n, seed)
        cases.append({"d": d, "n": n, "front": int(nondominated(pts).sum()), "points": pts.tolist(),
                      "reference": [1.2] * d, "repeats": REPEATS})
    theirs = json.loads(subprocess.run([python, "-c", PYMOO_SCRIPT], input=json.dumps(cases), text=True,
                                       capture_output=True, check=True).stdout)
    rows = []
    for c, t in zip(cases, theirs["results"]):
        pts, ref = np.array(c["points"]), np.array(c["reference"])
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            ours = hypervolume(pts, ref)
            times.append(time.perf_counter() - start)
        rows.append({"objectives": c["d"], "points": c["n"], "on_front": c["front"], "multitask": ours,
                     "pymoo": t["hv"], "relative_difference": abs(ours - t["hv"]) / t["hv"],
                     "multitask_ms": 1000 * statistics.median(times), "pymoo_ms": 1000 * t["seconds"]})
    lines = [f"# Hypervolume: multitask.pareto against pymoo {theirs['version']}", "",
             "Seeded point sets (half on the positive unit sphere, half dominated copies, two duplicates), "
             "reference point 1.2 on every axis; median of "
             f"{REPEATS} runs each, one process, {os.cpu_count()} CPUs shared with other work.", "",
             "| objectives | points | on front | multitask | pymoo | relative difference | multitask ms | pymoo ms "
             "| time ratio (multitask / pymoo) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['objectives']} | {r['points']} | {r['on_front']} | {r['multitask']:.10g} | "
                     f"{r['pymoo']:.10g} | {r['relative_difference']:.1e} | {r['multitask_ms']:.2f} | "
                     f"{r['pymoo_ms']:.2f} | {r['multitask_ms'] / r['pymoo_ms']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    (out / "hypervolume.md").write_text(text)
    (out / "hypervolume.json").write_text(json.dumps({"pymoo": theirs["version"], "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
