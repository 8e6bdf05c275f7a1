"""Reading and preprocessing a large table: `multitask`'s `load_table` against `pandas.read_csv` (or
`pandas.read_parquet`) of the same file alone, and its peak memory against the size of the final arrays.

A generated table (default 1,000,000 rows x 50 columns: 45 numeric features, some with 2% empty cells, 3
categorical text columns with 1% empty cells, a binary text target and a regression target) is written as CSV
and as Parquet. Each measurement runs in a fresh subprocess (modules imported before the clock starts), the
two readers alternating, `--repeats` times; the table gives medians and the ratio of the medians.

Memory: peak RSS of the subprocess (``ru_maxrss``) minus its RSS just before loading, against the bytes of the
final float32/int64 tensors of all three splits (inputs and targets).

    python benchmarks/data_loading.py                    # 1M rows, 3 repeats, writes docs/benchmarks/data_loading.md
    python benchmarks/data_loading.py --rows 100000 --out -
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"clicked": "binary", "price": "regression"}


def generate(rows: int, folder: Path) -> dict[str, Path]:
    """The table as CSV and Parquet in `folder` (reused when already there for this row count)."""
    import numpy as np
    import pandas as pd

    paths = {"csv": folder / f"table_{rows}.csv", "parquet": folder / f"table_{rows}.parquet"}
    if all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(0)
    cols: dict[str, object] = {}
    for j in range(45):
        x = rng.normal(j, 1 + j % 5, rows).round(4)
        if j % 9 == 0:
            x[rng.random(rows) < 0.02] = np.nan
        cols[f"x{j}"] = x
    for j, k in enumerate((5, 40, 1000)):
        v = np.char.add(f"c{j}_", rng.integers(0, k, rows).astype(str)).astype(object)
        v[rng.random(rows) < 0.01] = None
        cols[f"cat{j}"] = v
    cols["clicked"] = np.where(cols["x1"] + rng.normal(0, 2, rows) > 1, "yes", "no").astype(object)
    cols["price"] = (cols["x2"] * 3 + rng.normal(100, 5, rows)).round(3)
    df = pd.DataFrame(cols)
    df.to_csv(paths["csv"], index=False)
    df.to_parquet(paths["parquet"], index=False)
    return paths


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(kind: str, path: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import pandas as pd
    import torch  # noqa: F401  (imported before the clock, like the library's own imports)

    from multitask.data import table

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    if kind == "ours-pandas":  # the fallback reader used when pyarrow is not installed
        table._arrow_csv = lambda *a, **k: None
    before = rss_mb()
    start = time.perf_counter()
    final = None
    if kind == "pandas":
        df = pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)
        rows = len(df)
    else:
        bundle = table.load_table(path, TARGETS)
        rows = sum(len(d) for d in (bundle.train, bundle.val, bundle.test))
        final = 0
        for d in (bundle.train, bundle.val, bundle.test):
            final += sum(v.numel() * v.element_size() for v in d.inputs.values())
            final += sum(v.numel() * v.element_size() for v in d.targets.values())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "seconds": seconds, "rows": rows, "peak_extra_mb": peak - before,
                      "final_mb": None if final is None else final / 2**20}))


def measure(kind: str, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], capture_output=True, text=True,
                         env=env, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", help="where the generated files go (default: a temporary folder)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "data_loading.md"), help="'-': print only")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    tmp = None if args.dir else tempfile.TemporaryDirectory()
    folder = Path(args.dir or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = generate(args.rows, folder)
    print(f"table generated in {time.perf_counter() - t0:.0f} s: CSV {paths['csv'].stat().st_size / 2**20:.0f} MiB, "
          f"Parquet {paths['parquet'].stat().st_size / 2**20:.0f} MiB", flush=True)
    plans = {"csv": ["pandas", "ours", "ours-pandas"], "parquet": ["pandas", "ours"]}
    results: dict[str, dict[str, list[dict]]] = {}
    for fmt, kinds in plans.items():
        results[fmt] = {k: [] for k in kinds}
        for r in range(args.repeats):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):  # alternate the order between repeats
                m = measure(kind, paths[fmt])
                results[fmt][kind].append(m)
                print(f"{fmt} {kind:<11} run {r + 1}: {m['seconds']:.2f} s, peak +{m['peak_extra_mb']:.0f} MiB",
                      flush=True)
    lines = report(args, paths, results)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"written to {args.out}")
    if tmp is not None:
        tmp.cleanup()


def report(args: argparse.Namespace, paths: dict[str, Path], results: dict) -> list[str]:
    import numpy
    import pandas

    try:
        import pyarrow
        arrow = f"pyarrow {pyarrow.__version__}"
    except ImportError:
        arrow = "no pyarrow"
    med = lambda ms, key: statistics.median(m[key] for m in ms)  # noqa: E731
    lines = [
        "# data_loading: a large table, read and preprocessed",
        "",
        f"`python benchmarks/data_loading.py --rows {args.rows} --repeats {args.repeats}` on {os.cpu_count()} "
        f"CPU cores ({platform.machine()}, Python {platform.python_version()}, pandas {pandas.__version__}, "
        f"numpy {numpy.__version__}, {arrow}).",
        "",
        f"Table: {args.rows:,} rows x 50 columns (45 numeric features, 5 of them with 2% empty cells; 3 text "
        "categorical columns with 5, 40 and 1000 values and 1% empty cells; a yes/no target `clicked`; a "
        f"regression target `price`). CSV {paths['csv'].stat().st_size / 2**20:.0f} MiB, Parquet "
        f"{paths['parquet'].stat().st_size / 2**20:.0f} MiB.",
        "",
        "Each cell is the median of the runs, each run a fresh subprocess (imports done before the clock starts). "
        "*pandas alone*: `pandas.read_csv(path)` / `pandas.read_parquet(path)` with default options, nothing "
        "else. *load_table*: `multitask.data.table.load_table(path, targets)`, what `multitask train` runs: "
        "read, infer the categorical features, fit the target codecs and the preprocessor on the training rows, "
        "and write the final float32/int64 tensors of train/val/test. *load_table, pandas reader*: the same "
        "with the pyarrow reader switched off (what runs without the `fast` extra). Peak memory: the "
        "subprocess's peak RSS (`ru_maxrss`) minus its RSS just before loading; final arrays: the bytes of "
        "all the tensors load_table returns.",
        "",
        "| file | reader | time (s) | runs (s) | time / pandas alone | peak memory (MiB) | final arrays (MiB) "
        "| peak / final arrays |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    names = {"pandas": "pandas alone", "ours": "load_table", "ours-pandas": "load_table, pandas reader"}
    for fmt, by_kind in results.items():
        base = med(by_kind["pandas"], "seconds")
        final = next(m["final_mb"] for m in by_kind["ours"])
        for kind, ms in by_kind.items():
            t = med(ms, "seconds")
            peak = med(ms, "peak_extra_mb")
            runs = ", ".join(f"{m['seconds']:.2f}" for m in ms)
            ratio = "1.00" if kind == "pandas" else f"{t / base:.2f}"
            mem_ratio = f"{peak / final:.2f}" if kind != "pandas" else f"({peak / final:.2f})"
            lines.append(f"| {fmt} | {names[kind]} | {t:.2f} | {runs} | {ratio} | {peak:.0f} | {final:.0f} "
                         f"| {mem_ratio} |")
    lines += ["", "Targets (issue 9): time / pandas alone <= 1.5, peak / final arrays <= 3, for CSV and Parquet."]
    return lines


if __name__ == "__main__":
    main()
