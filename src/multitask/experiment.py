"""A run from a validated config: data -> tasks -> model -> balancer -> Trainer -> test metrics and Δm.

Everything lands in one run directory: ``config.yaml`` (resolved), ``tasks.json``, ``preprocessor.json``,
``metrics.jsonl``, ``checkpoints/{last,best}.pt`` and ``final.json``; with ``baselines: auto`` the
single-task (`Independent`) run sits in ``baseline/`` beside them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from multitask import config as cfgmod
from multitask import models
from multitask.balancing import BALANCERS, Balancer
from multitask.config import ConfigError, RunConfig
from multitask.data import DATASETS, DatasetBundle
from multitask.data.images import ImagePreprocessor, load_preprocessor
from multitask.data.preprocessing import TabularPreprocessor
from multitask.jsonio import nulls_to_nan, write_json, write_text_atomic
from multitask.metrics import delta_m, delta_m_terms
from multitask.models import ImageSpec, InputSchema, MultiTaskModel
from multitask.models.task_inputs import TaskInputs, visible_columns
from multitask.tasks import Task
from multitask.training import Trainer, TrainerConfig, read_metrics
from multitask.training.distillation import Distillation, FixedTeachers, PreviousSelf
from multitask.training.checkpoint import remove_temporaries
from multitask.training.distributed import is_main
from multitask.errors import message


def load_data(cfg: RunConfig) -> DatasetBundle:
    """The configured dataset; a problem in the data itself is a ConfigError naming the dataset."""
    d = cfg.data
    if d.name == "sources":
        from multitask.data.sources import load_sources

        try:
            bundle = load_sources({n: s.model_dump() for n, s in d.sources.items()},
                                  d.split.model_dump() if d.split else None, d.limit,
                                  list(cfg.tasks) if cfg.tasks else None, d.sampling or "proportional", d.temperature)
        except (ValueError, KeyError, TypeError) as e:
            reason = message(e)
            raise ConfigError(f"data.sources: {' '.join(reason.split())}") from None
        for note in bundle.info["notes"]:
            _say(f"[multitask] {note}")
        bundle.tasks = cfgmod.configure_tasks(bundle.tasks, cfg)
        return bundle
    if d.name == "table":
        from multitask.data.images import load_image_table
        from multitask.data.table import load_table

        try:
            if d.image_column is not None:  # a table of image files (multitask.data.images)
                bundle = load_image_table(d.path, d.image_column, d.targets, d.image_size, d.channels,
                                          (d.split.model_dump() if d.split else None), d.limit)
            else:
                bundle = load_table(d.path, d.targets, d.features, d.categorical,
                                    (d.split.model_dump() if d.split else None), d.limit, d.missing_indicator)
        except (ValueError, KeyError, TypeError) as e:
            reason = message(e)
            raise ConfigError(f"data: {' '.join(reason.split())}") from None
        for note in bundle.info["notes"]:
            _say(f"[multitask] {note}")
        if cfg.tasks is not None:
            bundle = bundle.select_tasks(list(cfg.tasks))
            bundle.tasks = cfgmod.configure_tasks(bundle.tasks, cfg)
        return bundle
    try:
        # census-income builds its features from the tasks (education is a feature unless it is a task)
        chosen = {"tasks": list(cfg.tasks) if cfg.tasks else None} if d.name == "census-income" else {}
        bundle = DATASETS[d.name](path=d.path, val_fraction=d.val_fraction, seed=d.seed, limit=d.limit, **chosen)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        reason = message(e)
        where = f" ({d.path})" if d.path else ""
        raise ConfigError(f"data: {d.name}{where}: {' '.join(reason.split())}") from None
    if cfg.tasks is None:
        return bundle
    bundle = bundle.select_tasks(list(cfg.tasks))
    bundle.tasks = cfgmod.configure_tasks(bundle.tasks, cfg)
    return bundle


def _say(text: str) -> None:
    """Print on rank 0 only (every line once in a torchrun run)."""
    if is_main():
        print(text)


def build_model(cfg: RunConfig, tasks: list[Task], schema: InputSchema | ImageSpec,
                name: str | None = None) -> MultiTaskModel:
    """The configured architecture (or `name`, e.g. 'independent' for baselines) for the input spec (a table
    schema or an ImageSpec), seeded by trainer.seed."""
    torch.manual_seed(cfg.trainer.seed)
    name = name or cfg.model.name
    options = cfg.model.options if name == cfg.model.name else cfgmod.shared_model_options(cfg, name)
    model = models.build_model(name, tasks, schema, **options)
    if cfgmod.has_task_inputs(cfg):  # the single-task baselines read the same columns as their task
        model = TaskInputs(model, schema, task_visible_columns(cfg, tasks, schema))
    return model


def task_visible_columns(cfg: RunConfig, tasks: list[Task], schema: InputSchema) -> dict[str, tuple[str, ...]]:
    """Per task, the input columns it reads (`tasks.<t>.inputs` / `private_inputs`); ConfigError naming the
    task and column when one is not an input of this data."""
    sections = cfg.tasks or {}
    try:
        return visible_columns(list(schema.names), {t: tc.inputs for t, tc in sections.items()},
                               {t: tc.private_inputs for t, tc in sections.items()}, [t.name for t in tasks])
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_balancer(cfg: RunConfig, tasks: list[Task], name: str | None = None) -> Balancer:
    name = name or cfg.balancer.name
    options = cfg.balancer.options if name == cfg.balancer.name else {}
    return BALANCERS[name](tasks, **options)


def trainer_config(cfg: RunConfig) -> TrainerConfig:
    return TrainerConfig(**cfg.trainer.model_dump())


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def write_run_files(out: Path, cfg: RunConfig, bundle: DatasetBundle) -> None:
    """config.yaml, tasks.json and preprocessor.json: what `evaluate` and `predict` need, written atomically
    (by rank 0 alone in a distributed run)."""
    if not is_main():
        return
    write_text_atomic(out / "config.yaml", cfgmod.dump(cfg))
    write_json(out / "tasks.json", [t.to_dict() for t in bundle.tasks])
    write_text_atomic(out / "preprocessor.json", json.dumps(bundle.preprocessor.to_dict()))
    if "codecs" in bundle.info:  # a user's table: labels and target scaling, for predict
        write_json(out / "targets.json", [c.to_dict() for c in bundle.info["codecs"]])


def baseline_config(cfg: RunConfig) -> RunConfig:
    """The config of the single-task baselines (`baselines: auto`), so their directory is a run of its own."""
    raw = cfg.model_dump(mode="json")
    raw["model"] = {"name": "independent", **cfgmod.shared_model_options(cfg, "independent")}
    raw["balancer"] = {"name": "equal"}
    raw["baselines"] = "none"
    raw["distill"] = None  # the teachers themselves learn from their labels alone
    return cfgmod.validate(raw)


def build_distillation(cfg: RunConfig, bundle: DatasetBundle, out: Path) -> Distillation | None:
    """The `distill:` section as a `Distillation`: the previous self, or fixed teachers loaded from a run
    directory (`auto`: this run's `baseline/`); a teacher run with other tasks or inputs is a ConfigError."""
    d = cfg.distill
    if d is None:
        return None
    if d.kind == "previous_self":
        teacher = PreviousSelf(refresh=d.refresh, ema=d.ema, warmup=d.warmup)
    else:
        source = out / "baseline" if d.teachers == "auto" else Path(d.teachers)
        teacher = FixedTeachers(load_teachers(source, bundle))
    return Distillation(teacher, weight=d.weight, temperature=d.temperature)


def load_teachers(run_dir: Path, bundle: DatasetBundle) -> dict[str, torch.nn.Module]:
    """{task: model} from a finished run whose tasks and inputs are this bundle's (its best weights)."""
    cfgmod.teacher_tasks(run_dir, bundle.tasks)
    _, _, pre, trainer, _ = load_run(run_dir)
    mine, theirs = (json.loads(json.dumps(p.to_dict())) for p in (bundle.preprocessor, pre))
    if mine != theirs:
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ConfigError(f"distill.teachers: {run_dir} was trained on other inputs (its preprocessor.json differs "
                          f"in {', '.join(differ) or 'its values'}): a teacher must read the same features")
    return {t.name: trainer.model for t in bundle.tasks}


def train_one(cfg: RunConfig, bundle: DatasetBundle, out: Path, resume: bool, model_name: str | None = None,
              balancer_name: str | None = None, distill: Distillation | None = None) -> dict:
    """Train one model into `out` and write its final.json (no Δm); returns that record."""
    out.mkdir(parents=True, exist_ok=True)
    if model_name is not None and model_name != cfg.model.name:  # the baselines: a run directory of their own
        write_run_files(out, baseline_config(cfg), bundle)
    model = build_model(cfg, bundle.tasks, bundle.preprocessor.schema, model_name)
    balancer = build_balancer(cfg, bundle.tasks, balancer_name)
    trainer = Trainer(model, bundle.tasks, balancer, trainer_config(cfg), run_dir=out, distill=distill)
    resume = resume and (out / "checkpoints" / "last.pt").exists()
    history = trainer.fit(bundle.training_data(), bundle.val, resume=resume,
                          callbacks=diagnostics_callbacks(cfg) if model_name is None else [])
    test = trainer.evaluate(bundle.test)  # regression metrics in original units (Task.target_std)
    val = trainer.evaluate(bundle.val)
    final = {
        "dataset": cfg.data.name,
        "model": model_name or cfg.model.name,
        "balancer": balancer_name or cfg.balancer.name,
        "test": test["metrics"],
        "test_loss": test["loss"],
        "val": val["metrics"],
        "epochs": trainer.epoch,
        "best_epoch": trainer.early.best_epoch,
        "wall_time_s": sum(r["seconds"] for r in read_metrics(out)),  # training epochs, resumed ones included
        "parameters": count_parameters(model),
        "balancer_weights": balancer.weights(),
        "history_epochs": len(history),
        "skipped_steps": trainer.skipped_steps,
        **distributed_fields(trainer),
    }
    if trainer.convergence is not None:  # per task: stop epoch, its metric at the stop (its best) and at the end
        final["per_task_stop"] = trainer.convergence.summary(val["metrics"])
    if distill is not None:
        final["distill"] = {"kind": cfg.distill.kind,
                            "teacher_seconds": sum(r.get("teacher_seconds", 0.0) for r in read_metrics(out))}
    if is_main():
        write_json(out / "final.json", final)
    return final


def distributed_fields(trainer: Trainer) -> dict[str, Any]:
    """How the run was spread: processes, and the rows of each global batch each one trained on (the shards
    of ``trainer.batch_size`` rows differ by at most one row; this is the largest)."""
    world = 1 if trainer.dist is None else trainer.dist.world_size
    return {"world_size": world, "per_rank_batch_size": -(-trainer.config.batch_size // world)}
def diagnostics_callbacks(cfg: RunConfig) -> list:
    """The configured `diagnostics:` callback (none when the section is absent)."""
    if cfg.diagnostics is None:
        return []
    from multitask.diagnostics import DiagnosticsCallback

    return [DiagnosticsCallback(**cfg.diagnostics.model_dump())]


def read_final(path: Path, what: str = "final.json") -> dict:
    """A final.json as a dict (nulls read back as NaN), or a ConfigError saying what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{what}: cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} is not a run record (a JSON object)")
    return data


def read_baseline(source: str) -> dict[str, dict[str, dict[str, float]]]:
    """The baseline's metrics per split ({"test": ..., "val": ...}) from a run directory or its final.json."""
    p = Path(source)
    if p.is_dir():
        p = p / "final.json"
    if not p.exists():
        raise ConfigError(f"baselines: {p} does not exist (expected a run directory or its final.json)")
    data = read_final(p, "baselines")
    if not isinstance(data.get("test"), dict):
        raise ConfigError(f"baselines: {p} has no 'test' metrics")
    return {k: nulls_to_nan(data[k]) for k in ("test", "val") if isinstance(data.get(k), dict)}


def run(cfg: RunConfig, out: str | Path, resume: bool = False) -> dict:
    """The whole run: baselines (if asked), the configured model, test metrics, Δm; returns final.json."""
    out = Path(out)
    prepare_run_dir(out)
    saved = out / "config.yaml"
    if resume:
        if not saved.exists():
            raise ConfigError(f"cannot resume {out}: its config.yaml is missing, so the run cannot be checked "
                              "against this config; start again with --overwrite")
        _check_same_run(cfgmod.validate(cfgmod.read_yaml(saved, "the run's config")), cfg)
    start = time.perf_counter()
    bundle = load_data(cfg)
    if cfgmod.has_task_inputs(cfg):  # column names are known once the data is read: checked before training
        task_visible_columns(cfg, bundle.tasks, bundle.preprocessor.schema)
    if resume:
        _check_same_units(out, bundle.tasks)
    write_run_files(out, cfg, bundle)

    baseline: dict[str, dict[str, dict[str, float]]] | None = None
    baseline_source = None
    if cfg.baselines == "auto" and cfg.model.name != "independent":
        _say(f"[multitask] training single-task baselines (independent) into {out / 'baseline'}")
        b = train_one(cfg, bundle, out / "baseline", resume, model_name="independent", balancer_name="equal")
        baseline, baseline_source = {"test": b["test"], "val": b["val"]}, str(out / "baseline" / "final.json")
    elif cfg.baselines not in ("none", "auto"):
        baseline, baseline_source = read_baseline(cfg.baselines), cfg.baselines

    _say(f"[multitask] training {cfg.model.name} with {cfg.balancer.name} balancing into {out}")
    final = train_one(cfg, bundle, out, resume, distill=build_distillation(cfg, bundle, out))
    if cfg.baselines == "auto" and cfg.model.name == "independent":
        baseline = {"test": final["test"], "val": final["val"]}
        baseline_source = "this run (the model is the baseline)"
    final["baseline"] = None if baseline is None else {**baseline, "source": baseline_source}
    final["delta_m"] = None if baseline is None else delta_m(final["test"], baseline["test"])
    final["delta_m_undefined"] = [] if baseline is None else delta_m_terms(final["test"], baseline["test"])[1]
    final["total_wall_time_s"] = time.perf_counter() - start
    if is_main():
        write_json(out / "final.json", final)
    return final


def _check_same_units(out: Path, tasks: list[Task]) -> None:
    """Refuse to resume a run whose tasks.json predates target scaling in `Task` (its metrics.jsonl and its best
    epoch are in standardised units; continuing would compare them with metrics in the target's units)."""
    path = out / "tasks.json"
    if not path.exists():
        return
    try:
        saved = {t.get("name"): t for t in json.loads(path.read_text())}
    except (OSError, ValueError, AttributeError):
        return  # an unreadable tasks.json is rewritten below, as before
    scaled = [t.name for t in tasks if t.target_std is not None and t.name in saved
              and saved[t.name].get("target_std") is None]
    if scaled:
        raise ConfigError(f"cannot resume {out}: it was written before regression metrics were reported in the "
                          f"target's units, so its recorded metrics and best epoch for {', '.join(scaled)} are in "
                          "standardised units; start again with --overwrite")


def prepare_run_dir(out: Path) -> None:
    """Create the run directory (a clear error when a parent is a file) and drop temp files of killed writes."""
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"run directory {out}: {parent} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"run directory {out} cannot be created: {e.strerror}") from None
    if is_main():  # another rank may already be writing (atomically, through temp files) into `out`
        remove_temporaries(out)


# options that may change between a run and its resumption
_RESUMABLE = {"trainer.epochs", "trainer.patience", "trainer.progress", "trainer.device", "trainer.eval_batch_size",
              "trainer.compile", "trainer.loggers"}  # neither changes what a step computes


def _check_same_run(saved: RunConfig, new: RunConfig) -> None:
    a, b = _flatten(saved.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE)
    if differ:
        raise ConfigError(
            f"cannot resume: the config differs from the run's config.yaml in {', '.join(differ)} "
            f"(only {', '.join(sorted(_RESUMABLE))} may change)"
        )


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------------------ reloading a run
def load_run(run_dir: str | Path, checkpoint: str = "best"
             ) -> tuple[RunConfig, list[Task], TabularPreprocessor | ImagePreprocessor, Trainer, Path]:
    """Config, tasks, preprocessing and a Trainer holding the saved weights of a finished (or stopped) run,
    and the checkpoint file the weights came from (last.pt when the run has no best weights)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run directory" + ("" if run_dir.exists() else " (it does not exist)"))
    if not (run_dir / "config.yaml").exists() and (run_dir / "trainer.json").exists():
        raise ConfigError(
            f"{run_dir} was written by the Python API (Trainer(run_dir=...)): it records the model's weights but "
            "not the data or the architecture's options. Rebuild the model as it was and call "
            f"trainer.restore({str(run_dir)!r}) then trainer.evaluate(data)")
    for f in ("config.yaml", "tasks.json", "preprocessor.json"):
        if not (run_dir / f).exists():
            raise ConfigError(f"{run_dir} is not a run directory: {f} is missing")
    cfg = cfgmod.validate(cfgmod.read_yaml(run_dir / "config.yaml", "the run's config"), deep=False)
    try:
        tasks = [Task(**t) for t in json.loads((run_dir / "tasks.json").read_text())]
        if (run_dir / "targets.json").exists():  # a table run from before tasks.json kept the target scaling
            from multitask.data.targets import TargetCodec, with_target_scaling

            codecs = [TargetCodec.from_dict(c) for c in json.loads((run_dir / "targets.json").read_text())]
            tasks = with_target_scaling(tasks, codecs)
        pre = load_preprocessor(run_dir / "preprocessor.json")  # kind: image, or a table's
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"{run_dir}: tasks.json or preprocessor.json cannot be read ({_one_line(e)})") from None
    model = build_model(cfg, tasks, pre.schema)
    # evaluate/predict run a few forward passes: compiling them would cost more than it saves
    trainer = Trainer(model, tasks, build_balancer(cfg, tasks), trainer_config(cfg), progress=False, compile=False)
    folder = run_dir / "checkpoints"
    if not (folder / "last.pt").exists():
        raise ConfigError(f"{run_dir} has no checkpoints/last.pt: no epoch of this run finished")
    try:
        trainer.restore(run_dir, checkpoint)
        used = folder / f"{checkpoint}.pt"
    except FileNotFoundError:
        trainer.restore(run_dir, "last")
        used = folder / "last.pt"
    return cfg, tasks, pre, trainer, used


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
