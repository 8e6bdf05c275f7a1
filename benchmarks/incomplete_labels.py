"""incomplete_labels benchmark: tasks labelled on disjoint halves of census-income, and per-task convergence.

Table 1 (labels from two sources): the training rows are split into two disjoint random halves; half A keeps
only its `income` labels, half B only its `marital` and `education` labels (the others set missing). Rows:
fully labelled (upper bound), masking with mixed batches, alternating sources (round robin, masking),
previous-self distillation (round robin, teacher = the model at the end of the previous epoch), single-task
teachers (round robin, teacher = the single-task models of each half). Test AUC per task, Δm over the three
test AUCs against the single-task models trained on each half (an `independent` model on the half-labelled
rows), time per step (the teachers' cost).

Forgetting curve: a model trained on the half-labelled rows (mixed batches) for `--pre-epochs` epochs then
trains on half B alone (marital, education) for `--forget-steps` steps; income's validation AUC is recorded
every `--every` steps: masking (income has no loss), previous-self (a snapshot of the model at the switch
distilled into income on B's rows), single-task teacher (the income model of half A distilled likewise).

Table 2 (per-task convergence, all labels): whole-model early stopping (patience on the mean validation loss,
best weights restored) vs per-task freezing (per_task_patience) vs per-task freezing with protect: distill.

Validation rows keep all their labels (model selection and the curves); only training rows are split.

Multi-Fashion (`--data multi-fashion`): the same table 1 and forgetting curve through the same functions (a
`Setting` names each half's tasks, the metric and the model), on the first `--train-size` training composites
split into half A (left labels only) and half B (right labels only); hard sharing with the LeNet-like conv
trunk, the single-task models (and teachers) one `independent` image model per task; test accuracy; one more
row, single-task teachers at temperature 2 (multiclass distillation is the softened cross-entropy). No table 2.
Writes incomplete_labels_multi_fashion.{json,md,png}.

    python benchmarks/incomplete_labels.py [--limit 20000] [--seeds 0 1 2] [--epochs 8] [--out docs/benchmarks]
    python benchmarks/incomplete_labels.py --data multi-fashion [--train-size 10000] [--epochs 3] [--lr 2e-3] \
        [--pre-epochs 2] [--forget-steps 120] [--every 20]      # the committed Multi-Fashion run = the defaults
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from multitask import config as cfgmod
from multitask.data import MultiTaskData, load_census_income, load_multi_fashion
from multitask.data.sampling import SourceBatches
from multitask.data import load_yeast
from multitask.experiment import build_model
from multitask.models import build_model as build_named
from multitask.jsonio import write_json, write_text_atomic
from multitask.metrics import delta_m
from multitask.training import Trainer
from multitask.training.distillation import Distillation, FixedTeachers, PreviousSelf

@dataclasses.dataclass(frozen=True)
class Setting:
    """What differs between the two data sets of table 1 and the forgetting curve: the tasks of each half, the
    metric, the model options (config-built for census, as before; `build_model(name, ..., **model)` for
    images). The curve watches `a_tasks[0]` (no labels while half B trains) and `b_tasks[0]` (trained)."""
    data: str
    a_tasks: tuple[str, ...]
    b_tasks: tuple[str, ...]
    metric: str
    model: dict

    @property
    def tasks(self) -> list[str]:
        return [*self.a_tasks, *self.b_tasks]

    @property
    def forgotten(self) -> str:
        return self.a_tasks[0]

    @property
    def watched(self) -> str:
        return self.b_tasks[0]


MODEL = {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8}
IMAGE_MODEL = {"conv_channels": [10, 20], "kernel_size": 5, "hidden": [50], "head_hidden": [50]}
CENSUS = Setting("census-income", ("income",), ("marital", "education"), "auc", MODEL)
FASHION = Setting("multi-fashion", ("left",), ("right",), "accuracy", IMAGE_MODEL)
TASKS, A_TASKS, B_TASKS = CENSUS.tasks, list(CENSUS.a_tasks), list(CENSUS.b_tasks)


def model_for(bundle, name: str, seed: int, setting: Setting = CENSUS):
    if setting.data == "census-income":
        cfg = cfgmod.validate({"data": {"name": "census-income"}, "tasks": {t: {} for t in setting.tasks},
                               "model": {"name": name, **setting.model}, "trainer": {"seed": seed}})
        return build_model(cfg, bundle.tasks, bundle.preprocessor.schema)
    torch.manual_seed(seed)
    return build_named(name, bundle.tasks, bundle.preprocessor.schema, **setting.model)


def halves(train: MultiTaskData, seed: int = 0, setting: Setting = CENSUS) -> tuple[MultiTaskData, dict[str, int]]:
    """The training rows reordered as half A then half B, A labelled for `a_tasks` only, B for `b_tasks` only
    (a missing label: NaN in float targets, -1 in integer ones)."""
    n = len(train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + seed))
    a, b = perm[: n // 2].sort().values, perm[n // 2:].sort().values
    data = train.subset(torch.cat([a, b]))
    y = {t: v.clone() for t, v in data.targets.items()}
    for t in setting.b_tasks:
        y[t][: len(a)] = math.nan if y[t].is_floating_point() else -1
    for t in setting.a_tasks:
        y[t][len(a):] = math.nan if y[t].is_floating_point() else -1
    return MultiTaskData(data.inputs, y), {"A": len(a), "B": len(b)}


def trainer_for(bundle, model, seed, epochs, lr, distill=None, **extra) -> Trainer:
    return Trainer(model, bundle.tasks, epochs=epochs, batch_size=256, lr=lr, seed=seed, progress=False,
                   distill=distill, **extra)


def auc(metrics: dict, metric: str = "auc") -> dict:
    return {t: {metric: metrics[t][metric]} for t in metrics}


def table1_run(bundle, half, sizes, row: str, seed: int, epochs: int, lr: float, teacher=None,
               setting: Setting = CENSUS) -> dict:
    """One row of table 1 for one seed: the trained model's test metric and its time per step."""
    name = "independent" if row == "single-task (each half)" else "hard_sharing"
    model = model_for(bundle, name, seed, setting)
    distill = None
    if row == "previous-self distillation":
        distill = Distillation(PreviousSelf(refresh="epoch"), weight=1.0)
    elif row == "previous-self distillation (EMA 0.99)":
        distill = Distillation(PreviousSelf(ema=0.99, warmup=len(half) // 256 + 1), weight=1.0)
    elif row == "single-task-teacher distillation":
        distill = Distillation(FixedTeachers({t: teacher for t in setting.tasks}), weight=1.0)
    elif row.startswith("single-task-teacher distillation (T="):
        T = float(row.split("T=")[1].rstrip(")"))
        distill = Distillation(FixedTeachers({t: teacher for t in setting.tasks}), weight=1.0, temperature=T)
    trainer = trainer_for(bundle, model, seed, epochs, lr, distill)
    if row == "fully labelled (upper bound)":
        train = bundle.train
    elif row in ("masking, mixed batches", "single-task (each half)"):
        train = half
    else:
        train = SourceBatches(half, sizes, "round_robin")
    history = trainer.fit(train, bundle.val)
    steps = sum(r["steps"] for r in history)
    m = setting.metric
    return {"row": row, "seed": seed, "test": auc(trainer.evaluate(bundle.test)["metrics"], m),
            "val_history": [{t: r["val"][t][m] for t in setting.tasks} for r in history],
            "seconds_per_step": statistics.median(r["seconds"] / r["steps"] for r in history),
            "teacher_seconds_per_step": sum(r.get("teacher_seconds", 0.0) for r in history) / steps,
            "model": trainer.model}


def forgetting(bundle, half, sizes, seed, pre_epochs, steps, every, lr, teacher,
               setting: Setting = CENSUS) -> dict[str, list]:
    """The forgotten task's (income's; left's) and the watched task's (marital's; right's) validation metric
    while only half B trains, after mixed training on both halves."""
    lost, kept, m = setting.forgotten, setting.watched, setting.metric
    base = model_for(bundle, "hard_sharing", seed, setting)
    trainer_for(bundle, base, seed, pre_epochs, lr).fit(half, bundle.val)
    b_rows = torch.arange(sizes["A"], len(half))
    curves = {}
    for variant in ("masking", "previous self (snapshot at the switch)", "previous self (EMA 0.99 from the switch)",
                    "single-task teacher"):
        model = copy.deepcopy(base)
        distill = None
        if variant.startswith("previous self (snapshot"):
            distill = Distillation(FixedTeachers({lost: copy.deepcopy(base)}), weight={lost: 1.0})
        elif variant.startswith("previous self (EMA"):
            distill = Distillation(PreviousSelf(ema=0.99), weight={lost: 1.0})
        elif variant == "single-task teacher":
            distill = Distillation(FixedTeachers({lost: teacher}), weight={lost: 1.0})
        tr = trainer_for(bundle, model, seed, 1, lr, distill)
        if distill is not None:
            distill.teacher.start(model)  # an EMA teacher starts from the model at the switch (others: no-op)
        g = torch.Generator().manual_seed(seed)
        order = b_rows[torch.randperm(len(b_rows), generator=g)]
        points = []

        def measure(k):
            got = tr.evaluate(bundle.val)["metrics"]
            points.append({"step": k, lost: got[lost][m], kept: got[kept][m]})
        measure(0)
        torch.manual_seed(seed)
        for k in range(1, steps + 1):
            start = ((k - 1) * 256) % len(order)
            idx = order[start:start + 256]
            batch = half.subset(idx)
            tr.model.train()
            tr.train_step(batch.inputs, batch.targets)
            if k % every == 0:
                measure(k)
        curves[variant] = points
    return curves


CONV_VARIANTS = ("whole-model early stopping", "per-task freezing", "per-task freezing + protect: distill")
YEAST_MODEL = {"hidden": [256, 128], "head_hidden": [32], "dropout": 0.1}


def table2_run(bundle, variant: str, seed: int, epochs: int, lr: float, patience: int, batch_size: int = 256,
               options: dict | None = None) -> dict:
    """One run of table 2: the same model and data, three ways of stopping."""
    if options is None:
        model = model_for(bundle, "hard_sharing", seed)
    else:
        torch.manual_seed(seed)
        model = build_named("hard_sharing", bundle.tasks, bundle.preprocessor.schema, **options)
    extra = ({"patience": patience} if variant == "whole-model early stopping"
             else {"per_task_patience": patience,
                   "protect": "distill" if variant.endswith("protect: distill") else "none"})
    trainer = Trainer(model, bundle.tasks, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=False,
                      **extra)
    start = time.perf_counter()
    history = trainer.fit(bundle.train, bundle.val)
    seconds = time.perf_counter() - start
    val = trainer.evaluate(bundle.val)["metrics"]
    out = {"variant": variant, "seed": seed, "test": auc(trainer.evaluate(bundle.test)["metrics"]),
           "epochs": len(history), "seconds": seconds}
    if trainer.convergence is not None:
        out["per_task_stop"] = trainer.convergence.summary(val)
    else:
        out["best_epoch"] = trainer.early.best_epoch
    return out


def teacher_cost(bundle, half, sizes, teacher, rounds: int = 60, setting: Setting = CENSUS) -> dict[str, float]:
    """Median seconds of one round-robin training step without a teacher, with the previous self and with the
    single-task teachers, measured interleaved (one step of each in turn) so a busy machine slows all alike."""
    plan = SourceBatches(half, sizes, "round_robin")
    batches = list(plan.epoch(256, torch.Generator().manual_seed(0)))
    variants = {"no teacher": None, "previous self": Distillation(PreviousSelf(refresh=1), weight=1.0),
                "single-task teachers": Distillation(FixedTeachers({t: teacher for t in setting.tasks}), weight=1.0)}
    trainers = {}
    for name, distill in variants.items():
        trainers[name] = trainer_for(bundle, model_for(bundle, "hard_sharing", 0, setting), 0, 1, 1e-3, distill)
        if distill is not None:
            distill.teacher.start(trainers[name].model)
            distill.teacher.after_step(trainers[name].model, 1)  # ready from the first measured step
    times: dict[str, list[float]] = {n: [] for n in variants}
    kinds = {task.name: task for task in bundle.tasks}
    for k in range(rounds):
        idx = batches[k % len(batches)]
        b = half.subset(idx)
        masks = {t: kinds[t].label_mask(y) for t, y in b.targets.items()}
        for name, tr in trainers.items():
            tr.model.train()
            start = time.perf_counter()
            tr.train_step(b.inputs, b.targets, masks)
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(v[5:]) for n, v in times.items()}


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


ROWS = ["fully labelled (upper bound)", "masking, mixed batches", "alternating sources (round robin)",
        "previous-self distillation", "previous-self distillation (EMA 0.99)", "single-task-teacher distillation"]
FASHION_ROWS = ROWS + ["single-task-teacher distillation (T=2)"]


def run_halves(bundle, setting: Setting, rows: list[str], args, after_seed=None) -> tuple[list, dict, Any]:
    """Table 1 and the forgetting curve for every seed (each seed redraws the halves); `after_seed(seed)` runs
    at the end of each seed (census: table 2). Returns the rows, the curves and the last seed's teacher."""
    table1, curves, teacher = [], {}, None
    for seed in args.seeds:
        half, sizes = halves(bundle.train, seed, setting)
        stl = table1_run(bundle, half, sizes, "single-task (each half)", seed, args.epochs, args.lr, setting=setting)
        teacher = stl.pop("model")
        table1.append(stl)
        print(f"[t1] seed {seed} single-task (each half): {stl['test']}", flush=True)
        for row in rows:
            r = table1_run(bundle, half, sizes, row, seed, args.epochs, args.lr, teacher, setting)
            r.pop("model")
            table1.append(r)
            print(f"[t1] seed {seed} {row}: {r['test']} {r['seconds_per_step'] * 1e3:.1f} ms/step", flush=True)
        curves[seed] = forgetting(bundle, half, sizes, seed, args.pre_epochs, args.forget_steps, args.every,
                                  args.lr, teacher, setting)
        print(f"[curve] seed {seed} done", flush=True)
        if after_seed is not None:
            after_seed(seed)
    return table1, curves, teacher


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", choices=["census-income", "multi-fashion"], default="census-income")
    p.add_argument("--limit", type=int, default=20000)
    p.add_argument("--train-size", type=int, default=10000, help="multi-fashion: the first N of the 54,000 "
                   "training composites (split into the two halves); validation (6,000) and test (10,000) whole")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="default 8 (census), 3 (multi-fashion)")
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 (census), 2e-3 (multi-fashion)")
    p.add_argument("--pre-epochs", type=int, default=None, help="default 3 (census), 2 (multi-fashion)")
    p.add_argument("--forget-steps", type=int, default=None, help="default 300 (census), 120 (multi-fashion)")
    p.add_argument("--every", type=int, default=None, help="default 15 (census), 20 (multi-fashion)")
    p.add_argument("--conv-epochs", type=int, default=15)
    p.add_argument("--conv-lr", type=float, default=3e-3)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--yeast-epochs", type=int, default=40)
    p.add_argument("--yeast-patience", type=int, default=5)
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--cost-only", action="store_true", help="only (re)measure the teacher cost into an existing "
                   "incomplete_labels.json (trains the seed-0 single-task teacher again) and rewrite the report")
    args = p.parse_args()
    images = args.data == "multi-fashion"
    for name, census, fashion in (("epochs", 8, 3), ("lr", 1e-3, 2e-3), ("pre_epochs", 3, 2),
                                  ("forget_steps", 300, 120), ("every", 15, 20)):
        if getattr(args, name) is None:
            setattr(args, name, fashion if images else census)
    torch.set_num_threads(1)
    if images:
        return main_images(args)
    t0 = time.perf_counter()
    bundle = load_census_income(limit=args.limit, seed=0, tasks=TASKS)
    rows = ROWS
    if args.cost_only:
        out = Path(args.out)
        result = json.loads((out / "incomplete_labels.json").read_text())
        half, sizes = halves(bundle.train, 0)
        s = result["setup"]
        teacher = table1_run(bundle, half, sizes, "single-task (each half)", 0, s["epochs"], s["lr"])["model"]
        result["teacher_cost"] = teacher_cost(bundle, half, sizes, teacher)
        print(f"[cost] {result['teacher_cost']}", flush=True)
        write_json(out / "incomplete_labels.json", result)
        write_text_atomic(out / "incomplete_labels.md", report(result, rows))
        return
    table2, table2_yeast = [], []
    yeast = load_yeast(seed=0)

    def convergence(seed: int) -> None:
        for variant in CONV_VARIANTS:
            r = table2_run(bundle, variant, seed, args.conv_epochs, args.conv_lr, args.patience)
            table2.append(r)
            print(f"[t2] seed {seed} {variant}: {r['test']} epochs {r['epochs']}", flush=True)
        for variant in CONV_VARIANTS:
            r = table2_run(yeast, variant, seed, args.yeast_epochs, 1e-3, args.yeast_patience, 128, YEAST_MODEL)
            table2_yeast.append(r)
            print(f"[t2 yeast] seed {seed} {variant}: epochs {r['epochs']}", flush=True)

    table1, curves, teacher = run_halves(bundle, CENSUS, rows, args, convergence)
    cost = teacher_cost(bundle, *halves(bundle.train, 0), teacher)
    print(f"[cost] {cost}", flush=True)
    total = time.perf_counter() - t0
    result = {"setup": {"limit": args.limit, "train_rows": len(bundle.train), "val_rows": len(bundle.val),
                        "test_rows": len(bundle.test), "seeds": args.seeds, "epochs": args.epochs, "lr": args.lr,
                        "batch_size": 256, "model": MODEL, "pre_epochs": args.pre_epochs,
                        "forget_steps": args.forget_steps, "every": args.every, "conv_epochs": args.conv_epochs,
                        "conv_lr": args.conv_lr, "patience": args.patience, "yeast_epochs": args.yeast_epochs,
                        "yeast_patience": args.yeast_patience, "yeast_model": YEAST_MODEL,
                        "yeast_rows": [len(yeast.train), len(yeast.val), len(yeast.test)],
                        "machine": machine(), "total_seconds": total},
              "table1": table1, "forgetting": {str(k): v for k, v in curves.items()}, "table2": table2, "teacher_cost": cost,
              "table2_yeast": table2_yeast}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "incomplete_labels.json", result)
    plot(curves, out / "incomplete_labels.png")
    write_text_atomic(out / "incomplete_labels.md", report(result, rows))
    print(report(result, rows))


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, 1 thread, torch {torch.__version__}"


