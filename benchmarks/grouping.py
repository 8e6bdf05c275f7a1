"""Which tasks to train together: does TAG affinity find known task clusters, and does the chosen grouping beat
training all tasks in one network and one network per task?

1. Synthetic tasks with known structure (the generator of the MMoE paper, Ma et al. KDD 2018, with controlled
   task correlation): x ~ N(0, I_D); task t of cluster k has weights w_t = sqrt(p) u_k + sqrt(1 - p) v_t (u, v
   orthonormal, so cos(w_s, w_t) = p inside a cluster and 0 across) and target
   y_t = w_t^T x + sum_{m=1..M} sin(alpha_m w_t^T x + beta_m) + N(0, 0.1^2) (alpha, beta shared by the tasks),
   standardised. Three clusters of three tasks with p = 0.9, plus one noise task (y ~ N(0, 1), independent of x).
   Per seed: the all-in-one network trained once with TAG affinity recorded every few steps (the diagnostics
   callback, which leaves training bit-identical); network selection with budget 4 (each task served by its
   best group); adjusted Rand index of the partition by serving group against the true clusters (the noise task
   its own cluster); the summed test MSE of the grouping (each task from its serving group), of all-in-one and
   of one network per task.
2. Yeast (14 tasks) and census-income (income, marital, education) through `multitask.grouping.group_from_config`
   (what `multitask group` runs): the groups found, Δm of grouped, all-in-one and one-per-task against one
   network per task, parameters, and the cost of finding the groups (the diagnostics' own time during the
   all-in-one run + the search) against training every pair (Standley et al. 2020: measured on census, its
   three pairs trained; estimated on yeast, from the mean time of a sample of pairs x 91).

The cost of a diagnostics record is given in ordinary steps: its seconds over the seconds per step of the same
run without the diagnostics' time.

    python benchmarks/grouping.py [--seeds 0 1 2 3 4] [--out docs/benchmarks]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from multitask import HardSharing, InputSchema, Task, Trainer
from multitask.balancing import BALANCERS
from multitask.data import MultiTaskData
from multitask.diagnostics import DiagnosticsCallback, read_diagnostics
from multitask.jsonio import to_json, write_text_atomic
from multitask.grouping import choose_groups

D, M, P, CLUSTERS, PER = 100, 10, 0.9, 3, 3
LR = 3e-3
EVERY_DATA = 5
NAMES = [f"c{k}t{j}" for k in range(CLUSTERS) for j in range(PER)] + ["noise"]
TRUTH = [k for k in range(CLUSTERS) for _ in range(PER)] + [CLUSTERS]


def synthetic(seed: int, n_train: int, n_val: int, n_test: int):
    """Train/val/test MultiTaskData of the clustered MMoE-style tasks (targets standardised on train)."""
    g = torch.Generator().manual_seed(1000 + seed)
    n = n_train + n_val + n_test
    Q, _ = torch.linalg.qr(torch.randn(D, CLUSTERS + CLUSTERS * PER, generator=g, dtype=torch.float64))
    u, v = Q[:, :CLUSTERS], Q[:, CLUSTERS:]
    alpha, beta = torch.randn(M, generator=g, dtype=torch.float64), torch.randn(M, generator=g, dtype=torch.float64)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    ys = {}
    for k in range(CLUSTERS):
        for j in range(PER):
            w = math.sqrt(P) * u[:, k] + math.sqrt(1 - P) * v[:, k * PER + j]
            z = x @ w
            ys[f"c{k}t{j}"] = z + torch.sin(alpha[None] * z[:, None] + beta[None]).sum(1) + 0.1 * torch.randn(
                n, generator=g, dtype=torch.float64)
    ys["noise"] = torch.randn(n, generator=g, dtype=torch.float64)
    for t, y in ys.items():
        ys[t] = ((y - y[:n_train].mean()) / y[:n_train].std()).float()
    x = x.float()
    cut = [0, n_train, n_train + n_val, n]
    parts = [MultiTaskData(x[a:b], {t: y[a:b] for t, y in ys.items()}) for a, b in zip(cut[:-1], cut[1:])]
    return parts


def train(names: list[str], parts, seed: int, epochs: int, callbacks=(), run_dir=None) -> dict:
    tasks = [Task(t, "regression") for t in names]
    train_d, val_d, test_d = (MultiTaskData(p.inputs, {t: p.targets[t] for t in names}) for p in parts)
    torch.manual_seed(seed)
    model = HardSharing.tabular(tasks, InputSchema(D), hidden=(64, 32), head_hidden=(16,), batch_norm=False)
    trainer = Trainer(model, tasks, BALANCERS["equal"](tasks), epochs=epochs, batch_size=128, lr=LR, seed=seed,
                      progress=False, patience=5, run_dir=run_dir)
    start = time.perf_counter()
    history = trainer.fit(train_d, val_d, callbacks=list(callbacks))
    seconds = time.perf_counter() - start
    val, test = trainer.evaluate(val_d), trainer.evaluate(test_d)
    return {"val_loss": val["loss"], "test_loss": test["loss"], "seconds": seconds,
            "steps": trainer.global_step, "parameters": sum(p.numel() for p in model.parameters()),
            "epochs": len(history)}


def synthetic_seed(seed: int, args) -> dict:
    from sklearn.metrics import adjusted_rand_score

    parts = synthetic(seed, args.n_train, 2000, 4000)
    T = len(NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        cb = DiagnosticsCallback(every=args.every, affinity_every=args.every)
        together = train(NAMES, parts, seed, args.epochs, [cb], tmp)
        Dg = read_diagnostics(tmp, NAMES)
    singles = {t: train([t], parts, seed, args.epochs) for t in NAMES}
    trained: dict[tuple, dict] = {tuple(range(T)): together}
    for i, t in enumerate(NAMES):
        trained[(i,)] = singles[t]

    def run(g: tuple) -> dict:
        if g not in trained:
            trained[g] = train([NAMES[i] for i in g], parts, seed, args.epochs)
        return trained[g]

    variants = {}
    for norm in (True, False):
        A = Dg.mean_affinity(normalized=norm)
        for overlap in (True, False):
            t0 = time.perf_counter()
            sel = choose_groups(np.nan_to_num(A), 4, overlap=overlap)
            key = f"{'normalized' if norm else 'raw'}/{'overlap' if overlap else 'partition'}"
            v = {"ari": float(adjusted_rand_score(TRUTH, sel.served_by)),
                 "groups": [[NAMES[i] for i in g] for g in sel.groups], "search_seconds": time.perf_counter() - t0}
            if norm:  # train the groups of the normalized affinity (what `multitask group` uses by default)
                runs = {g: run(g) for g in sel.groups}
                loss = 0.0
                for i, t in enumerate(NAMES):
                    best = min((g for g in runs if i in g), key=lambda g: runs[g]["val_loss"][t])
                    loss += runs[best]["test_loss"][t]
                v["loss"] = float(loss)
                v["parameters"] = int(sum(r["parameters"] for r in runs.values()))
            variants[key] = v
    truth = [tuple(i for i in range(T) if TRUTH[i] == k) for k in range(CLUSTERS + 1)]
    oracle = sum(sum(run(g)["test_loss"].values()) for g in truth)
    ordinary = (together["seconds"] - sum(cb.seconds.values())) / together["steps"]
    A = Dg.mean_affinity(normalized=True)
    inside = np.mean([A[i, j] for i in range(9) for j in range(9) if i != j and TRUTH[i] == TRUTH[j]])
    across = np.mean([A[i, j] for i in range(9) for j in range(9) if TRUTH[i] != TRUTH[j]])
    return {
        "seed": seed, "variants": variants,
        "affinity_inside": float(inside), "affinity_across": float(across),
        "affinity": Dg.mean_affinity().tolist(), "affinity_normalized": A.tolist(),
        "cosine": Dg.mean_cosine().tolist(), "conflict": Dg.conflict_frequency().tolist(),
        "loss_all_in_one": float(sum(together["test_loss"].values())),
        "loss_one_per_task": float(sum(singles[t]["test_loss"][t] for t in NAMES)), "loss_true_clusters": float(oracle),
        "parameters_all_in_one": together["parameters"],
        "parameters_one_per_task": int(sum(r["parameters"] for r in singles.values())),
        "affinity_records": int(len(Dg.affinity_steps)), "gradient_records": int(len(Dg.steps)),
        "affinity_cost_steps": cb.seconds["affinity"] / max(len(Dg.affinity_steps), 1) / ordinary,
        "gradient_cost_steps": cb.seconds["gradients"] / max(len(Dg.steps), 1) / ordinary,
        "overhead_fraction": sum(cb.seconds.values()) / (together["seconds"] - sum(cb.seconds.values())),
        "train_seconds_all_in_one": together["seconds"],
    }


def tree_seed(seed: int, args) -> dict:
    """Where to branch on the synthetic clusters: a branched network (3 trunk layers 64-32-32) trained with all
    layers shared and affinity by depth every `every` steps; trees proposed at 1.5x, 2x and 3x the trunk's
    parameters from the raw and the normalised per-layer affinity; ARI of the last layer's branches against
    the true clusters."""
    from sklearn.metrics import adjusted_rand_score

    from multitask.grouping import LayerAffinity, propose_tree, read_layer_affinity
    from multitask.models.branched import Branched

    parts = synthetic(seed, args.n_train, 2000, 4000)
    tasks = [Task(t, "regression") for t in NAMES]
    torch.manual_seed(seed)
    model = Branched.tabular(tasks, InputSchema(D), hidden=(64, 32, 32), head_hidden=(16,))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, tasks, BALANCERS["equal"](tasks), epochs=args.epochs, batch_size=128, lr=LR,
                          seed=seed, progress=False, patience=5, run_dir=tmp)
        trainer.fit(parts[0], parts[1], callbacks=[LayerAffinity(args.every)])
        layers = {norm: read_layer_affinity(tmp, NAMES, norm) for norm in (True, False)}
    sizes = [float(sum(p.numel() for p in layer.parameters())) for layer in model.trunk]
    out = {"seed": seed, "trees": []}
    for norm, A in layers.items():
        for budget in (1.5, 2.0, 3.0):
            tree = propose_tree(A, sizes, budget * sum(sizes))
            last = {i: k for k, g in enumerate(tree.layout[-1]) for i in g}
            out["trees"].append({"normalized": norm, "budget": budget, "branches": tree.branches(NAMES),
                                 "ari_last_layer": float(adjusted_rand_score(TRUTH, [last[i] for i in range(len(NAMES))])),
                                 "params_ratio": tree.params / sum(sizes)})
    return out


def free_cost(args) -> dict:
    """Wall time of the all-in-one synthetic run with MGDA (a Gramian balancer) with and without gradient
    records every step: the records come from the engine's own Gramian (median of 3 runs each)."""
    parts = synthetic(0, args.n_train, 2000, 4000)
    tasks = [Task(t, "regression") for t in NAMES]

    def once(cbs) -> float:
        torch.manual_seed(0)
        model = HardSharing.tabular(tasks, InputSchema(D), hidden=(64, 32), head_hidden=(16,), batch_norm=False)
        trainer = Trainer(model, tasks, BALANCERS["mgda"](tasks), epochs=10, batch_size=128, lr=LR, seed=0,
                          progress=False)
        t0 = time.process_time()
        trainer.fit(parts[0], callbacks=cbs)
        return time.process_time() - t0

    plain, seen = [], []
    for _ in range(5):  # interleaved, CPU time: the machine is shared
        plain.append(once([]))
        seen.append(once([DiagnosticsCallback(every=1, affinity_every=None)]))
    p, w = statistics.median(plain), statistics.median(seen)
    return {"mgda_plain_s": p, "mgda_with_records_every_step_s": w, "ratio": w / p}


