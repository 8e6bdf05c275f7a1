"""MMoE / CGC / PLE serving latency before and after their experts and gates were fused (models/experts.py),
measured side by side in one process: the former classes are loaded from a source tree of an earlier commit
(--old-src), given the current model's weights (same state-dict keys), and both are called alternately on the
same batch (so machine load hits both alike). Also reports the largest output difference.

    git archive 259d3f1 src | tar -x -C /tmp/oldsrc     # the commit before the fusion
    python benchmarks/moe_before_after.py --old-src /tmp/oldsrc/src --threads 1 --out docs/benchmarks
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arch_common import batch_of, machine_line, options_for  # noqa: E402

from multitask.data import load_census_income, load_yeast  # noqa: E402
from multitask.models import build_model  # noqa: E402

CENSUS_TASKS = ["income", "marital", "education"]
FILES = {"mmoe": ("mmoe", "MMoE"), "cgc": ("ple", "CGC"), "ple": ("ple", "PLE")}


def old_class(src: Path, family: str):
    """The family's class as defined in the old source tree (its other imports resolve to the current package,
    whose base classes and layers the fusion did not change)."""
    module, name = FILES[family]
    spec = importlib.util.spec_from_file_location(f"old_{module}", src / "multitask" / "models" / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-src", required=True, help="the src/ folder of the earlier commit")
    ap.add_argument("--families", nargs="+", default=list(FILES), choices=list(FILES))
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=10, help="alternating timed calls of each model")
    ap.add_argument("--limit", type=int, default=20_000, help="census rows read")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    src = Path(args.old_src)
    sets = [("census-income", load_census_income(limit=args.limit, seed=0, tasks=CENSUS_TASKS)),
            ("yeast", load_yeast(seed=0))]
    records = []
    for dname, b in sets:
        x = batch_of(b.test.inputs, args.rows)
        names = [t.name for t in b.tasks]
        for family in args.families:
            opts, _ = options_for(family, names, {})
            torch.manual_seed(0)
            new = build_model(family, b.tasks, b.preprocessor.schema, **opts).eval()
            old = old_class(src, family).tabular(b.tasks, b.preprocessor.schema, **opts).eval()
            old.load_state_dict(new.state_dict())
            for k in sorted({1, 2, len(names)}):
                asked = names[:k]
                times: dict[str, list[float]] = {"before": [], "after": []}
                with torch.no_grad():
                    a, c = old(x, tasks=asked), new(x, tasks=asked)
                    diff = max(float((a[t] - c[t]).abs().max()) for t in asked)
                    for _ in range(args.repeats):
                        for label, model in (("before", old), ("after", new)):
                            start = time.perf_counter()
                            model(x, tasks=asked)
                            times[label].append((time.perf_counter() - start) * 1e3)
                rec = {"dataset": f"{dname} (T = {len(names)})", "family": family, "k": k,
                       "before_ms": statistics.median(times["before"]), "after_ms": statistics.median(times["after"]),
                       "max_abs_diff": diff}
                records.append(rec)
                print(f"{rec['dataset']:<22} {family:<5} k={k:<3} before {rec['before_ms']:7.1f} ms  after "
                      f"{rec['after_ms']:7.1f} ms  x{rec['before_ms'] / rec['after_ms']:.2f}  diff {diff:.1e}", flush=True)
    lines = [machine_line(), "",
             f"ms per call of `model(x, tasks=first k)` on {args.rows:,} test rows (eval, no grad, untrained weights, "
             f"seed 0), median of {args.repeats} calls of each, the two models called alternately in one process. "
             "Sizes: benchmarks/arch_common.py FAMILY_OPTIONS. Before: the classes of --old-src with the same weights.",
             "", "| dataset | family | k tasks | before ms | after ms | before ÷ after | max abs output diff |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['dataset']} | {r['family']} | {r['k']} | {r['before_ms']:.1f} | {r['after_ms']:.1f} | "
                     f"{r['before_ms'] / r['after_ms']:.2f} | {r['max_abs_diff']:.1e} |")
    lines += ["", "The machine is shared and was heavily loaded by other jobs; absolute ms vary between runs by 2x or "
              "more, the ratios (both models under the same load) much less."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cmd = "python benchmarks/moe_before_after.py " + " ".join(sys.argv[1:])
        (out / "moe_before_after.md").write_text(f"# MMoE / CGC / PLE latency before and after fusing experts and "
                                                 f"gates\n\nCommand: `{cmd}`\n\n{text}\n")
        (out / "moe_before_after.json").write_text(json.dumps({"command": cmd, "records": records}, indent=1))


if __name__ == "__main__":
    main()
