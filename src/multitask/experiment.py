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
import yaml

from multitask import config as cfgmod
from multitask.balancing import BALANCERS, Balancer
from multitask.config import ConfigError, RunConfig
from multitask.data import DATASETS, DatasetBundle
from multitask.data.preprocessing import TabularPreprocessor
from multitask.metrics import delta_m, delta_m_terms
from multitask.models import MODELS, InputSchema, MultiTaskModel
from multitask.tasks import Task
from multitask.training import Trainer, TrainerConfig, read_metrics
from multitask.training.checkpoint import load_checkpoint


def load_data(cfg: RunConfig) -> DatasetBundle:
    d = cfg.data
    bundle = DATASETS[d.name](path=d.path, val_fraction=d.val_fraction, seed=d.seed, limit=d.limit)
    if cfg.tasks is None:
        return bundle
    bundle = bundle.select_tasks(list(cfg.tasks))
    bundle.tasks = configure_tasks(bundle.tasks, cfg)
    return bundle


def configure_tasks(tasks: list[Task], cfg: RunConfig) -> list[Task]:
    out = []
    for t in tasks:
        tc = (cfg.tasks or {}).get(t.name)
        if tc is None:
            out.append(t)
            continue
        try:
            out.append(Task(t.name, t.kind, t.n_outputs, tc.importance, tc.metrics or t.metrics))
        except ValueError as e:
            raise ConfigError(f"tasks.{t.name}: {e}") from None
    return out


def build_model(cfg: RunConfig, tasks: list[Task], schema: InputSchema, name: str | None = None) -> MultiTaskModel:
    """The configured architecture (or `name`, e.g. 'independent' for baselines), seeded by trainer.seed."""
    torch.manual_seed(cfg.trainer.seed)
    name = name or cfg.model.name
    options = cfg.model.options if name == cfg.model.name else _shared_options(cfg, name)
    return MODELS[name].tabular(tasks, schema, **options)


def _shared_options(cfg: RunConfig, name: str) -> dict[str, Any]:
    """Options of the configured model that the other architecture also takes (e.g. embedding_dim)."""
    accepted = cfgmod.model_options_model(name).model_fields
    return {k: v for k, v in cfg.model.options.items() if k in accepted}


def build_balancer(cfg: RunConfig, tasks: list[Task], name: str | None = None) -> Balancer:
    name = name or cfg.balancer.name
    options = cfg.balancer.options if name == cfg.balancer.name else {}
    return BALANCERS[name](tasks, **options)


def trainer_config(cfg: RunConfig) -> TrainerConfig:
    return TrainerConfig(**cfg.trainer.model_dump())


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def train_one(cfg: RunConfig, bundle: DatasetBundle, out: Path, resume: bool, model_name: str | None = None,
              balancer_name: str | None = None) -> dict:
    """Train one model into `out` and write its final.json (no Δm); returns that record."""
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, bundle.tasks, bundle.preprocessor.schema, model_name)
    balancer = build_balancer(cfg, bundle.tasks, balancer_name)
    trainer = Trainer(model, bundle.tasks, balancer, trainer_config(cfg), run_dir=out)
    resume = resume and (out / "checkpoints" / "last.pt").exists()
    history = trainer.fit(bundle.train, bundle.val, resume=resume)
    test = trainer.evaluate(bundle.test)
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
    }
    _write_json(out / "final.json", final)
    return final


def read_baseline(source: str) -> dict[str, dict[str, float]]:
    p = Path(source)
    if p.is_dir():
        p = p / "final.json"
    if not p.exists():
        raise ConfigError(f"baselines: {p} does not exist (expected a run directory or its final.json)")
    data = json.loads(p.read_text())
    if "test" not in data:
        raise ConfigError(f"baselines: {p} has no 'test' metrics")
    return data["test"]


def run(cfg: RunConfig, out: str | Path, resume: bool = False) -> dict:
    """The whole run: baselines (if asked), the configured model, test metrics, Δm; returns final.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    if resume and saved.exists():
        _check_same_run(cfgmod.validate(yaml.safe_load(saved.read_text())), cfg)
    start = time.perf_counter()
    bundle = load_data(cfg)
    saved.write_text(cfgmod.dump(cfg))
    _write_json(out / "tasks.json", [t.to_dict() for t in bundle.tasks])
    bundle.preprocessor.save(out / "preprocessor.json")

    baseline: dict[str, dict[str, float]] | None = None
    baseline_source = None
    if cfg.baselines == "auto" and cfg.model.name != "independent":
        print(f"[multitask] training single-task baselines (independent) into {out / 'baseline'}")
        baseline = train_one(cfg, bundle, out / "baseline", resume, model_name="independent",
                             balancer_name="equal")["test"]
        baseline_source = str(out / "baseline" / "final.json")
    elif cfg.baselines not in ("none", "auto"):
        baseline, baseline_source = read_baseline(cfg.baselines), cfg.baselines

    print(f"[multitask] training {cfg.model.name} with {cfg.balancer.name} balancing into {out}")
    final = train_one(cfg, bundle, out, resume)
    if cfg.baselines == "auto" and cfg.model.name == "independent":
        baseline, baseline_source = final["test"], "this run (the model is the baseline)"
    final["baseline"] = None if baseline is None else {"test": baseline, "source": baseline_source}
    final["delta_m"] = None if baseline is None else delta_m(final["test"], baseline)
    final["delta_m_undefined"] = [] if baseline is None else delta_m_terms(final["test"], baseline)[1]
    final["total_wall_time_s"] = time.perf_counter() - start
    _write_json(out / "final.json", final)
    return final


# options that may change between a run and its resumption
_RESUMABLE = {"trainer.epochs", "trainer.patience", "trainer.progress", "trainer.device", "trainer.eval_batch_size"}


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
def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[RunConfig, list[Task], TabularPreprocessor, Trainer]:
    """Config, tasks, preprocessing and a Trainer holding the saved weights of a finished (or stopped) run."""
    run_dir = Path(run_dir)
    for f in ("config.yaml", "tasks.json", "preprocessor.json"):
        if not (run_dir / f).exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory: {f} is missing")
    cfg = cfgmod.validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    tasks = [Task(**t) for t in json.loads((run_dir / "tasks.json").read_text())]
    pre = TabularPreprocessor.load(run_dir / "preprocessor.json")
    model = build_model(cfg, tasks, pre.schema)
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not ckpt.exists():
        ckpt = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    model.load_state_dict(state["model"])
    trainer = Trainer(model, tasks, build_balancer(cfg, tasks), trainer_config(cfg), progress=False)
    return cfg, tasks, pre, trainer