def dataset_part(name: str, cfg_raw: dict, budget: int, out: Path, pairs: str, sample_pairs: int) -> dict:
    from multitask import config as cfgmod
    from multitask import grouping

    cfg = cfgmod.validate(cfg_raw)
    start = time.perf_counter()
    res = grouping.group_from_config(cfg, out / name, budget, "affinity", affinity_every=EVERY_DATA)
    total = time.perf_counter() - start
    tasks = res["tasks"]
    comp = res["comparison"]
    runs = json.loads((out / name / "grouping.json").read_text())
    all_run = Path(res["affinity_run"])
    from multitask.training import read_metrics

    hist = read_metrics(all_run)
    steps = sum(r["steps"] for r in hist)
    diag_s = res["diagnostics_seconds"]
    ordinary = (res["affinity_train_seconds"] - diag_s) / steps
    D = read_diagnostics(all_run, tasks)
    T = len(tasks)
    n_pairs = T * (T - 1) // 2
    pair_comp = None
    if pairs == "all":
        pr = grouping.measure_pairs(cfg, out / name)
        pair_seconds, measured = pr["pair_seconds"], n_pairs
        found = grouping.choose_groups(np.nan_to_num(pr["gain"]), budget)
        pair_sel = found.named(tasks)
        pair_comp = grouping.compare(cfg, tasks, [[tasks[i] for i in g] for g in found.groups], out / name)
        pair_sel["delta_m"] = pair_comp["grouped"]["delta_m"]
        pair_sel["parameters"] = pair_comp["grouped"]["parameters"]
        pair_sel["delta_m_per_task"] = pair_comp["grouped"]["delta_m_per_task"]
    else:
        rng = np.random.default_rng(0)
        combos = list(itertools.combinations(range(T), 2))
        chosen = [combos[k] for k in rng.choice(len(combos), size=min(sample_pairs, len(combos)), replace=False)]
        times = [grouping.train_group(cfg, [tasks[a], tasks[b]], out / name, tasks)["wall_time_s"] for a, b in chosen]
        pair_seconds, measured, pair_sel = float(np.mean(times)) * n_pairs, len(chosen), None
    return {"tasks": tasks, "budget": budget, "groups": res["selection"]["groups"],
            "optimal": res["selection"]["optimal"], "served_by": comp["served_by"],
            "grouped": {k: comp["grouped"][k] for k in ("delta_m", "delta_m_per_task", "parameters", "networks",
                                                         "train_seconds")},
            "all_in_one": {k: comp["all_in_one"][k] for k in ("delta_m", "delta_m_per_task", "parameters",
                                                               "networks", "train_seconds")},
            "one_per_task": {k: comp["one_per_task"][k] for k in ("delta_m", "parameters", "networks",
                                                                   "train_seconds")},
            "affinity": res["affinity"], "affinity_records": res["affinity_records"],
            "diagnostics_seconds": diag_s, "search_seconds": res["search_seconds"],
            "affinity_run_seconds": res["affinity_train_seconds"],
            "affinity_cost_steps": diag_s / max(len(D.affinity_steps), 1) / ordinary,
            "pairs_seconds": pair_seconds, "pairs_measured": measured, "pairs_total": n_pairs,
            "pair_selection": pair_sel, "wall_seconds": total}


