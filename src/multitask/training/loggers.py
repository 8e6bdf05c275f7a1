"""Loggers: where a run's numbers go besides ``metrics.jsonl`` (`trainer.loggers: [jsonl, tensorboard, mlflow]`).

Each logger is a `multitask.training.Callback` (an observer: it never changes a step). ``jsonl`` is the
trainer's own ``metrics.jsonl``, always written. ``tensorboard`` writes event files to ``<run_dir>/tensorboard``
(`torch.utils.tensorboard`, package ``tensorboard``); ``mlflow`` logs to an MLflow tracking store, by default
MLflow's local file store ``<run_dir>/mlruns`` (no server, no database: created in milliseconds, where a new
SQLite store spends ~10 s on its schema migrations). MLflow keeps that store in "maintenance mode" behind the
opt-out ``MLFLOW_ALLOW_FILE_STORE=true``, which this logger sets for its process when it uses the default;
``MLFLOW_TRACKING_URI`` (e.g. ``sqlite:///mlflow.db`` or a server) overrides the default, as in MLflow.

What is logged, all against the trainer's global step (the x axis of both tools):
- every epoch record, flattened: ``train_loss/<task>``, ``val_loss/<task>``, ``val/<task>/<metric>``,
  ``weights/<task>``, ``lr``, ``seconds``, ``epoch``, ... (any numeric key a callback adds, generically);
- every `step_every` steps, the per-task training losses ``step/loss/<task>``;
- diagnostics when the run writes ``diagnostics.jsonl``: the numeric fields of each new record, under
  ``diagnostics/<kind>/...`` (lists over the record's ``tasks`` are named by task).

Resume: TensorBoard events are written with ``purge_step`` = the first step after the checkpoint, so
TensorBoard drops what a crashed attempt logged past it; MLflow metrics cannot be deleted, so the MLflow
logger continues the same MLflow run and logs only steps beyond the last one it logged
(``mlflow_run.json`` records both; a resumed run recomputes those steps identically from the checkpoint).
"""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from multitask.jsonio import write_json
from multitask.training.callbacks import Callback, StepInfo

if TYPE_CHECKING:
    from multitask.training.trainer import Trainer

LOGGERS = ("jsonl", "tensorboard", "mlflow")
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> the module it imports (= its extra)
DIAGNOSTICS_FILE = "diagnostics.jsonl"


def check_loggers(names: Iterable[str] | str) -> tuple[str, ...]:
    """The logger names in order without repeats (``jsonl`` always first); a ValueError naming an unknown one."""
    if isinstance(names, str):
        names = [names]
    out = ["jsonl"]
    for n in names:
        if not isinstance(n, str) or n not in LOGGERS:
            raise ValueError(f"loggers: unknown logger {n!r}; choose from {', '.join(LOGGERS)}")
        if n not in out:
            out.append(n)
    return tuple(out)


def missing_package(name: str) -> str | None:
    """Why logger `name` cannot run here (its package is not installed), with the extra to install."""
    module = _PACKAGES.get(name)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return (f"logger {name!r} needs the package {module!r}, which is not installed: "
            f"pip install 'multitask[{name}]'")


def flatten(value: Any, prefix: str = "", names: Sequence[str] | None = None) -> dict[str, float]:
    """The numeric leaves of nested dicts and lists as ``{"a/b/c": float}`` (booleans and strings left out);
    a list as long as `names` is keyed by those names (a record's tasks), any other list by position."""
    out: dict[str, float] = {}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return out
    if isinstance(value, (int, float)):
        out[prefix] = float(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k), names))
    elif isinstance(value, (list, tuple)):
        keys = list(names) if names is not None and len(value) == len(names) else [str(i) for i in range(len(value))]
        for k, v in zip(keys, value):
            out.update(flatten(v, f"{prefix}/{k}" if prefix else k, names))
    return out


