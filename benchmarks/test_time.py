"""Serving cost: "one model per task is expensive at test time" (issue 10, benchmark 2).

Latency (ms per batch of --rows rows, median of --repeats calls, eval mode, no grad) and peak memory of one
forward pass of Independent vs HardSharing vs every other family in MODELS, for 1, 2 and all T requested tasks
(model(x, tasks=first k)), with T = 3 (census-income: income, marital, education) and T = 14 (yeast). The
weights are untrained (freshly initialised, seed --seed): latency and memory do not depend on their values.

Memory is the peak resident set size (RSS) above the RSS just before the call: Linux's high-water mark is reset
(`/proc/self/clear_refs` <- 5) before each call and read from `/proc/self/status` (VmHWM - VmRSS) after it. It
is measured in a child process started with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_),
so every tensor of 64 KiB or more is mapped on allocation and returned to the OS when freed, and the peak
is the activations of that call (inputs and weights excluded), not what the allocator cached from earlier
calls. Latency is measured in this process with the default allocator. tracemalloc is not used: it sees only
Python's allocator, not torch's tensor memory.

    python benchmarks/test_time.py [--families ...] [--rows 10000] [--repeats 20] [--threads N] [--out docs/benchmarks]
    python benchmarks/test_time.py --limit 3000 --repeats 5          # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arch_common import batch_of, families, kept_notes, machine_line, model_latency_ms, options_for  # noqa: E402

from multitask.data import load_census_income, load_yeast  # noqa: E402
from multitask.models import build_model  # noqa: E402

CENSUS_TASKS = ["income", "marital", "education"]
MMAP_THRESHOLD = "65536"


def datasets(args) -> list[tuple[str, list, Any, Any, int]]:
    """(name, tasks, input schema, a batch of --rows test rows, test rows available) per dataset."""
    census = load_census_income(limit=args.limit, seed=0, tasks=CENSUS_TASKS)
    yeast = load_yeast(seed=0)
    return [(f"{label} (T = {len(b.tasks)})", b.tasks, b.preprocessor.schema, batch_of(b.test.inputs, args.rows),
             len(b.test)) for label, b in (("census-income", census), ("yeast", yeast))]


def requested(tasks: list) -> list[list[str]]:
    names = [t.name for t in tasks]
    return [names[:k] for k in sorted({1, min(2, len(names)), len(names)})]


def build(family: str, tasks: list, schema: Any, seed: int, extra: dict) -> tuple[torch.nn.Module, list[str]]:
    opts, notes = options_for(family, [t.name for t in tasks], extra)
    torch.manual_seed(seed)
    model = build_model(family, tasks, schema, **opts)
    model.eval()
    return model, notes


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_mib(model: torch.nn.Module, x: Any, tasks: list[str], repeats: int) -> float:
    """Median over `repeats` calls of (peak RSS during model(x, tasks) - RSS before it), in MiB."""
    values = []
    with torch.no_grad():
        model(x, tasks=tasks)  # warm-up: one-time allocations (thread pools, kernels' caches) are not the model's
        for _ in range(repeats):  # (no gc.collect(): tensors are freed by reference counting)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = _status_kib("VmRSS")
            out = model(x, tasks=tasks)
            values.append((_status_kib("VmHWM") - before) / 1024)
            del out
    return statistics.median(values)


def memory_pass(args) -> dict:
    """Runs in the child process: peak MiB per (dataset, family, k)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kib("VmHWM")
    except OSError as e:
        return {"error": f"cannot reset the RSS high-water mark ({e}); memory not measured"}
    out: dict[str, float] = {}
    for name, tasks, schema, x, _ in datasets(args):
        for family in families(args.families):
            try:
                model, _ = build(family, tasks, schema, args.seed, args.options)
            except (ValueError, TypeError, KeyError):
                continue  # the latency pass reports why
            for asked in requested(tasks):
                out[f"{name}|{family}|{len(asked)}"] = peak_mib(model, x, asked, args.memory_repeats)
    return {"peak_mib": out}