def fmt(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--census-limit", type=int, default=30000)
    ap.add_argument("--skip-datasets", action="store_true")
    ap.add_argument("--work", default=None, help="where the dataset runs go (default: a temporary directory)")
    ap.add_argument("--out", default="docs/benchmarks")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    synth: list[dict] = []
    for s in args.seeds:
        r = synthetic_seed(s, args)
        synth.append(r)
        print(f"synthetic seed {s}: " + ", ".join(f"{k} ARI {v['ari']:.3f} loss {v.get('loss', math.nan):.3f}"
                                                   for k, v in r["variants"].items())
              + f"; all {r['loss_all_in_one']:.3f} single {r['loss_one_per_task']:.3f} "
              f"truth {r['loss_true_clusters']:.3f}", flush=True)
    free = free_cost(args) if synth else None
    trees = [tree_seed(s, args) for s in args.seeds[:3]]
    datasets = {}
    if not args.skip_datasets:
        work = Path(args.work or tempfile.mkdtemp(prefix="grouping-bench-"))
        yeast = {"data": {"name": "yeast"}, "model": {"name": "hard_sharing", "hidden": [128, 64], "head_hidden": [32],
                                                      "dropout": 0.1},
                 "trainer": {"epochs": 20, "batch_size": 128, "lr": 1e-3, "patience": 5, "progress": False}}
        census = {"data": {"name": "census-income", "limit": args.census_limit},
                  "tasks": {"income": {}, "marital": {}, "education": {}},
                  "model": {"name": "hard_sharing", "hidden": [128, 64], "head_hidden": [32]},
                  "trainer": {"epochs": 6, "batch_size": 512, "lr": 1e-3, "patience": 3, "progress": False}}
        datasets["census"] = dataset_part("census", census, 2, work, "all", 0)
        print("census:", datasets["census"]["groups"], flush=True)
        datasets["yeast"] = dataset_part("yeast", yeast, 4, work, "all", 0)
        print("yeast:", datasets["yeast"]["groups"], flush=True)
    total = time.perf_counter() - start
    result = {"synthetic": synth, "free_gradient_records": free, "trees": trees, "datasets": datasets, "args": vars(args), "seconds": total,
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "grouping.json", to_json(result, indent=2))
    write_text_atomic(out / "grouping.md", report(result))
    print(report(result))


def synthetic_lines(r: dict) -> list[str]:
    a = r["args"]
    s = r["synthetic"]
    lines = [
             "## Synthetic clusters (MMoE generator, 3 clusters x 3 tasks at correlation 0.9, + 1 noise task)", "",
             f"D = {D}, {a['n_train']} training / 2000 validation / 4000 test rows, hard sharing 100-64-32 with "
             f"16-unit heads, Adam lr {LR:g}, batch 128, up to {a['epochs']} epochs (patience 5); TAG affinity and "
             f"gradient cosines every {a['every']} steps in the all-in-one run; budget 4 networks.", "",
             "Affinity: the mean of TAG's Z over training, raw (the paper's) or normalized (each measurement's "
             "Z[i, j] divided by Z[j, j], see `Diagnostics.mean_affinity`). Selection: overlapping groups (each "
             "task served by its best chosen group; Standley/TAG) or a partition (each task in one network). "
             "ARI: the partition of tasks by serving group against the true clusters (noise its own).", "",
             "| seed | ARI normalized / overlap | normalized / partition | raw / overlap | raw / partition | "
             "mean normalized Z inside / across | test MSE sum: grouped (overlap) | grouped (partition) | "
             "all-in-one | one per task | true clusters |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = ["normalized/overlap", "normalized/partition", "raw/overlap", "raw/partition"]
    for x in s:
        v = x["variants"]
        lines.append(f"| {x['seed']} | " + " | ".join(f"{v[k]['ari']:.3f}" for k in keys)
                     + f" | {x['affinity_inside']:.3f} / {x['affinity_across']:.3f} | "
                       f"{v['normalized/overlap']['loss']:.3f} | {v['normalized/partition']['loss']:.3f} | "
                       f"{x['loss_all_in_one']:.3f} | {x['loss_one_per_task']:.3f} | {x['loss_true_clusters']:.3f} |")
    lines += ["", "Groups found (normalized / partition): "]
    for x in s:
        lines.append(f"- seed {x['seed']}: " + "; ".join("+".join(g) for g in x["variants"]["normalized/partition"]["groups"])
                     + " — overlap: " + "; ".join("+".join(g) for g in x["variants"]["normalized/overlap"]["groups"]))
    med = lambda k: statistics.median(x[k] for x in s)  # noqa: E731
    vmed = lambda k, f: statistics.median(x["variants"][k][f] for x in s)  # noqa: E731
    wins = {k: (sum(x["variants"][k]["loss"] < x["loss_all_in_one"] for x in s),
                sum(x["variants"][k]["loss"] < x["loss_one_per_task"] for x in s)) for k in keys[:2]}
    lines += ["", "Median ARI (1 = the clusters exactly): " + ", ".join(f"{k} {vmed(k, 'ari'):.3f}" for k in keys)
              + ". Grouped beats all-in-one / one-per-task in " + ", ".join(
                  f"{k}: {w[0]}/{len(s)} / {w[1]}/{len(s)}" for k, w in wins.items())
              + f" seeds (median summed test MSE: grouped overlap {vmed(keys[0], 'loss'):.3f}, partition "
              f"{vmed(keys[1], 'loss'):.3f}, all-in-one {med('loss_all_in_one'):.3f}, one per task "
              f"{med('loss_one_per_task'):.3f}, the true clusters {med('loss_true_clusters'):.3f}).", "",
              f"Cost, in ordinary training steps of the same run (median over seeds): one TAG affinity record "
              f"{med('affinity_cost_steps'):.1f} steps (10 tasks: 10 task gradients + 10 lookahead forwards), one "
              f"gradient-cosine record computed by the callback (Equal balancing, so not free) "
              f"{med('gradient_cost_steps'):.1f} steps; with both every {a['every']} steps the all-in-one run took "
              f"{100 * med('overhead_fraction'):.0f}% longer. Search (exact, 10 tasks): "
              f"{1000 * vmed(keys[0], 'search_seconds'):.0f} ms with overlap, "
              f"{1000 * vmed(keys[1], 'search_seconds'):.0f} ms as a partition.", ""]
    if r.get("trees"):
        lines += ["### Where to branch (same data, seeds " + ", ".join(str(t["seed"]) for t in r["trees"]) + ")", "",
                  "A branched network (trunk 64-32-32) trained with every layer shared, TAG affinity by depth every "
                  f"{a['every']} steps; trees grown under 1.5x, 2x and 3x the trunk's parameters. ARI: the last "
                  "layer's branches against the true clusters (noise its own).", "",
                  "| seed | affinity | budget | ARI last layer | trunk params / all-shared | branches at the last layer |",
                  "|---|---|---|---|---|---|"]
        for t in r["trees"]:
            for x in t["trees"]:
                lines.append(f"| {t['seed']} | {'normalized' if x['normalized'] else 'raw'} | {x['budget']:g}x | "
                             f"{x['ari_last_layer']:.3f} | {x['params_ratio']:.2f} | "
                             + "; ".join("+".join(g) for g in x["branches"][-1]) + " |")
        lines.append("")
    f = r.get("free_gradient_records")
    if f:
        lines += [f"With a gradient-based balancer the gradient records come from the engine's Gramian: MGDA, "
                  f"all-in-one, 10 epochs, CPU seconds, median of 5 interleaved runs: {f['mgda_plain_s']:.2f} s "
                  f"without, {f['mgda_with_records_every_step_s']:.2f} s with a record at every step "
                  f"(x{f['ratio']:.2f}).", ""]
    return lines


def report(r: dict) -> str:
    a = r["args"]
    lines = ["# Benchmark: grouping (which tasks to train together)", "",
             f"`python benchmarks/grouping.py` — {r['machine']}; total {r['seconds'] / 60:.1f} min. The machine "
             "was shared (2 cores, several jobs): wall-clock seconds are noisy; the costs in steps compare times "
             "taken within the same run.", ""]
    if r["synthetic"]:
        lines += synthetic_lines(r)
    if r["datasets"]:
        lines += ["## Real data: yeast (14 tasks) and census-income (income, marital, education)", "",
                  "Hard sharing 128-64 with 32-unit heads, Adam lr 1e-3, equal weights; yeast: batch 128, up to 20 "
                  f"epochs (patience 5), budget 4; census: {a['census_limit']} rows per file, batch 512, up to 6 "
                  f"epochs (patience 3), budget 2. TAG affinity every {EVERY_DATA} steps in the all-in-one run (which is also "
                  "the all-in-one result). Δm (%) against one network per task on the test split; each task "
                  "served by its chosen group with the lowest validation loss.", "",
                  "| data | groups found | Δm grouped | Δm all-in-one | params grouped / all-in-one / one-per-task | "
                  "finding: diagnostics s + search s | one TAG record (steps) | training all pairs s |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, d in r["datasets"].items():
            pairs = (f"{d['pairs_seconds']:.0f} (all {d['pairs_total']} trained)" if d["pairs_measured"] == d["pairs_total"]
                     else f"~{d['pairs_seconds']:.0f} (estimated: {d['pairs_measured']} of {d['pairs_total']} timed)")
            lines.append(f"| {name} | " + "; ".join("+".join(g) for g in d["groups"])
                         + f" | {d['grouped']['delta_m']:+.2f} | {d['all_in_one']['delta_m']:+.2f} | "
                           f"{d['grouped']['parameters']:,} / {d['all_in_one']['parameters']:,} / "
                           f"{d['one_per_task']['parameters']:,} | {d['diagnostics_seconds']:.1f} + "
                           f"{d['search_seconds']:.2f} | {d['affinity_cost_steps']:.1f} | {pairs} |")
        lines += ["", "Per-task Δm (%) against one network per task:", ""]
        for name, d in r["datasets"].items():
            lines += [f"- {name}: " + ", ".join(
                f"{t} grouped {d['grouped']['delta_m_per_task'][t]:+.1f} / all-in-one "
                f"{d['all_in_one']['delta_m_per_task'][t]:+.1f}" for t in d["tasks"])]
            if d.get("pair_selection"):
                ps = d["pair_selection"]
                lines += [f"  - groups from trained pairs (Standley) instead: "
                          + "; ".join("+".join(g) for g in ps["groups"])
                          + (f": Δm {ps['delta_m']:+.2f}, {ps['parameters']:,} parameters" if "delta_m" in ps else "")]
    lines += ["", "## Reading", "", "(written by hand after the run, from the numbers above)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
