"""Plain-text summaries of a run (final.json): per-task test metrics beside the baselines, and Δm; printed by the CLI."""
from __future__ import annotations

from typing import Any

from multitask.metrics import HIGHER_IS_BETTER, delta_m_terms


def metrics_table(final: dict[str, Any]) -> str:
    """A plain-text table: one row per (task, metric), the model, the single-task baseline and the change."""
    base = (final.get("baseline") or {}).get("test")
    head = ["task", "metric", final.get("model", "model")] + (["single-task", "change"] if base else [])
    changes = delta_m_terms(final["test"], base)[0] if base else {}
    rows = []
    for task, ms in final["test"].items():
        for metric, value in ms.items():
            row = [task, f"{metric} ({'↑' if HIGHER_IS_BETTER[metric] else '↓'})", f"{value:.4f}"]
            if base:
                change = changes.get(f"{task}.{metric}")
                row += [f"{base[task][metric]:.4f}", "n/a" if change is None else f"{100 * change:+.2f}%"]
            rows.append(row)
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    return "\n".join(lines)


def summary(final: dict[str, Any]) -> str:
    lines = [f"{final.get('dataset')}: {final.get('model')} + {final.get('balancer')} balancing, "
             f"{final.get('epochs')} epochs (best {final.get('best_epoch')}), "
             f"{final.get('parameters'):,} parameters, {final.get('wall_time_s', 0):.1f}s training",
             "", metrics_table(final)]
    if final.get("delta_m") is not None:
        lines += ["", f"Δm against single-task baselines: {final['delta_m']:+.3f}%  (positive = better)"]
        if final.get("delta_m_undefined"):
            lines.append("  left out of Δm (baseline is 0 or NaN): " + ", ".join(final["delta_m_undefined"]))
    return "\n".join(lines)
