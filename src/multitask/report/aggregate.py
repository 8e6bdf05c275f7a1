"""Summaries of diagnostics.jsonl records for the report: mean gradient cosine and conflict frequency per task
pair, norm ratios and weights over steps, and mean lookahead affinity (TAG) per ordered pair.

Records may name different task sets (a task without labels in a batch is left out of that step), so every
matrix is over the union of the tasks, each entry averaged over the records holding both of its tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from multitask.diagnostics import records_to_data


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


def _by_step(records: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return sorted((r for r in records if r.get("kind") == kind), key=lambda r: r.get("step", 0))


def gradient_summary(records: Sequence[dict[str, Any]]) -> GradientSummary | None:
    """The "gradients" records summarised (None when there are none); the arrays are those of
    `multitask.diagnostics.Diagnostics` over the tasks these records name."""
    records = _by_step(records, "gradients")
    if not records:
        return None
    d = records_to_data(records)
    tasks, cos = d.tasks, d.cosine
    pairs = {(a, b): cos[:, i, j] for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i < j}
    ratio = d.norm_ratios()  # each task's norm against the step's mean norm
    return GradientSummary(tasks, d.mean_cosine(), d.conflict_frequency(), (~np.isnan(cos)).sum(axis=0),
                           d.steps.astype(float), pairs, {t: ratio[:, i] for i, t in enumerate(tasks)},
                           {t: d.weights[:, i] for i, t in enumerate(tasks) if not np.isnan(d.weights[:, i]).all()})


def affinity_summary(records: Sequence[dict[str, Any]]) -> AffinitySummary | None:
    """The "affinity" records summarised (None when there are none)."""
    records = _by_step(records, "affinity")
    if not records:
        return None
    d = records_to_data(records)
    tasks, z = d.tasks, d.affinity
    series = {(a, b): z[:, i, j] for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i != j}
    return AffinitySummary(tasks, d.mean_affinity(), (~np.isnan(z)).sum(axis=0), d.affinity_steps.astype(float),
                           series)


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
