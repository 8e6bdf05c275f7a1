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

    python benchmarks/incomplete_labels.py [--limit 20000] [--seeds 0 1 2] [--epochs 8] [--out docs/benchmarks]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from multitask import config as cfgmod
from multitask.data import MultiTaskData, load_census_income
from multitask.data.sampling import SourceBatches
from multitask.data import load_yeast
from multitask.experiment import build_model
from multitask.models import build_model as build_named
from multitask.jsonio import write_json, write_text_atomic
from multitask.metrics import delta_m
from multitask.training import Trainer
from multitask.training.distillation import Distillation, FixedTeachers, PreviousSelf

TASKS = ["income", "marital", "education"]
A_TASKS, B_TASKS = ["income"], ["marital", "education"]
MODEL = {"hidden": [128, 64], "head_hidden": [32], "embedding_dim": 8}


def model_for(bundle, name: str, seed: int):
    cfg = cfgmod.validate({"data": {"name": "census-income"}, "tasks": {t: {} for t in TASKS},
                           "model": {"name": name, **MODEL}, "trainer": {"seed": seed}})
    return build_model(cfg, bundle.tasks, bundle.preprocessor.schema)


def halves(train: MultiTaskData, seed: int = 0) -> tuple[MultiTaskData, dict[str, int]]:
    """The training rows reordered as half A then half B, A labelled for income only, B for the others."""
    n = len(train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + seed))
    a, b = perm[: n // 2].sort().values, perm[n // 2:].sort().values
    data = train.subset(torch.cat([a, b]))
    y = {t: v.clone() for t, v in data.targets.items()}
    for t in B_TASKS:
        y[t][: len(a)] = math.nan
    for t in A_TASKS:
        y[t][len(a):] = math.nan
    return MultiTaskData(data.inputs, y), {"A": len(a), "B": len(b)}


def trainer_for(bundle, model, seed, epochs, lr, distill=None, **extra) -> Trainer:
    return Trainer(model, bundle.tasks, epochs=epochs, batch_size=256, lr=lr, seed=seed, progress=False,
                   distill=distill, **extra)


def auc(metrics: dict) -> dict:
    return {t: {"auc": metrics[t]["auc"]} for t in metrics}


def table1_run(bundle, half, sizes, row: str, seed: int, epochs: int, lr: float, teacher=None) -> dict:
    """One row of table 1 for one seed: the trained model's test AUCs and its time per step."""
    name = "independent" if row == "single-task (each half)" else "hard_sharing"
    model = model_for(bundle, name, seed)
    distill = None
    if row == "previous-self distillation":
        distill = Distillation(PreviousSelf(refresh="epoch"), weight=1.0)
    elif row == "previous-self distillation (EMA 0.99)":
        distill = Distillation(PreviousSelf(ema=0.99, warmup=len(half) // 256 + 1), weight=1.0)
    elif row == "single-task-teacher distillation":
        distill = Distillation(FixedTeachers({t: teacher for t in TASKS}), weight=1.0)
    trainer = trainer_for(bundle, model, seed, epochs, lr, distill)
    if row == "fully labelled (upper bound)":
        train = bundle.train
    elif row in ("masking, mixed batches", "single-task (each half)"):
        train = half
    else:
        train = SourceBatches(half, sizes, "round_robin")
    history = trainer.fit(train, bundle.val)
    steps = sum(r["steps"] for r in history)
    return {"row": row, "seed": seed, "test": auc(trainer.evaluate(bundle.test)["metrics"]),
            "val_history": [{t: r["val"][t]["auc"] for t in TASKS} for r in history],
            "seconds_per_step": statistics.median(r["seconds"] / r["steps"] for r in history),
            "teacher_seconds_per_step": sum(r.get("teacher_seconds", 0.0) for r in history) / steps,
            "model": trainer.model}


def forgetting(bundle, half, sizes, seed, pre_epochs, steps, every, lr, teacher) -> dict[str, list]:
    """Income's (and marital's) validation AUC while only half B trains, after mixed training on both halves."""
    base = model_for(bundle, "hard_sharing", seed)
    trainer_for(bundle, base, seed, pre_epochs, lr).fit(half, bundle.val)
    b_rows = torch.arange(sizes["A"], len(half))
    curves = {}
    for variant in ("masking", "previous self (snapshot at the switch)", "previous self (EMA 0.99 from the switch)",
                    "single-task teacher"):
        model = copy.deepcopy(base)
        distill = None
        if variant.startswith("previous self (snapshot"):
            distill = Distillation(FixedTeachers({"income": copy.deepcopy(base)}), weight={"income": 1.0})
        elif variant.startswith("previous self (EMA"):
            distill = Distillation(PreviousSelf(ema=0.99), weight={"income": 1.0})
        elif variant == "single-task teacher":
            distill = Distillation(FixedTeachers({"income": teacher}), weight={"income": 1.0})
        tr = trainer_for(bundle, model, seed, 1, lr, distill)
        if distill is not None:
            distill.teacher.start(model)  # an EMA teacher starts from the model at the switch (others: no-op)
        g = torch.Generator().manual_seed(seed)
        order = b_rows[torch.randperm(len(b_rows), generator=g)]
        points = []

        def measure(k):
            m = tr.evaluate(bundle.val)["metrics"]
            points.append({"step": k, "income": m["income"]["auc"], "marital": m["marital"]["auc"]})
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


def teacher_cost(bundle, half, sizes, teacher, rounds: int = 60) -> dict[str, float]:
    """Median seconds of one round-robin training step without a teacher, with the previous self and with the
    single-task teachers, measured interleaved (one step of each in turn) so a busy machine slows all alike."""
    plan = SourceBatches(half, sizes, "round_robin")
    batches = list(plan.epoch(256, torch.Generator().manual_seed(0)))
    variants = {"no teacher": None, "previous self": Distillation(PreviousSelf(refresh=1), weight=1.0),
                "single-task teachers": Distillation(FixedTeachers({t: teacher for t in TASKS}), weight=1.0)}
    trainers = {}
    for name, distill in variants.items():
        trainers[name] = trainer_for(bundle, model_for(bundle, "hard_sharing", 0), 0, 1, 1e-3, distill)
        if distill is not None:
            distill.teacher.start(trainers[name].model)
            distill.teacher.after_step(trainers[name].model, 1)  # ready from the first measured step
    times: dict[str, list[float]] = {n: [] for n in variants}
    for k in range(rounds):
        idx = batches[k % len(batches)]
        b = half.subset(idx)
        masks = {t: ~torch.isnan(y) for t, y in b.targets.items()}
        for name, tr in trainers.items():
            tr.model.train()
            start = time.perf_counter()
            tr.train_step(b.inputs, b.targets, masks)
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(v[5:]) for n, v in times.items()}


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=20000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pre-epochs", type=int, default=3)
    p.add_argument("--forget-steps", type=int, default=300)
    p.add_argument("--every", type=int, default=15)
    p.add_argument("--conv-epochs", type=int, default=15)
    p.add_argument("--conv-lr", type=float, default=3e-3)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--yeast-epochs", type=int, default=40)
    p.add_argument("--yeast-patience", type=int, default=5)
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--cost-only", action="store_true", help="only (re)measure the teacher cost into an existing "
                   "incomplete_labels.json (trains the seed-0 single-task teacher again) and rewrite the report")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    bundle = load_census_income(limit=args.limit, seed=0, tasks=TASKS)
    rows = ["fully labelled (upper bound)", "masking, mixed batches", "alternating sources (round robin)",
            "previous-self distillation", "previous-self distillation (EMA 0.99)", "single-task-teacher distillation"]
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
    table1, curves, table2, table2_yeast = [], {}, [], []
    yeast = load_yeast(seed=0)
    for seed in args.seeds:
        half, sizes = halves(bundle.train, seed)
        stl = table1_run(bundle, half, sizes, "single-task (each half)", seed, args.epochs, args.lr)
        teacher = stl.pop("model")
        table1.append(stl)
        for row in rows:
            r = table1_run(bundle, half, sizes, row, seed, args.epochs, args.lr, teacher)
            r.pop("model")
            table1.append(r)
            print(f"[t1] seed {seed} {row}: {r['test']} {r['seconds_per_step'] * 1e3:.1f} ms/step", flush=True)
        curves[seed] = forgetting(bundle, half, sizes, seed, args.pre_epochs, args.forget_steps, args.every,
                                  args.lr, teacher)
        print(f"[curve] seed {seed} done", flush=True)
        for variant in CONV_VARIANTS:
            r = table2_run(bundle, variant, seed, args.conv_epochs, args.conv_lr, args.patience)
            table2.append(r)
            print(f"[t2] seed {seed} {variant}: {r['test']} epochs {r['epochs']}", flush=True)
        for variant in CONV_VARIANTS:
            r = table2_run(yeast, variant, seed, args.yeast_epochs, 1e-3, args.yeast_patience, 128, YEAST_MODEL)
            table2_yeast.append(r)
            print(f"[t2 yeast] seed {seed} {variant}: epochs {r['epochs']}", flush=True)
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
                        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread, torch {torch.__version__}",
                        "total_seconds": total},
              "table1": table1, "forgetting": {str(k): v for k, v in curves.items()}, "table2": table2, "teacher_cost": cost,
              "table2_yeast": table2_yeast}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "incomplete_labels.json", result)
    plot(curves, out / "incomplete_labels.png")
    write_text_atomic(out / "incomplete_labels.md", report(result, rows))
    print(report(result, rows))