def main_images(args) -> None:
    """The Multi-Fashion half: table 1 (plus single-task teachers at T = 2) and the forgetting curve; no table 2."""
    t0 = time.perf_counter()
    bundle = load_multi_fashion(seed=0)
    if args.train_size:
        bundle.train = bundle.train.subset(torch.arange(min(args.train_size, len(bundle.train))))
    table1, curves, teacher = run_halves(bundle, FASHION, FASHION_ROWS, args)
    cost = teacher_cost(bundle, *halves(bundle.train, 0, FASHION), teacher, setting=FASHION)
    print(f"[cost] {cost}", flush=True)
    result = {"setup": {"data": "multi-fashion", "train_rows": len(bundle.train), "val_rows": len(bundle.val),
                        "test_rows": len(bundle.test), "seeds": args.seeds, "epochs": args.epochs, "lr": args.lr,
                        "batch_size": 256, "model": IMAGE_MODEL, "pre_epochs": args.pre_epochs,
                        "forget_steps": args.forget_steps, "every": args.every, "machine": machine(),
                        "total_seconds": time.perf_counter() - t0},
              "table1": table1, "forgetting": {str(k): v for k, v in curves.items()}, "teacher_cost": cost}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "incomplete_labels_multi_fashion"
    write_json(out / f"{name}.json", result)
    plot(curves, out / f"{name}.png", FASHION)
    write_text_atomic(out / f"{name}.md", report_images(result, FASHION_ROWS))
    print(report_images(result, FASHION_ROWS))


