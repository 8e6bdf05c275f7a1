"""Summaries of diagnostics.jsonl records for the report: mean gradient cosine and conflict frequency per task
pair, norm ratios and weights over steps, and mean lookahead affinity (TAG) per ordered pair.

Records may name different task sets (a task without labels in a batch is left out of that step), so every
matrix is over the union of the tasks, each entry averaged over the records holding both of its tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class GradientSummary:
    """Per task pair: mean cosine, share of records with cosine < 0, and how many records held the pair;
    per pair and per task: the series over steps."""

    tasks: list[str]
    mean_cosine: np.ndarray
    conflict: np.ndarray
    count: np.ndarray
    steps: np.ndarray
    cosine_series: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    norm_ratio_series: dict[str, np.ndarray] = field(default_factory=dict)
    weight_series: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class AffinitySummary:
    """Mean lookahead affinity Z[i, j] (row i: the task whose step is taken; column j: the task whose loss
    is measured) and each ordered pair's series over steps."""

    tasks: list[str]
    mean: np.ndarray
    count: np.ndarray
    steps: np.ndarray
    series: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


def _union(records: Sequence[dict[str, Any]]) -> list[str]:
    tasks: list[str] = []
    for r in records:
        for t in r.get("tasks", []):
            if t not in tasks:
                tasks.append(t)
    return tasks


def _spread(records: Sequence[dict[str, Any]], key: str, tasks: list[str]) -> np.ndarray:
    """A [records, T, T] array of each record's matrix `key` placed on the union of tasks (NaN where absent)."""
    index = {t: i for i, t in enumerate(tasks)}
    out = np.full((len(records), len(tasks), len(tasks)), np.nan)
    for k, r in enumerate(records):
        m = np.array(r.get(key, []), dtype=float)
        pos = [index[t] for t in r.get("tasks", [])]
        if m.shape == (len(pos), len(pos)):
            out[k][np.ix_(pos, pos)] = m
    return out


def _nanmean(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over `axis` ignoring NaN, NaN where every value is NaN (without a warning)."""
    n = np.sum(~np.isnan(a), axis=axis)
    s = np.nansum(a, axis=axis)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def gradient_summary(records: Sequence[dict[str, Any]]) -> GradientSummary | None:
    """The "gradients" records summarised (None when there are none)."""
    records = sorted((r for r in records if r.get("kind") == "gradients"), key=lambda r: r.get("step", 0))
    if not records:
        return None
    tasks = _union(records)
    cos = _spread(records, "cosine", tasks)
    have = ~np.isnan(cos)
    count = have.sum(axis=0)
    conflict = np.where(count > 0, np.sum(np.where(have, cos < 0, False), axis=0) / np.maximum(count, 1), np.nan)
    steps = np.array([r.get("step", k) for k, r in enumerate(records)], dtype=float)
    pairs = {(a, b): cos[:, i, j] for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i < j}
    index = {t: i for i, t in enumerate(tasks)}
    norms = np.full((len(records), len(tasks)), np.nan)
    weights = np.full((len(records), len(tasks)), np.nan)
    for k, r in enumerate(records):
        for t, v in zip(r.get("tasks", []), r.get("norms", [])):
            norms[k, index[t]] = np.nan if v is None else float(v)
        for t, v in (r.get("weights") or {}).items():
            if t in index:
                weights[k, index[t]] = np.nan if v is None else float(v)
    ratio = norms / _nanmean(norms, axis=1)[:, None]  # each task's norm against the step's mean norm
    return GradientSummary(tasks, _nanmean(cos), conflict, count, steps, pairs,
                           {t: ratio[:, i] for i, t in enumerate(tasks)},
                           {t: weights[:, i] for i, t in enumerate(tasks) if not np.isnan(weights[:, i]).all()})


def affinity_summary(records: Sequence[dict[str, Any]]) -> AffinitySummary | None:
    """The "affinity" records summarised (None when there are none)."""
    records = sorted((r for r in records if r.get("kind") == "affinity"), key=lambda r: r.get("step", 0))
    if not records:
        return None
    tasks = _union(records)
    z = _spread(records, "affinity", tasks)
    steps = np.array([r.get("step", k) for k, r in enumerate(records)], dtype=float)
    series = {(a, b): z[:, i, j] for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i != j}
    return AffinitySummary(tasks, _nanmean(z), (~np.isnan(z)).sum(axis=0), steps, series)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points, ignoring NaN (NaN where the window holds none)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    ok = ~np.isnan(v)
    s = np.cumsum(np.where(ok, v, 0.0))
    n = np.cumsum(ok)
    s = s - np.concatenate((np.zeros(window), s[:-window]))[: len(s)]
    n = n - np.concatenate((np.zeros(window), n[:-window]))[: len(n)]
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)