def report(result: dict, rows: list[str]) -> str:
    s = result["setup"]
    t1, t2 = result["table1"], result["table2"]
    stl = {r["seed"]: r["test"] for r in t1 if r["row"] == "single-task (each half)"}
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
        "| rows | income AUC | marital AUC | education AUC | Δm % | ms / step | teacher ms / step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ["single-task (each half)"] + rows:
        rs = [r for r in t1 if r["row"] == row]
        dm = [delta_m(r["test"], stl[r["seed"]]) for r in rs]
        cells = [mean_sd([r["test"][t]["auc"] for r in rs]) for t in TASKS]
        lines.append(f"| {row} | {' | '.join(cells)} | {statistics.mean(dm):+.2f} ± "
                     f"{statistics.stdev(dm) if len(dm) > 1 else 0:.2f} | "
                     f"{statistics.median(r['seconds_per_step'] for r in rs) * 1e3:.1f} | "
                     f"{statistics.median(r['teacher_seconds_per_step'] for r in rs) * 1e3:.1f} |")
    cost = result.get("teacher_cost")
    lines += ["", "The ms / step column comes from whole runs on a machine shared with other jobs, so it varies "
              "between rows for reasons other than the method; the teacher's own time (last column) is measured "
              "around its forward pass."]
    if cost:
        base = cost["no teacher"]
        lines += ["", "Teacher cost measured interleaved (one round-robin step of each variant in turn, "
                  "median of 55 steps, seed-0 model): " + ", ".join(
                      f"{n} {v * 1e3:.1f} ms (×{v / base:.2f})" for n, v in cost.items()) + "."]
    lines += ["", "## Forgetting curve: half B alone trains after mixed training on both halves", "",
              f"{s['pre_epochs']} epochs of mixed batches on the half-labelled rows, then {s['forget_steps']} steps "
              f"of half B only (marital, education labels; income has none there), with a fresh Adam state. "
              f"Validation AUC, mean over seeds, measured every {s.get('every', 15)} steps and shown every "
              f"{s['forget_steps'] // 4} (plot: docs/benchmarks/incomplete_labels.png; interpretation: "
              "docs/incomplete_labels.md).", "",
              "| variant | income AUC at step " + " | ".join(
                  str(k) for k in _ticks(result)) + " | marital AUC at the end |", "|---|" + "---:|" * (
                      len(_ticks(result)) + 1)]
    curves = result["forgetting"]
    for variant in next(iter(curves.values())):
        cells = []
        for k in _ticks(result):
            vals = [next(p["income"] for p in c[variant] if p["step"] == k) for c in curves.values()]
            cells.append(f"{statistics.mean(vals):.4f}")
        end = [c[variant][-1]["marital"] for c in curves.values()]
        lines.append(f"| {variant} | {' | '.join(cells)} | {statistics.mean(end):.4f} |")
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


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    variants = list(next(iter(curves.values())))
    for variant in variants:
        steps = [p["step"] for p in next(iter(curves.values()))[variant]]
        for ax, task in zip(axes, ("income", "marital")):
            mean = [statistics.mean(c[variant][i][task] for c in curves.values()) for i in range(len(steps))]
            ax.plot(steps, mean, label=variant)
    axes[0].set_title("income (no labels in these steps): validation AUC")
    axes[1].set_title("marital (trained in these steps): validation AUC")
    for ax in axes:
        ax.set_xlabel("steps on half B only")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
