"""Seconds per training step: `Trainer` against a hand-written PyTorch loop on the same model, data and batch.

Both run one epoch over the same census-income rows with the same HardSharing model (fresh, same seed),
Adam, batch 256; the variants are interleaved and their order shuffled in every repetition, so drifts in
machine speed hit all of them alike. Reported: median seconds per step and the ratio to the hand loop.

    python benchmarks/overhead.py [--rows 40000] [--reps 9] [--out docs/benchmarks/overhead.md]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from multitask import Equal, HardSharing, Trainer
from multitask.data import batches, load_census_income


def make_model(bundle):
    torch.manual_seed(0)
    return HardSharing.tabular(bundle.tasks, bundle.preprocessor.schema, hidden=(256, 128), head_hidden=(64,))


def hand_loop(bundle, batch_size: int) -> tuple[float, int]:
    """What a user would write by hand: forward, sum of the two BCE losses, backward, step."""
    model = make_model(bundle)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    steps = 0
    start = time.perf_counter()
    for inputs, targets, _ in batches(bundle.train, batch_size, shuffle=True, generator=gen):
        out = model(inputs)
        loss = sum(F.binary_cross_entropy_with_logits(out[t][:, 0], targets[t]) for t in targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return time.perf_counter() - start, steps


def trainer_loop(bundle, batch_size: int, progress: bool) -> tuple[float, int]:
    """`Trainer.fit` for one epoch, no validation, no run directory; the progress bar drawn to a buffer."""
    model = make_model(bundle)
    trainer = Trainer(model, bundle.tasks, Equal(bundle.tasks), epochs=1, batch_size=batch_size, lr=1e-3,
                      progress=progress)
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        start = time.perf_counter()
        history = trainer.fit(bundle.train)
        elapsed = time.perf_counter() - start
    return elapsed, -(-len(bundle.train) // batch_size) if history else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bundle = load_census_income(limit=args.rows)
    variants = {
        "hand-written loop": lambda: hand_loop(bundle, args.batch_size),
        "Trainer (no progress bar)": lambda: trainer_loop(bundle, args.batch_size, progress=False),
        "Trainer (progress bar)": lambda: trainer_loop(bundle, args.batch_size, progress=True),
    }
    for fn in variants.values():  # warm-up
        fn()
    per_step: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(0)
    for _ in range(args.reps):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            seconds, steps = variants[name]()
            per_step[name].append(seconds / steps)
    base = per_step["hand-written loop"]
    lines = [
        f"census-income, {len(bundle.train):,} training rows, batch {args.batch_size}, "
        f"HardSharing (256-128 trunk, 64 heads), Adam; {args.reps} interleaved repetitions of one epoch",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "",
        "| loop | median ms / step | ratio to hand loop (median of per-repetition ratios) |",
        "|---|---:|---:|",
    ]
    for name, values in per_step.items():
        ratios = [v / b for v, b in zip(values, base)]
        lines.append(f"| {name} | {1000 * statistics.median(values):.3f} | {statistics.median(ratios):.3f}x |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Trainer overhead\n\nCommand: `python benchmarks/overhead.py" +
                    "".join(f" {a}" for a in sys.argv[1:]) + "`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
