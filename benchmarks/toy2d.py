"""The two-objective toy of CAGrad (Liu et al., 2021), as rescaled by Nash-MTL (Navon et al., 2022) and FAMO
(Liu et al., 2023): does each balancing method, started from five points, end on the Pareto set?

With x = (x1, x2) the only parameter (the "shared representation" is x itself, there are no task heads):

    f1 = log(max(|0.5(-x1-7) - tanh(-x2)|, 5e-6)) + 6     f2 = log(max(|0.5(-x1+3) + tanh(-x2) + 2|, 5e-6)) + 6
    g1 = ((-x1+7)^2 + 0.1(-x2-8)^2)/10 - 20               g2 = ((-x1-7)^2 + 0.1(-x2-8)^2)/10 - 20
    c1 = max(tanh(x2/2), 0)   c2 = max(tanh(-x2/2), 0)    L1 = 0.1 (c1 f1 + c2 g1)   L2 = c1 f2 + c2 g2

Five starts (-8.5, 7.5), (0, 0), (9, 9), (-7.5, -0.5), (9, -1); Adam, lr 1e-3, 35,000 steps; every step is
one `multitask.autograd.backward` call with the method's balancer. Measured per method and start:

- the final (L1, L2) and x;
- whether it ends ON THE PARETO SET: the additive epsilon-indicator of the final (L1, L2) w.r.t. the Pareto
  front (how much, as a fraction of the front's extent in each loss, the point would have to improve in both
  losses at once to reach the front) is at most 1e-3. The front is computed here, independently of the
  methods: weighted sums minimised by L-BFGS-B from the best point of a 1601^2 grid of [-10, 10]^2, then
  cross-checked against the non-dominated points of that grid;
- the distance in x to the Pareto set (reported, not thresholded: the losses barely change across the set in
  the x2 direction, so near-optimal points can lie ~0.3 away from it in x);
- whether it ends Pareto-STATIONARY: |d| / min(|grad L1|, |grad L2|) <= 0.05, d the min-norm point of the
  segment [grad L1, grad L2] (closed form for two vectors); this also flags local traps off the front;
- wall and CPU seconds of the 5 x 35,000 steps.

    python benchmarks/toy2d.py [--steps 35000] [--jobs 1] [--out docs/benchmarks]

Prints the tables (markdown) and writes toy2d_trajectories.png and toy2d_loss_space.png into --out.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from multitask import Task, autograd
from multitask.balancing import BALANCERS
from multitask.models.base import MultiTaskModel

STARTS = [(-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)]
TASKS = [Task("L1", "regression"), Task("L2", "regression")]
REACH_TOL = 1e-3      # epsilon-indicator w.r.t. the Pareto front, relative to its extent in each loss
STATIONARY_TOL = 0.05  # |min-norm point of [g1, g2]| / min(|g1|, |g2|)
FAMO_SHIFT = (-2.1, -21.0)  # the lower bounds FAMO's authors give their toy (-21 * scale, -21), below the minima


# ------------------------------------------------------------------------------------------------ the problem
def toy_losses(x1, x2, lib=torch):
    """(L1, L2) for tensors (lib=torch) or arrays (lib=np) x1, x2 of any (common) shape."""
    clip = (lambda a, lo: torch.clamp(a, min=lo)) if lib is torch else (lambda a, lo: np.maximum(a, lo))
    t = lib.tanh(-x2)
    c1 = clip(lib.tanh(0.5 * x2), 0.0)
    c2 = clip(lib.tanh(-0.5 * x2), 0.0)
    q = 0.1 * (-x2 - 8.0) ** 2
    f1 = lib.log(clip(lib.abs(0.5 * (-x1 - 7.0) - t), 5e-6)) + 6.0
    f2 = lib.log(clip(lib.abs(0.5 * (-x1 + 3.0) + t + 2.0), 5e-6)) + 6.0
    g1 = ((-x1 + 7.0) ** 2 + q) / 10.0 - 20.0
    g2 = ((-x1 - 7.0) ** 2 + q) / 10.0 - 20.0
    return 0.1 * (c1 * f1 + c2 * g1), c1 * f2 + c2 * g2


def toy_loss(x1, x2, task: int):
    """One task's loss (torch), computing only what that task needs: the engine asks for one head at a time."""
    t = torch.tanh(-x2)
    c1 = torch.clamp(torch.tanh(0.5 * x2), min=0.0)
    c2 = torch.clamp(torch.tanh(-0.5 * x2), min=0.0)
    q = 0.1 * (-x2 - 8.0) ** 2
    if task == 0:
        f = torch.log(torch.clamp(torch.abs(0.5 * (-x1 - 7.0) - t), min=5e-6)) + 6.0
        g = ((-x1 + 7.0) ** 2 + q) / 10.0 - 20.0
        return 0.1 * (c1 * f + c2 * g)
    f = torch.log(torch.clamp(torch.abs(0.5 * (-x1 + 3.0) + t + 2.0), min=5e-6)) + 6.0
    g = ((-x1 - 7.0) ** 2 + q) / 10.0 - 20.0
    return c1 * f + c2 * g


