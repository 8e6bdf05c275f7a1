"""Reading a run directory for a report: final.json, metrics.jsonl, config.yaml, tasks.json, diagnostics.jsonl."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multitask.config import ConfigError
from multitask.jsonio import nulls_to_nan



@dataclass
class Run:
    """What a report shows of one run directory: its records as they were written."""

    path: Path
    name: str
    final: dict[str, Any] | None
    history: list[dict[str, Any]]
    config: dict[str, Any] | None = None
    tasks: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def task_names(self) -> list[str]:
        """The run's tasks in order: from tasks.json, else final.json's test metrics, else the epoch records."""
        if self.tasks:
            return [t["name"] for t in self.tasks if "name" in t]
        if self.final and isinstance(self.final.get("test"), dict):
            return list(self.final["test"])
        for r in self.history:
            if isinstance(r.get("train_loss"), dict):
                return list(r["train_loss"])
        return []


def load_run(path: str | Path, name: str | None = None) -> Run:
    """A run directory's records, or a ConfigError naming `path` when it is not a run (no final.json and no
    epoch in metrics.jsonl) or a record in it cannot be read."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{p} is not a run directory" + ("" if p.exists() else " (it does not exist)"))
    final = _read_json(p / "final.json") if (p / "final.json").exists() else None
    if final is not None and not isinstance(final, dict):
        raise ConfigError(f"{p / 'final.json'} is not a run record (a JSON object)")
    history = _read_jsonl(p / "metrics.jsonl")
    if final is None and not history:
        raise ConfigError(f"{p} is not a run directory: it has neither final.json nor an epoch in metrics.jsonl")
    config = None
    if (p / "config.yaml").exists():
        import yaml

        try:
            config = yaml.safe_load((p / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            config = None  # the report still shows the run; the header just lacks the options
    tasks = _read_json(p / "tasks.json") if (p / "tasks.json").exists() else []
    return Run(path=p, name=name or p.name, final=final, history=history,
               config=config if isinstance(config, dict) else None,
               tasks=tasks if isinstance(tasks, list) else [], diagnostics=_read_diagnostics(p))


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Several runs, named by their folder (with the parent folder added where two folders share a name)."""
    if not paths:
        raise ConfigError("report: give at least one run directory")
    ps = [Path(x) for x in paths]
    names = [q.name or str(q) for q in ps]
    for i, q in enumerate(ps):
        if names.count(names[i]) > 1:
            names[i] = f"{q.resolve().parent.name}/{q.name}"
    return [load_run(q, n) for q, n in zip(ps, names)]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} cannot be read: {' '.join(str(e).split())}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file; a last line cut short by a kill is left out (nulls read as NaN)."""
    if not path.exists():
        return []
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read: {e}") from None
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # only the last line can be incomplete (appends are in order)
        if isinstance(record, dict):
            out.append(nulls_to_nan(record))
    return out


def _read_diagnostics(run_dir: Path) -> list[dict[str, Any]]:
    """The gradient and affinity records of the run's diagnostics.jsonl ([] when the run has none); see
    `multitask.diagnostics` for their fields."""
    from multitask.diagnostics import read_records

    try:
        return [r for r in read_records(run_dir) if r.get("kind") in ("gradients", "affinity")]
    except FileNotFoundError:
        return []