def table1_lines(result: dict, rows: list[str], setting: Setting) -> list[str]:
    """Table 1's table: per task the test metric (mean ± sd), Δm against the single-task models, time."""
    t1, m = result["table1"], setting.metric
    stl = {r["seed"]: r["test"] for r in t1 if r["row"] == "single-task (each half)"}
    name = {"auc": "AUC", "accuracy": "acc"}[m]
    lines = ["| rows | " + " | ".join(f"{t} {name}" for t in setting.tasks)
             + " | Δm % | ms / step | teacher ms / step |",
             "|---|" + "---:|" * (len(setting.tasks) + 3)]
    for row in ["single-task (each half)"] + rows:
        rs = [r for r in t1 if r["row"] == row]
        dm = [delta_m(r["test"], stl[r["seed"]]) for r in rs]
        cells = [mean_sd([r["test"][t][m] for r in rs]) for t in setting.tasks]
        lines.append(f"| {row} | {' | '.join(cells)} | {statistics.mean(dm):+.2f} ± "
                     f"{statistics.stdev(dm) if len(dm) > 1 else 0:.2f} | "
                     f"{statistics.median(r['seconds_per_step'] for r in rs) * 1e3:.1f} | "
                     f"{statistics.median(r['teacher_seconds_per_step'] for r in rs) * 1e3:.1f} |")
    return lines


