"""Crash test: SIGKILL a real `multitask train` process at random moments, resume it, and compare the resumed
run with an uninterrupted one bit for bit (last.pt and best.pt weights, epochs, early-stopping state).

    python benchmarks/crash_resume.py --kills 40 --out docs/benchmarks/crash_resume.md

Each kill waits until the run has logged a random number of epochs, then a random part of one more epoch, so
kills land anywhere: inside a step, during validation, between or inside the checkpoint writes. Exits 1 if
any resumed run differs. The test suite runs it with `--kills 2`.
"""
from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

CONFIG = {"data": {"name": "yeast", "limit": 600}, "tasks": {"class1": {}, "class2": {}, "class3": {}},
          "model": {"name": "hard_sharing", "hidden": [32], "head_hidden": [8]},
          "balancer": {"name": "mgda"},
          "trainer": {"epochs": 5, "batch_size": 8, "progress": False, "patience": 5, "scheduler": "cosine"}}


def train_cmd(cfg: Path, run: Path, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "multitask", "train", str(cfg)] + (
        ["--resume", str(run)] if resume else ["--out", str(run)])


def epochs_logged(run: Path) -> int:
    try:
        return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}"))
    except FileNotFoundError:
        return 0


def same_checkpoint(a: Path, b: Path) -> bool:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    if x["epoch"] != y["epoch"] or x.get("early_stopping") != y.get("early_stopping"):
        return False
    return x["model"].keys() == y["model"].keys() and all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])


def one_kill(cfg: Path, ref: Path, work: Path, rng: random.Random, epoch_s: float, epochs: int) -> dict:
    run = work / f"run{rng.randrange(10**9)}"
    after = rng.randrange(1, epochs)  # epochs logged before the kill window (one epoch period long) opens
    delay = rng.uniform(0, 1.0) * epoch_s
    proc = subprocess.Popen(train_cmd(cfg, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while epochs_logged(run) < after and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(delay)
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    files = sorted(p.name for p in (run / "checkpoints").glob("*")) if (run / "checkpoints").exists() else []
    logged = epochs_logged(run)
    resume = (run / "checkpoints" / "last.pt").exists()
    subprocess.run(train_cmd(cfg, run, resume=resume), check=True, capture_output=True)
    ok = all(same_checkpoint(ref / "checkpoints" / n, run / "checkpoints" / n) for n in ("last.pt", "best.pt"))
    ok = ok and not list((run / "checkpoints").glob("*.tmp")) and not (run / "checkpoints" / "best.next.pt").exists()
    return {"after_epochs": after, "delay_s": delay, "logged_at_kill": logged, "files_at_kill": files,
            "resumed": resume, "finished_before_kill": finished_first, "identical": ok}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write a Markdown report here")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = work / "c.yaml"
        cfg.write_text(yaml.safe_dump(CONFIG))
        ref = work / "ref"
        epochs = CONFIG["trainer"]["epochs"]
        start = time.perf_counter()
        proc = subprocess.Popen(train_cmd(cfg, ref), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = []  # when each epoch's line appeared: the period of a whole epoch (step, validation, checkpoints)
        while proc.poll() is None:
            if epochs_logged(ref) > len(seen):
                seen.append(time.perf_counter())
            time.sleep(0.002)
        if proc.returncode != 0:
            raise SystemExit("the uninterrupted run failed")
        ref_s = time.perf_counter() - start
        epoch_s = statistics.median(b - a for a, b in zip(seen, seen[1:]))
        rows = [one_kill(cfg, ref, work, rng, epoch_s, epochs) for _ in range(args.kills)]
    identical = sum(r["identical"] for r in rows)
    mid_pair = sum("best.next.pt" in r["files_at_kill"] for r in rows)
    tmp_left = sum(any(f.endswith(".tmp") for f in r["files_at_kill"]) for r in rows)
    summary = (f"{identical} of {len(rows)} killed runs resumed to bit-identical last.pt and best.pt "
               f"(uninterrupted run {ref_s:.1f} s, median epoch period {epoch_s:.2f} s; {sum(r['resumed'] for r in rows)} "
               f"resumed from a checkpoint, the others killed before epoch 1 ended and started again; "
               f"{mid_pair} killed between best.next.pt and its rename, {tmp_left} left a temp file)")
    table = ["| # | epochs logged before window | delay (s) | epochs logged at kill | checkpoint files at kill | identical |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        table.append(f"| {i} | {r['after_epochs']} | {r['delay_s']:.2f} | {r['logged_at_kill']} | "
                     f"{', '.join(r['files_at_kill']) or '-'} | {'yes' if r['identical'] else '**NO**'} |")
    print(summary)
    print("\n".join(table))
    if args.out:
        Path(args.out).write_text(
            "# Crash test: kill -9 at random moments, resume, compare\n\n"
            f"`python benchmarks/crash_resume.py --kills {args.kills} --seed {args.seed}` on 2 CPU cores, "
            f"torch {torch.__version__}. Config: yeast (600 rows, 3 tasks, batches of 8), hard sharing, MGDA, 5 epochs, cosine "
            "schedule, early stopping state kept.\n\n"
            f"**{summary}.**\n\n" + "\n".join(table) + "\n")
    return 0 if identical == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