class MetricLogger(Callback):
    """What every logger shares: which numbers to log at which step; subclasses say where they go (`_write`)."""

    def __init__(self, run_dir: str | Path, step_every: int = 10) -> None:
        if isinstance(step_every, bool) or not isinstance(step_every, int) or step_every < 1:
            raise ValueError(f"step_every must be an integer >= 1, got {step_every!r}")
        self.run_dir = Path(run_dir)
        self.step_every = step_every
        self._pending: dict[int, dict[str, float]] = {}
        self._diag_step = 0  # the last diagnostics step logged

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._pending = {}
        if trainer.global_step == 0:  # a fresh run: diagnostics of an earlier run in this folder are gone
            self._diag_step = 0

    def on_step_end(self, trainer: "Trainer", info: StepInfo) -> None:
        if info.step % self.step_every == 0 and not info.skipped:
            self._pending.setdefault(info.step, {}).update(
                {f"step/loss/{t}": float(v) for t, v in info.losses.items() if info.present.get(t, True)})

    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None:
        step = trainer.global_step
        self._pending.setdefault(step, {}).update(flatten(record))
        self._read_diagnostics()
        self._flush()

    def on_fit_end(self, trainer: "Trainer", history: Sequence[dict]) -> None:
        self._read_diagnostics()
        self._flush()
        self.close()

    def state_dict(self) -> dict[str, Any]:
        return {"diagnostics_step": self._diag_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._diag_step = int(state.get("diagnostics_step", 0))

    def _read_diagnostics(self) -> None:
        """The records of diagnostics.jsonl after the last step logged (a half-written last line waits)."""
        path = self.run_dir / DIAGNOSTICS_FILE
        if not path.exists():
            return
        last = self._diag_step
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            step = rec.get("step")
            if not isinstance(step, int) or step <= self._diag_step:
                continue
            kind = rec.get("kind", "record")
            names = rec.get("tasks") if isinstance(rec.get("tasks"), list) else None
            fields = {k: v for k, v in rec.items() if k not in ("kind", "step", "tasks")}
            self._pending.setdefault(step, {}).update(flatten(fields, f"diagnostics/{kind}", names))
            last = max(last, step)
        self._diag_step = last

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for step in sorted(pending):
            self._write(step, {k: v for k, v in pending[step].items()})

    def _write(self, step: int, metrics: Mapping[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files or connections (called at the end of fit)."""


class TensorBoardLogger(MetricLogger):
    """Event files in ``<run_dir>/tensorboard`` (read with ``tensorboard --logdir <run_dir>``)."""

    def __init__(self, run_dir: str | Path, step_every: int = 10) -> None:
        problem = missing_package("tensorboard")
        if problem:
            raise ImportError(problem)
        super().__init__(run_dir, step_every)
        self.log_dir = self.run_dir / "tensorboard"
        self.writer = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        from torch.utils.tensorboard import SummaryWriter

        super().on_fit_start(trainer)
        if trainer.global_step == 0 and self.log_dir.exists():  # a fresh start: no events of an earlier run
            shutil.rmtree(self.log_dir)
        # on a resume, TensorBoard drops the events a crashed attempt wrote at or past this step
        purge = trainer.global_step + 1 if trainer.global_step else None
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)

    def _write(self, step: int, metrics: Mapping[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowLogger(MetricLogger):
    """An MLflow run (one per run directory, continued on resume); metrics, and the trainer's config as params."""

    def __init__(self, run_dir: str | Path, step_every: int = 10, tracking_uri: str | None = None,
                 experiment: str | None = None) -> None:
        problem = missing_package("mlflow")
        if problem:
            raise ImportError(problem)
        super().__init__(run_dir, step_every)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = None
        self._uri = ""
        self.run_id: str | None = None
        self.logged_until = 0  # the highest step already in the MLflow run

    def on_fit_start(self, trainer: "Trainer") -> None:
        import os

        from mlflow.tracking import MlflowClient

        super().on_fit_start(trainer)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(self.run_dir)
        if uri == default_tracking_uri(self.run_dir):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's opt-in for its file store
        self.client, self._uri = MlflowClient(tracking_uri=uri), uri
        saved = self._saved()
        if trainer.global_step > 0 and saved.get("run_id") and saved.get("tracking_uri") == uri:
            self.run_id, self.logged_until = saved["run_id"], int(saved.get("logged_until", 0))
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "multitask"
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"balancer": type(trainer.balancer).__name__,
                                           "model": type(trainer.model).__name__})
        self.run_id, self.logged_until = run.info.run_id, 0
        from dataclasses import asdict

        from mlflow.entities import Param

        params = [Param(f"trainer.{k}", str(v)[:500]) for k, v in asdict(trainer.config).items()]
        params.append(Param("tasks", ",".join(trainer.tasks)[:500]))
        self.client.log_batch(self.run_id, params=params)
        self._save()

    def _write(self, step: int, metrics: Mapping[str, float]) -> None:
        if step <= self.logged_until:  # logged by an attempt that crashed after this point: not again
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items() if math.isfinite(v)]
        for start in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])
        self.logged_until = step
        self._save()

    def close(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id)
        self.client = None

    def _saved(self) -> dict:
        path = self.run_dir / "mlflow_run.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _save(self) -> None:
        write_json(self.run_dir / "mlflow_run.json", {"run_id": self.run_id, "logged_until": self.logged_until,
                                                      "tracking_uri": self._uri})


def default_tracking_uri(run_dir: str | Path) -> str:
    """The MLflow store a run directory logs to unless told otherwise: a file store in ``<run_dir>/mlruns``."""
    return (Path(run_dir) / "mlruns").resolve().as_uri()


def _mlflow_key(key: str) -> str:
    """An MLflow metric name: letters, digits, _ - . / and spaces only."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def logger_callbacks(names: Sequence[str], run_dir: str | Path | None,
                     given: Sequence[Any] = ()) -> list[Callback]:
    """The logger callbacks `names` asks for (``jsonl`` is the trainer's own), leaving out a kind the caller
    already passed; a ValueError when a logger is asked for without a run directory to write to."""
    wanted = [n for n in check_loggers(names) if n != "jsonl"]
    have = {type(cb) for cb in given}
    kinds = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
    out: list[Callback] = []
    for n in wanted:
        if any(issubclass(h, kinds[n]) for h in have):
            continue
        if run_dir is None:
            raise ValueError(f"logger {n!r} writes into the run directory: give the Trainer a run_dir")
        out.append(kinds[n](run_dir))
    return out


__all__ = ["LOGGERS", "MetricLogger", "TensorBoardLogger", "MLflowLogger", "check_loggers", "missing_package",
           "logger_callbacks", "flatten"]