class ToyModel(MultiTaskModel):
    """shared() is the parameter x itself; the two 'heads' evaluate L1 and L2 at it (no task parameters)."""

    def __init__(self, start) -> None:
        super().__init__()
        self.task_names = [t.name for t in TASKS]
        self.x = nn.Parameter(torch.tensor(start, dtype=torch.float64))

    def shared(self, inputs):
        return self.x

    def heads(self, rep, tasks):
        return {t: toy_loss(rep[0], rep[1], self.task_names.index(t)) for t in tasks}

    def shared_parameters(self):
        return iter([self.x])

    def task_parameters(self, task):
        return iter(())


def gradients(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    g1 = torch.autograd.grad(toy_loss(p[0], p[1], 0), p)[0].numpy()
    g2 = torch.autograd.grad(toy_loss(p[0], p[1], 1), p)[0].numpy()
    return g1, g2


def stationarity(x: np.ndarray) -> float:
    """|d| / min(|g1|, |g2|), d the min-norm point of the segment [g1, g2] (closed form for two vectors).

    0 when the two gradients are exactly opposed (Pareto-stationary); 1 when they do not conflict at all."""
    g1, g2 = gradients(x)
    diff = g1 - g2
    denom = float(diff @ diff)
    gamma = 0.5 if denom == 0 else float(np.clip((g2 @ (g2 - g1)) / denom, 0.0, 1.0))
    d = gamma * g1 + (1 - gamma) * g2
    small = min(np.linalg.norm(g1), np.linalg.norm(g2))
    return float(np.linalg.norm(d) / small) if small > 0 else 0.0


# ------------------------------------------------------------------------------------------------ the Pareto set
@dataclass
class Pareto:
    xs: np.ndarray        # [n, 2] points of the Pareto set, ordered along it
    front: np.ndarray     # [n, 2] their (L1, L2)
    minima: tuple         # (min L1, min L2) over the box
    dense: np.ndarray     # the front linearly interpolated between those points (for the epsilon-indicator)
    grid_beats: float     # most that a non-dominated grid point improves on the front (-min epsilon-indicator)
    grid_misses: float    # largest epsilon-indicator of a front point w.r.t. the grid front (grid resolution)
    n_grid_front: int


def _nondominated(L: np.ndarray) -> np.ndarray:
    order = np.lexsort((L[:, 1], L[:, 0]))
    best, keep = np.inf, []
    for i in order:
        if L[i, 1] < best:
            keep.append(i)
            best = L[i, 1]
    return np.array(keep)


def compute_pareto(n_grid: int = 1601, n_weights: int = 801) -> Pareto:
    """Weighted sums w * 10 L1 + (1 - w) L2 (L1 carries the factor 0.1, so 10 L1 puts both on one scale),
    each minimised by L-BFGS-B in [-10, 10]^2 from the best point of an n_grid^2 grid; cross-checked against
    the non-dominated points of the same grid (if the front had a non-convex part that weighted sums cannot
    reach, the grid front would show points far from the weighted-sum curve)."""
    from scipy.optimize import minimize

    axis = np.linspace(-10, 10, n_grid)
    X1, X2 = np.meshgrid(axis, axis)
    L1, L2 = toy_losses(X1, X2, np)
    L1, L2 = L1.ravel(), L2.ravel()
    P = np.stack([X1.ravel(), X2.ravel()], 1)

    def f_and_g(x, w):
        p = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        a, b = toy_losses(p[0], p[1])
        v = w * 10.0 * a + (1 - w) * b
        (g,) = torch.autograd.grad(v, p)
        return float(v.detach()), g.numpy()

    xs = []
    for w in np.linspace(0.0, 1.0, n_weights):
        k = int(np.argmin(w * 10.0 * L1 + (1 - w) * L2))
        res = minimize(f_and_g, P[k], args=(w,), jac=True, method="L-BFGS-B", bounds=[(-10, 10)] * 2,
                       options=dict(ftol=1e-15, gtol=1e-12, maxiter=2000))
        xs.append(res.x)
    xs = np.array(xs)
    front = np.stack(toy_losses(xs[:, 0], xs[:, 1], np), 1)
    keep = _nondominated(front)  # drop the (rare) duplicates / dominated solves, order by L1
    xs, front = xs[keep], front[keep]

    t = np.linspace(0.0, 1.0, 11)[:-1, None, None]
    dense = np.concatenate([(front[:-1][None] * (1 - t) + front[1:][None] * t).transpose(1, 0, 2).reshape(-1, 2),
                            front[-1:]])
    grid_front_idx = _nondominated(np.stack([L1, L2], 1))
    gL = np.stack([L1[grid_front_idx], L2[grid_front_idx]], 1)
    scale = np.ptp(front, axis=0)
    grid_beats = -min(_eps_indicator(g, dense, scale) for g in gL)
    grid_misses = max(_eps_indicator(f, gL, scale) for f in front)
    # the single-task minima (for FAMO's lower bounds): the ends of the front
    minima = (float(front[:, 0].min()), float(front[:, 1].min()))
    return Pareto(xs, front, minima, dense, grid_beats, grid_misses, len(grid_front_idx))


def _dist_to_polyline(p: np.ndarray, poly: np.ndarray) -> float:
    a, b = poly[:-1], poly[1:]
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-300), 0, 1)
    proj = a + t[:, None] * ab
    return float(np.min(np.linalg.norm(proj - p, axis=1))) if len(poly) > 1 else float(np.linalg.norm(poly[0] - p))


