"""Architectures on census-income (income, marital, education) or Multi-Fashion (left, right): every family x
balancer x seed; on census, torch-rechub's SharedBottom, MMoE and PLE trained beside them on the same rows,
features and tasks (issue 10, benchmark 1).

Per family and balancer: per-task test AUC (mean ± std over seeds), Δm against Independent + equal (all nine
test metrics, as benchmarks/census.py), parameters, train seconds per epoch (median over epochs, then over
seeds) and inference milliseconds per 10,000 rows for the first task alone (model(x, tasks=[income])) and for
all three (eval mode, no grad, median of --repeats calls). One split (seed 0: 10% of the training file for
validation, the whole test file for test); the seed changes initialisation and batch order.

    python benchmarks/architectures.py [--families ...] [--balancers equal uncertainty mgda] [--seeds 0 1 2]
        [--epochs 10] [--limit N] [--threads N] [--out docs/benchmarks]
    python benchmarks/architectures.py --data multi-fashion --train-size 5000 --val-size 2000 --epochs 3 --patience 2 \
        --repeats 3 --name architectures_multi_fashion

On Multi-Fashion the families are built with their image builders' defaults (the LeNet-like conv layers of
`multitask.models.conv`; FAMILY_OPTIONS are for tables), the metric is accuracy (Δm over accuracy and macro-F1),
funnel families are skipped (their tasks must be binary steps) and torch-rechub (a tabular library) is not run.

torch-rechub is not a dependency of multitask: the part beside it runs when `import torch_rechub` works, i.e.
with the interpreter of the environment benchmarks/rechub_env.sh builds:

    .bench-rechub/bin/python benchmarks/architectures.py --out docs/benchmarks
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arch_common import (accepted_options, batch_of, families, kept_notes, latency_ms,  # noqa: E402
                         machine_line, model_latency_ms, options_for, rechub_version, fit_rechub)

from multitask import config as cfgmod  # noqa: E402
from multitask.balancing import BALANCERS, GradientBalancer  # noqa: E402
from multitask.data import load_census_income  # noqa: E402
from multitask.experiment import build_balancer, build_model, count_parameters, trainer_config  # noqa: E402
from multitask.metrics import delta_m  # noqa: E402
from multitask.training import Trainer  # noqa: E402

TASKS = ["income", "marital", "education"]
BATCH, LR = 512, 1e-3
# What changes with --data: tasks, the headline metric, the input kind (table or image builders), batch size.
DATASETS = {
    "census": {"config": "census-income", "title": "census-income", "tasks": TASKS, "metric": "auc",
               "kind": "table", "batch": 512},
    "multi-fashion": {"config": "multi-fashion", "title": "Multi-Fashion", "tasks": ["left", "right"],
                      "metric": "accuracy", "kind": "image", "batch": 256},
}
DATA = DATASETS["census"]  # set by main() from --data
INFER_ROWS = 10_000
# equal and uncertainty weight the losses; MGDA (Sener & Koltun 2018) is the canonical gradient method. It runs
# in parameters mode, the one mode every family supports (features mode is refused for families without a
# representation all tasks read), so every family is balanced the same way; it costs one backward per task.
DEFAULT_BALANCERS = ["equal", "uncertainty", "mgda"]
GRADIENT_MODE = "parameters"

# torch-rechub's own layer choices for census-income (its examples/ranking/run_census.py): every categorical
# column embedded in 4 dimensions, numeric columns as dense features, towers of one 8-unit layer; its MLP
# layers are Linear-BatchNorm-ReLU(-Dropout 0) and its embeddings start at N(0, 1e-4).
RECHUB_EMBED_DIM = 4
RECHUB_TOWER = [8]
RECHUB_ARCHS = {  # torch-rechub class -> (its constructor options, our family of the same architecture)
    "SharedBottom": ({"bottom_params": {"dims": [117]}}, "hard_sharing"),
    "MMOE": ({"n_expert": 8, "expert_params": {"dims": [16]}}, "mmoe"),
    "PLE": ({"n_level": 1, "n_expert_specific": 2, "n_expert_shared": 1, "expert_params": {"dims": [16]}}, "ple"),
}
# Our family at torch-rechub's sizes, so that s/epoch is also compared at equal work. Options a builder does not
# take (yet) are dropped with a note; the PLE names are a guess at our PLE's options until it exists.
RECHUB_SIZED = {
    "hard_sharing": {"hidden": [117], "head_hidden": RECHUB_TOWER},
    "mmoe": {"n_experts": 8, "expert_hidden": [16], "tower_hidden": RECHUB_TOWER},
    "ple": {"n_levels": 1, "n_task_experts": 2, "n_shared_experts": 1, "expert_hidden": [16],
            "tower_hidden": RECHUB_TOWER},
}
RECHUB_LIKE = {"embedding_dim": RECHUB_EMBED_DIM, "embedding_width": "same", "embedding_std": 1e-4,
               "batch_norm": True}


# ------------------------------------------------------------------------------------------------ ours
METRIC_NAMES = {"auc": "AUC", "accuracy": "accuracy"}
LATENCY_NOTE = (
    "Inference latency depends on the architecture, not on the seed or the balancer: each family has one value, the "
    "median over the runs that measured it (the first seed's first balancer; parts run before that rule measured "
    "every run), for a batch of 10,000 test rows (the first ones, repeated when --limit leaves fewer) on weights "
    "after training; a family that cannot skip work (`skips_work = False`) computes every task's path even for "
    "one asked task.")


def use_data(name: str) -> None:
    """Point the module at one data set of DATASETS (its tasks, metric, input kind, batch size)."""
    global DATA, TASKS
    DATA = DATASETS[name]
    TASKS = list(DATA["tasks"])


def load_data(args):
    """The chosen data set's bundle (split seed 0): census cut by --limit rows per file, Multi-Fashion's training
    composites cut to the first --train-size (validation to --val-size; the test split stays whole)."""
    if DATA["kind"] == "table":
        return load_census_income(limit=args.limit, seed=0, tasks=TASKS)
    from multitask.data.multi_fashion import load_multi_fashion

    bundle = load_multi_fashion(seed=0)
    if args.train_size:
        bundle.train = bundle.train.subset(torch.arange(min(args.train_size, len(bundle.train))))
    if args.val_size:
        bundle.val = bundle.val.subset(torch.arange(min(args.val_size, len(bundle.val))))
    if args.limit:  # trial runs: a few rows of every split
        bundle.train, bundle.val, bundle.test = (d.subset(torch.arange(min(args.limit, len(d))))
                                                 for d in (bundle.train, bundle.val, bundle.test))
    return bundle


def make_config(family: str, options: dict, balancer: str, seed: int, epochs: int, patience: int):
    gradient = issubclass(BALANCERS[balancer], GradientBalancer)
    return cfgmod.validate({
        "data": {"name": DATA["config"]},
        "tasks": {t: {} for t in TASKS},
        "model": {"name": family, **options},
        "balancer": {"name": balancer, **({"mode": GRADIENT_MODE} if gradient else {})},
        "trainer": {"epochs": epochs, "batch_size": DATA["batch"], "lr": LR, "patience": patience, "seed": seed,
                    "progress": False},
    })


def run_ours(bundle, family: str, label: str, options: dict, balancer: str, seed: int, args, x10k,
             latency: bool = True) -> dict:
    """One training of our `family` and its test metrics; inference latency when `latency` (it depends on the
    architecture only, so main() measures it once per family: first seed, first balancer)."""
    cfg = make_config(family, options, balancer, seed, args.epochs, args.patience)
    net = build_model(cfg, bundle.tasks, bundle.preprocessor.schema)
    trainer = Trainer(net, bundle.tasks, build_balancer(cfg, bundle.tasks), trainer_config(cfg))
    start = time.perf_counter()
    history = trainer.fit(bundle.train, bundle.val)
    seconds = time.perf_counter() - start
    test = trainer.evaluate(bundle.test)["metrics"]
    per_epoch = [r["seconds"] for r in history]
    return {
        "library": "multitask", "family": family, "label": label, "options": options, "balancer": balancer,
        "mode": GRADIENT_MODE if issubclass(BALANCERS[balancer], GradientBalancer) else "-", "seed": seed,
        "test": test, "fit_seconds": seconds, "epoch_seconds": per_epoch, "s_per_epoch": statistics.median(per_epoch),
        "epochs": len(history), "best_epoch": trainer.early.best_epoch, "parameters": count_parameters(net),
        "infer_ms_one": model_latency_ms(net, x10k, TASKS[:1], args.repeats) if latency else None,
        "infer_ms_all": model_latency_ms(net, x10k, TASKS, args.repeats) if latency else None,
    }


def check_family(family: str, options: dict, args) -> str | None:
    """Why `family` cannot run on the chosen data with `options` (None when it can)."""
    try:
        make_config(family, options, "equal", 0, 1, args.patience)
    except (cfgmod.ConfigError, ValueError, TypeError) as e:
        return " ".join(str(e).split())
    return None


# ------------------------------------------------------------------------------------------------ torch-rechub
def rechub_features(bundle) -> tuple[list, list[str], list[str]]:
    """torch-rechub features for our preprocessed columns: each categorical code column a SparseFeature with our
    vocabulary size (the codes are the same integers), each standardised numeric column a DenseFeature."""
    from torch_rechub.basic.features import DenseFeature, SparseFeature

    pre = bundle.preprocessor
    cat, num = list(pre.categorical), list(pre.numeric)
    cards = pre.schema.cat_cardinalities
    if len(cat) != len(cards) or len(num) != pre.schema.num_features:
        raise RuntimeError("preprocessor columns and schema disagree")
    feats = [SparseFeature(c, vocab_size=int(k), embed_dim=RECHUB_EMBED_DIM) for c, k in zip(cat, cards)]
    feats += [DenseFeature(c) for c in num]
    return feats, cat, num


def rechub_arrays(data, cat: list[str], num: list[str]):
    """(x as {column: numpy array}, y as numpy [N, 3] in TASKS order) of one of our splits, row for row."""
    x = {c: data.inputs["cat"][:, j].numpy() for j, c in enumerate(cat)}
    x.update({c: data.inputs["num"][:, j].numpy() for j, c in enumerate(num)})
    y = torch.stack([data.targets[t] for t in TASKS], dim=1).numpy()
    return x, y


def rechub_model(arch: str, features: list):
    from torch_rechub.models import multi_task

    opts, _ = RECHUB_ARCHS[arch]
    task_types = ["classification"] * len(TASKS)
    towers = [{"dims": list(RECHUB_TOWER)} for _ in TASKS]
    return getattr(multi_task, arch)(features, task_types, tower_params_list=towers, **opts)


def run_rechub(bundle, arch: str, seed: int, args, loaders, features, x10k_rechub) -> dict:
    """torch-rechub's model trained by its MTLTrainer (Adam, our lr and batch size, no weight decay unless
    --rechub-weight-decay; early stopping with its own rule: validation AUC of task 0 = income, patience as ours);
    train seconds per epoch = its train_one_epoch (its DataLoader included)."""
    torch.manual_seed(seed)
    model = rechub_model(arch, features)
    probs, epoch_seconds, seconds = fit_rechub(
        model, loaders, task_types=["classification"] * len(TASKS),
        optimizer_params={"lr": LR, "weight_decay": args.rechub_weight_decay}, n_epoch=args.epochs,
        earlystop_patience=args.patience)
    p = probs.clamp(1e-7, 1 - 1e-7)
    # its outputs are probabilities; our metrics read logits (AUC is unchanged; accuracy/F1 threshold 0.5 = logit 0)
    task = {t.name: t for t in bundle.tasks}
    test = {name: task[name].evaluate(torch.logit(p[:, i:i + 1]), bundle.test.targets[name])
            for i, name in enumerate(TASKS)}
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "library": "torch-rechub", "family": arch, "label": arch, "balancer": "its mean of losses", "mode": "-",
        "seed": seed, "test": test, "fit_seconds": seconds, "epoch_seconds": epoch_seconds,
        "s_per_epoch": statistics.median(epoch_seconds), "epochs": len(epoch_seconds),
        "parameters": n_params,
        "infer_ms_all": latency_ms(lambda: model(x10k_rechub), args.repeats),
    }


def rechub_loaders(bundle, cat, num):
    from torch_rechub.utils.data import DataGenerator

    xs = [rechub_arrays(s, cat, num) for s in (bundle.train, bundle.val, bundle.test)]
    dg = DataGenerator(*xs[0])
    return dg.generate_dataloader(x_val=xs[1][0], y_val=xs[1][1], x_test=xs[2][0], y_test=xs[2][1], batch_size=BATCH)


def loader_seconds(loader) -> float:
    """One pass over a DataLoader without a model: what its input pipeline costs per epoch."""
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ report
def fmt(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def mean_metrics(runs: list[dict]) -> dict:
    first = runs[0]["test"]
    return {t: {m: statistics.mean(r["test"][t][m] for r in runs) for m in first[t]} for t in first}


def groups(runs: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        out.setdefault((r["library"], r["label"], r["balancer"]), []).append(r)
    return out


def med(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else math.nan


def report(args, bundle, runs, baseline, skipped, failures, notes, rechub: dict) -> str:
    lines = [
        f"{DATA['title']}, tasks {', '.join(TASKS)}: {len(bundle.train):,} train / {len(bundle.val):,} validation / "
        f"{len(bundle.test):,} test rows (split seed 0{'; --limit ' + str(args.limit) if args.limit else ''}); "
        f"seeds {args.seeds}; Adam lr {LR:g}, "
        f"batch {DATA['batch']}, up to {args.epochs} epochs, early stopping on validation loss (patience {args.patience}), "
        "best epoch restored; gradient balancers in mode parameters",
        machine_line() + (f", torch-rechub {rechub['version']}" if rechub.get("version") else ""),
        "",
        "## Every family × balancer",
        "",
        f"Δm against Independent + equal (mean of the {sum(len(m) for m in baseline.values())} test metrics, "
        "per seed, then mean ± std). s/epoch: training only (no validation), median over epochs then seeds. "
        f"Inference: ms per {INFER_ROWS:,} test rows, eval mode, no grad, median of {args.repeats} calls, for "
        f"`tasks=[{TASKS[0]}]` and for all {len(TASKS)} tasks.",
        "",
        "| family | balancer | seeds | " + " | ".join(f"{t} {METRIC_NAMES[DATA['metric']]}" for t in TASKS)
        + " | Δm % | parameters | s/epoch "
        "| epochs | infer ms, 1 task | infer ms, all |",
        "|---|---|---:|" + "---:|" * (len(TASKS) + 6),
    ]
    latency = {}  # (library, label) -> the runs that measured inference latency (once per family)
    for r in runs:
        if r.get("infer_ms_all") is not None:
            latency.setdefault((r["library"], r["label"]), []).append(r)
    for (lib, label, balancer), group in groups(runs).items():
        if lib != "multitask" or label.endswith("@rechub-sizes"):
            continue
        timed = latency.get((lib, label), group)
        dms = [delta_m(r["test"], baseline) for r in group]
        lines.append(
            f"| {label} | {balancer} | {len(group)} | "
            + " | ".join(fmt([r["test"][t][DATA["metric"]] for r in group]) for t in TASKS)
            + f" | {fmt(dms, 2)} | {group[0]['parameters']:,} | {med(r['s_per_epoch'] for r in group):.2f} | "
            f"{statistics.mean(r['epochs'] for r in group):.1f} | {med(r['infer_ms_one'] for r in timed):.1f} | "
            f"{med(r['infer_ms_all'] for r in timed):.1f} |")
    if skipped:
        lines += ["", f"Skipped (cannot run on {DATA['title']} as configured here):"]
        lines += [f"- `{f}`: {why}" for f, why in skipped.items()]
    if failures:
        lines += ["", "Failed runs (the error, not a result):"]
        lines += [f"- {what}: {why}" for what, why in failures]
    lines += ["", "## Beside torch-rechub", ""]
    if DATA["kind"] == "image":
        lines.append("Not run: torch-rechub is a library for tabular recommendation data; its models take no images.")
    elif not rechub.get("version"):
        lines.append(f"Not run: {rechub.get('why', 'torch_rechub is not importable by this interpreter')} "
                     "(build its environment with benchmarks/rechub_env.sh and run this script with its python).")
    else:
        lines += [
            f"torch-rechub {rechub['version']} (`torch_rechub.models.multi_task`), trained by its `MTLTrainer` on "
            "the same train/validation/test rows, the same tasks and the same preprocessed features: our "
            f"{len(bundle.preprocessor.numeric)} standardised numeric columns as its `DenseFeature`s, our "
            f"{len(bundle.preprocessor.categorical)} categorical code columns as its `SparseFeature`s with our "
            f"vocabulary sizes. Its layer choices (its census example): embeddings of {RECHUB_EMBED_DIM} "
            "dimensions initialised N(0, 1e-4), Linear-BatchNorm-ReLU layers, SharedBottom bottom [117], MMOE 8 "
            "experts [16], PLE 1 level with 2 task-specific + 1 shared expert [16], towers [8]. Same optimiser "
            f"(Adam, lr {LR:g}, weight decay {args.rechub_weight_decay:g}), batch size {BATCH}, epochs and "
            f"patience ({args.patience}); its early stopping watches validation income AUC (ours: validation "
            "loss); the best epoch's weights are restored for both. Its loss is the mean of the task losses "
            "(ours with equal: the sum; with Adam the scale hardly matters). Its s/epoch is its "
            "`train_one_epoch`, which includes its per-row `DataLoader`: one pass over that loader alone takes "
            f"{rechub['loader_s']:.2f} s. Metrics of its predictions are computed by our metric code, Δm against "
            "our Independent + equal.",
            "",
            "| architecture | run | " + " | ".join(f"{t} AUC" for t in TASKS) + " | Δm % | parameters | s/epoch "
            "| epochs | infer ms, all | our s/epoch ÷ its (target ≤ 0.6) |",
            "|---|---|" + "---:|" * (len(TASKS) + 6),
        ]
        by = groups(runs)
        for arch, (_, ours) in RECHUB_ARCHS.items():
            theirs = by.get(("torch-rechub", arch, "its mean of losses"))
            if not theirs:
                continue
            their_s = med(r["s_per_epoch"] for r in theirs)
            candidates = [(f"torch-rechub {arch}", theirs, None),
                          (f"ours: {ours}, equal (sizes above)", by.get(("multitask", ours, "equal")), their_s),
                          (f"ours: {ours}, equal, torch-rechub's sizes", by.get(("multitask", f"{ours}@rechub-sizes",
                                                                                  "equal")), their_s)]
            for name, group, ref in candidates:
                if not group:
                    if name.startswith("ours"):
                        lines.append(f"| {arch} | {name} | " + " | ".join("—" for _ in TASKS)
                                     + f" | — | — | — | — | — | not run ({ours} is not in MODELS or was not chosen) |")
                    continue
                dms = [delta_m(r["test"], baseline) for r in group]
                s = med(r["s_per_epoch"] for r in group)
                lines.append(
                    f"| {arch} | {name} | " + " | ".join(fmt([r["test"][t]["auc"] for r in group]) for t in TASKS)
                    + f" | {fmt(dms, 2)} | {group[0]['parameters']:,} | {s:.2f} | "
                    f"{statistics.mean(r['epochs'] for r in group):.1f} | {med(r['infer_ms_all'] for r in group):.1f} | "
                    + (f"{s / ref:.2f}" if ref else "—") + " |")
        adjusted = []
        for arch, (_, ours) in RECHUB_ARCHS.items():
            theirs = by.get(("torch-rechub", arch, "its mean of losses"))
            if not theirs:
                continue
            compute = med(r["s_per_epoch"] for r in theirs) - rechub["loader_s"]
            mine = [(what, by.get(("multitask", label, "equal"))) for what, label in
                    (("ours", ours), ("ours at its sizes", f"{ours}@rechub-sizes"))]
            ratios = ", ".join(f"{what} ÷ it: {med(r['s_per_epoch'] for r in g) / compute:.2f}" for what, g in mine if g)
            adjusted.append((f"{arch} {compute:.2f} s" + (f" ({ratios})" if ratios else "")) if compute > 0
                            else f"{arch}: its loader pass is longer than its epoch (timing noise)")
        if adjusted:
            lines += ["", "Without its input pipeline (its s/epoch minus one pass over its training DataLoader), "
                      "torch-rechub's s/epoch would be: " + "; ".join(adjusted) + "."]
        lines += ["", "Target of issue 10 (our best configuration ≥ torch-rechub's best, per task; best = highest "
                  "mean test AUC over seeds, read off the test split for both sides alike):", ""]
        for t in TASKS[:2]:
            best = {}
            for (lib, label, balancer), group in by.items():
                auc = statistics.mean(r["test"][t]["auc"] for r in group)
                if auc > best.get(lib, (-1.0, ""))[0]:
                    best[lib] = (auc, label if lib == "torch-rechub" else f"{label} + {balancer}")
            if "torch-rechub" in best and "multitask" in best:
                (ours, o_name), (theirs, t_name) = best["multitask"], best["torch-rechub"]
                lines.append(f"- {t} AUC: ours {ours:.4f} ({o_name}) vs torch-rechub {theirs:.4f} ({t_name}): "
                             f"{'met' if ours >= theirs else 'not met'} ({ours - theirs:+.4f})")
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=list(DATASETS), default="census")
    ap.add_argument("--train-size", type=int, default=10000,
                    help="multi-fashion: the first N of the 54,000 training composites (0 = all); val/test are whole")
    ap.add_argument("--val-size", type=int, default=0,
                    help="multi-fashion: the first N of the 6,000 validation composites (0 = all)")
    ap.add_argument("--families", nargs="+", default=None, help="default: every name in MODELS at run time")
    ap.add_argument("--balancers", nargs="+", default=DEFAULT_BALANCERS, choices=list(BALANCERS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="rows read from each file (trial runs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=9, help="timed inference calls per measurement")
    ap.add_argument("--options", type=json.loads, default={},
                    help='JSON {family: {option: value}} over the built-in per-family census options')
    ap.add_argument("--rechub", choices=["auto", "off"], default="auto",
                    help="auto: run torch-rechub beside ours when it is importable")
    ap.add_argument("--rechub-models", nargs="+", default=list(RECHUB_ARCHS), choices=list(RECHUB_ARCHS))
    ap.add_argument("--no-rechub-sizes", action="store_true",
                    help="skip our families at torch-rechub's layer sizes")
    ap.add_argument("--rechub-weight-decay", type=float, default=0.0)
    ap.add_argument("--remeasure-latency", metavar="JSON", default=None,
                    help="re-measure the inference latency of every family of a finished run's JSON on freshly "
                         "initialised models (latency does not depend on the weights) and rewrite its report; "
                         "for a run whose timings were taken beside other jobs; trains nothing")
    ap.add_argument("--name", default="architectures", help="output file stem")
    ap.add_argument("--out", default=None, help="folder for <name>.md and <name>.json")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="write one report from the .json files of runs made in parallel (e.g. one process per "
                         "group of families, --rechub off in all but one); trains nothing")
    args = ap.parse_args()
    use_data(args.data)
    if args.merge:
        return merge(args)
    if args.remeasure_latency:
        return remeasure_latency(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    chosen = families(args.families)
    runs_of = list(dict.fromkeys(["independent"] + chosen))  # the Δm baseline is always trained
    notes: list[str] = []
    skipped: dict[str, str] = {}
    plan: dict[str, dict] = {}
    for family in runs_of:
        try:
            opts, dropped = options_for(family, TASKS, args.options, kind=DATA["kind"])
        except ValueError as e:
            skipped[family] = str(e)
            continue
        notes += dropped
        why = check_family(family, opts, args)
        if why:
            skipped[family] = why
            print(f"skip {family}: {why}", flush=True)
        else:
            plan[family] = opts
    if "independent" not in plan:
        raise SystemExit(f"the Independent baseline cannot run: {skipped.get('independent')}")
    bundle = load_data(args)
    x10k = batch_of(bundle.test.inputs, INFER_ROWS)
    runs: list[dict] = []
    failures: list[tuple[str, str]] = []
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.name}.runs.jsonl").unlink(missing_ok=True)

    def attempt(what: str, fn) -> None:
        try:
            r = fn()
        except Exception as e:  # a family that fails mid-run is reported, the benchmark goes on
            failures.append((what, f"{type(e).__name__}: {' '.join(str(e).split())}"))
            print(f"FAILED {what}:\n{traceback.format_exc()}", flush=True)
            return
        runs.append(r)
        if args.out:  # every finished run on disk at once: a crash later (e.g. in the report) loses no training
            with open(Path(args.out) / f"{args.name}.runs.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
        print(f"seed {r['seed']} {r['label']:<26} {r['balancer']:<18} "
              + " ".join(f"{t} {r['test'][t][DATA['metric']]:.4f}" for t in TASKS)
              + f"  {r['s_per_epoch']:.2f} s/epoch x {r['epochs']}", flush=True)

    for seed in args.seeds:
        for family, opts in plan.items():
            chosen_here = family in chosen
            for balancer in (args.balancers if chosen_here else ["equal"]):
                attempt(f"{family} / {balancer} / seed {seed}",
                        lambda: run_ours(bundle, family, family, opts, balancer, seed, args, x10k,
                                         latency=seed == args.seeds[0] and balancer == args.balancers[0]))

    rechub: dict[str, Any] = {}
    version = rechub_version() if args.rechub == "auto" and DATA["kind"] == "table" else None
    if DATA["kind"] == "image":
        rechub["why"] = "torch-rechub takes no images"
    elif args.rechub == "off":
        rechub["why"] = "--rechub off"
    elif version is None:
        rechub["why"] = "`import torch_rechub` fails with this interpreter"
    else:
        rechub["version"] = version
        features, cat, num = rechub_features(bundle)
        torch.manual_seed(0)
        loaders = rechub_loaders(bundle, cat, num)
        rechub["loader_s"] = loader_seconds(loaders[0])
        xr = {c: torch.as_tensor(v) for c, v in rechub_arrays(bundle.test, cat, num)[0].items()}
        x10k_rechub = batch_of(xr, INFER_ROWS)
        sized: dict[str, dict] = {}
        if not args.no_rechub_sizes:
            for arch in args.rechub_models:
                ours = RECHUB_ARCHS[arch][1]
                if ours not in plan:
                    notes.append(f"our {ours} at torch-rechub's sizes: not run ({ours} is "
                                 f"{'skipped' if ours in skipped else 'not in MODELS / not chosen'})")
                    continue
                opts, dropped = accepted_options(ours, {**RECHUB_LIKE, **RECHUB_SIZED[ours]})
                notes += [f"{d} (at torch-rechub's sizes)" for d in dropped]
                why = check_family(ours, opts, args)
                if why:
                    notes.append(f"our {ours} at torch-rechub's sizes: not run: {why}")
                else:
                    sized[ours] = opts
        for seed in args.seeds:
            for arch in args.rechub_models:
                attempt(f"torch-rechub {arch} / seed {seed}",
                        lambda: run_rechub(bundle, arch, seed, args, loaders, features, x10k_rechub))
            for ours, opts in sized.items():
                attempt(f"{ours} at torch-rechub's sizes / seed {seed}",
                        lambda: run_ours(bundle, ours, f"{ours}@rechub-sizes", opts, "equal", seed, args, x10k))

    base_runs = [r for r in runs if r["library"] == "multitask" and r["label"] == "independent"
                 and r["balancer"] == "equal"]
    if not base_runs:
        raise SystemExit("no Independent + equal run finished: no Δm baseline")
    baseline = mean_metrics(base_runs)
    notes += [
        LATENCY_NOTE,
        "Gradient method: MGDA (Sener & Koltun 2018) in parameters mode. It is the canonical gradient method, and "
        "parameters mode is the one mode every family supports (features mode is refused where no representation "
        "is read by all tasks), so every family is balanced the same way; it costs one backward pass per task "
        "per step, which its s/epoch shows. Independent + MGDA equals Independent + equal up to noise (no shared "
        "parameters to balance).",
        "No option was tuned on the test split: the sizes are fixed in benchmarks/arch_common.py "
        "(FAMILY_OPTIONS; families without an entry use their builder defaults) and early stopping reads the "
        "validation split only.",
        f"Total wall time of this run: {(time.perf_counter() - wall) / 60:.1f} min.",
    ]
    if args.limit:
        notes.append(f"--limit {args.limit}: a trial run on a few rows; its numbers say nothing about the methods.")
    rows = [len(bundle.train), len(bundle.val), len(bundle.test)]
    write(args, {"command": sys.argv, "runs": runs, "baseline_mean": baseline, "skipped": skipped,
                 "failures": failures, "rechub": rechub, "notes": notes, "rows": rows,
                 "features": ([len(bundle.preprocessor.numeric), len(bundle.preprocessor.categorical)]
                              if DATA["kind"] == "table" else [0, 0]),
                 "settings": {"data": args.data, "train_size": args.train_size if args.data != "census" else None,
                              "val_size": args.val_size if args.data != "census" else None,
                              "seeds": args.seeds, "epochs": args.epochs, "patience": args.patience,
                              "limit": args.limit, "repeats": args.repeats, "threads": args.threads}})


def remeasure_latency(args) -> None:
    """Inference latency of every family in a finished run's JSON, measured again on untrained models with the same
    options (eval mode, the same 10,000-row batch), written into every run of the family; the report is rewritten."""
    result = json.loads(Path(args.remeasure_latency).read_text())
    settings = result["settings"]
    use_data(settings.get("data", "census"))
    if args.threads:
        torch.set_num_threads(args.threads)
    data_args = argparse.Namespace(limit=settings.get("limit"), train_size=settings.get("train_size"),
                                   val_size=settings.get("val_size"))
    bundle = load_data(data_args)
    x10k = batch_of(bundle.test.inputs, INFER_ROWS)
    measured: dict[str, tuple[float, float]] = {}
    for r in result["runs"]:
        if r["library"] != "multitask" or r["label"] in measured:
            continue
        cfg = make_config(r["family"], r["options"], "equal", 0, 1, 1)
        net = build_model(cfg, bundle.tasks, bundle.preprocessor.schema)
        measured[r["label"]] = (model_latency_ms(net, x10k, TASKS[:1], args.repeats),
                                model_latency_ms(net, x10k, TASKS, args.repeats))
        print(f"{r['label']:<28} {measured[r['label']][0]:8.1f} ms one task, {measured[r['label']][1]:8.1f} ms all",
              flush=True)
    for r in result["runs"]:
        if r["label"] in measured:
            r["infer_ms_one"], r["infer_ms_all"] = measured[r["label"]]
    result["notes"] = [n for n in result["notes"] if not n.startswith("Inference latency")]
    result["notes"].append(
        f"Inference latency re-measured after training (`--remeasure-latency`, {machine_line()}, median of "
        f"{args.repeats} calls) on freshly initialised models with each family's options, eval mode, no grad, "
        f"for a batch of {INFER_ROWS:,} test rows: the values taken during training were measured beside other "
        "jobs. Latency does not depend on the weights.")
    args.seeds, args.epochs, args.patience = settings["seeds"], settings["epochs"], settings["patience"]
    args.limit, args.data = settings.get("limit"), settings.get("data", "census")
    write(args, result)


def merge(args) -> None:
    """One report from the JSON of runs made in parallel: runs concatenated, notes and skips joined, the
    torch-rechub section from the part that ran it."""
    parts = [json.loads(Path(p).read_text()) for p in args.merge]
    def same(p: dict) -> dict:  # (parts written before --data existed are census parts)
        settings = {"data": "census", "train_size": None, "val_size": None, **p["settings"]}
        return {k: v for k, v in settings.items() if k != "seeds"}

    if any(same(p) != same(parts[0]) or p["rows"] != parts[0]["rows"] for p in parts):
        raise SystemExit("--merge: the parts were run with different settings or data; they cannot share a table")
    settings = {**same(parts[0]), "seeds": sorted({s for p in parts for s in p["settings"]["seeds"]})}
    for k, v in settings.items():
        setattr(args, k, v)
    use_data(settings.get("data", "census"))
    if args.threads:  # the machine line reports the threads the parts ran with
        torch.set_num_threads(args.threads)
    runs, seen = [], set()
    for r in (r for p in parts for r in p["runs"]):  # each part trains its own Independent baseline: keep one
        key = (r["library"], r["label"], r["balancer"], r["seed"])
        if key not in seen:
            seen.add(key)
            runs.append(r)
    base_runs = [r for r in runs if r["library"] == "multitask" and r["label"] == "independent"
                 and r["balancer"] == "equal"]
    rechub = next((p["rechub"] for p in parts if "version" in p["rechub"]), parts[0]["rechub"])
    notes = list(dict.fromkeys(n for p in parts for n in p["notes"]
                               if not n.startswith(("Total wall time", "Inference latency is"))))
    notes.insert(0, LATENCY_NOTE)
    notes.append("Run as parallel processes (--threads 1 each), merged with --merge: "
                 + "; ".join(" ".join(p["command"][1:]) for p in parts))
    write(args, {"command": sys.argv, "runs": runs, "baseline_mean": mean_metrics(base_runs),
                 "skipped": {k: v for p in parts for k, v in p["skipped"].items()},
                 "failures": [f for p in parts for f in p["failures"]], "rechub": rechub, "notes": notes,
                 "rows": parts[0]["rows"], "settings": settings})


def write(args, result: dict) -> None:
    """Print the report; with --out write <name>.md (keeping its hand-written notes) and <name>.json."""
    from types import SimpleNamespace

    n_train, n_val, n_test = result["rows"]
    if "features" not in result and DATA["kind"] == "table":  # (a part written before the counts were saved)
        pre = load_census_income(limit=200, seed=0, tasks=TASKS).preprocessor
        result["features"] = [len(pre.numeric), len(pre.categorical)]
    n_num, n_cat = result.get("features", (0, 0))
    bundle = SimpleNamespace(train=range(n_train), val=range(n_val), test=range(n_test),
                             preprocessor=SimpleNamespace(numeric=range(n_num), categorical=range(n_cat)))
    text = report(args, bundle, result["runs"], result["baseline_mean"], result["skipped"], result["failures"],
                  result["notes"], result["rechub"])
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
        md = out / f"{args.name}.md"
        exe = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else "python"
        head = (f"# Architectures on {DATA['title']} ({args.name})\n\nCommand: `{exe} "
                f"benchmarks/architectures.py" + "".join(f" {a}" for a in sys.argv[1:]) + "`\n\n")
        md.write_text(head + text + "\n" + kept_notes(md))


if __name__ == "__main__":
    main()
