"""Reports of runs: the plain-text summary the CLI prints (`summary`, `metrics_table`) and the self-contained
HTML report with figures (`write_report`, `write_run_report`; matplotlib is imported only when one is built).

Modules: `text` (plain-text tables), `runs` (reading run directories), `aggregate` (diagnostics summaries),
`figures` (one matplotlib Figure per function), `html` (the page), `build` (what goes in a report).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from multitask.report.text import metrics_table, summary


def write_report(run_dirs: Sequence[str | Path], out: str | Path, figures_dir: str | Path | None = None,
                 **options: Any) -> Path:
    """The HTML report of one run or several (comparison table and Pareto plot); see `build.write_report`."""
    from multitask.report.build import write_report as _write

    return _write(run_dirs, out, figures_dir, **options)


def write_run_report(run_dir: str | Path) -> Path:
    """`report.html` and `figures/*.png` inside a run directory; see `build.write_run_report`."""
    from multitask.report.build import write_run_report as _write

    return _write(run_dir)


__all__ = ["summary", "metrics_table", "write_report", "write_run_report"]
