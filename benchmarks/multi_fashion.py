"""Multi-Fashion benchmark: Independent vs HardSharing x {equal, uncertainty, mgda (features mode)}, over seeds.

Per-task test accuracy (mean ± std over seeds), Δm against Independent (test accuracy of both tasks, the
Independent mean over seeds as the baseline), training seconds per epoch and parameter count. The LeNet-like
models of `multitask.models.conv` with their defaults. One data construction (data seed 0: composites,
train/val split); the seed changes initialisation and batch order. The training set can be cut to its first
`--train-size` composites to fit a CPU budget; validation (6,000) and test (10,000) are always whole.

    python benchmarks/multi_fashion.py                          # the committed setting: 20,000 composites, 5 epochs
    python benchmarks/multi_fashion.py --train-size 0 --epochs 10 --threads 0   # all 54,000, torch's threads
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from multitask.balancing import BALANCERS
from multitask.data.multi_fashion import load_multi_fashion
from multitask.experiment import count_parameters
from multitask.metrics import delta_m
from multitask.models import build_model
from multitask.tasks import Task
from multitask.training import Trainer, TrainerConfig

RUNS = [("independent", "equal", {}), ("hard_sharing", "equal", {}), ("hard_sharing", "uncertainty", {}),
        ("hard_sharing", "mgda", {"mode": "features"})]
TASKS = [Task("left", "multiclass", n_outputs=10, metrics=["accuracy"]),
         Task("right", "multiclass", n_outputs=10, metrics=["accuracy"])]


def run_one(bundle, model_name: str, balancer: str, options: dict, seed: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    model = build_model(model_name, TASKS, bundle.preprocessor.schema)
    trainer = Trainer(model, TASKS, BALANCERS[balancer](TASKS, **options),
                      TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                                    progress=False))
    history = trainer.fit(bundle.train, bundle.val)
    test = trainer.evaluate(bundle.test)["metrics"]
    return {"model": model_name, "balancer": balancer, "options": options, "seed": seed,
            "test_accuracy": {t: test[t]["accuracy"] for t in ("left", "right")},
            "seconds_per_epoch": statistics.mean(r["seconds"] for r in history),
            "parameters": count_parameters(model), "best_epoch": trainer.early.best_epoch}


def label(r: dict) -> str:
    mode = r["options"].get("mode")
    return f"{r['model']} + {r['balancer']}" + (f" ({mode})" if mode else "")


def summarise(results: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(label(r), []).append(r)
    base = {t: {"accuracy": statistics.mean(r["test_accuracy"][t] for r in groups["independent + equal"])}
            for t in ("left", "right")}
    rows = []
    for name, rs in groups.items():
        acc = {t: [r["test_accuracy"][t] for r in rs] for t in ("left", "right")}
        dms = [delta_m({t: {"accuracy": r["test_accuracy"][t]} for t in acc}, base) for r in rs]
        rows.append({"run": name, "seeds": len(rs),
                     **{f"{t}_mean": statistics.mean(v) for t, v in acc.items()},
                     **{f"{t}_std": statistics.stdev(v) if len(v) > 1 else 0.0 for t, v in acc.items()},
                     "delta_m_mean": statistics.mean(dms), "delta_m_std": statistics.stdev(dms) if len(dms) > 1 else 0.0,
                     "seconds_per_epoch": statistics.mean(r["seconds_per_epoch"] for r in rs),
                     "parameters": rs[0]["parameters"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model + balancer | left acc | right acc | Δm (%) vs Independent | train s/epoch | parameters |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['left_mean']:.4f} ± {r['left_std']:.4f} | {r['right_mean']:.4f} ± "
                     f"{r['right_std']:.4f} | {r['delta_m_mean']:+.2f} ± {r['delta_m_std']:.2f} | "
                     f"{r['seconds_per_epoch']:.1f} | {r['parameters']:,} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-size", type=int, default=20000, help="first N training composites; 0 = all 54,000")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0: torch's default); 1 wastes least on a machine others share")
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--name", default="multi_fashion")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    bundle = load_multi_fashion(seed=0)
    if args.train_size:
        bundle.train = bundle.train.subset(torch.arange(min(args.train_size, len(bundle.train))))
    print(f"train {len(bundle.train)}, val {len(bundle.val)}, test {len(bundle.test)}; {args.epochs} epochs; "
          f"seeds {args.seeds}; torch threads {torch.get_num_threads()}", flush=True)
    results = []
    for model_name, balancer, options in RUNS:
        for seed in args.seeds:
            r = run_one(bundle, model_name, balancer, options, seed, args)
            results.append(r)
            print(f"{label(r):<36} seed {seed}: left {r['test_accuracy']['left']:.4f} right "
                  f"{r['test_accuracy']['right']:.4f}, {r['seconds_per_epoch']:.1f} s/epoch", flush=True)
    rows = summarise(results)
    wall = time.perf_counter() - start
    print(table(rows))
    print(f"wall time {wall:.0f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": {**vars(args), "train_rows": len(bundle.train), "val_rows": len(bundle.val),
                           "test_rows": len(bundle.test), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                           "python": platform.python_version(), "wall_seconds": wall,
                           "command": " ".join(["python"] + sys.argv)},
              "summary": rows, "runs": results}
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