def _eps_indicator(L: np.ndarray, front: np.ndarray, scale: np.ndarray) -> float:
    """min over front points p of max_i (L_i - p_i) / scale_i: 0 on the front, > 0 the (relative) amount by
    which L would have to improve in every loss to reach it."""
    return float(np.min(np.max((L[None, :] - front) / scale[None, :], axis=1)))


# ------------------------------------------------------------------------------------------------ the methods
@dataclass
class Method:
    label: str
    name: str
    kwargs: dict = field(default_factory=dict)
    shift: tuple | None = None  # per-task constants subtracted from the losses the balancer sees


METHODS = [
    Method("equal", "equal"),
    Method("rlw", "rlw"),
    Method("uncertainty", "uncertainty"),
    Method("famo (lower bounds -2.1, -21; γ=0)", "famo", dict(gamma=0.0), shift=FAMO_SHIFT),
    Method("famo (min_loss=-21 for both; γ=0)", "famo", dict(gamma=0.0, min_loss=-21.0)),
    Method("mgda", "mgda", dict(mode="parameters", normalize="none")),
    Method("pcgrad", "pcgrad", dict(mode="parameters")),
    Method("cagrad (c=0.4)", "cagrad", dict(mode="parameters", c=0.4)),
    Method("cagrad (c=0.5)", "cagrad", dict(mode="parameters", c=0.5)),
    Method("gradvac", "gradvac", dict(mode="parameters")),
    Method("imtl_g", "imtl_g", dict(mode="parameters")),
    Method("aligned_mtl", "aligned_mtl", dict(mode="parameters")),
    Method("nash_mtl", "nash_mtl", dict(mode="parameters")),
    Method("upgrad", "upgrad", dict(mode="parameters")),
]

