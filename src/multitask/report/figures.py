"""The report's figures: each function returns a matplotlib `Figure` (built without pyplot, so no global
backend is touched and nothing opens a window); `png` renders one with the Agg canvas.

Colours are fixed per task (its position in the run's task list), so a task has the same colour in every figure.
"""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from multitask.metrics import HIGHER_IS_BETTER
from multitask.report.aggregate import AffinitySummary, GradientSummary, smooth

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
           "#d62728", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d",
           "#393b79", "#637939"]
WORSE, BETTER = "#c62828", "#2e7d32"
WIDTH = 8.0  # inches; at DPI this is the width of the report's column
DPI = 110


def task_colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (the Agg canvas; the constrained layout keeps labels inside)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _figure(height: float, width: float = WIDTH) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _style(ax: Any) -> None:
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)


def _task_legend(fig: Figure, ax: Any, n: int) -> None:
    """A legend of the tasks: inside the axes for a few, beside the figure for many (it would hide the lines)."""
    if n <= 6:
        ax.legend(fontsize=8, frameon=False)
    else:
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, frameon=False, loc="outside right upper",
                   ncol=1 if n <= 16 else 2)


def _arrow(metric: str) -> str:
    return "↑" if HIGHER_IS_BETTER.get(metric, True) else "↓"


def _series(history: Sequence[dict], key: str, task: str, metric: str | None = None) -> tuple[list, list]:
    xs, ys = [], []
    for r in history:
        v = r.get(key)
        if not isinstance(v, dict) or task not in v:
            continue
        v = v[task]
        if metric is not None:
            v = v.get(metric) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            xs.append(r["epoch"])
            ys.append(float(v))
    return xs, ys


def _best_epoch(history: Sequence[dict]) -> int | None:
    best = [r["epoch"] for r in history if r.get("best")]
    return best[-1] if best else None


def _mark_best(ax: Any, best: int | None) -> None:
    if best is not None:
        ax.axvline(best, color="#555555", linestyle=":", linewidth=1)


def _log_if_wide(ax: Any, values: Sequence[float]) -> None:
    v = np.array([x for x in values if x > 0 and math.isfinite(x)])
    if len(v) and v.max() / v.min() > 30:
        ax.set_yscale("log")


# ------------------------------------------------------------------------------------------ one run
def loss_curves(history: Sequence[dict], tasks: Sequence[str]) -> Figure:
    """Per-task training loss (left) and validation loss (right) per epoch; the best epoch dotted."""
    has_val = any(isinstance(r.get("val_loss"), dict) for r in history)
    fig = _figure(2.8)
    axes = fig.subplots(1, 2 if has_val else 1, squeeze=False)[0]
    best = _best_epoch(history)
    for ax, key, title in zip(axes, ("train_loss", "val_loss"), ("training loss", "validation loss")):
        seen: list[float] = []
        for i, t in enumerate(tasks):
            xs, ys = _series(history, key, t)
            seen += ys
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, color=task_colour(i), label=t)
        _log_if_wide(ax, seen)
        _mark_best(ax, best)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        _style(ax)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _task_legend(fig, axes[0], len(tasks))
    return fig


def validation_metrics(history: Sequence[dict], tasks: Sequence[str]) -> Figure | None:
    """Validation metrics per epoch, each in its own panel (metrics differ in scale): a row per task and a
    column per metric for up to four tasks, else one panel per task with its first metric; best epoch dotted."""
    order = list(tasks)
    first: dict[str, list[str]] = {}
    for r in history:
        for t, ms in (r.get("val") or {}).items() if isinstance(r.get("val"), dict) else ():
            if t in tasks and t not in first and isinstance(ms, dict) and ms:
                first[t] = list(ms)
    tasks = [t for t in tasks if t in first]
    if not tasks:
        return None
    if len(tasks) <= 4:
        panels = [[(t, m) for m in first[t][:4]] for t in tasks]
        cols = max(len(p) for p in panels)
        rows = len(tasks)
    else:
        cols = 4
        rows = math.ceil(len(tasks) / cols)
        flat = [(t, first[t][0]) for t in tasks] + [None] * (rows * cols - len(tasks))
        panels = [flat[k * cols:(k + 1) * cols] for k in range(rows)]
    fig = _figure(1.9 * rows + 0.2)
    axes = fig.subplots(rows, cols, squeeze=False)
    best = _best_epoch(history)
    for row, ax_row in zip(panels, axes):
        for cell, ax in zip(list(row) + [None] * (cols - len(row)), ax_row):
            if cell is None:
                ax.set_visible(False)
                continue
            t, m = cell
            xs, ys = _series(history, "val", t, m)
            colour = task_colour(order.index(t))
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, color=colour, linewidth=1.5)
            _mark_best(ax, best)
            ax.set_title(f"{t}: {m} {_arrow(m)}", fontsize=9)
            _style(ax)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.ticklabel_format(axis="y", useOffset=False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=9)
    return fig


