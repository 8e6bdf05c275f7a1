"""What torch.distributed costs each balancing method: bytes reduced per step (computed from the shapes, and
measured by counting in the reducer) and seconds per step with 1 and with 2 processes (gloo, CPU).

Problem: a tabular hard-sharing MLP, 64 numeric inputs -> 256 -> 128 (ReLU, no batch norm), T = 4 tasks
(regression heads 128 -> 32 -> 1), one global batch of 256 rows (2 ranks: 128 rows each), Adam; every method
with its default options, both modes where it has them. Each cell runs WARMUP steps and then STEPS timed
`Trainer.train_step` calls on the same batch; reported are the median seconds of rank 0 (with 2 processes a
step includes waiting for the other rank: the step time of the run) and the bytes each rank contributed to
collectives per step (all-reduce: the tensor's size; all-gather: the padded piece it sends; the 8-byte size
exchange before each gather is not counted).

Honesty: this machine has 2 CPU cores shared with other jobs; the load average is recorded before and after.
Two processes on two cores cannot be faster than one for a step this small (both ranks also compete with
everything else); the numbers show the overhead of the reductions, not a speed-up. No GPU was lent to this
session, so the NCCL path is not measured.

    OMP_NUM_THREADS=1 nice python benchmarks/distributed.py [--steps 30] [--out docs/benchmarks]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from multitask import HardSharing, InputSchema, Task, Trainer
from multitask.balancing import BALANCERS, GradientBalancer, JacobianBalancer, LossBalancer

IN_DIM, HIDDEN, HEAD, T, BATCH, WORLD = 64, (256, 128), (32,), 4, 256, 2
WARMUP = 3


def cases() -> list[tuple[str, str | None]]:
    return [(n, m) for n, c in BALANCERS.items()
            for m in (("parameters", "features") if issubclass(c, GradientBalancer) else (None,))]


def problem() -> tuple[list[Task], torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, IN_DIM, generator=g)
    tasks = [Task(f"t{i}", "regression") for i in range(T)]
    w = torch.randn(IN_DIM, T, generator=g)
    y = x @ w + 0.1 * torch.randn(BATCH, T, generator=g)
    return tasks, x, {f"t{i}": y[:, i].contiguous() for i in range(T)}


def build(name: str, mode: str | None) -> Trainer:
    tasks, _, _ = problem()
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(IN_DIM), hidden=HIDDEN, head_hidden=HEAD, batch_norm=False)
    balancer = BALANCERS[name](tasks, **({"mode": mode} if mode else {}))
    trainer = Trainer(model, tasks, balancer, batch_size=BATCH, progress=False)
    trainer.balancer.generator = torch.Generator().manual_seed(0)
    return trainer


def computed_bytes(name: str, mode: str | None, trainer: Trainer) -> dict[str, int]:
    """Bytes per step and rank from the shapes alone (what the reducer should count)."""
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    P, P_shared = sum(p.numel() for p in params), sum(p.numel() for p in shared)
    cls = BALANCERS[name]
    out = {"counts": 8 * (1 + 2 * T), "losses": 8 * T}
    if mode == "parameters":  # the engine sums J; the shared parameters' .grad is then global
        out["jacobian"] = 4 * T * P_shared
        out["gradients"] = 4 * ((P - P_shared) + (len(params) - len(shared)))  # gradients + "has one" flags
    else:
        out["gradients"] = 4 * (P + len(params))
    if mode == "features" and not issubclass(cls, JacobianBalancer):
        out["gramian"] = 8 * T * T
    if mode == "features" and issubclass(cls, JacobianBalancer):
        rows = -(-BATCH // WORLD)
        out["columns"] = 4 * (2 if cls.column_sums_suffice else T) * rows * HIDDEN[-1]
    return out


def measure(name: str, mode: str | None, steps: int) -> dict:
    """Median seconds per step (and bytes per step under torch.distributed) of one cell in this process."""
    trainer = build(name, mode)
    _, x, y = problem()
    if trainer.dist is not None:
        idx = trainer.dist.shard(torch.arange(BATCH))
        x, y = x[idx], {t: v[idx] for t, v in y.items()}
    times = []
    for k in range(WARMUP + steps):
        if k == WARMUP and trainer.dist is not None:
            trainer.dist.bytes.clear()
            trainer.dist.seconds = 0.0
        start = time.perf_counter()
        trainer.train_step(x, y)
        if k >= WARMUP:
            times.append(time.perf_counter() - start)
    out = {"median_s": statistics.median(times), "computed_bytes": computed_bytes(name, mode, trainer)}
    if trainer.dist is not None:
        out["measured_bytes"] = {k: v // steps for k, v in trainer.dist.bytes.items()}
        out["collective_s"] = trainer.dist.seconds / steps
    return out


def _worker(rank: int, port: int, steps: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    results = {f"{n}/{m}": measure(n, m, steps) for n, m in cases()}
    if rank == 0:
        Path(path).write_text(json.dumps(results))
    dist.destroy_process_group()


def two_processes(steps: int, tmp: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp / "distributed_2proc.json"
    mp.start_processes(_worker, args=(port, steps, str(path)), nprocs=WORLD, start_method="spawn")
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the .json, measuring nothing")
    args = ap.parse_args()
    if args.render:
        saved = json.loads((Path(args.out) / "distributed.json").read_text())
        (Path(args.out) / "distributed.md").write_text(report(saved["meta"], saved["rows"]))
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.time()
    one = {f"{n}/{m}": measure(n, m, args.steps) for n, m in cases()}
    two = two_processes(args.steps, out)
    (out / "distributed_2proc.json").unlink()
    load_after = os.getloadavg()
    probe = build("equal", None)
    P = sum(p.numel() for p in probe.model.parameters())
    rows = []
    for key in one:
        name, mode = key.split("/")
        c, m = two[key]["computed_bytes"], two[key]["measured_bytes"]
        rows.append({"method": name, "mode": None if mode == "None" else mode,
                     "kind": BALANCERS[name].requires,
                     "computed_bytes": c, "measured_bytes": m,
                     "computed_total": sum(c.values()), "measured_total": sum(m.values()),
                     "ddp_bytes": 4 * P, "step_s_1proc": one[key]["median_s"], "step_s_2proc": two[key]["median_s"],
                     "collective_s_2proc": two[key]["collective_s"]})
    meta = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "threads_per_process": 1, "steps": args.steps, "warmup": WARMUP,
            "problem": {"inputs": IN_DIM, "hidden": HIDDEN, "head_hidden": HEAD, "tasks": T, "global_batch": BATCH,
                        "world_size": WORLD, "model_parameters": P},
            "load_average_before": load_before, "load_average_after": load_after,
            "wall_s": time.time() - started, "gpu": "none lent to this session (device status: not_drawn)"}
    (out / "distributed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "distributed.md").write_text(report(meta, rows))
    print(report(meta, rows))


def report(meta: dict, rows: list[dict]) -> str:
    p = meta["problem"]
    lines = [
        "# Distributed training: bytes reduced and step time per method",
        "",
        f"Written by `benchmarks/distributed.py`. Problem: hard-sharing MLP {p['inputs']} -> "
        f"{' -> '.join(map(str, p['hidden']))}, {p['tasks']} regression heads ({p['head_hidden'][0]} hidden), "
        f"{p['model_parameters']:,} parameters, global batch {p['global_batch']} ({p['world_size']} ranks: "
        f"{p['global_batch'] // p['world_size']} rows each), gloo on CPU, 1 thread per process, median of "
        f"{meta['steps']} steps after {meta['warmup']} warm-up steps (rank 0's clock).",
        "",
        f"Machine: {meta['cpu_count']} CPU cores shared with other jobs; load average (1, 5, 15 min) "
        f"{tuple(round(v, 2) for v in meta['load_average_before'])} before and "
        f"{tuple(round(v, 2) for v in meta['load_average_after'])} after the run; torch {meta['torch']}. "
        f"GPU: {meta['gpu']}, so the NCCL path is not measured here.",
        "",
        "Bytes: per step and rank, what each rank contributes to collectives. `computed` follows from the "
        "shapes (counts 8(1+2T), losses 8T, gradients 4(P + #tensors) or, in parameters mode, 4(P - P_shared + "
        "#head tensors), Jacobian 4 T P_shared, Gramian 8 T^2, feature columns 4 k ceil(B/R) |z| with k = 2 "
        "for GradDrop's column sums and T for DB-MTL); `measured` is what the reducer counted. DDP's own "
        "all-reduce of the gradients would be 4P bytes.",
        "",
        "| method | needs | mode | computed B/step | measured B/step | / DDP's 4P | of which | step ms, 1 proc | "
        "step ms, 2 procs | in collectives | 2 procs / 1 |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        parts = ", ".join(f"{k} {v:,}" for k, v in r["measured_bytes"].items() if k not in ("counts", "losses"))
        lines.append(
            f"| {r['method']} | {r['kind']} | {r['mode'] or '-'} | {r['computed_total']:,} | {r['measured_total']:,} | "
            f"{r['measured_total'] / r['ddp_bytes']:.2f} | {parts} | {1e3 * r['step_s_1proc']:.2f} | "
            f"{1e3 * r['step_s_2proc']:.2f} | {1e3 * r['collective_s_2proc']:.2f} | "
            f"{r['step_s_2proc'] / r['step_s_1proc']:.2f} |")
    same = all(r["computed_bytes"] == r["measured_bytes"] for r in rows)
    ratios = sorted(r["step_s_2proc"] / r["step_s_1proc"] for r in rows)
    coll = sorted(r["collective_s_2proc"] / r["step_s_2proc"] for r in rows)
    lines += [
        "",
        f"Computed and measured bytes agree for {'every' if same else 'NOT every'} cell.",
        f"2 processes / 1 process step time: median {statistics.median(ratios):.2f} over the cells "
        f"(range {ratios[0]:.2f} to {ratios[-1]:.2f}). Time inside collectives (rank 0, waiting for rank 1 "
        f"included): median {100 * statistics.median(coll):.0f}% of a 2-process step "
        f"(range {100 * coll[0]:.0f}% to {100 * coll[-1]:.0f}%).",
        "",
        "Reading: each rank computes half the batch, but on 2 cores already shared with other jobs (see the load "
        "average) two processes cannot run in parallel reliably, so a 2-process step is not faster here and "
        "the step times mostly measure scheduling; the ratio column is therefore no estimate of the speed-up "
        "on a machine with free cores or GPUs. What does carry over is the traffic: loss-based methods and "
        "features mode send what DDP sends (plus T + 1 + 2T numbers, and T^2 for a Gramian); parameters mode "
        "sends the T x P_shared Jacobian, T times DDP's traffic on the shared parameters, because the global "
        "Gramian is not the sum of the ranks' Gramians (docs/distributed.md).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
