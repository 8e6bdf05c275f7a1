"""Funnel families on census-income made a funnel (works -> high_income): ESMM and AITM against the
multi-task families that model high_income directly, and a naive CVR model trained on the working rows only (the
sample-selection-bias baseline of the ESMM paper); torch-rechub's ESMM and AITM beside them when importable.

Data: multitask.data.census_funnel.load_census_funnel (works = weeks_worked_in_year > 0; high_income = works AND
income > 50k, labelled on every row; the columns that give works away are dropped). Split as the census loader:
10% of the training file for validation (seed 0), the test file for test. The seed changes initialisation and
batch order.

Per run, on the test split: works AUC (all rows), high_income = CTCVR AUC (all rows), CVR AUC = AUC of a score of
P(high_income | works) on the rows with works = 1, against high_income there. The CVR score:
- esmm: its high_income tower's own probability (pCVR; the model's output is pCTR x pCVR);
- aitm, independent, hard_sharing, mmoe, ple: P(high_income) / P(works) from the two outputs (the ESMM paper's
  DIVISION baseline; AITM has no conditional tower, its high_income output is the joint probability);
- naive_cvr: an Independent model with tasks works (every row) and cvr (high_income, labelled only where works =
  1, missing elsewhere): its cvr probability; its CTCVR score is P(works) x P(cvr).
Δm is over these three AUCs against Independent + equal (mean over seeds).

    python benchmarks/funnel.py [--families ...] [--balancers equal uncertainty] [--seeds 0 1 2] [--epochs 6]
        [--limit N] [--threads 1] [--rechub auto|off] [--out docs/benchmarks]

torch-rechub is not a dependency of multitask: its part runs when `import torch_rechub` works (the environment of
benchmarks/rechub_env.sh: .bench-rechub/bin/python benchmarks/funnel.py ...).
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
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arch_common import kept_notes, machine_line, options_for, rechub_version, fit_rechub  # noqa: E402

from multitask import models  # noqa: E402
from multitask.balancing import BALANCERS  # noqa: E402
from multitask.data import MultiTaskData  # noqa: E402
from multitask.data.census_funnel import LEAKS, load_census_funnel  # noqa: E402
from multitask.metrics import binary_auc, delta_m  # noqa: E402
from multitask.tasks import Task  # noqa: E402
from multitask.training import Trainer, TrainerConfig  # noqa: E402

FUNNEL_FAMILIES = ("esmm", "aitm")
DIRECT_FAMILIES = ("independent", "hard_sharing", "mmoe", "ple")
NAIVE = "naive_cvr"
DEFAULT_FAMILIES = [*FUNNEL_FAMILIES, *DIRECT_FAMILIES, NAIVE]
BATCH, LR = 512, 1e-3
METRICS = ("works", "ctcvr", "cvr")  # the three AUCs of a row of the table


# ------------------------------------------------------------------------------------------------ scores
def funnel_aucs(p_works: np.ndarray, p_ctcvr: np.ndarray, s_cvr: np.ndarray, works: np.ndarray,
                high: np.ndarray) -> dict[str, dict[str, float]]:
    """works AUC and CTCVR AUC on every row; CVR AUC of `s_cvr` on the rows with works = 1 (label high_income)."""
    on = works == 1
    return {"works": {"auc": binary_auc(p_works, works)}, "ctcvr": {"auc": binary_auc(p_ctcvr, high)},
            "cvr": {"auc": binary_auc(s_cvr[on], high[on])}}


def ratio(p_joint: np.ndarray, p_works: np.ndarray) -> tuple[np.ndarray, float]:
    """P(high_income) / P(works) (the DIVISION estimate of pCVR) and the fraction of rows where it exceeds 1."""
    r = p_joint / np.maximum(p_works, 1e-12)
    return r, float(np.mean(r > 1.0))


# ------------------------------------------------------------------------------------------------ ours
def naive_data(d: MultiTaskData) -> MultiTaskData:
    """works as is; cvr = high_income where works = 1, missing (NaN) elsewhere: the CVR model sees workers only."""
    w, h = d.targets["works"], d.targets["high_income"]
    return MultiTaskData(d.inputs, {"works": w, "cvr": torch.where(w == 1, h, torch.full_like(h, math.nan))})


def run_ours(bundle, family: str, options: dict, balancer: str, seed: int, args) -> dict:
    naive = family == NAIVE
    arch = "independent" if naive else family.removesuffix(RECHUB_LIKE_SUFFIX)
    if naive:
        tasks = [Task("works", "binary"), Task("cvr", "binary")]
        train, val = naive_data(bundle.train), naive_data(bundle.val)
    else:
        tasks, train, val = bundle.tasks, bundle.train, bundle.val  # high_income after works (ignored by non-funnels)
    torch.manual_seed(seed)
    net = models.build_model(arch, tasks, bundle.preprocessor.schema, **options)
    cfg = TrainerConfig(epochs=args.epochs, batch_size=BATCH, lr=LR, patience=args.patience, seed=seed,
                        progress=False)
    trainer = Trainer(net, tasks, BALANCERS[balancer](tasks), cfg)
    start = time.perf_counter()
    history = trainer.fit(train, val)
    seconds = time.perf_counter() - start
    prob = {t: p.squeeze(-1).numpy().astype(np.float64) for t, p in trainer.predict(bundle.test.inputs).items()}
    p_works = prob["works"]
    over = None
    if naive:
        s_cvr = prob["cvr"]
        p_ctcvr = p_works * s_cvr
        cvr_from = "its cvr task (trained on works = 1 rows)"
    elif arch == "esmm":
        p_ctcvr = prob["high_income"]
        net.eval()
        with torch.no_grad():
            s_cvr = torch.cat([torch.sigmoid(net.tower_logits(
                {k: v[i:i + 8192] for k, v in bundle.test.inputs.items()}, ["high_income"])["high_income"])
                for i in range(0, len(bundle.test), 8192)]).squeeze(-1).numpy().astype(np.float64)
        cvr_from = "its pCVR tower"
    else:
        p_ctcvr = prob["high_income"]
        s_cvr, over = ratio(p_ctcvr, p_works)
        cvr_from = "P(high_income) / P(works)"
    t = bundle.test.targets
    test = funnel_aucs(p_works, p_ctcvr, s_cvr, t["works"].numpy(), t["high_income"].numpy())
    per_epoch = [r["seconds"] for r in history]
    return {"library": "multitask", "family": family, "balancer": balancer, "seed": seed, "options": options,
            "test": test, "cvr_score": cvr_from, "ratio_over_1": over, "fit_seconds": seconds,
            "epoch_seconds": per_epoch, "s_per_epoch": statistics.median(per_epoch), "epochs": len(history),
            "best_epoch": trainer.early.best_epoch, "parameters": sum(p.numel() for p in net.parameters())}


# ------------------------------------------------------------------------------------------------ torch-rechub
# Our esmm and aitm with torch-rechub's normalisation choices (BatchNorm in the towers, embeddings N(0, 1e-4):
# also the library's current defaults), trained beside it with equal weights, so that the comparison with it is
# not one of BatchNorm against none (FAMILY_OPTIONS keeps every family without it, for the main table).
RECHUB_LIKE_SUFFIX = "+bn"
RECHUB_LIKE = {"embedding_std": 1e-4, "batch_norm": True}
RECHUB_EMBED_DIM = 8   # one width for every feature (its ESMM needs it); ours: up to 8 per column
RECHUB_BINS = 10       # its ESMM embeds sparse features only: each numeric column as 10 train-quantile bins
RECHUB_HIDDEN = [128, 64]  # as our esmm / aitm towers


def rechub_inputs(bundle) -> tuple[list[str], list[str], dict[str, np.ndarray], Callable]:
    """(categorical names, numeric names, bin edges per numeric column, split -> {column: array}): our code columns
    as they are, our standardised numeric columns as they are and binned (`<name>_bin`) at train quantiles."""
    pre = bundle.preprocessor
    cat, num = list(pre.categorical), list(pre.numeric)
    inner = np.linspace(0, 1, RECHUB_BINS + 1)[1:-1]
    edges = {c: np.unique(np.quantile(bundle.train.inputs["num"][:, j].numpy(), inner)) for j, c in enumerate(num)}

    def arrays(d: MultiTaskData) -> dict[str, np.ndarray]:
        x = {c: d.inputs["cat"][:, j].numpy() for j, c in enumerate(cat)}
        for j, c in enumerate(num):
            v = d.inputs["num"][:, j].numpy()
            x[c] = v
            x[f"{c}_bin"] = np.searchsorted(edges[c], v, side="right")
        return x

    return cat, num, edges, arrays


def run_rechub(bundle, arch: str, seed: int, args, inputs) -> dict:
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import AITM, ESMM
    from torch_rechub.utils.data import DataGenerator

    cat, num, edges, arrays = inputs
    cards = bundle.preprocessor.schema.cat_cardinalities
    sparse = [SparseFeature(c, vocab_size=int(k), embed_dim=RECHUB_EMBED_DIM) for c, k in zip(cat, cards)]
    binned = [SparseFeature(f"{c}_bin", vocab_size=len(edges[c]) + 1, embed_dim=RECHUB_EMBED_DIM) for c in num]

    def labels(d: MultiTaskData) -> np.ndarray:
        w, h = d.targets["works"].numpy(), d.targets["high_income"].numpy()
        # ESMM's columns: [cvr, ctr, ctcvr]; it trains on ctr and ctcvr only. Its cvr column is only read by its
        # validation AUC (not used: it stops on ctcvr), so it holds high_income. AITM: [works, high_income].
        return np.stack([h, w, h] if arch == "ESMM" else [w, h], axis=1)

    torch.manual_seed(seed)
    if arch == "ESMM":
        model = ESMM(sparse, binned, cvr_params={"dims": RECHUB_HIDDEN}, ctr_params={"dims": RECHUB_HIDDEN})
        stop_on = 2
    else:
        model = AITM(sparse + [DenseFeature(c) for c in num], 2, bottom_params={"dims": RECHUB_HIDDEN},
                     tower_params_list=[{"dims": []}, {"dims": []}])
        stop_on = 1
    splits = [(arrays(d), labels(d)) for d in (bundle.train, bundle.val, bundle.test)]
    dg = DataGenerator(*splits[0])
    train_dl, val_dl, test_dl = dg.generate_dataloader(x_val=splits[1][0], y_val=splits[1][1], x_test=splits[2][0],
                                                       y_test=splits[2][1], batch_size=BATCH)

    n_task = 3 if arch == "ESMM" else 2
    out, epoch_seconds, seconds = fit_rechub(
        model, (train_dl, val_dl, test_dl), task_types=["classification"] * n_task, optimizer_params={"lr": LR},
        n_epoch=args.epochs, earlystop_taskid=stop_on, earlystop_patience=args.patience)
    p = out.numpy().astype(np.float64)
    t = bundle.test.targets
    over = None
    if arch == "ESMM":
        p_cvr, p_works, p_ctcvr = p[:, 0], p[:, 1], p[:, 2]
        s_cvr, cvr_from = p_cvr, "its pCVR tower"
    else:
        p_works, p_ctcvr = p[:, 0], p[:, 1]
        (s_cvr, over), cvr_from = ratio(p_ctcvr, p_works), "P(high_income) / P(works)"
    test = funnel_aucs(p_works, p_ctcvr, s_cvr, t["works"].numpy(), t["high_income"].numpy())
    return {"library": "torch-rechub", "family": arch, "balancer": "its loss", "seed": seed, "test": test,
            "cvr_score": cvr_from, "ratio_over_1": over, "fit_seconds": seconds,
            "epoch_seconds": epoch_seconds, "s_per_epoch": statistics.median(epoch_seconds),
            "epochs": len(epoch_seconds), "parameters": sum(q.numel() for q in model.parameters())}


# ------------------------------------------------------------------------------------------------ report
def fmt(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def groups(runs: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        out.setdefault((r["library"], r["family"], r["balancer"]), []).append(r)
    return out


def mean_metrics(runs: list[dict]) -> dict:
    return {m: {"auc": statistics.mean(r["test"][m]["auc"] for r in runs)} for m in METRICS}


def rates(bundle) -> dict[str, dict[str, float]]:
    out = {}
    for name in ("train", "val", "test"):
        d = getattr(bundle, name)
        w, h = d.targets["works"], d.targets["high_income"]
        out[name] = {"rows": len(d), "works": float(w.mean()), "high_income": float(h.mean()),
                     "high_given_works": float(h[w == 1].mean())}
    return out


def report(args, result: dict) -> str:
    runs, baseline, r = result["runs"], result["baseline_mean"], result["rates"]
    tr, va, te = r["train"], r["val"], r["test"]
    lines = [
        f"census-income as a funnel, works → high_income (after: works): {tr['rows']:,} train / {va['rows']:,} "
        f"validation / {te['rows']:,} test rows (split seed 0{'; --limit ' + str(args.limit) if args.limit else ''});"
        f" seeds {args.seeds}; Adam lr {LR:g}, batch {BATCH}, up to {args.epochs} epochs, early stopping on "
        f"validation loss (patience {args.patience}), best epoch restored",
        result["machine"],
        "",
        f"Label rates (train / validation / test): works {tr['works']:.3f} / {va['works']:.3f} / {te['works']:.3f}; "
        f"high_income (CTCVR) {tr['high_income']:.4f} / {va['high_income']:.4f} / {te['high_income']:.4f}; "
        f"P(high_income | works) {tr['high_given_works']:.4f} / {va['high_given_works']:.4f} / "
        f"{te['high_given_works']:.4f}. High earners who did not work: {result['outside']['train']} in the "
        f"training file, {result['outside']['test']} in the test file; outside the funnel, labelled high_income = 0. "
        "Not features: " + "; ".join(f"`{c}` ({why})" for c, why in LEAKS.items()) + ".",
        "",
        "works AUC and high_income (CTCVR) AUC on every test row; CVR AUC on the test rows with works = 1 "
        "(P(high_income | works): esmm its pCVR tower; naive_cvr its cvr task, trained on works = 1 rows; every "
        "other row P(high_income) / P(works); the column 'ratio > 1' is the share of test rows where that ratio "
        "exceeds 1, i.e. the two outputs contradict the funnel). Δm: mean relative change of the three AUCs "
        "against Independent + equal, per seed, then mean ± std. s/epoch: training only, median over epochs then "
        "seeds.",
        "",
        "| library | family | balancer | seeds | works AUC | high_income (CTCVR) AUC | CVR AUC (works = 1) | "
        "ratio > 1 | Δm % | parameters | s/epoch | epochs |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (lib, family, balancer), group in groups(runs).items():
        dms = [delta_m(x["test"], baseline) for x in group]
        over = [x["ratio_over_1"] for x in group if x["ratio_over_1"] is not None]
        lines.append(
            f"| {lib} | {family} | {balancer} | {len(group)} | "
            + " | ".join(fmt([x["test"][m]["auc"] for x in group]) for m in METRICS)
            + f" | {f'{100 * statistics.mean(over):.1f}%' if over else '—'} | {fmt(dms, 2)} | "
            f"{group[0]['parameters']:,} | {statistics.median(x['s_per_epoch'] for x in group):.2f} | "
            f"{statistics.mean(x['epochs'] for x in group):.1f} |")
    if result["failures"]:
        lines += ["", "Failed runs (the error, not a result):"]
        lines += [f"- {what}: {why}" for what, why in result["failures"]]
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in result["notes"]]
    return "\n".join(lines)


def write(args, result: dict) -> None:
    text = report(args, result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
        md = out / f"{args.name}.md"
        head = (f"# Funnel families on census-income ({args.name})\n\nCommand: `{result['executable']} "
                f"benchmarks/funnel.py" + "".join(f" {a}" for a in result["command"][1:]) + "`\n\n")
        md.write_text(head + text + "\n" + kept_notes(md))


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=DEFAULT_FAMILIES,
                    choices=[*FUNNEL_FAMILIES, *DIRECT_FAMILIES, NAIVE])
    ap.add_argument("--balancers", nargs="+", default=["equal", "uncertainty"], choices=list(BALANCERS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="rows read from the training file (half as many test)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--options", type=json.loads, default={},
                    help='JSON {family: {option: value}} over benchmarks/arch_common.py FAMILY_OPTIONS')
    ap.add_argument("--rechub", choices=["auto", "off"], default="auto",
                    help="auto: run torch-rechub's ESMM and AITM beside ours when it is importable")
    ap.add_argument("--name", default="funnel", help="output file stem")
    ap.add_argument("--out", default=None, help="folder for <name>.md and <name>.json")
    ap.add_argument("--report", default=None, metavar="JSON",
                    help="write the report again from a run's .json (new wording, same numbers); trains nothing")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="one report from the .json of runs made apart (e.g. one process per seed): runs joined, "
                         "the Δm baseline recomputed over all of them; trains nothing")
    args = ap.parse_args()
    if args.merge:
        return merge(args)
    if args.report:
        result = json.loads(Path(args.report).read_text())
        for k in ("seeds", "epochs", "patience", "limit"):
            setattr(args, k, result["settings"][k])
        return write(args, result)
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(not isinstance(v, dict) for v in args.options.values()) or not isinstance(args.options, dict):
        raise SystemExit("--options: a JSON object {family: {option: value}}")
    plan: dict[str, dict] = {}
    notes: list[str] = []
    for family in dict.fromkeys(["independent", *args.families]):  # Independent + equal is the Δm baseline
        opts, dropped = options_for("independent" if family == NAIVE else family, [], args.options)
        opts.update(args.options.get(family, {}) if family == NAIVE else {})
        notes += dropped
        plan[family] = opts
    version = rechub_version() if args.rechub == "auto" else None
    beside = ({f"{f}{RECHUB_LIKE_SUFFIX}": {**plan[f], **RECHUB_LIKE} for f in FUNNEL_FAMILIES if f in plan}
              if version else {})
    wall, cpu = time.perf_counter(), time.process_time()
    bundle = load_census_funnel(limit=args.limit, seed=0)
    runs: list[dict] = []
    failures: list[tuple[str, str]] = []

    def attempt(what: str, fn) -> None:
        try:
            r = fn()
        except Exception as e:  # a run that fails is reported, the benchmark goes on
            failures.append((what, f"{type(e).__name__}: {' '.join(str(e).split())}"))
            print(f"FAILED {what}:\n{traceback.format_exc()}", flush=True)
            return
        runs.append(r)
        if args.out:  # the runs so far, so that a run stopped early still leaves its finished measurements
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{args.name}.runs.json").write_text(json.dumps(runs, indent=1))
        print(f"seed {r['seed']} {r['library']:<12} {r['family']:<12} {r['balancer']:<11} "
              + " ".join(f"{m} {r['test'][m]['auc']:.4f}" for m in METRICS)
              + f"  {r['s_per_epoch']:.2f} s/epoch x {r['epochs']}", flush=True)

    inputs = rechub_inputs(bundle) if version else None
    for seed in args.seeds:
        for family, opts in plan.items():
            for balancer in (args.balancers if family in args.families else ["equal"]):
                attempt(f"{family} / {balancer} / seed {seed}",
                        lambda: run_ours(bundle, family, opts, balancer, seed, args))
        for arch in (("ESMM", "AITM") if version else ()):
            attempt(f"torch-rechub {arch} / seed {seed}", lambda: run_rechub(bundle, arch, seed, args, inputs))
        for family, opts in beside.items():
            attempt(f"{family} / equal / seed {seed}", lambda: run_ours(bundle, family, opts, "equal", seed, args))

    base = [r for r in runs
            if r["library"] == "multitask" and r["family"] == "independent" and r["balancer"] == "equal"]
    if not base:
        raise SystemExit("no Independent + equal run finished: no Δm baseline")
    if version:
        notes.append(
            f"torch-rechub {version}: its ESMM and AITM (`torch_rechub.models.multi_task`) trained by its "
            "`MTLTrainer` on the same rows and labels (Adam, lr and batch as ours, same epochs and patience; it "
            "stops on validation AUC of high_income, we on validation loss). Its layers: embeddings of "
            f"{RECHUB_EMBED_DIM} dimensions for every column, Linear-BatchNorm-ReLU towers {RECHUB_HIDDEN}. Its "
            "ESMM embeds sparse features only, so it reads each numeric column as "
            f"{RECHUB_BINS} train-quantile bins (ours read the standardised values); its ESMM loss is "
            "BCE(pCTR) + BCE(pCTR·pCVR) on probabilities. Its AITM reads the numeric columns as dense values; its "
            "trainer adds no behavioural expectation calibrator (our aitm: alpha 0.6) and averages the two losses. "
            f"Beside it: our esmm and aitm with its normalisation choices ({', '.join(beside)}: BatchNorm in the "
            "towers, embeddings N(0, 1e-4), the library's current defaults), equal weights.")
    else:
        notes.append("torch-rechub not run: " + ("--rechub off" if args.rechub == "off" else
                                                 "`import torch_rechub` fails with this interpreter (build "
                                                 "benchmarks/rechub_env.sh and run with its python)"))
    notes += [
        "Model sizes from benchmarks/arch_common.py FAMILY_OPTIONS (esmm and aitm: towers [128, 64] per task; "
        "independent / hard_sharing [128, 64] with heads [32]; mmoe 8 experts [64]; ple 2 levels; naive_cvr is "
        "Independent at its sizes), no option tuned on the test split; early stopping reads validation only.",
        "aitm runs with its default calibrator weight alpha = 0.6. Balancers weigh the two task losses "
        "(for naive_cvr: works and cvr, the latter on its labelled rows only).",
        "The machine is shared (2 cores, other jobs beside this one): s/epoch is noisy; read ratios, not seconds.",
        f"Total wall time of this run: {(time.perf_counter() - wall) / 60:.1f} min, of which CPU time of the "
        f"process {(time.process_time() - cpu) / 60:.1f} min (the rest: waiting for the shared cores).",
    ]
    if args.limit:
        notes.append(f"--limit {args.limit}: a trial run on few rows; its numbers say little about the methods.")
    outside = outside_funnel(args.limit)
    exe = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else "python"
    machine = machine_line() + (f", torch-rechub {version}" if version else "")
    write(args, {"command": sys.argv, "executable": exe, "machine": machine,
                 "runs": runs, "baseline_mean": mean_metrics(base), "failures": failures, "notes": notes,
                 "rates": rates(bundle), "outside": outside,
                 "settings": {"seeds": args.seeds, "epochs": args.epochs, "patience": args.patience,
                              "limit": args.limit, "threads": args.threads, "balancers": args.balancers,
                              "families": args.families, "options": {f: o for f, o in plan.items()}}})
    if args.out:  # the whole result is written: the file of runs so far is no longer needed
        (Path(args.out) / f"{args.name}.runs.json").unlink(missing_ok=True)


def merge(args) -> None:
    """One report from result .json files of the same settings but other seeds (runs in parallel)."""
    parts = [json.loads(Path(p).read_text()) for p in args.merge]

    def same(p: dict) -> dict:
        return {k: v for k, v in p["settings"].items() if k != "seeds"}

    if any(same(p) != same(parts[0]) or p["rates"] != parts[0]["rates"] for p in parts):
        raise SystemExit("--merge: the parts were run with different settings or data; they cannot share a table")
    runs = [r for p in parts for r in p["runs"]]
    runs.sort(key=lambda r: r["seed"])
    seeds = sorted({r["seed"] for r in runs})
    base = [r for r in runs
            if r["library"] == "multitask" and r["family"] == "independent" and r["balancer"] == "equal"]
    timing = "Total wall time of this run"
    notes = list(dict.fromkeys(n for p in parts for n in p["notes"] if not n.startswith(timing)))
    notes.append("Run as separate processes (one core each), merged with --merge: " + "; ".join(
        " ".join(p["command"][1:]) + "".join(f" ({n[len(timing) + 2:].rstrip('.')})" for n in p["notes"]
                                             if n.startswith(timing)) for p in parts) + ".")
    result = {**parts[0], "command": sys.argv, "runs": runs, "baseline_mean": mean_metrics(base),
              "failures": [f for p in parts for f in p["failures"]], "notes": notes,
              "settings": {**parts[0]["settings"], "seeds": seeds}}
    for k in ("epochs", "patience", "limit"):
        setattr(args, k, result["settings"][k])
    args.seeds = seeds
    write(args, result)


def outside_funnel(limit: int | None) -> dict[str, int]:
    """High earners with no week worked, per file (the rows the funnel labels high_income = 0 whatever the income)."""
    from multitask.data.census import census_targets, read_census_csv
    from multitask.data.paths import CENSUS_FILES, find_census_income

    folder = find_census_income()
    out = {}
    for key, name, rows in (("train", CENSUS_FILES[0], limit), ("test", CENSUS_FILES[1],
                                                                None if limit is None else max(limit // 2, 1))):
        df = read_census_csv(folder / name, rows)
        income = census_targets(df, ["income"])["income"].numpy()
        out[key] = int(((df["weeks_worked_in_year"].to_numpy() == 0) & (income == 1)).sum())
    return out


if __name__ == "__main__":
    main()