def weights_over_time(history: Sequence[dict], tasks: Sequence[str], grads: GradientSummary | None = None
                      ) -> Figure | None:
    """The balancer's task weights: per logged step when diagnostics recorded them, else at each epoch's end.
    None when they never change (fixed weights say nothing over time)."""
    fig = _figure(2.6)
    ax = fig.subplots()
    moved = False
    if grads is not None and grads.weight_series:
        for i, t in enumerate(tasks):
            w = grads.weight_series.get(t)
            if w is not None:
                ax.plot(grads.steps, w, color=task_colour(i), label=t, linewidth=1.2)
                moved |= bool(np.nanmax(w) - np.nanmin(w) > 1e-12)
        ax.set_xlabel("step", fontsize=9)
    else:
        for i, t in enumerate(tasks):
            xs, ys = _series(history, "weights", t)
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, color=task_colour(i), label=t)
            moved |= len(ys) > 1 and max(ys) - min(ys) > 1e-12
        ax.set_xlabel("epoch", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if not moved:
        return None
    ax.set_ylabel("weight", fontsize=9)
    _style(ax)
    _task_legend(fig, ax, len(tasks))
    return fig


def delta_m_bars(changes: dict[str, float], delta_m: float | None) -> Figure:
    """Each (task, metric)'s change against its single-task baseline, in percent (positive = better, whatever
    the metric's direction); negative transfer in red."""
    names = list(changes)
    values = np.array([100 * changes[n] for n in names])
    fig = _figure(0.6 + 0.32 * len(names))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    colours = [WORSE if v < 0 else BETTER for v in values]
    ax.barh(y, values, color=colours, height=0.6)
    ax.axvline(0, color="#333333", linewidth=0.8)
    span = max(float(np.max(np.abs(values))) if len(values) else 1.0, 1e-3)
    for yi, v in zip(y, values):
        ax.text(v + (0.02 * span if v >= 0 else -0.02 * span), yi, f"{v:+.2f}%", va="center",
                ha="left" if v >= 0 else "right", fontsize=8, color="#222222")
    ax.set_xlim(-1.35 * span if values.min(initial=0) < 0 else -0.1 * span,
                1.35 * span if values.max(initial=0) > 0 else 0.1 * span)
    ax.set_yticks(y, [f"{n} {_arrow(n.rpartition('.')[2])}" for n in names], fontsize=8)
    ax.set_xlabel("change against the single-task baseline (%, positive = better)", fontsize=9)
    if delta_m is not None and math.isfinite(delta_m):
        ax.set_title(f"Δm = {delta_m:+.2f}%", fontsize=10)
    _style(ax)
    ax.grid(False, axis="y")
    return fig


def _heatmap(ax: Any, matrix: np.ndarray, tasks: Sequence[str], cmap: str, vmin: float, vmax: float,
             fmt: str) -> Any:
    from matplotlib import colormaps

    shade = colormaps[cmap].with_extremes(bad="#eeeeee")  # the diagonal and missing pairs: grey, not 0
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=shade, vmin=vmin, vmax=vmax)
    n = len(tasks)
    ax.set_xticks(range(n), tasks, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8)
    ax.set_yticks(range(n), tasks, fontsize=8)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                v = matrix[i, j]
                if math.isfinite(v):
                    strong = abs(v - (vmin + vmax) / 2) > 0.35 * (vmax - vmin)
                    ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7 if n > 6 else 8,
                            color="white" if strong else "#222222")
    return image


def conflict_heatmaps(g: GradientSummary) -> Figure:
    """Left: mean cosine between task gradients (red: conflicting, blue: aligned). Right: share of logged
    steps on which the pair's gradients conflicted (cosine < 0)."""
    n = len(g.tasks)
    size = min(3.8, 1.4 + 0.45 * n)
    fig = _figure(size + 0.4, WIDTH)
    left, right = fig.subplots(1, 2)
    diag = np.eye(n, dtype=bool)
    cos = np.where(diag, np.nan, g.mean_cosine)
    im = _heatmap(left, cos, g.tasks, "RdBu", -1, 1, "+.2f")
    fig.colorbar(im, ax=left, shrink=0.8).ax.tick_params(labelsize=7)
    left.set_title("mean cosine of task gradients", fontsize=10)
    im = _heatmap(right, np.where(diag, np.nan, g.conflict), g.tasks, "Reds", 0, 1, ".0%")
    fig.colorbar(im, ax=right, shrink=0.8).ax.tick_params(labelsize=7)
    right.set_title("share of steps in conflict (cos < 0)", fontsize=10)
    return fig


