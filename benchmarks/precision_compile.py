"""Seconds per training step on CPU: trainer.precision 32 vs bf16, trainer.compile off vs on (inductor).

The same census-income rows, HardSharing model (fresh, same seed), Adam and batch for every variant; a loss
balancer (Equal: the whole model compiled) and a gradient balancer (MGDA, parameters mode: the shared trunk
compiled, heads eager). Per variant: the first `warm` steps are timed apart (they hold torch.compile's tracing
and code generation: "warm-up"); then `steps` steps are timed one by one, the variants taking turns step by
step in a fresh shuffled order (a busy spell of a shared machine then slows all of them alike); `reps`
repetitions with fresh trainers; reported: the median step time over all of them, and its ratio to float32
eager of the same balancer. Inductor's on-disk cache starts empty (a fresh TORCHINDUCTOR_CACHE_DIR),
so the first repetition's warm-up is a cold compile and the later ones' a compile with that cache warm.

    python benchmarks/precision_compile.py [--rows 20000] [--steps 60] [--reps 3]
                                           [--out docs/benchmarks/precision_compile.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import tempfile
import warnings

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-bench-")  # cold: nothing compiled yet
import torch  # noqa: E402

from multitask import BALANCERS, HardSharing, Trainer
from multitask.data import load_census_income
from multitask.data.dataset import index_inputs
from multitask.training.precision import cpp_compiler


def make_trainer(bundle, balancer: str, precision: str, compile_: bool) -> Trainer:
    torch.manual_seed(0)
    model = HardSharing.tabular(bundle.tasks, bundle.preprocessor.schema, hidden=(256, 128), head_hidden=(64,))
    return Trainer(model, bundle.tasks, BALANCERS[balancer](bundle.tasks), progress=False, precision=precision,
                   compile=compile_)


def batches(bundle, batch_size: int, n: int, seed: int) -> list:
    data = bundle.train
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        out.append((index_inputs(data.inputs, idx), {t: y[idx] for t, y in data.targets.items()}))
    return out


def one_step(trainer: Trainer, batch: tuple) -> float:
    """Seconds of one training step."""
    t0 = time.perf_counter()
    trainer.train_step(*batch)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="docs/benchmarks/precision_compile.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*no further progress in floating point.*")  # MGDA's solver notes
    bundle = load_census_income(limit=args.rows, seed=0)
    compile_ok = cpp_compiler() is not None
    variants = [(b, p, c) for b in ("equal", "mgda") for p in ("32", "bf16") for c in ((False, True) if compile_ok
                                                                                       else (False,))]
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    warmups: dict[tuple, list[float]] = {v: [] for v in variants}
    order = list(variants)
    for rep in range(args.reps):
        rng = random.Random(rep)
        feed = batches(bundle, args.batch, args.warm + args.steps, seed=rep)
        torch._dynamo.reset()  # every compiled variant traces again in every repetition (the disk cache stays)
        trainers = {}
        rng.shuffle(order)
        for v in order:  # warm-up: each variant's first steps, alone
            trainers[v] = make_trainer(bundle, *v)
            trainers[v].model.train()
            warmups[v].append(sum(one_step(trainers[v], b) for b in feed[:args.warm]))
        for b in feed[args.warm:]:  # then one step of every variant in turn, in a fresh order each time, so a
            rng.shuffle(order)      # busy spell of the machine slows all variants alike
            for v in order:
                times[v].append(one_step(trainers[v], b))
        for v in variants:
            print(f"rep {rep} {v}: warm-up {warmups[v][-1]:.2f}s, median step "
                  f"{statistics.median(times[v][-args.steps:]) * 1e3:.2f} ms", flush=True)
    rows = []
    for v in variants:
        base = statistics.median(times[(v[0], "32", False)])
        med = statistics.median(times[v])
        rows.append({"balancer": v[0], "precision": v[1], "compile": v[2], "median_step_ms": med * 1e3,
                     "ratio_to_fp32_eager": med / base, "warmup_s_cold": warmups[v][0],
                     "warmup_s_warm_cache": statistics.median(warmups[v][1:]) if len(warmups[v]) > 1 else None,
                     "warmup_steps": args.warm, "timed_steps": len(times[v])})
    setup = {"rows": args.rows, "batch": args.batch, "steps_per_rep": args.steps, "warm": args.warm, "reps": args.reps,
             "threads": 1, "torch": torch.__version__, "python": platform.python_version(),
             "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
             "cxx": cpp_compiler(), "model": "HardSharing hidden=(256,128) head_hidden=(64,)",
             "data": "census-income (2 binary tasks)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    lines = ["# Precision and compile: seconds per training step on CPU", "",
             f"Command: `python benchmarks/precision_compile.py --rows {args.rows} --steps {args.steps} "
             f"--reps {args.reps}` (torch {torch.__version__}, 1 thread, {setup['cpu_count']} cores shared with "
             f"other jobs, C++ compiler: {setup['cxx']}).", "",
             f"{setup['data']}, {setup['model']}, Adam, batch {args.batch}; each variant: {args.warm} warm-up steps "
             f"(timed together: torch.compile's tracing and code generation happen here), then {args.steps} steps "
             f"timed one by one, the variants taking turns step by step in shuffled order; x {args.reps} "
             "repetitions with fresh trainers (torch._dynamo reset before each; inductor's disk cache empty at the "
             "start, so the first repetition's warm-up is a cold compile).", "",
             "| balancer | precision | compile | median step (ms) | ratio to float32 eager | warm-up: first "
             f"{args.warm} steps, empty cache (s) | same, cache on disk (s) |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['balancer']} | {r['precision']} | {'inductor' if r['compile'] else 'off'} | "
                     f"{r['median_step_ms']:.2f} | {r['ratio_to_fp32_eager']:.2f} | {r['warmup_s_cold']:.2f} | "
                     + (f"{r['warmup_s_warm_cache']:.2f} |" if r["warmup_s_warm_cache"] is not None else "n/a |"))
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
