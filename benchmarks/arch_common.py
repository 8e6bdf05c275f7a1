"""Shared by benchmarks/architectures.py and benchmarks/test_time.py: per-family model options, the timing
helper, and the machine line. Not a benchmark of its own.
"""
from __future__ import annotations

import contextlib
import io
import os
import platform
import tempfile
import statistics
import time
from typing import Any, Sequence

import torch

from multitask import config as cfgmod
from multitask.models import MODELS

# Per-family model options for census-income, sized like benchmarks/census.py (two 128-64 layers or 8 experts of
# 64, small heads, embeddings of up to 8 dimensions per categorical column). A family without an entry is built
# with its builder's defaults (so a family merged later runs without touching this file; give it an entry
# here, or --options on the command line, to size it like the others). `branches` is written by
# `options_for` from the task names (layer 0 shared by all, layer 1 split in two groups).
# Every family runs with the same embedding and normalisation choices here (PyTorch's N(0, 1) embeddings, no
# BatchNorm: the library's defaults when the committed table was measured), so the table compares architectures;
# the gain of the current defaults (N(0, 1e-4), BatchNorm) is measured apart, in architectures_choices.md.
SAME_CHOICES = {"embedding_std": None, "batch_norm": False}
FAMILY_OPTIONS: dict[str, dict[str, Any]] = {
    "independent": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8},
    "hard_sharing": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8},
    "mmoe": {"n_experts": 8, "expert_hidden": [64], "tower_hidden": [32], "embedding_dim": 8},
    "branched": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8, "branches": "split-after-first"},
    # 8 experts in all, as MMoE: 2 shared + 2 per task for 3 tasks
    "cgc": {"n_shared_experts": 2, "n_task_experts": 2, "expert_hidden": [64], "tower_hidden": [32], "embedding_dim": 8},
    "ple": {"n_levels": 2, "n_shared_experts": 2, "n_task_experts": 2, "expert_hidden": [64], "tower_hidden": [32],
            "embedding_dim": 8},
    "cross_stitch": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8},
    "sluice": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8},
    "param_distance": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8},
    "task_conditioned": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8},
    "mtan": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8, "attention_reduction": 4},
    "modulation": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8},
    "task_norm": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8},
    "cascade": {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8},
    # 8 experts of 64 as MMoE, each task's gate selecting k = 2 of them
    "dselect_k": {"n_experts": 8, "k": 2, "expert_hidden": [64], "tower_hidden": [32], "embedding_dim": 8},
    # three shared layers of 64 (the stem projects to 64), each task mixing them in its own order
    "soft_order": {"width": 64, "depth": 3, "head_hidden": [32], "embedding_dim": 8},
    "esmm": {"hidden": [128, 64], "embedding_dim": 8},
    "aitm": {"hidden": [128, 64], "embedding_dim": 8},
}
FAMILY_OPTIONS = {name: {**SAME_CHOICES, **opts} for name, opts in FAMILY_OPTIONS.items()}
# On images every family keeps its image builder's defaults (the LeNet-like layers of multitask.models.conv: conv
# 5x5 x10 -> pool -> conv 5x5 x20 -> pool -> fc 50, heads fc 50), so the families differ only in how they share.
IMAGE_FAMILY_OPTIONS: dict[str, dict[str, Any]] = {"branched": {"branches": "split-after-first"}}


def two_groups(tasks: Sequence[str]) -> list:
    """`branches` with layer 0 shared by every task and layer 1 split into tasks 0, 2, 4, ... and 1, 3, 5, ...
    (for census-income [income, marital, education]: [[income, education], [marital]], the issue's example)."""
    tasks = list(tasks)
    if len(tasks) < 2:
        return [tasks]
    return [tasks, [tasks[0::2], tasks[1::2]]]


def options_for(family: str, tasks: Sequence[str], extra: dict[str, dict[str, Any]] | None = None,
                kind: str = "table") -> tuple[dict[str, Any], list[str]]:
    """(options, notes): FAMILY_OPTIONS[family] (updated by `extra[family]`), with task-dependent values filled
    in, minus any option the family's builder for `kind` inputs does not take (each one named in a note)."""
    opts = dict((FAMILY_OPTIONS if kind == "table" else IMAGE_FAMILY_OPTIONS).get(family, {}))
    opts.update((extra or {}).get(family, {}))
    if opts.get("branches") == "split-after-first":
        opts["branches"] = two_groups(tasks)
    return accepted_options(family, opts, kind)


