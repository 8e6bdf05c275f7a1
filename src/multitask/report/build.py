"""The report of one run or of several runs: which tables and figures, with which captions, and where the files go."""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from multitask.jsonio import nulls_to_nan, write_atomic, write_text_atomic
from multitask.metrics import HIGHER_IS_BETTER, delta_m_terms
from multitask.report import html
from multitask.report.runs import Run, load_runs

Figures = dict[str, bytes]  # file name -> PNG
# every figure file a report may write: the ones a new report does not draw are removed from its folder, so
# that a run written again (--overwrite) leaves no stale figure of the earlier run
FIGURE_FILES = ("losses.png", "validation.png", "weights.png", "delta_m.png", "conflict.png", "conflict_trend.png",
                "affinity.png", "affinity_trend.png", "pareto.png", "compared_validation.png")


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _options(section: Any) -> str:
    """A config section {name, options...} as 'name (k=v, ...)'."""
    if not isinstance(section, dict):
        return "?"
    opts = {k: v for k, v in section.items() if k != "name"}
    if not opts:
        return str(section.get("name"))
    shown = ", ".join(f"{k}={_short(v)}" for k, v in opts.items())
    return f"{section.get('name')} ({shown})"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


def _baseline(final: dict[str, Any] | None) -> dict[str, Any] | None:
    b = (final or {}).get("baseline")
    return b if isinstance(b, dict) and isinstance(b.get("test"), dict) else None


def changes(final: dict[str, Any] | None) -> dict[str, float]:
    """Per "task.metric" relative change of the test metric against the single-task baseline ({} without one)."""
    b = _baseline(final)
    if b is None:
        return {}
    try:
        return delta_m_terms(nulls_to_nan(final["test"]), nulls_to_nan(b["test"]))[0]
    except (KeyError, TypeError):
        return {}


def _render(figs: Figures, name: str, make: Callable[[], Any]) -> bytes | None:
    """Build one figure, keep its PNG under `name` (None when the figure has nothing to show)."""
    from multitask.report.figures import png

    fig = make()
    if fig is None:
        return None
    figs[name] = png(fig)
    return figs[name]


def _figure_block(figs: Figures, name: str, make: Callable[[], Any], caption: str) -> list[html.Block]:
    data = _render(figs, name, make)
    return [] if data is None else [html.figure(data, caption, caption.split(":")[0])]


# ------------------------------------------------------------------------------------------ one run
def _metric_rows(run: Run) -> tuple[list[str], list[list[Any]]]:
    final = run.final or {}
    test = final.get("test") if isinstance(final.get("test"), dict) else None
    base = _baseline(final)
    change = changes(final)
    val = final.get("val") if isinstance(final.get("val"), dict) else {}
    if test is None:  # an unfinished run: the validation metrics of its best (or last) epoch
        recorded = [r for r in run.history if isinstance(r.get("val"), dict)]
        best = [r for r in recorded if r.get("best")]
        test = (best or recorded or [{}])[-1].get("val") or {}
        head = ["task", "metric", "validation (best epoch)"]
        return head, [[html.Cell(t, "text"), html.Cell(f"{m} {'↑' if HIGHER_IS_BETTER.get(m, True) else '↓'}", "text"),
                       _fmt(v)] for t, ms in test.items() for m, v in ms.items()]
    head = ["task", "metric", "test"] + (["single-task test", "change"] if base else []) + (["validation"] if val else [])
    rows = []
    for t, ms in test.items():
        for m, v in ms.items():
            row: list[Any] = [html.Cell(t, "text"),
                              html.Cell(f"{m} {'↑' if HIGHER_IS_BETTER.get(m, True) else '↓'}", "text"), _fmt(v)]
            if base:
                c = change.get(f"{t}.{m}")
                row += [_fmt((base["test"].get(t) or {}).get(m)),
                        html.Cell("n/a") if c is None else html.Cell(f"{100 * c:+.2f}%", "neg" if c < 0 else "pos")]
            if val:
                row.append(_fmt((val.get(t) or {}).get(m)))
            rows.append(row)
    return head, rows