def cost_lines(result: dict) -> list[str]:
    lines = ["", "The ms / step column comes from whole runs on a machine shared with other jobs, so it varies "
             "between rows for reasons other than the method; the teacher's own time (last column) is measured "
             "around its forward pass."]
    cost = result.get("teacher_cost")
    if cost:
        base = cost["no teacher"]
        lines += ["", "Teacher cost measured interleaved (one round-robin step of each variant in turn, "
                  "median of 55 steps, seed-0 model): " + ", ".join(
                      f"{n} {v * 1e3:.1f} ms (×{v / base:.2f})" for n, v in cost.items()) + "."]
    return lines


def forgetting_lines(result: dict, setting: Setting) -> list[str]:
    """The forgetting curve's table: the forgotten task's validation metric at five steps, the watched task's
    at the end (means over seeds)."""
    m, lost, kept = setting.metric, setting.forgotten, setting.watched
    name = {"auc": "AUC", "accuracy": "acc"}[m]
    lines = [f"| variant | {lost} {name} at step " + " | ".join(str(k) for k in _ticks(result))
             + f" | {kept} {name} at the end |", "|---|" + "---:|" * (len(_ticks(result)) + 1)]
    curves = result["forgetting"]
    for variant in next(iter(curves.values())):
        cells = []
        for k in _ticks(result):
            vals = [next(p[lost] for p in c[variant] if p["step"] == k) for c in curves.values()]
            cells.append(f"{statistics.mean(vals):.4f}")
        end = [c[variant][-1][kept] for c in curves.values()]
        lines.append(f"| {variant} | {' | '.join(cells)} | {statistics.mean(end):.4f} |")
    return lines


