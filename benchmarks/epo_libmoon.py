"""multitask's EPO weights (balancing/epo.py, HiGHS) against LibMOON's EPO_LP (cvxpy + GLPK) on seeded random
steps: Gramians of 2-5 tasks, losses, preferences. Reports how often the two programmes pick the same move
(balance / descent), the largest difference of the objective value each reaches, and of the weights.

LibMOON is not a dependency: its epo_solver.py is read from a checkout (LIBMOON_PATH) and its LP class and
helpers are run, unchanged, in a separate Python that has numpy, cvxpy and cvxopt (EPO_PYTHON); its module-level
imports of torch, matplotlib and LibMOON's test problems are left out because the LP does not use them.
LibMOON's solver is constructed with r = 1 / pref (its preference is a ray in loss space); here both get the
paper's r directly.
    EPO_PYTHON=/tmp/pymoo-venv/bin/python LIBMOON_PATH=... LIBMOON_COMMIT=... python benchmarks/epo_libmoon.py
Writes docs/benchmarks/epo_libmoon.{md,json}.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from multitask.balancing.epo import adjustment, epo_weights

CASES_PER_SIZE = 60
EPS = 1e-3

THEIRS = r"""
import json, sys
import numpy as np
import cvxpy as cp
import cvxopt
import cvxopt.glpk
source = open(sys.argv[1]).read()
start = source.index("class EPO_LP")
end = source.index("def solve_epo")
exec(source[start:end])  # EPO_LP, mu, adjustments as LibMOON wrote them
out = []
for c in json.load(sys.stdin):
    lp = EPO_LP(m=len(c["losses"]), n=1, r=np.array(c["r"]), eps=c["eps"])
    alpha = lp.get_alpha(np.array(c["losses"]), G=np.array(c["gramian"]), C=True)
    out.append({"alpha": None if alpha is None else [float(a) for a in alpha], "move": lp.last_move})
print(json.dumps(out))
"""


def cases(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for m in (2, 3, 4, 5):
        for k in range(CASES_PER_SIZE):
            G = rng.normal(size=(m, 8))
            if k % 3 == 0:  # conflicting gradients: one task's gradient partly opposes the others
                G[0] = -0.7 * G[1:].sum(0) + 0.3 * G[0]
            r = rng.uniform(0.2, 2.0, m)
            losses = rng.uniform(0.2, 2.0, m)
            if k % 4 == 0:  # on the preference ray: the descent programme
                losses = (1.0 / r) * rng.uniform(0.9999, 1.0001, m)
            out.append({"gramian": (G @ G.T).tolist(), "losses": losses.tolist(), "r": r.tolist(), "eps": EPS})
    return out


def objective(c: dict, beta: np.ndarray, move: str) -> float:
    """The value of the programme that was solved, on the scaled Gramian (as multitask solves it)."""
    C = np.array(c["gramian"])
    C = C / np.max(np.diag(C))
    a, _ = adjustment(np.array(c["losses"]), np.array(c["r"]))
    return float(beta @ C @ a) if move == "balance" else float((C @ beta).sum())


def main() -> None:
    python, libmoon = os.environ.get("EPO_PYTHON"), os.environ.get("LIBMOON_PATH")
    if not python or not libmoon:
        sys.exit("set EPO_PYTHON (a Python with numpy, cvxpy, cvxopt) and LIBMOON_PATH (a LibMOON checkout)")
    source = Path(libmoon) / "libmoon" / "solver" / "gradient" / "methods" / "epo_solver.py"
    cs = cases()
    theirs = json.loads(subprocess.run([python, "-c", THEIRS, str(source)], input=json.dumps(cs), text=True,
                                       capture_output=True, check=True).stdout)
    rows = []
    for m in (2, 3, 4, 5):
        same_move = n = failed = relaxed = 0
        d_obj = d_beta = 0.0
        for c, t in zip(cs, theirs):
            if len(c["losses"]) != m:
                continue
            n += 1
            beta, move = epo_weights(np.array(c["gramian"]), np.array(c["losses"]), np.array(c["r"]), EPS)
            if t["alpha"] is None:  # GLPK found the programme infeasible
                failed += 1
                continue
            if move == "relaxed":
                relaxed += 1
                continue
            alpha = np.array(t["alpha"])
            their_move = {"bal": "balance", "dom": "descent"}[t["move"]]
            same_move += their_move == move
            if their_move == move:
                d_obj = max(d_obj, abs(objective(c, beta, move) - objective(c, alpha, move)))
                d_beta = max(d_beta, float(np.abs(beta - alpha).max()))
        rows.append({"tasks": m, "cases": n, "same_move": same_move, "libmoon_infeasible": failed,
                     "multitask_relaxed": relaxed, "max_objective_difference": d_obj, "max_weight_difference": d_beta})
    commit = os.environ.get("LIBMOON_COMMIT", "unknown commit")
    lines = [f"# EPO: multitask (HiGHS) against LibMOON's EPO_LP (cvxpy + GLPK; LibMOON {commit})", "",
             f"{CASES_PER_SIZE} seeded random steps per number of tasks (8-dimensional gradients, a third of them "
             "with a strongly conflicting task, a quarter on the preference ray), eps = 1e-3. Objective: the value "
             "of the programme both solved (balance: βᵀCa; descent: 1ᵀCβ), on the Gramian scaled by its largest "
             "diagonal entry. Weights may differ where a programme has several optima.", "",
             "| tasks | cases | same move | LibMOON infeasible | multitask relaxed | max objective difference "
             "| max weight difference |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tasks']} | {r['cases']} | {r['same_move']} | {r['libmoon_infeasible']} | "
                     f"{r['multitask_relaxed']} | {r['max_objective_difference']:.1e} | "
                     f"{r['max_weight_difference']:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    (out / "epo_libmoon.md").write_text(text)
    (out / "epo_libmoon.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