def _facts(run: Run) -> list[tuple[str, str]]:
    final, cfg = run.final or {}, run.config or {}
    tasks = run.task_names
    kinds = {t.get("name"): t.get("kind") for t in run.tasks}
    kinds_seen = {kinds.get(t) for t in tasks}
    if len(tasks) > 4:  # many tasks: their number, the first and last names, and the kinds
        shown = f"{len(tasks)}: {', '.join(tasks[:3])}, ..., {tasks[-1]}"
        shown += f" ({', '.join(sorted(k for k in kinds_seen if k))})" if any(kinds_seen) else ""
    else:
        shown = ", ".join(f"{t} ({kinds[t]})" if kinds.get(t) else t for t in tasks) or "?"
    items = [("tasks", shown),
             ("model", _options(cfg.get("model")) if cfg else str(final.get("model", "?"))),
             ("balancer", _options(cfg.get("balancer")) if cfg else str(final.get("balancer", "?")))]
    epochs = final.get("epochs", run.history[-1]["epoch"] if run.history else None)
    best = final.get("best_epoch")
    items.append(("epochs", f"{epochs}" + (f" (best {best})" if best else "")))
    if final.get("parameters") is not None:
        items.append(("parameters", f"{final['parameters']:,}"))
    seconds = final.get("wall_time_s", sum(r.get("seconds", 0) for r in run.history))
    items.append(("training time", f"{seconds:.1f} s"))
    trainer = cfg.get("trainer") or {}
    if trainer:
        items.append(("optimiser", f"{trainer.get('optimizer')} lr={_short(trainer.get('lr'))}, "
                                   f"batch {trainer.get('batch_size')}"))
    dm = final.get("delta_m")
    if isinstance(dm, (int, float)) and math.isfinite(dm):
        items.append(("Δm against single-task", f"{dm:+.2f}%"))
    return items


def run_blocks(run: Run, figs: Figures, prefix: str = "") -> list[html.Block]:
    """The sections of one run's report; figures are added to `figs` (names prefixed by `prefix`)."""
    from multitask.report import figures as F
    from multitask.report.aggregate import affinity_summary, gradient_summary

    tasks = run.task_names
    final = run.final or {}
    blocks: list[html.Block] = [html.facts(_facts(run))]
    change = changes(final)
    worse = {k: v for k, v in change.items() if v < 0}
    if _baseline(final):
        if worse:
            ranked = sorted(worse.items(), key=lambda kv: kv[1])
            listed = ", ".join(f"{k} {100 * v:+.2f}%" for k, v in ranked[:8])
            listed += f" and {len(ranked) - 8} more (see the table)" if len(ranked) > 8 else ""
            blocks.append(html.callout(f"Negative transfer: sharing made {len(worse)} of {len(change)} test metrics "
                                       f"worse than the single-task networks: {listed}."))
        else:
            blocks.append(html.callout("No negative transfer: every test metric is at least as good as the "
                                       "single-task network's.", ok=True))
    elif final:
        blocks.append(html.text("No single-task baseline was recorded (set `baselines: auto` in the config to "
                                "train one and see Δm and negative transfer).", cls="note"))
    elif run.config is None and (run.path / "trainer.json").exists():
        blocks.append(html.text("Written by the Python API (Trainer(run_dir=...)), which records epochs but no "
                                "test metrics: the table shows the validation metrics of the best epoch.",
                                cls="note"))
    else:
        blocks.append(html.callout("This run did not finish (no final.json): the table shows the validation "
                                   "metrics of its best epoch."))
    head, rows = _metric_rows(run)
    blocks += [html.heading("Metrics"), html.table(head, rows, text_columns=2)]
    if final.get("delta_m_undefined"):
        blocks.append(html.text("Left out of Δm (baseline is 0 or NaN): " + ", ".join(final["delta_m_undefined"]),
                                cls="note"))

    blocks.append(html.heading("Training"))
    if run.history:
        blocks += _figure_block(figs, f"{prefix}losses.png", lambda: F.loss_curves(run.history, tasks),
                                "Loss per task and epoch: both curves should fall; a validation loss that rises "
                                "while the training loss falls is overfitting (dotted line: the best epoch, "
                                "whose weights were kept).")
        blocks += _figure_block(figs, f"{prefix}validation.png", lambda: F.validation_metrics(run.history, tasks),
                                "Validation metrics per epoch, one panel each (↑ higher / ↓ lower is better); "
                                "dotted line: the best epoch.")
    grads = gradient_summary(run.diagnostics)
    weights = _figure_block(figs, f"{prefix}weights.png", lambda: F.weights_over_time(run.history, tasks, grads),
                            "Balancer weights over training: how much each task's loss or gradient counted in "
                            "the update; a weight that drifts to 0 means the balancer stopped training that task.")
    if weights:
        blocks += weights
    elif run.history and isinstance(run.history[-1].get("weights"), dict):
        w = run.history[-1]["weights"]
        blocks.append(html.text("The balancer's weights did not change during training: "
                                + ", ".join(f"{t} {_short(float(v))}" for t, v in w.items()) + ".", cls="note"))
    if change:
        blocks.append(html.heading("Against the single-task baselines"))
        blocks += _figure_block(figs, f"{prefix}delta_m.png", lambda: F.delta_m_bars(change, final.get("delta_m")),
                                "Change of each test metric against a network trained on that task alone "
                                "(positive = better whichever way the metric points); red bars are negative "
                                "transfer; Δm is their mean.")
    if grads is not None:
        blocks.append(html.heading("Gradient conflict"))
        blocks += _figure_block(figs, f"{prefix}conflict.png", lambda: F.conflict_heatmaps(grads),
                                f"Task gradients compared on the shared parameters (or representation) over {len(grads.steps)} logged "
                                "steps: negative cosine (red) means one task's step raises the other's loss; the "
                                "right map is how often that happened.")
        blocks += _figure_block(figs, f"{prefix}conflict_trend.png", lambda: F.conflict_trend(grads),
                                "Conflict over training: cosine below the dashed line is conflict; a norm ratio far "
                                "from 1 means one task's gradient dominates the shared update.")
    aff = affinity_summary(run.diagnostics)
    if aff is not None:
        blocks.append(html.heading("Task affinity"))
        blocks += _figure_block(figs, f"{prefix}affinity.png", lambda: F.affinity_heatmap(aff),
                                "Lookahead affinity (TAG): Z[i→j] > 0 (blue) means a step on task i's gradient "
                                "lowered task j's loss, < 0 (red) raised it; tasks that help each other "
                                "belong in one network.")
        blocks += _figure_block(figs, f"{prefix}affinity_trend.png", lambda: F.affinity_trend(aff),
                                f"Affinity over training ({len(aff.steps)} measurements): pairs that stay above 0 "
                                "keep helping; early help that fades is common.")
    return blocks