def val_lines(result: dict, rows: list[str], setting: Setting) -> list[str]:
    """Validation metric at the last epoch (mean over seeds): what a choice between rows (e.g. T) may read."""
    t1, m = result["table1"], setting.metric
    lines = ["| rows | " + " | ".join(f"{t} val {m}" for t in setting.tasks) + " | mean |",
             "|---|" + "---:|" * (len(setting.tasks) + 1)]
    for row in ["single-task (each half)"] + rows:
        rs = [r for r in t1 if r["row"] == row]
        vals = [statistics.mean(r["val_history"][-1][t] for r in rs) for t in setting.tasks]
        lines.append(f"| {row} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {statistics.mean(vals):.4f} |")
    return lines


def report_images(result: dict, rows: list[str]) -> str:
    s = result["setup"]
    return "\n".join([
        "# incomplete_labels: left labels on one half, right labels on the other (Multi-Fashion)", "",
        f"Setup: Multi-Fashion (data seed 0), the first {s['train_rows']} of the 54,000 training composites split "
        f"into two disjoint random halves, validation ({s['val_rows']}) and test ({s['test_rows']}) whole and fully "
        f"labelled; tasks left and right (10 classes each); hard sharing LeNet-like conv trunk {s['model']} "
        "(the single-task models: `independent`, one such network per task); Adam lr "
        f"{s['lr']}, batch {s['batch_size']}, {s['epochs']} epochs (the last epoch's weights); seeds {s['seeds']} "
        f"(each seed also redraws the halves). {s['machine']}; whole benchmark {s['total_seconds'] / 60:.1f} min. "
        "Produced by `python benchmarks/incomplete_labels.py --data multi-fashion` (these sizes are its "
        "defaults; census: "
        "[incomplete_labels.md](incomplete_labels.md)).", "",
        "## Table 1: half A labelled for left only, half B for right only", "",
        "Test accuracy, mean ± sd over seeds; Δm (%) over the two test accuracies against the single-task models of "
        "each half (same seed); time per training step (median over epochs) and the teacher's share of it. "
        "Multiclass distillation is the softened cross-entropy (× T²); the T = 2 row is a second, stated setting, "
        "not a tuned one (validation accuracies below).", "",
        *table1_lines(result, rows, FASHION), *cost_lines(result), "",
        "Validation accuracy at the last epoch (mean over seeds; the split any choice between rows should read):", "",
        *val_lines(result, rows, FASHION), "",
        "## Forgetting curve: half B alone trains after mixed training on both halves", "",
        f"{s['pre_epochs']} epochs of mixed batches on the half-labelled rows, then {s['forget_steps']} steps of half "
        f"B only (right labels; left has none there), with a fresh Adam state. Validation accuracy, mean over seeds, "
        f"measured every {s['every']} steps (plot: incomplete_labels_multi_fashion.png).", "",
        *forgetting_lines(result, FASHION)]) + "\n"