def run_memory_child(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "memory.json"
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
        cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--memory-json", str(path)]
        done = subprocess.run(cmd, env=env)
        if done.returncode != 0 or not path.exists():
            return {"error": f"the memory child process failed (exit {done.returncode})"}
        return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=None, help="default: every name in MODELS at run time")
    ap.add_argument("--rows", type=int, default=10_000, help="rows per batch")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per latency")
    ap.add_argument("--memory-repeats", type=int, default=2, help="calls per peak-memory figure")
    ap.add_argument("--limit", type=int, default=None, help="census rows read (quick checks)")
    ap.add_argument("--seed", type=int, default=0, help="weight initialisation")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--options", type=json.loads, default={},
                    help='JSON {family: {option: value}} over the built-in per-family options')
    ap.add_argument("--no-memory", action="store_true", help="latency only")
    ap.add_argument("--memory-json", default=None, help=argparse.SUPPRESS)  # internal: the child's output
    ap.add_argument("--name", default="test_time", help="output file stem")
    ap.add_argument("--out", default=None, help="folder for <name>.md and <name>.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_json:
        Path(args.memory_json).write_text(json.dumps(memory_pass(args)))
        return
    wall = time.perf_counter()
    chosen = families(args.families)
    notes: list[str] = []
    records: list[dict] = []
    skipped: list[str] = []
    sets = datasets(args)
    for name, tasks, schema, x, _ in sets:
        for family in chosen:
            try:
                model, dropped = build(family, tasks, schema, args.seed, args.options)
            except (ValueError, TypeError, KeyError) as e:
                skipped.append(f"`{family}` on {name}: {' '.join(str(e).split())}")
                print(f"skip {family} on {name}: {e}", flush=True)
                continue
            notes += [d for d in dropped if d not in notes]
            rec = {"dataset": name, "family": family, "T": len(tasks),
                   "parameters": sum(p.numel() for p in model.parameters()),
                   "weights_mib": sum(t.numel() * t.element_size()
                                      for t in list(model.parameters()) + list(model.buffers())) / 2**20,
                   "skips_work": bool(getattr(type(model), "skips_work", True)), "ms": {}}
            for asked in requested(tasks):
                rec["ms"][len(asked)] = model_latency_ms(model, x, asked, args.repeats)
            records.append(rec)
            print(f"{name:<22} {family:<14} " + "  ".join(f"{k} task(s) {v:7.1f} ms" for k, v in rec["ms"].items()),
                  flush=True)
    memory = {"error": "--no-memory"} if args.no_memory else run_memory_child(args)
    for rec in records:
        rec["peak_mib"] = {k: memory.get("peak_mib", {}).get(f"{rec['dataset']}|{rec['family']}|{k}")
                           for k in rec["ms"]}
    lines = [machine_line(), "",
             f"Latency: ms per batch of {args.rows:,} rows (the first test rows, repeated where a test split has "
             f"fewer: " + ", ".join(f"{n.split(' (')[0]} has {k:,}" for n, _, _, _, k in sets) + "), median of "
             f"{args.repeats} calls of `model(x, tasks=first k)`, eval mode, no grad, untrained weights (seed "
             f"{args.seed}). Peak MiB: RSS high-water mark above the RSS before one such call (median of "
             f"{args.memory_repeats}), i.e. the activations of the call; weights MiB: parameters and buffers. "
             "Sizes: benchmarks/arch_common.py FAMILY_OPTIONS (as benchmarks/architectures.py); a family without an "
             "entry uses its builder defaults."]
    if "error" in memory:
        lines += ["", f"Memory not measured: {memory['error']}."]
    for name, tasks, _, _, _ in sets:
        ks = [len(a) for a in requested(tasks)]
        rows = [r for r in records if r["dataset"] == name]
        if not rows:
            continue
        ref = next((r for r in rows if r["family"] == "hard_sharing"), None)
        lines += ["", f"## {name}", "",
                  "| family | parameters | weights MiB | skips unasked tasks | "
                  + " | ".join(f"ms, {k} task{'s' if k > 1 else ''}" for k in ks)
                  + (" | ms all ÷ hard_sharing" if ref else "") + " | "
                  + " | ".join(f"peak MiB, {k}" for k in ks) + " |",
                  "|---|---:|---:|---|" + "---:|" * (2 * len(ks) + (1 if ref else 0))]
        for r in rows:
            peaks = [r["peak_mib"][k] for k in ks]
            lines.append(
                f"| {r['family']} | {r['parameters']:,} | {r['weights_mib']:.2f} | {'yes' if r['skips_work'] else 'no'} | "
                + " | ".join(f"{r['ms'][k]:.1f}" for k in ks)
                + (f" | {r['ms'][ks[-1]] / ref['ms'][ks[-1]]:.2f}" if ref else "") + " | "
                + " | ".join("n/a" if p is None else f"{p:.1f}" for p in peaks) + " |")
    if skipped:
        lines += ["", "Skipped:"] + [f"- {s}" for s in skipped]
    notes += [
        "Peak MiB is the largest transient of one call. Paths that run one after another (Independent's networks, "
        "each task's head) free their activations before the next starts, so the peak follows the widest single "
        "path, not the number of tasks; what grows with the tasks asked is the latency, and with T the weights.",
        "Latencies on a shared machine are noisy (a few ms); compare columns within a run, not across runs.",
        f"Total wall time of this run: {(time.perf_counter() - wall) / 60:.1f} min.",
    ]
    if args.limit:
        notes.append(f"--limit {args.limit}: census vocabularies come from the first rows only (smaller embedding "
                     "tables than a full run).")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(
            {"command": sys.argv, "records": records, "skipped": skipped, "memory": memory, "notes": notes}, indent=2))
        md = out / f"{args.name}.md"
        head = (f"# Serving cost of each architecture ({args.name})\n\nCommand: `python benchmarks/test_time.py"
                + "".join(f" {a}" for a in sys.argv[1:]) + "`\n\n")
        md.write_text(head + text + "\n" + kept_notes(md))


if __name__ == "__main__":
    main()