NOT_APPLICABLE = {
    "gls": "minimises the geometric mean (L1 L2)^(1/2), i.e. sum log L_t: undefined for negative losses "
           "(the implementation clamps L at 1e-12, so a task whose loss is negative gets no gradient at all)",
    "db_mtl": "trains on log L_t (gradient g_t / L_t): undefined for negative losses (the implementation "
              "clamps L at 1e-12, so a negative loss multiplies its gradient by 1e12)",
    "imtl_l": "minimises e^s L - s per task, which is unbounded below (s -> +inf) when L < 0",
    "dwa": "re-weights per epoch by ratios of mean losses L(e-1)/L(e-2); the toy has no epochs and ratios of "
           "losses that change sign carry no meaning",
    "gradnorm": "targets loss ratios L(t)/L(0), meaningless when losses change sign (see gradnorm_toy.md "
                "for GradNorm on its own paper's toy)",
}


def run_one(method: Method, start, steps: int, method_lr: float, seed: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = ToyModel(start)
    balancer = BALANCERS[method.name](TASKS, **method.kwargs)
    groups = [dict(params=list(model.parameters()), lr=1e-3)]
    extra = list(balancer.parameters())
    if extra:  # uncertainty's log-variances: the authors' toy scripts train method parameters at lr 0.025
        groups.append(dict(params=extra, lr=method_lr))
    opt = torch.optim.Adam(groups)
    shift = method.shift
    if shift is None:
        def loss_of(task, out):
            return out
    else:
        offsets = dict(zip(model.task_names, shift))

        def loss_of(task, out):
            return out - offsets[task]  # the same gradient; only what FAMO reads from the loss changes
    traj = np.empty((steps + 1, 2))
    traj[0] = start
    status = "ok"
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        autograd.backward(model, balancer, None, loss_of)
        opt.step()
        traj[i + 1] = model.x.detach().numpy()
        if not np.isfinite(traj[i + 1]).all():
            status = f"non-finite x at step {i + 1}"
            traj = traj[: i + 1]
            break
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return dict(traj=traj, status=status, wall=wall, cpu=cpu, weights=balancer.weights())


def run_method(method: Method, steps: int, method_lr: float, seed: int) -> dict:
    runs = []
    for k, start in enumerate(STARTS):
        r = run_one(method, start, steps, method_lr, seed + k)
        runs.append(r)
        x = r["traj"][-1]
        print(f"  {method.label:38s} start {k + 1} {str(start):12s} -> x=({x[0]:+.3f}, {x[1]:+.3f}) "
              f"{r['status']}  {r['wall']:.1f}s", flush=True)
    return dict(label=method.label, runs=runs)


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(result: dict, pareto: Pareto) -> dict:
    scale = np.ptp(pareto.front, axis=0)
    rows = []
    for r in result["runs"]:
        x = r["traj"][-1]
        if not np.isfinite(x).all():
            rows.append(dict(x=x, L=(math.nan, math.nan), dist=math.inf, eps=math.inf, stat=math.nan,
                             reached=False, stationary=False, status=r["status"]))
            continue
        L = np.array([float(v) for v in toy_losses(x[0], x[1], np)])
        dist = _dist_to_polyline(x, pareto.xs)
        stat = stationarity(x)
        eps = _eps_indicator(L, pareto.dense, scale)
        tr = r["traj"]
        move = float(np.linalg.norm(tr[-1] - tr[max(0, len(tr) - 1 - 1000)]))
        rows.append(dict(x=x, L=L, dist=dist, eps=eps, stat=stat, move=move, weights=r["weights"],
                         reached=eps <= REACH_TOL, stationary=stat <= STATIONARY_TOL, status=r["status"]))
    return dict(label=result["label"], rows=rows, wall=sum(r["wall"] for r in result["runs"]),
                cpu=sum(r["cpu"] for r in result["runs"]))


def tables(evals: list[dict]) -> str:
    out = ["| method | on the Pareto set | Pareto-stationary | wall s | CPU s | final (L1, L2) per start 1..5 |",
           "|---|---:|---:|---:|---:|---|"]
    for e in evals:
        finals = " · ".join(
            ("diverged" if not np.isfinite(r["L"]).all() else f"({r['L'][0]:.2f}, {r['L'][1]:.2f})")
            + ("✓" if r["reached"] else "✗") for r in e["rows"])
        out.append(f"| {e['label']} | {sum(r['reached'] for r in e['rows'])}/5 | "
                   f"{sum(r['stationary'] for r in e['rows'])}/5 | {e['wall']:.0f} | {e['cpu']:.0f} | {finals} |")
    out += ["", "Per start: final x; its distance to the Pareto set; the epsilon-indicator (relative to the "
            "front's extent in each loss; on the set <= 1e-3); the stationarity ratio (stationary <= 0.05); how "
            "far x moved in the last 1,000 steps; the balancer's last task weights (`weights()`).", "",
            "| method | start | final x | dist to set | ε-indicator | stationarity | moved, last 1k steps "
            "| weights (L1, L2) | note |",
            "|---|---|---|---:|---:|---:|---:|---|---|"]
    for e in evals:
        for k, r in enumerate(e["rows"]):
            x = r["x"]
            w = r["weights"]
            out.append(f"| {e['label']} | {STARTS[k]} | ({x[0]:+.3f}, {x[1]:+.3f}) | {r['dist']:.4f} | "
                       f"{r['eps']:.4f} | {r['stat']:.3f} | {r['move']:.4f} | "
                       f"({w['L1']:.3g}, {w['L2']:.3g}) | {'' if r['status'] == 'ok' else r['status']} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ plots
START_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]


def _panel_grid(plt, n: int, height: float):
    """One panel per method, four to a row; the panels left over are blanked."""
    cols = 4
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def _title(ax, res: dict, ev: dict) -> None:
    """Panel title: the method and how many of the 5 starts ended on the Pareto set."""
    n_ok = sum(r["reached"] for r in ev["rows"])
    ax.set_title(f"{res['label']}  [{n_ok}/5]", fontsize=10)


def _save(plt, fig, title: str, path: str) -> None:
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _finite_trajectory(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """A run's trajectory without non-finite points, and at most ~2000 of them for drawing."""
    tr = run["traj"]
    tr = tr[np.isfinite(tr).all(1)]
    return tr, tr[:: max(1, len(tr) // 2000)]


def plot_trajectories(results, evals, pareto: Pareto, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    allx = np.concatenate([r["traj"][np.isfinite(r["traj"]).all(1)] for res in results for r in res["runs"]])
    lo = float(max(-30.0, min(-10.5, allx.min() - 0.5)))
    hi = float(min(30.0, max(10.5, allx.max() + 0.5)))
    axis = np.linspace(lo, hi, 400)
    X1, X2 = np.meshgrid(axis, axis)
    L1, L2 = toy_losses(X1, X2, np)
    fig, axes = _panel_grid(plt, len(results), height=4.2)
    for ax, res, ev in zip(axes.flat, results, evals):
        cs = ax.contourf(X1, X2, L1 + L2, levels=30, cmap="Greys_r", alpha=0.55)
        ax.contour(X1, X2, L1 + L2, levels=15, colors="k", linewidths=0.3, alpha=0.4)
        ax.plot(pareto.xs[:, 0], pareto.xs[:, 1], color="gold", lw=5, solid_capstyle="round", zorder=2,
                label="Pareto set")
        for k, (run, row) in enumerate(zip(res["runs"], ev["rows"])):
            tr, sub = _finite_trajectory(run)
            ax.plot(sub[:, 0], sub[:, 1], color=START_COLORS[k], lw=1.6, zorder=3)
            ax.plot(*tr[0], "o", color="k", ms=6, zorder=4)
            ax.plot(*tr[-1], "*" if row["reached"] else "X", color=START_COLORS[k], mec="k", ms=13, zorder=5)
        _title(ax, res, ev)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=8)
    _save(plt, fig, "Trajectories in x over contours of L1+L2 (dark = low); gold: Pareto set; "
          "black dot: start; ★ end on the Pareto set, ✖ end elsewhere", path)


def plot_loss_space(results, evals, pareto: Pareto, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = _panel_grid(plt, len(results), height=3.8)
    for ax, res, ev in zip(axes.flat, results, evals):
        ax.plot(pareto.front[:, 0], pareto.front[:, 1], color="gold", lw=5, zorder=2)
        for k, (run, row) in enumerate(zip(res["runs"], ev["rows"])):
            tr, sub = _finite_trajectory(run)
            a, b = toy_losses(sub[:, 0], sub[:, 1], np)
            ax.plot(a, b, color=START_COLORS[k], lw=1.4, zorder=3)
            ax.plot(a[0], b[0], "o", color="k", ms=5, zorder=4)
            ea, eb = toy_losses(tr[-1, 0], tr[-1, 1], np)
            ax.plot(ea, eb, "*" if row["reached"] else "X", color=START_COLORS[k], mec="k", ms=12, zorder=5)
        _title(ax, res, ev)
        ax.set_xlim(-2.3, 1.6)
        ax.set_ylim(-22, 14)
        ax.set_xlabel("L1", fontsize=9)
        ax.set_ylabel("L2", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    _save(plt, fig, "Trajectories in loss space; gold: Pareto front; black dot: start; "
          "★ end on the Pareto set, ✖ end elsewhere", path)


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=35_000)
    ap.add_argument("--out", default="docs/benchmarks", help="folder for the PNG plots")
    ap.add_argument("--jobs", type=int, default=1,
                    help="methods run in this many processes at once (1 thread each); wall times are then "
                         "taken under contention, CPU times are not")
    ap.add_argument("--methods", nargs="*", default=None, help="labels or balancer names (default: all)")
    ap.add_argument("--method-lr", type=float, default=0.025,
                    help="Adam lr of balancer parameters (uncertainty's log-variances)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    methods = [m for m in METHODS if not args.methods or m.label in args.methods or m.name in args.methods]
    t0 = time.perf_counter()
    print("computing the Pareto set ...", flush=True)
    pareto = compute_pareto()
    print(f"  {len(pareto.xs)} points, x1 in [{pareto.xs[:, 0].min():.3f}, {pareto.xs[:, 0].max():.3f}], "
          f"x2 in [{pareto.xs[:, 1].min():.4f}, {pareto.xs[:, 1].max():.4f}]; minima L1 = {pareto.minima[0]:.5f}, "
          f"L2 = {pareto.minima[1]:.5f}; the {pareto.n_grid_front} non-dominated points of the 1601^2 grid improve on "
          f"this front by at most ε = {pareto.grid_beats:.1e} and come within ε = {pareto.grid_misses:.1e} of every "
          f"point of it  ({time.perf_counter() - t0:.0f}s)", flush=True)
    assert FAMO_SHIFT[0] < pareto.minima[0] and FAMO_SHIFT[1] < pareto.minima[1]

    print(f"{len(methods)} methods x {len(STARTS)} starts x {args.steps} steps, jobs={args.jobs}", flush=True)
    if args.jobs > 1:
        import multiprocessing as mp
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_method, m, args.steps, args.method_lr, args.seed) for m in methods]
            results = [f.result() for f in futures]
    else:
        results = [run_method(m, args.steps, args.method_lr, args.seed) for m in methods]
    evals = [evaluate(r, pareto) for r in results]

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}; jobs={args.jobs}; total {time.perf_counter() - t0:.0f}s")
    print()
    print(tables(evals))
    print()
    print("| not applicable | why |")
    print("|---|---|")
    for k, why in NOT_APPLICABLE.items():
        print(f"| {k} | {why} |")
    os.makedirs(args.out, exist_ok=True)
    plot_trajectories(results, evals, pareto, os.path.join(args.out, "toy2d_trajectories.png"))
    plot_loss_space(results, evals, pareto, os.path.join(args.out, "toy2d_loss_space.png"))
    print(f"\nwrote {args.out}/toy2d_trajectories.png, {args.out}/toy2d_loss_space.png")


if __name__ == "__main__":
    main()