def _title(run: Run) -> str:
    final = run.final or {}
    cfg = run.config or {}
    if not final and not cfg:  # a Python API run directory: no record of the data, model or balancer
        return f"{run.name}: {len(run.task_names)} tasks"
    dataset = final.get("dataset") or (cfg.get("data") or {}).get("name") or run.name
    model = final.get("model") or (cfg.get("model") or {}).get("name", "?")
    balancer = final.get("balancer") or (cfg.get("balancer") or {}).get("name", "?")
    return f"{dataset}: {model} with {balancer} balancing"


def _written(run: Run) -> str:
    p = run.path / ("final.json" if run.final else "metrics.jsonl")
    try:
        t = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.timezone.utc)
    except OSError:
        return ""
    return f", written {t:%Y-%m-%d %H:%M} UTC"


# ------------------------------------------------------------------------------------------ several runs
def _label(run: Run) -> str:
    """A short label for a run in plots: its preference vector when it has one, else its name."""
    bal = (run.config or {}).get("balancer") or {}
    pref = bal.get("preference") if bal.get("name") == "epo" else bal.get("weights") if bal.get("name") == "static" else None
    if isinstance(pref, dict) and pref:
        shown = "(" + ", ".join(f"{float(v):.2g}" for v in pref.values()) + ")"
        return f"EPO {shown}" if bal.get("name") == "epo" else shown
    return run.name