def report(result: dict, rows: list[str]) -> str:
    s = result["setup"]
    t2 = result["table2"]
    lines = [
        "# incomplete_labels: labels from two disjoint halves, and per-task convergence (census-income)", "",
        f"Setup: census-income, first {s['limit']} rows of the training file ({s['train_rows']} train, "
        f"{s['val_rows']} validation) and the first {s['test_rows']} rows of the test file; tasks income, "
        f"marital, education (binary); hard sharing MLP {s['model']}; Adam lr {s['lr']}, batch {s['batch_size']}, "
        f"{s['epochs']} epochs (the last epoch's weights); seeds {s['seeds']} (each seed also redraws the two "
        f"halves). {s['machine']}; whole benchmark {s['total_seconds'] / 60:.1f} min.", "",
        "## Table 1: half A labelled for income only, half B for marital and education only", "",
        "Test AUC, mean ± sd over seeds; Δm (%) over the three test AUCs against the single-task models of each "
        "half (same seed); time per training step (median over epochs) and the teacher's share of it.", "",
        *table1_lines(result, rows, CENSUS), *cost_lines(result)]
    lines += ["", "## Forgetting curve: half B alone trains after mixed training on both halves", "",
              f"{s['pre_epochs']} epochs of mixed batches on the half-labelled rows, then {s['forget_steps']} steps "
              f"of half B only (marital, education labels; income has none there), with a fresh Adam state. "
              f"Validation AUC, mean over seeds, measured every {s.get('every', 15)} steps and shown every "
              f"{s['forget_steps'] // 4} (plot: docs/benchmarks/incomplete_labels.png; interpretation: "
              "docs/incomplete_labels.md).", "", *forgetting_lines(result, CENSUS)]
    lines += ["", "## Table 2: per-task convergence (all labels)", "",
              f"Adam lr {s['conv_lr']}, at most {s['conv_epochs']} epochs, patience {s['patience']} (on the mean "
              "validation loss for whole-model early stopping, on each task's validation AUC for per-task "
              "freezing). Test AUC mean ± sd; epochs trained; per task: stop epoch (mean; '-' = never stopped) and "
              "validation AUC at its stop (its kept best) vs at the end.", "",
              "| variant | income AUC | marital AUC | education AUC | epochs | stops (income/marital/education) "
              "| val AUC at stop → at end |", "|---|---:|---:|---:|---:|---|---|"]
    for variant in CONV_VARIANTS:
        rs = [r for r in t2 if r["variant"] == variant]
        cells = [mean_sd([r["test"][t]["auc"] for r in rs]) for t in TASKS]
        if "per_task_stop" in rs[0]:
            stops = "/".join(_mean_or_dash([r["per_task_stop"][t]["stop_epoch"] for r in rs]) for t in TASKS)
            drift = "; ".join(
                f"{t} {_mean_or_dash([r['per_task_stop'][t]['at_stop'] for r in rs], 4)} → "
                f"{statistics.mean(r['per_task_stop'][t]['at_end'] for r in rs):.4f}" for t in TASKS)
        else:
            stops = f"best epoch {statistics.mean(r['best_epoch'] for r in rs):.1f} (whole model)"
            drift = "-"
        lines.append(f"| {variant} | {' | '.join(cells)} | {statistics.mean(r['epochs'] for r in rs):.1f} | "
                     f"{stops} | {drift} |")
    y = result["table2_yeast"]
    lines += ["", "### Table 2b: per-task convergence on yeast (14 binary tasks)", "",
              f"yeast ({s['yeast_rows'][0]} train, {s['yeast_rows'][1]} validation, {s['yeast_rows'][2]} test rows), "
              f"hard sharing {s['yeast_model']}, Adam lr 0.001, batch 128, at most {s['yeast_epochs']} epochs, "
              f"patience {s['yeast_patience']}. Mean test AUC over the 14 tasks (mean ± sd over seeds); tasks "
              "stopped before the end; mean stop epoch; mean over stopped tasks of the validation AUC at their "
              "stop minus at the end (> 0: the task lost quality after its head was frozen).", "",
              "| variant | mean test AUC | epochs | tasks stopped | mean stop epoch | val AUC at stop − at end |",
              "|---|---:|---:|---:|---:|---:|"]
    for variant in CONV_VARIANTS:
        rs = [r for r in y if r["variant"] == variant]
        mean_auc = [statistics.mean(v["auc"] for v in r["test"].values() if not math.isnan(v["auc"])) for r in rs]
        if "per_task_stop" in rs[0]:
            st = [v for r in rs for v in r["per_task_stop"].values() if v["stop_epoch"] is not None]
            n_stopped = f"{len(st) / len(rs):.1f} / 14"
            stop_epoch = f"{statistics.mean(v['stop_epoch'] for v in st):.1f}" if st else "-"
            gaps = [v["at_stop"] - v["at_end"] for v in st if not math.isnan(v["at_stop"]) and not math.isnan(v["at_end"])]
            gap = f"{statistics.mean(gaps):+.4f}" if gaps else "-"
        else:
            n_stopped, stop_epoch = "-", f"best epoch {statistics.mean(r['best_epoch'] for r in rs):.1f}"
            gap = "-"
        lines.append(f"| {variant} | {mean_sd(mean_auc)} | {statistics.mean(r['epochs'] for r in rs):.1f} | "
                     f"{n_stopped} | {stop_epoch} | {gap} |")
    return "\n".join(lines) + "\n"


