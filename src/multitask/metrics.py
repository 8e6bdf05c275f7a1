"""Per-task metrics (NumPy, computed on a whole split) and Δm, the multi-task score against single-task baselines.

Each metric takes scores (probabilities or values), targets and a label mask; unlabelled entries are ignored.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


# ------------------------------------------------------------------------------------------ building blocks
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # starts of runs of equal values
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(xs)]))
    avg = (starts + ends + 1) / 2.0  # average of ranks start+1..end
    ranks_sorted = np.repeat(avg, ends - starts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def binary_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half). NaN if one class only."""
    y = y.astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, y: np.ndarray) -> float:
    """Non-interpolated AP: sum over distinct thresholds of (R_k - R_{k-1}) * P_k. NaN if no positive."""
    y = y.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    last_of_group = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # thresholds at distinct scores
    tp, fp = tp[last_of_group], fp[last_of_group]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    prev_recall = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev_recall) * precision))


def _f1_counts(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2 * tp / denom


# ------------------------------------------------------------------------------------------ metrics
def mse(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    return float(np.mean((p[m] - y[m]) ** 2)) if m.any() else math.nan


def mae(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    return float(np.mean(np.abs(p[m] - y[m]))) if m.any() else math.nan


def r2(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    """Coefficient of determination; several outputs are averaged uniformly, each over its labelled rows."""
    if p.ndim == 1:
        p, y, m = p[:, None], y[:, None], m[:, None]
    values = []
    for j in range(p.shape[1]):
        mj = m[:, j]
        if mj.sum() < 2:
            continue
        yj, pj = y[mj, j], p[mj, j]
        ss_tot = float(np.sum((yj - yj.mean()) ** 2))
        ss_res = float(np.sum((yj - pj) ** 2))
        values.append(1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0))
    return float(np.mean(values)) if values else math.nan


def auc(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    return binary_auc(p[m], y[m])


def binary_accuracy(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    return float(np.mean((p[m] >= 0.5) == y[m].astype(bool))) if m.any() else math.nan


def binary_f1(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    if not m.any():
        return math.nan
    pred, t = p[m] >= 0.5, y[m].astype(bool)
    return _f1_counts(float(np.sum(pred & t)), float(np.sum(pred & ~t)), float(np.sum(~pred & t)))


def multiclass_accuracy(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    return float(np.mean(p[m].argmax(-1) == y[m].astype(int))) if m.any() else math.nan


def multiclass_macro_f1(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes seen in the labels or the predictions."""
    if not m.any():
        return math.nan
    pred, t = p[m].argmax(-1), y[m].astype(int)
    classes = np.union1d(pred, t)
    return float(np.mean([
        _f1_counts(float(np.sum((pred == c) & (t == c))), float(np.sum((pred == c) & (t != c))),
                   float(np.sum((pred != c) & (t == c))))
        for c in classes
    ]))


def multilabel_micro_f1(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    """F1 over all labelled (sample, label) entries pooled together."""
    if not m.any():
        return math.nan
    pred, t = p[m] >= 0.5, y[m].astype(bool)
    return _f1_counts(float(np.sum(pred & t)), float(np.sum(pred & ~t)), float(np.sum(~pred & t)))


def multilabel_macro_f1(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    """Mean over labels of each label's F1 on its labelled rows (0 where a label has no true or predicted positive)."""
    values = [multilabel_micro_f1(p[:, j], y[:, j], m[:, j]) for j in range(p.shape[1]) if m[:, j].any()]
    return float(np.mean(values)) if values else math.nan


def mean_average_precision(p: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    """Mean over labels of average precision; labels without a positive are left out."""
    values = [average_precision(p[m[:, j], j], y[m[:, j], j]) for j in range(p.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


# ------------------------------------------------------------------------------------------ registry
METRICS_BY_KIND: dict[str, dict[str, MetricFn]] = {
    "regression": {"mse": mse, "mae": mae, "r2": r2},
    "binary": {"auc": auc, "accuracy": binary_accuracy, "f1": binary_f1},
    "multiclass": {"accuracy": multiclass_accuracy, "macro_f1": multiclass_macro_f1},
    "multilabel": {"micro_f1": multilabel_micro_f1, "macro_f1": multilabel_macro_f1, "map": mean_average_precision},
}
HIGHER_IS_BETTER: dict[str, bool] = {
    "mse": False, "mae": False, "r2": True, "auc": True, "accuracy": True, "f1": True,
    "macro_f1": True, "micro_f1": True, "map": True,
}


def compute(kind: str, metric: str, scores: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Compute one named metric of a task of the given kind."""
    return METRICS_BY_KIND[kind][metric](scores, target, mask)


def delta_m_terms(
    results: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
) -> tuple[dict[str, float], list[str]]:
    """Per (task.metric) signed relative change ``(-1)^l (M - M_base) / |M_base|`` (l = 1 where lower is
    better), and the pairs left out because their baseline is 0 or NaN (the change is undefined there).
    A task or metric missing from the baselines is an error."""
    terms: dict[str, float] = {}
    undefined: list[str] = []
    for task, ms in results.items():
        if task not in baselines:
            raise KeyError(f"no baseline for task {task!r}; baselines have {sorted(baselines)}")
        for metric, value in ms.items():
            if metric not in baselines[task]:
                raise KeyError(f"no baseline for metric {metric!r} of task {task!r}")
            base = baselines[task][metric]
            if base == 0 or math.isnan(base) or math.isnan(value):
                undefined.append(f"{task}.{metric}")
                continue
            sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
            terms[f"{task}.{metric}"] = sign * (value - base) / abs(base)
    return terms, undefined


def delta_m(
    results: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
) -> float:
    """Δm (Maninis et al., CVPR 2019), in percent: the mean over every (task, metric) pair of
    ``(-1)^l * (M - M_base) / M_base``, with l = 1 where lower is better. Positive means better than the
    single-task baselines. Pairs whose baseline is 0 or NaN are left out (see `delta_m_terms`); NaN if none is left.
    """
    terms, _ = delta_m_terms(results, baselines)
    return 100.0 * float(np.mean(list(terms.values()))) if terms else math.nan