def comparison_blocks(runs: Sequence[Run], figs: Figures, objectives: Sequence[str] | None, split: str,
                      reference: Sequence[float] | None = None) -> list[html.Block]:
    """The comparison table, the Pareto plot of two or three objectives, and the validation curves side by side."""
    from multitask import pareto
    from multitask.report import figures as F

    finished = [r for r in runs if r.final and isinstance(r.final.get(split), dict)]
    blocks: list[html.Block] = []
    front = None
    names: list[str] = []
    if finished:
        try:
            names = pareto.objective_names(finished[0].final, objectives, split)
        except KeyError as e:
            from multitask.config import ConfigError

            raise ConfigError(f"--objectives: {e.args[0]}") from None
        if len(names) >= 2 and len(finished) >= 2:
            front = pareto.front_summary([r.final for r in finished], names, split, reference)
    on_front = dict(zip([r.name for r in finished], front["on_front"])) if front else {}
    head = ["run", "model", "balancer", "Δm"] + [f"{n} {'↑' if HIGHER_IS_BETTER[n.rpartition('.')[2]] else '↓'}"
                                                 for n in names] + (["on front"] if front else []) + ["params",
                                                                                                      "time"]
    rows, classes = [], []
    for r in runs:
        final, cfg = r.final or {}, r.config or {}
        dm = final.get("delta_m")
        dm_cell = (html.Cell(f"{dm:+.2f}%", "neg" if dm < 0 else "pos")
                   if isinstance(dm, (int, float)) and math.isfinite(dm) else html.Cell("n/a"))
        vals = pareto.objective_values(final, names, split) if final else [math.nan] * len(names)
        row: list[Any] = [html.Cell(r.name, "text"),
                          html.Cell(str(final.get("model") or (cfg.get("model") or {}).get("name", "?")), "text"),
                          html.Cell(_options(cfg.get("balancer")) if cfg else str(final.get("balancer", "?")), "text"),
                          dm_cell] + [_fmt(v) for v in vals]
        if front:
            row.append("yes" if on_front.get(r.name) else "")
        row += [_fmt(final.get("parameters"), ","), _fmt(final.get("wall_time_s"), ".1f") + " s"]
        rows.append(row)
        classes.append("front" if on_front.get(r.name) else "")
    blocks += [html.heading("Runs compared"),
               html.text(f"{split} metrics; Δm is each run's mean change against its own single-task baseline "
                         "(red: worse than single-task).", cls="note"),
               html.table(head, rows, classes, text_columns=3)]
    if front:
        labels = [_label(r) for r in finished]
        blocks.append(html.heading("Pareto front"))
        ref = ", ".join(_fmt(-c if h else c, ".4g") for c, h in zip(front["reference_cost"], front["higher_is_better"]))
        blocks += _figure_block(
            figs, "pareto.png",
            lambda: F.pareto_plot(front["values"], names, front["on_front"], labels, front["hypervolume"],
                                  [r.path.resolve().parent.name for r in finished]),
            f"The runs in {split} metrics, better towards the top right: filled points are on the front (no other "
            f"run is at least as good on every metric and better on one); hollow ones are dominated. Hypervolume "
            f"{_fmt(front['hypervolume'], '.4g')}: the area (volume) the front dominates up to the reference point "
            f"({ref}); larger is better, and only comparable at the same reference.")
    histories = {r.name: r.history for r in runs if r.history}
    tasks = []
    for r in runs:
        tasks += [t for t in r.task_names if t not in tasks]
    if histories:
        blocks.append(html.heading("Validation curves"))
        blocks += _figure_block(figs, "compared_validation.png", lambda: F.compared_validation(histories, tasks),
                                "The first validation metric of each task per epoch, one line per run.")
    return blocks


# ------------------------------------------------------------------------------------------ entry points
def build(runs: Sequence[Run], objectives: Sequence[str] | None = None, split: str = "test",
          title: str | None = None, reference: Sequence[float] | None = None) -> tuple[str, Figures]:
    """The HTML page and its figures (PNG bytes by file name) for one run or several."""
    figs: Figures = {}
    if len(runs) == 1:
        run = runs[0]
        blocks = run_blocks(run, figs)
        subtitle = f"run directory {run.path}{_written(run)}"
        title = title or _title(run)
    else:
        blocks = comparison_blocks(runs, figs, objectives, split, reference)
        parents = {r.path.resolve().parent for r in runs}
        subtitle = (f"{len(runs)} runs in {runs[0].path.parent}: " + ", ".join(r.path.name for r in runs)
                    if len(parents) == 1 else f"{len(runs)} runs: " + ", ".join(str(r.path) for r in runs))
        title = title or f"{len(runs)} runs compared"
    read = [f for f in ("final.json", "metrics.jsonl", "config.yaml", "tasks.json", "diagnostics.jsonl")
            if any((r.path / f).exists() for r in runs)]
    footer = (f"Written by `multitask report` from {', '.join(read)}; each figure is also saved as a PNG in the "
              "figures folder beside this page.")
    return html.page(title, subtitle, blocks, footer), figs


def write_report(run_dirs: Sequence[str | Path], out: str | Path, figures_dir: str | Path | None = None,
                 objectives: Sequence[str] | None = None, split: str = "test", title: str | None = None,
                 reference: Sequence[float] | None = None) -> Path:
    """Write the report of `run_dirs` to `out` (HTML) and its figures as PNG files into `figures_dir`
    (default: a `figures` folder beside `out`); returns `out`. A directory that is not a run is a ConfigError."""
    from multitask.config import ConfigError

    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError("the HTML report draws its figures with matplotlib, which is not installed: "
                          "pip install 'multitask[plots]' (or matplotlib)") from None
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a directory; give a file name such as {out / 'report.html'}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out: the folder {out.parent} does not exist")
    runs = load_runs(list(run_dirs))
    page, figs = build(runs, objectives, split, title, reference)
    folder = Path(figures_dir) if figures_dir is not None else out.parent / "figures"
    if figs:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in figs.items():
            write_atomic(folder / name, lambda f, d=data: f.write(d))
    for name in FIGURE_FILES:
        if name not in figs and folder.is_dir():
            (folder / name).unlink(missing_ok=True)
    write_text_atomic(out, page)
    return out


def write_run_report(run_dir: str | Path) -> Path:
    """`report.html` and `figures/*.png` inside a run directory (what `multitask train` leaves)."""
    run_dir = Path(run_dir)
    return write_report([run_dir], run_dir / "report.html", run_dir / "figures")