def _ticks(result: dict) -> list[int]:
    s = result["setup"]
    steps = [p["step"] for p in next(iter(next(iter(result["forgetting"].values())).values()))]
    want = [0] + [round(s["forget_steps"] * f / 4) for f in (1, 2, 3, 4)]
    return [min(steps, key=lambda x: abs(x - w)) for w in want]


def _mean_or_dash(values: list, digits: int = 1) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    text = f"{statistics.mean(got):.{digits}f}"
    return text if len(got) == len(values) else f"{text} ({len(got)}/{len(values)} stopped)"


def plot(curves: dict, path: Path, setting: Setting = CENSUS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    variants = list(next(iter(curves.values())))
    for variant in variants:
        steps = [p["step"] for p in next(iter(curves.values()))[variant]]
        for ax, task in zip(axes, (setting.forgotten, setting.watched)):
            mean = [statistics.mean(c[variant][i][task] for c in curves.values()) for i in range(len(steps))]
            ax.plot(steps, mean, label=variant)
    name = {"auc": "AUC", "accuracy": "accuracy"}[setting.metric]
    axes[0].set_title(f"{setting.forgotten} (no labels in these steps): validation {name}")
    axes[1].set_title(f"{setting.watched} (trained in these steps): validation {name}")
    for ax in axes:
        ax.set_xlabel("steps on half B only")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
