"""One validated schema for YAML run configs. Every error names the field at fault and what is allowed.

Model and balancer options are validated against the constructor of the class the `name` picks, so a new
architecture or method needs no change here: its keyword arguments are its options.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from multitask.balancing import BALANCERS
from multitask.data import DATASET_TASKS
from multitask.models import MODELS


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    name: Literal["census-income", "yeast"]
    path: Optional[str] = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    limit: Optional[int] = Field(None, ge=20, description="read only the first rows (quick runs, tests)")
    seed: int = 0


class TaskConfig(_Strict):
    importance: float = Field(1.0, ge=0)
    metrics: Optional[list[str]] = None


class NamedConfig(BaseModel):
    """`name` plus the options of the class it names (checked in `_check_options`)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainerSection(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    eval_batch_size: int = Field(8192, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)
    scheduler: Literal["none", "step", "cosine"] = "none"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0)
    grad_clip: Optional[float] = Field(None, gt=0)
    patience: Optional[int] = Field(None, ge=1)
    monitor: str = "loss"
    restore_best: bool = True
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


class RunConfig(_Strict):
    data: DataConfig
    tasks: Optional[dict[str, TaskConfig]] = Field(None, description="which tasks to train (default: all)")
    model: NamedConfig = NamedConfig(name="hard_sharing")
    balancer: NamedConfig = NamedConfig(name="equal")
    trainer: TrainerSection = TrainerSection()
    baselines: str = Field("none", description="'none', 'auto' (train Independent first) or a run dir / final.json")

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: str) -> str:
        if v not in ("none", "auto") and not Path(v).exists():
            raise ValueError(f"must be 'none', 'auto' or an existing run directory / final.json; {v!r} does not exist")
        return v


def _options_model(fn: Callable[..., Any], skip: tuple[str, ...], title: str) -> type[BaseModel]:
    sig = inspect.signature(fn)
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if pname in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[pname] = (hints.get(pname, Any), default)
    return create_model(title, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields)


def model_options_model(name: str) -> type[BaseModel]:
    return _options_model(MODELS[name].tabular, ("tasks", "schema"), f"model {name}")


def balancer_options_model(name: str) -> type[BaseModel]:
    return _options_model(BALANCERS[name].__init__, ("self", "tasks"), f"balancer {name}")


def _check_named(section: str, spec: NamedConfig, registry: Mapping[str, Any],
                 options_model: Callable[[str], type[BaseModel]]) -> None:
    if spec.name not in registry:
        raise ConfigError(f"{section}.name: unknown {section} {spec.name!r}; choose one of: {', '.join(registry)}")
    om = options_model(spec.name)
    try:
        om(**spec.options)
    except ValidationError as e:
        allowed = ", ".join(f"{k} (default {f.default!r})" if not f.is_required() else k
                            for k, f in om.model_fields.items()) or "none"
        raise ConfigError(_format(e, prefix=section, allowed=f"{section} {spec.name!r} takes: {allowed}")) from None


def _format(e: ValidationError, prefix: str = "", allowed: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            msg = "unknown field" + (f"; {allowed}" if allowed else "")
        elif err["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = err["msg"]
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def validate(raw: Mapping[str, Any]) -> RunConfig:
    """A `RunConfig` from plain data, or a `ConfigError` naming every field at fault."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    try:
        cfg = RunConfig(**raw)
    except ValidationError as e:
        allowed = ""
        if any(err["type"] == "extra_forbidden" and len(err["loc"]) == 1 for err in e.errors()):
            allowed = "sections are: " + ", ".join(RunConfig.model_fields)
        raise ConfigError(_format(e, allowed=allowed)) from None
    _check_named("model", cfg.model, MODELS, model_options_model)
    _check_named("balancer", cfg.balancer, BALANCERS, balancer_options_model)
    known = DATASET_TASKS[cfg.data.name]
    for t in cfg.tasks or {}:
        if t not in known:
            raise ConfigError(f"tasks.{t}: unknown task for dataset {cfg.data.name!r}; it has: {', '.join(known)}")
    if cfg.tasks is not None and not cfg.tasks:
        raise ConfigError("tasks: name at least one task (or leave the section out to train all)")
    monitor = cfg.trainer.monitor
    if monitor != "loss":
        task, _, metric = monitor.partition(".")
        names = list(cfg.tasks) if cfg.tasks else known
        if task not in names or not metric:
            raise ConfigError(f"trainer.monitor: {monitor!r} must be 'loss' or '<task>.<metric>' with a task of {names}")
    return cfg


def set_dotted(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set a.b.c=value`` (value parsed as YAML) to a nested dict."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. trainer.epochs=5")
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {value!r}: {e}") from None


def load(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML file, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (data, model, balancer, trainer, ...)")
    for a in overrides:
        set_dotted(raw, a)
    return validate(raw)


def dump(cfg: RunConfig) -> str:
    """The resolved config as YAML (every default written out)."""
    data = cfg.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)