def conflict_trend(g: GradientSummary) -> Figure:
    """Left: each pair's gradient cosine over the logged steps (moving average); right: each task's gradient
    norm divided by the mean norm of the step (1 = average)."""
    fig = _figure(2.8)
    left, right = fig.subplots(1, 2)
    window = max(1, len(g.steps) // 20)
    for k, ((a, b), series) in enumerate(g.cosine_series.items()):
        left.plot(g.steps, smooth(series, window), linewidth=1.2, label=f"{a} · {b}",
                  color=PALETTE[k % len(PALETTE)] if len(g.cosine_series) > 1 else "#333333")
    left.axhline(0, color=WORSE, linewidth=0.8, linestyle="--")
    left.set_ylim(-1.05, 1.05)
    left.set_title("cosine between task gradients" + (f" (mean of {window} logs)" if window > 1 else ""),
                   fontsize=10)
    left.set_xlabel("step", fontsize=9)
    if len(g.cosine_series) <= 10:
        left.legend(fontsize=7, frameon=False)
    for i, t in enumerate(g.tasks):
        right.plot(g.steps, smooth(g.norm_ratio_series[t], window), color=task_colour(i), linewidth=1.2, label=t)
    right.axhline(1, color="#555555", linewidth=0.8, linestyle=":")
    right.set_title("gradient norm / mean norm of the step", fontsize=10)
    right.set_xlabel("step", fontsize=9)
    if len(g.tasks) <= 10:
        right.legend(fontsize=7, frameon=False)
    for ax in (left, right):
        _style(ax)
    return fig


def affinity_heatmap(a: AffinitySummary) -> Figure:
    """Mean lookahead affinity Z[i→j]: row i is the task whose gradient step is taken, column j the task whose
    loss is measured; blue helps (Z > 0: the step on i lowered j's loss), red hurts."""
    n = len(a.tasks)
    side = min(4.6, 1.8 + 0.5 * n)
    fig = _figure(side, side + 1.2)
    ax = fig.subplots()
    z = np.where(np.eye(n, dtype=bool), np.nan, a.mean)
    finite = z[np.isfinite(z)]
    lim = float(np.max(np.abs(finite))) if finite.size else 1.0
    im = _heatmap(ax, z, a.tasks, "RdBu", -lim or -1, lim or 1, "+.2g")  # Z can be ~1e-6: no fixed decimals
    fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    ax.set_xlabel("loss measured on (j)", fontsize=9)
    ax.set_ylabel("step taken on (i)", fontsize=9)
    ax.set_title("inter-task affinity Z[i→j]", fontsize=10)
    return fig


def affinity_trend(a: AffinitySummary) -> Figure:
    """Each ordered pair's affinity Z[i→j] over the logged steps (moving average)."""
    fig = _figure(2.8)
    ax = fig.subplots()
    window = max(1, len(a.steps) // 20)
    for k, ((i, j), series) in enumerate(a.series.items()):
        ax.plot(a.steps, smooth(series, window), linewidth=1.2, label=f"{i}→{j}", color=PALETTE[k % len(PALETTE)])
    ax.axhline(0, color=WORSE, linewidth=0.8, linestyle="--")
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel("Z[i→j]", fontsize=9)
    if len(a.series) <= 12:
        ax.legend(fontsize=7, frameon=False, ncol=2 if len(a.series) > 4 else 1)
    _style(ax)
    return fig


# ------------------------------------------------------------------------------------------ several runs
def compared_validation(histories: dict[str, Sequence[dict]], tasks: Sequence[str]) -> Figure | None:
    """One panel per task: its first validation metric per epoch, one line per run."""
    shown = []
    for t in tasks:
        for h in histories.values():
            r = next((r for r in h if isinstance(r.get("val"), dict) and t in r["val"] and r["val"][t]), None)
            if r is not None:
                shown.append((t, next(iter(r["val"][t]))))
                break
    if not shown:
        return None
    cols = min(len(shown), 3)
    rows = math.ceil(len(shown) / cols)
    fig = _figure(2.5 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    lines = []
    for ax, (t, m) in zip(axes, shown):
        for k, (name, h) in enumerate(histories.items()):
            xs, ys = _series(h, "val", t, m)
            (line,) = ax.plot(xs, ys, color=PALETTE[k % len(PALETTE)], linewidth=1.2, label=name,
                              marker="o" if len(xs) < 15 else None, ms=2.5)
            if ax is axes[0]:
                lines.append(line)
        ax.set_title(f"{t}.{m} {_arrow(m)}", fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        _style(ax)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    if len(histories) <= 16:
        fig.legend(handles=lines, fontsize=7, frameon=False, loc="outside lower center",
                   ncol=min(len(histories), 4))
    return fig


def _label_points(ax: Any, xs: np.ndarray, ys: np.ndarray, labels: Sequence[str],
                  first: np.ndarray | None = None) -> None:
    """Label the points (those marked `first`, e.g. the front, before the others), skipping a label that would
    overlap one already placed (within 15% of the x range, labels being wide, and 6% of the y range); the
    table names every run."""
    ok = np.isfinite(xs) & np.isfinite(ys)
    if not ok.any():
        return
    span_x = max(float(np.ptp(xs[ok])), 1e-12)
    span_y = max(float(np.ptp(ys[ok])), 1e-12)
    placed: list[tuple[float, float]] = []
    order = np.argsort(~first, kind="stable") if first is not None else range(len(labels))  # `first` labelled first
    for x, y, lab in ((xs[i], ys[i], labels[i]) for i in order):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        if any(abs(x - px) / span_x < 0.15 and abs(y - py) / span_y < 0.06 for px, py in placed):
            continue
        placed.append((x, y))
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="#444444")


def pareto_plot(values: np.ndarray, objectives: Sequence[str], on_front: Sequence[bool], labels: Sequence[str],
                hypervolume: float | None = None, groups: Sequence[str] | None = None) -> Figure:
    """The runs in objective space (two objectives: one panel; three: the three pairs). Runs on the front are
    filled (and joined in order), dominated runs hollow; with `groups` (e.g. two sweeps) each group has its
    colour and marker. Axes are oriented so that better is up/right."""
    values = np.asarray(values, dtype=float)
    k = len(objectives)
    pairs = [(0, 1)] if k == 2 else [(0, 1), (0, 2), (1, 2)]
    fig = _figure(3.6 if k == 2 else 3.0, 6.0 if k == 2 else WIDTH)
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    front = np.asarray(on_front, dtype=bool)
    names = list(dict.fromkeys(groups)) if groups is not None and len(set(groups)) > 1 else [None]
    member = np.array(groups) if names != [None] else np.full(len(values), None)
    markers = "o^sDvP*X"
    for ax, (a, b) in zip(axes, pairs):
        for g, name in enumerate(names):
            here = member == name
            colour = "#1f4e79" if name is None else PALETTE[g % len(PALETTE)]
            marker = "o" if name is None else markers[g % len(markers)]
            on, off = here & front, here & ~front
            ax.scatter(values[off, a], values[off, b], s=36, facecolors="white", marker=marker,
                       edgecolors="#999999" if name is None else colour, zorder=3,
                       label="dominated" if name is None else None)
            ax.scatter(values[on, a], values[on, b], s=42, color=colour, marker=marker, zorder=4,
                       label="on the front" if name is None else name)
        if k == 2 and front.sum() > 1:
            f = values[front][np.argsort(values[front, a])]
            ax.plot(f[:, a], f[:, b], color="#555555", linewidth=1, zorder=2)
        if len(labels) <= 24:
            _label_points(ax, values[:, a], values[:, b], labels, front)
        for axis, o in ((ax.xaxis, objectives[a]), (ax.yaxis, objectives[b])):
            metric = o.rpartition(".")[2]
            axis.set_label_text(f"{o} ({'higher' if HIGHER_IS_BETTER.get(metric, True) else 'lower'} is better)",
                                fontsize=9)
        if not HIGHER_IS_BETTER.get(objectives[a].rpartition(".")[2], True):
            ax.invert_xaxis()
        if not HIGHER_IS_BETTER.get(objectives[b].rpartition(".")[2], True):
            ax.invert_yaxis()
        _style(ax)
    if names != [None]:  # a legend entry per group, filled; hollow means dominated
        handles = [Line2D([], [], marker=markers[g % len(markers)], color=PALETTE[g % len(PALETTE)],
                          linestyle="none", label=name) for g, name in enumerate(names)]
        handles.append(Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="#777777",
                              linestyle="none", label="hollow: dominated"))
        axes[0].legend(handles=handles, fontsize=7, frameon=False, loc="lower left")
    else:
        axes[0].legend(fontsize=7, frameon=False, loc="lower left")
    if hypervolume is not None and math.isfinite(hypervolume):
        fig.suptitle(f"hypervolume {hypervolume:.4g}", fontsize=10)
    return fig