def accepted_options(family: str, opts: dict[str, Any], kind: str = "table") -> tuple[dict[str, Any], list[str]]:
    """`opts` without the options the builder of `family` for `kind` inputs does not take, and a note per
    dropped option (a family renamed or not yet merged). Raises ValueError when there is no such builder."""
    fields = cfgmod.model_options_model(family, kind).model_fields
    kept = {k: v for k, v in opts.items() if k in fields}
    notes = [f"{family}: option {k}={v!r} dropped (its {kind} builder does not take it)"
             for k, v in opts.items() if k not in fields]
    return kept, notes


def families(chosen: Sequence[str] | None) -> list[str]:
    """The chosen families (checked against MODELS) or every registered one, at run time."""
    if not chosen:
        return list(MODELS)
    unknown = [f for f in chosen if f not in MODELS]
    if unknown:
        raise SystemExit(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; registered: {list(MODELS)}")
    return list(dict.fromkeys(chosen))


def batch_of(inputs: Any, rows: int) -> Any:
    """Exactly `rows` rows of `inputs` (a tensor or a dict of tensors): the first ones, repeated cyclically
    when there are fewer (so every latency is for the same batch size)."""
    first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
    idx = torch.arange(rows) % first.shape[0]
    if isinstance(inputs, torch.Tensor):
        return inputs[idx].contiguous()
    return {k: v[idx].contiguous() for k, v in inputs.items()}


def latency_ms(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds over `repeats` calls, after `warmup` untimed ones; no grad."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def model_latency_ms(model: torch.nn.Module, x: Any, tasks: Sequence[str] | None, repeats: int) -> float:
    """model(x, tasks=tasks) in eval mode (restored afterwards), median ms."""
    was_training = model.training
    model.eval()
    try:
        return latency_ms(lambda: model(x, tasks=list(tasks) if tasks is not None else None), repeats)
    finally:
        model.train(was_training)


def machine_line() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip() + ", "
                break
    except OSError:
        pass
    return (f"machine: {platform.machine()}, {cpu}{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)")


NOTES = "<!-- notes: written by hand, kept when this file is regenerated -->"


def kept_notes(md) -> str:
    """The hand-written part of an earlier report (from the NOTES marker on), so a re-run keeps it."""
    if not md.exists():
        return ""
    old = md.read_text()
    return "\n" + old[old.index(NOTES):] if NOTES in old else ""


def rechub_version() -> str | None:
    """torch-rechub's installed version, or None when this interpreter cannot import it (it is not a dependency of
    multitask: it lives in the environment benchmarks/rechub_env.sh builds)."""
    try:
        import torch_rechub  # noqa: F401
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("torch-rechub")
    except PackageNotFoundError:
        return "unknown version"


def fit_rechub(model: torch.nn.Module, loaders, **trainer_options) -> tuple[torch.Tensor, list[float], float]:
    """Train a torch-rechub model with its MTLTrainer (CPU, its printing silenced) on (train, val, test) loaders,
    restore its best epoch (it does so only when it stops early; our Trainer always does), and predict the test
    loader in eval mode: (test outputs, seconds of each `train_one_epoch` (its DataLoader included), fit seconds).
    `trainer_options` go to MTLTrainer (task_types, optimizer_params, n_epoch, earlystop_*...)."""
    from torch_rechub.trainers import MTLTrainer

    epoch_seconds: list[float] = []

    class TimedTrainer(MTLTrainer):
        def train_one_epoch(self, data_loader):
            begin = time.perf_counter()
            out = super().train_one_epoch(data_loader)
            epoch_seconds.append(time.perf_counter() - begin)
            return out

    train_dl, val_dl, test_dl = loaders
    with tempfile.TemporaryDirectory() as tmp:
        trainer = TimedTrainer(model, device="cpu", model_path=tmp, **trainer_options)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer.fit(train_dl, val_dl)
        seconds = time.perf_counter() - start
    best = trainer.early_stopper.best_weights
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    with torch.no_grad():
        outputs = torch.cat([model(xb) for xb, _ in test_dl])
    return outputs, epoch_seconds, seconds
