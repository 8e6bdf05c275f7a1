"""One validated schema for YAML run configs. Every error names the field at fault and what is allowed.

Model and balancer options are validated against the constructor of the class the `name` picks, so a new
architecture or method needs no change here: its keyword arguments are its options.
"""
from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, field_validator

from multitask.balancing import BALANCERS
from multitask.data import DATASET_ROWS, DATASET_TASKS, dataset_tasks
from multitask.errors import message
from multitask.tasks import dependency_error
from multitask.models import MODELS, builder


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and what is allowed."""


def _not_bool(v: Any) -> Any:
    """YAML reads `true`/`yes` as booleans, which pydantic would take as the numbers 1 and 0."""
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got the boolean {v!r}")
    return v


Int = Annotated[int, BeforeValidator(_not_bool)]
Num = Annotated[float, BeforeValidator(_not_bool)]
# numbers in every section are finite: `lr: .inf` or `1e400` (which YAML reads as inf) is an error
_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Strict(BaseModel):
    model_config = _CONFIG


class SplitConfig(_Strict):
    """How a user's table is split: random fractions, or a column whose values are train/val/test."""

    val_fraction: Num = Field(0.1, gt=0, lt=1)
    test_fraction: Num = Field(0.2, gt=0, lt=1)
    seed: Int = 0
    column: Optional[str] = None


class SourceConfig(_Strict):
    """One source of `data.name: sources`: a table (see multitask.data.sources)."""

    name: str = "table"
    path: str
    targets: dict[str, Any]
    features: Union[Literal["auto"], list[str]] = "auto"
    categorical: Optional[list[str]] = None
    split: Optional[SplitConfig] = None
    limit: Optional[Int] = Field(None, ge=20)

    @field_validator("name")
    @classmethod
    def _a_table(cls, v: str) -> str:
        if v != "table":
            raise ValueError(f"a source must be a table (name: table), got {v!r}")
        return v


class DataConfig(_Strict):
    name: Literal["census-income", "yeast", "table", "sources", "multi-fashion", "census-funnel"]
    path: Optional[str] = None
    val_fraction: Num = Field(0.1, gt=0, lt=1)
    limit: Optional[Int] = Field(None, ge=20, description="read only the first rows (quick runs, tests)")
    seed: Int = 0
    # name: table only (see multitask.data.table)
    targets: Optional[dict[str, Any]] = None
    features: Union[Literal["auto"], list[str]] = "auto"
    categorical: Optional[list[str]] = None
    split: Optional[SplitConfig] = None
    # name: sources only (see multitask.data.sources and multitask.data.sampling)
    sources: Optional[dict[str, SourceConfig]] = None
    sampling: Optional[Literal["uniform", "proportional", "temperature", "round_robin", "mixed"]] = None
    temperature: Optional[Num] = Field(None, gt=0, description="sampling: temperature: p ∝ n^(1/temperature)")
    # name: table with image files (see multitask.data.images)
    image_column: Optional[str] = None
    image_size: Optional[tuple[Int, Int]] = Field(None, description="[height, width]; default: the first image's")
    channels: Optional[Literal[1, 3]] = None
    missing_indicator: bool = Field(False, description="table: a 0/1 column per numeric feature with missing values")


class TaskConfig(_Strict):
    importance: Num = Field(1.0, ge=0)
    metrics: Optional[list[str]] = None
    inputs: Optional[list[str]] = Field(None, min_length=1, description="table: the only input columns this task reads")
    private_inputs: Optional[list[str]] = Field(None, min_length=1, description="table: input columns no other task reads")
    after: Optional[str] = Field(None, description="the task this one follows in a funnel (ESMM, AITM)")


class NamedConfig(BaseModel):
    """`name` plus the options of the class it names (checked in `_check_options`)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainerSection(_Strict):
    epochs: Int = Field(10, ge=1)
    batch_size: Int = Field(256, ge=1)
    eval_batch_size: Int = Field(8192, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Num = Field(1e-3, gt=0)
    weight_decay: Num = Field(0.0, ge=0)
    momentum: Num = Field(0.9, ge=0)
    scheduler: Literal["none", "step", "cosine"] = "none"
    step_size: Int = Field(10, ge=1)
    gamma: Num = Field(0.1, gt=0)
    grad_clip: Optional[Num] = Field(None, gt=0)
    patience: Optional[Int] = Field(None, ge=1)
    monitor: str = "loss"
    restore_best: bool = True
    seed: Int = 0
    device: str = "cpu"
    progress: bool = True
    nonfinite: Literal["raise", "skip"] = "raise"
    max_skips: Int = Field(10, ge=1, description="with nonfinite: skip, stop after this many skipped steps in a row")
    accumulate_shared: Optional[Int] = Field(None, ge=1, description="UberNet accumulation: rows per shared step")
    accumulate_task: Optional[Int] = Field(None, ge=1, description="UberNet accumulation: labelled rows per task step")
    precision: Union[Literal[32], Literal["32", "bf16", "fp16"]] = Field(
        "32", description="autocast dtype of the forward pass (multitask.training.precision)")
    compile: Union[bool, str] = Field(False, description="torch.compile: true (inductor), false, or a backend name")
    loggers: list[Literal["jsonl", "tensorboard", "mlflow"]] = Field(
        ["jsonl"], description="where metrics go besides metrics.jsonl (always written)")

    per_task_patience: Optional[Int] = Field(None, ge=1, description="stop (freeze) each task on its own metric")
    protect: Literal["none", "distill"] = Field("none", description="a stopped task's loss: none, or distillation "
                                                "from the model at its best epoch")

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: Any) -> str:
        return str(v)


class DistillConfig(_Strict):
    """Distillation for tasks without labels (multitask.training.distillation)."""

    kind: Literal["previous_self", "teachers"]
    teachers: Optional[str] = Field(None, description="kind teachers: 'auto' (the baselines: auto run) or a run dir")
    refresh: Union[Literal["epoch"], Int] = Field("epoch", description="previous_self: 'epoch' or every N steps")
    ema: Optional[Num] = Field(None, gt=0, lt=1, description="previous_self: an EMA teacher instead of snapshots")
    warmup: Int = Field(0, ge=0, description="steps before distillation starts")
    weight: Union[Num, dict[str, Num]] = Field(1.0, description="lambda: one number, or per task (others: 0)")
    temperature: Num = Field(1.0, gt=0, description="T of the softened cross-entropy (multiclass tasks)")


class DiagnosticsSection(_Strict):
    """`diagnostics:` (multitask.diagnostics): gradient conflict every `every` steps, TAG affinity every
    `affinity_every` steps (null: off), lookahead step `lr` (null: the optimiser's)."""

    every: Optional[Int] = Field(10, ge=1, description="steps between gradient-cosine records (null: off)")
    affinity_every: Optional[Int] = Field(50, ge=1, description="steps between TAG affinity records (null: off)")
    lr: Optional[Num] = Field(None, gt=0, description="lookahead step size (null: the optimiser's lr)")
    mode: Literal["auto", "parameters", "features"] = "auto"


class RunConfig(_Strict):
    data: DataConfig
    tasks: Optional[dict[str, TaskConfig]] = Field(None, description="which tasks to train (default: all)")
    model: NamedConfig = NamedConfig(name="hard_sharing")
    balancer: NamedConfig = NamedConfig(name="equal")
    trainer: TrainerSection = TrainerSection()
    baselines: str = Field("none", description="'none', 'auto' (train Independent first) or a run dir / final.json")
    distill: Optional[DistillConfig] = Field(None, description="distillation on rows without a task's label")
    diagnostics: Optional[DiagnosticsSection] = Field(None, description="gradient conflict and task affinity "
                                                      "records (multitask.diagnostics); off when absent")

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: str) -> str:
        if v not in ("none", "auto") and not Path(v).exists():
            raise ValueError(f"must be 'none', 'auto' or an existing run directory / final.json; {v!r} does not exist")
        return v


def _no_bools(hint: Any) -> Any:
    """`hint` with every int and float (also inside Optional[...], Sequence[...]) refusing booleans."""
    if hint is int:
        return Int
    if hint is float:
        return Num
    origin, args = get_origin(hint), get_args(hint)
    if not args or origin is Literal or origin is Annotated:
        return hint
    mapped = tuple(_no_bools(a) for a in args)
    if origin in (Union, types.UnionType):
        return Union[mapped]
    try:
        return origin[mapped if len(mapped) > 1 else mapped[0]]
    except TypeError:
        return hint


def _options_model(fn: Callable[..., Any], skip: tuple[str, ...], title: str) -> type[BaseModel]:
    sig = inspect.signature(fn)
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if pname in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[pname] = (_no_bools(hints.get(pname, Any)), default)
    return create_model(title, __config__=ConfigDict(**_CONFIG, arbitrary_types_allowed=True), **fields)


def model_options_model(name: str, kind: str = "table") -> type[BaseModel]:
    """The options model `name` takes for inputs of `kind` ('table' or 'image'): its builder's arguments."""
    return _options_model(builder(name, kind), ("tasks", "schema", "spec"), f"model {name}")


def input_kind(cfg: RunConfig) -> str:
    """'image' for Multi-Fashion and image tables, else 'table': which builder the model options must fit."""
    return "image" if cfg.data.name == "multi-fashion" or cfg.data.image_column is not None else "table"


def _check_model(cfg: RunConfig) -> None:
    """The model's name and options, for the input kind of the data; an option only the other kind takes
    (embedding_dim on images, conv_channels on a table) is named as such."""
    kind = input_kind(cfg)
    if cfg.model.name in MODELS:
        other = "table" if kind == "image" else "image"
        try:
            mine = model_options_model(cfg.model.name, kind)
        except ValueError as e:  # a registered model without a builder for this kind of input
            raise ConfigError(f"model: {e}") from None
        try:
            theirs = model_options_model(cfg.model.name, other).model_fields
        except ValueError:
            theirs = {}
        for option in cfg.model.options:
            if option not in mine.model_fields and option in theirs:
                raise ConfigError(f"model.{option}: applies to {other} inputs only; {cfg.model.name} on {kind} "
                                  f"inputs takes: {', '.join(mine.model_fields)}")
    _check_named("model", cfg.model, MODELS, lambda name: model_options_model(name, kind))


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
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def validate(raw: Mapping[str, Any], deep: bool = True) -> RunConfig:
    """A `RunConfig` from plain data, or a `ConfigError` naming the field at fault.

    Everything that can be checked without reading the data is checked here, before any work starts: the
    schema, then the tasks, the model and the balancer are built (the model on the meta device, so no memory
    is allocated) with the very constructors the run will use, and the trainer's options, device and monitor.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    try:
        cfg = RunConfig(**raw)
    except ValidationError as e:
        allowed = ""
        if any(err["type"] == "extra_forbidden" and len(err["loc"]) == 1 for err in e.errors()):
            allowed = "sections are: " + ", ".join(RunConfig.model_fields)
        raise ConfigError(_format(e, allowed=allowed)) from None
    _check_model(cfg)
    _check_named("balancer", cfg.balancer, BALANCERS, balancer_options_model)
    known = (list(cfg.data.targets or {}) if cfg.data.name == "table"
             else [t for s in (cfg.data.sources or {}).values() for t in s.targets] if cfg.data.name == "sources"
             else DATASET_TASKS[cfg.data.name])
    for t in cfg.tasks or {}:
        if t not in known:
            raise ConfigError(f"tasks.{t}: unknown task for dataset {cfg.data.name!r}; it has: {', '.join(known)}")
    if cfg.tasks is not None and not cfg.tasks:
        raise ConfigError("tasks: name at least one task (or leave the section out to train all)")
    if not deep:  # a saved run's config: its tasks are in tasks.json, its data need not be there any more
        return cfg
    _check_data(cfg)
    tasks = planned_tasks(cfg)
    _check_monitor(cfg, tasks)
    _check_distill(cfg, tasks)
    check_device(cfg.trainer.device)
    _try_build(cfg, tasks)
    return cfg


def planned_tasks(cfg: RunConfig) -> list:
    """The tasks this config trains (the dataset's, narrowed and configured by `tasks:`), without reading data."""
    if cfg.data.name == "sources":
        from multitask.data.sources import planned_source_codecs

        try:
            codecs = planned_source_codecs({n: s.model_dump() for n, s in cfg.data.sources.items()})
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"data.sources: {_reason(e)}") from None
        return configure_tasks([c.task() for c in codecs], cfg)
    if cfg.data.name == "table":
        from multitask.data.table import planned_codecs

        try:
            tasks = [c.task() for c in planned_codecs(cfg.data.path, cfg.data.targets)]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"data.targets: {_reason(e)}") from None
        return configure_tasks(tasks, cfg)
    return configure_tasks(dataset_tasks(cfg.data.name, None if cfg.tasks is None else list(cfg.tasks)), cfg)


def configure_tasks(tasks: list, cfg: RunConfig) -> list:
    """`tasks` narrowed to those the `tasks:` section names (all when it is absent), with their options."""
    import dataclasses

    if cfg.tasks is None:
        return list(tasks)
    out = []
    for t in tasks:
        tc = cfg.tasks.get(t.name)
        if tc is None:
            continue
        try:
            out.append(dataclasses.replace(t, importance=tc.importance, metrics=tc.metrics or t.metrics,
                                           after=tc.after))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"tasks.{t.name}: {e}") from None
    problem = dependency_error(out)
    if problem is not None:
        raise ConfigError(f"tasks.{problem[0]}.after: {problem[1]}")
    return out


def _check_table(d: DataConfig) -> None:
    if not d.path:
        raise ConfigError("data.path: a table needs the path of its CSV, TSV or Parquet file")
    if not d.targets:
        raise ConfigError("data.targets: name the target columns, e.g. {species: multiclass, body_mass_g: regression}")
    _check_table_file("data", d.path, d.split or SplitConfig())


def _check_table_file(where: str, path: str, split: SplitConfig) -> None:
    """`where`.path is a file and `where`.split leaves training rows (a table, or one source of several)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{where}.path: {path} {'is a directory' if p.is_dir() else 'does not exist'}")
    if split.column is None and split.val_fraction + split.test_fraction >= 1:
        raise ConfigError(f"{where}.split: val_fraction {split.val_fraction:g} + test_fraction "
                          f"{split.test_fraction:g} leave no training rows (they must add up to less than 1)")


def _check_sources(d: DataConfig) -> None:
    """Every source a readable table with targets and a workable split; the same feature columns everywhere;
    task names unique across sources; the sampling options consistent. Reads only the files' headers."""
    from multitask.data.sources import check_sources

    if not d.sources:
        raise ConfigError("data.sources: name at least one source, e.g. {action: {name: table, path: action.csv, "
                          "targets: {action: multiclass}}}")
    for option in ("path", "targets", "categorical"):
        if getattr(d, option) is not None:
            raise ConfigError(f"data.{option}: with data.name: sources each source sets its own "
                              f"(data.sources.<name>.{option})")
    if d.features != "auto":
        raise ConfigError("data.features: with data.name: sources each source sets its own "
                          "(data.sources.<name>.features)")
    if d.temperature is not None and d.sampling != "temperature":
        raise ConfigError(f"data.temperature: only sampling: temperature uses it (sampling is "
                          f"{d.sampling or 'proportional'!r})")
    for name, s in d.sources.items():
        where = f"data.sources.{name}"
        if not s.targets:
            raise ConfigError(f"{where}.targets: name the source's target columns, e.g. {{topic: multiclass}}")
        _check_table_file(where, s.path, s.split or d.split or SplitConfig())
    try:
        check_sources({n: s.model_dump() for n, s in d.sources.items()}, d.split.model_dump() if d.split else None)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"data.sources: {_reason(e)}") from None


def planned_input_spec(cfg: RunConfig) -> Any:
    """The input spec the model will be built from, as far as it is known before the data is loaded (shapes,
    not statistics): a stand-in table schema, Multi-Fashion's 1x36x36, or an image table's size."""
    from multitask.models import ImageSpec, InputSchema

    d = cfg.data
    if d.name == "multi-fashion":
        return ImageSpec(1, 36, 36)
    if d.image_column is not None:
        from multitask.data.images import planned_spec

        try:
            return planned_spec(d.path, d.image_column, d.image_size, d.channels)
        except ValueError as e:
            raise ConfigError(f"data: {_reason(e)}") from None
    return InputSchema(num_features=3, cat_cardinalities=(5,))


def _check_images(d: DataConfig) -> None:
    """Options of image data: image_size positive; the image options only on tables with an image column."""
    if d.image_size is not None and min(d.image_size) < 1:
        raise ConfigError(f"data.image_size: height and width must be >= 1, got {list(d.image_size)}")
    if d.image_column is None:
        for option in ("image_size", "channels"):
            if getattr(d, option) is not None:
                raise ConfigError(f"data.{option}: only an image table (data.name: table with image_column) "
                                  "takes it")
    elif d.features != "auto" or d.categorical is not None:
        option = "features" if d.features != "auto" else "categorical"
        raise ConfigError(f"data.{option}: an image table's only input is its image column "
                          f"({d.image_column!r}); leave {option} out (other columns are ignored)")


def _check_data(cfg: RunConfig) -> None:
    d = cfg.data
    if d.name in ("table", "sources"):  # these are split by data.split (or each source's own split)
        for option in ("val_fraction", "seed"):
            if getattr(d, option) != DataConfig.model_fields[option].default:
                raise ConfigError(f"data.{option}: a {'table' if d.name == 'table' else 'source'} is split by "
                                  f"data.split: {{val_fraction, test_fraction, seed}}; data.{option} does not apply")
    if d.name != "sources":
        for option in ("sources", "sampling", "temperature"):
            if getattr(d, option) is not None:
                raise ConfigError(f"data.{option}: only tasks from several sources (data.name: sources) take it")
    _check_images(d)
    if d.missing_indicator and (d.name != "table" or d.image_column is not None):
        raise ConfigError("data.missing_indicator: only a table of features (data.name: table without "
                          "image_column) takes it")
    if d.name == "sources":
        if d.image_column is not None:
            raise ConfigError("data.image_column: sources are tables of features; image sources are not supported")
        return _check_sources(d)
    if d.name == "table":
        return _check_table(d)
    for option in ("targets", "categorical", "split", "image_column"):
        if getattr(d, option) is not None:
            raise ConfigError(f"data.{option}: only a table (data.name: table) takes it")
    if d.features != "auto":
        raise ConfigError("data.features: only a table (data.name: table) takes it")
    if d.path is not None:
        if not Path(d.path).expanduser().exists():
            raise ConfigError(f"data.path: {d.path} does not exist")
        if cfg.data.name in ("census-income", "census-funnel") and not Path(d.path).expanduser().is_dir():
            raise ConfigError(f"data.path: {d.path} is a file; {cfg.data.name} reads a folder holding census-income's "
                              "two CSVs")
        if cfg.data.name == "multi-fashion" and not Path(d.path).expanduser().is_dir():
            raise ConfigError(f"data.path: {d.path} is a file; multi-fashion reads a folder holding the four "
                              "Fashion-MNIST .gz files")
        if cfg.data.name == "yeast" and not Path(d.path).expanduser().is_file():
            raise ConfigError(f"data.path: {d.path} is a directory; yeast reads one CSV file")
    rows, test_fraction = DATASET_ROWS[d.name]
    n = min(rows, d.limit) if d.limit is not None else rows
    val = int(round(d.val_fraction * n))
    test = int(round(test_fraction * n))
    train = n - val - test
    if test_fraction and d.val_fraction + test_fraction >= 1:
        raise ConfigError(f"data.val_fraction: {d.val_fraction:g} overlaps the {test_fraction:g} of {d.name} held out "
                          f"for test (together they must be < 1 to leave training rows)")
    if val < 1 or train < 1:
        held = f" and {test_fraction:g} for test" if test_fraction else ""
        raise ConfigError(
            f"data.val_fraction: {d.val_fraction:g} of {n} rows{held} leaves {max(train, 0)} training and {val} "
            f"validation rows; both need at least one")


def _check_monitor(cfg: RunConfig, tasks: list) -> None:
    monitor = cfg.trainer.monitor
    if monitor == "loss":
        return
    options = {f"{t.name}.{m}" for t in tasks for m in t.metrics}
    if monitor not in options:
        groups: dict[tuple, list[str]] = {}
        for t in tasks:
            groups.setdefault(tuple(t.metrics), []).append(t.name)
        allowed = "; ".join(f"{'/'.join(names)} with {', '.join(ms)}" for ms, names in groups.items())
        raise ConfigError(f"trainer.monitor: {monitor!r} is not available; use 'loss' or '<task>.<metric>': {allowed}")


def _check_distill(cfg: RunConfig, tasks: list) -> None:
    """The `distill:` section fits its kind, names known tasks, and a teacher run has this config's tasks."""
    d = cfg.distill
    if d is None:
        return
    names = [t.name for t in tasks]
    if isinstance(d.refresh, int) and d.refresh < 1:
        raise ConfigError(f"distill.refresh: 'epoch' or a number of steps >= 1, got {d.refresh}")
    if isinstance(d.weight, dict):
        for t, w in d.weight.items():
            if t not in names:
                raise ConfigError(f"distill.weight.{t}: unknown task; the tasks are {', '.join(names)}")
            if w < 0:
                raise ConfigError(f"distill.weight.{t}: must be >= 0, got {w:g}")
    elif d.weight < 0:
        raise ConfigError(f"distill.weight: must be >= 0, got {d.weight:g}")
    if d.kind == "previous_self":
        if d.teachers is not None:
            raise ConfigError("distill.teachers: only kind: teachers takes it (previous_self is its own teacher)")
        if d.ema is not None and "refresh" in d.model_fields_set:
            raise ConfigError("distill.refresh: an EMA teacher (distill.ema) is updated every step; set refresh "
                              "or ema, not both")
        return
    for option in ("ema", "refresh", "warmup"):
        if option in d.model_fields_set:
            raise ConfigError(f"distill.{option}: only kind: previous_self takes it")
    if d.teachers is None:
        raise ConfigError("distill.teachers: kind: teachers needs 'auto' (the single-task run of baselines: auto) "
                          "or the run directory of the teachers")
    if d.teachers == "auto":
        if cfg.model.name == "independent":
            raise ConfigError("distill.teachers: 'auto' is the single-task run of baselines: auto, and this model "
                              "is that run (model: independent); name a run directory instead")
        if cfg.baselines != "auto":
            raise ConfigError("distill.teachers: 'auto' reuses the single-task run of baselines: auto; set "
                              "baselines: auto (or name a run directory)")
        return
    teacher_tasks(Path(d.teachers), tasks)


def teacher_tasks(run_dir: Path, tasks: list) -> dict:
    """The tasks of a teacher run directory, checked against `tasks` (each must be there with the same kind and
    outputs); a ConfigError naming the field and what differs."""
    import json

    where = f"distill.teachers: {run_dir}"
    if not run_dir.is_dir() or not (run_dir / "tasks.json").exists():
        raise ConfigError(f"{where} is not a run directory (no tasks.json)")
    try:
        theirs = {t["name"]: t for t in json.loads((run_dir / "tasks.json").read_text())}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{where}: tasks.json cannot be read ({_reason(e)})") from None
    missing = [t.name for t in tasks if t.name not in theirs]
    if missing:
        raise ConfigError(f"{where} has different tasks: it has {', '.join(theirs)}, not {', '.join(missing)}")
    for t in tasks:
        o = theirs[t.name]
        if (o.get("kind"), o.get("n_outputs")) != (t.kind, t.n_outputs):
            raise ConfigError(f"{where}: task {t.name!r} is {o.get('kind')} with {o.get('n_outputs')} output(s) "
                              f"there, {t.kind} with {t.n_outputs} here")
    return theirs


def check_device(device: str) -> None:
    """`device` names a device PyTorch knows and this machine has; else a ConfigError saying what there is."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"trainer.device: {device!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device: {device!r} but CUDA is not available here (this torch is "
                              f"{torch.__version__}); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device: {device!r} but this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s)")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"trainer.device: {device!r} but MPS is not available here; use cpu")
        return
    raise ConfigError(f"trainer.device: {device!r} is not supported; use cpu, cuda, cuda:N or mps")


def _try_build(cfg: RunConfig, tasks: list) -> None:
    """Build the model (on the meta device: shapes only) and the balancer the run will build, so that a value
    only a constructor rejects (a negative layer width, n_experts: 0, c: -5) fails now, not after loading data
    or training a baseline."""
    import torch

    from multitask.models import build_model
    from multitask.training.trainer import TrainerConfig

    schema = planned_input_spec(cfg)
    names = [cfg.model.name] + (["independent"] if cfg.baselines == "auto" else [])
    for name in dict.fromkeys(names):
        options = cfg.model.options if name == cfg.model.name else shared_model_options(cfg, name)
        try:
            with torch.device("meta"):
                build_model(name, tasks, schema, **options)
        except (ValueError, TypeError, RuntimeError, KeyError) as e:
            where = "model" if name == cfg.model.name else f"model (the {name} baseline)"
            raise ConfigError(f"{where}: {_reason(e)}") from None
    try:
        balancer = BALANCERS[cfg.balancer.name](tasks, **cfg.balancer.options)
    except (ValueError, TypeError, RuntimeError, KeyError) as e:
        reason = _reason(e)
        prefix = "" if reason.lower().startswith(cfg.balancer.name.replace("_", "")) else f"{cfg.balancer.name}: "
        raise ConfigError(f"balancer: {prefix}{reason}") from None
    refusal = MODELS[cfg.model.name].feature_mode_error()
    if has_task_inputs(cfg):
        from multitask.models.task_inputs import TaskInputs

        if input_kind(cfg) != "table":
            raise ConfigError("tasks: inputs / private_inputs name table columns; these inputs are images")
        owner: dict[str, str] = {}  # what needs no column names is checked now, the names once data is read
        for t, tc in (cfg.tasks or {}).items():
            for c in tc.private_inputs or ():
                if owner.setdefault(c, t) != t:
                    raise ConfigError(f"tasks.{t}.private_inputs: column {c!r} is already private to task "
                                      f"{owner[c]!r}")
        refusal = refusal or TaskInputs.feature_mode_error()
    if getattr(balancer, "mode", None) == "features" and refusal:
        raise ConfigError(f"balancer.mode: {refusal} (model {cfg.model.name!r})")
    try:
        TrainerConfig(**cfg.trainer.model_dump())
    except (ValueError, TypeError) as e:
        raise ConfigError(f"trainer: {_reason(e)}") from None
    _check_trainer_extras(cfg, balancer)


def _check_trainer_extras(cfg: RunConfig, balancer: Any) -> None:
    """Precision, compile and loggers: their combinations with the balancer and device, and their packages."""
    from multitask.training.loggers import missing_package
    from multitask.training.precision import compile_backend, compile_problem, precision_problem

    t = cfg.trainer
    problem = precision_problem(str(t.precision), t.device, balancer)
    if problem:
        raise ConfigError(f"trainer.precision: {problem}")
    try:
        problem = compile_problem(compile_backend(t.compile), t.device)
    except ValueError as e:
        problem = _reason(e)
    if problem:
        raise ConfigError(f"trainer.compile: {problem}")
    for name in t.loggers:
        problem = missing_package(name)
        if problem:
            raise ConfigError(f"trainer.loggers: {problem}")


def has_task_inputs(cfg: RunConfig) -> bool:
    """True when some task declares `inputs` or `private_inputs`."""
    return any(tc.inputs is not None or tc.private_inputs is not None for tc in (cfg.tasks or {}).values())


def shared_model_options(cfg: RunConfig, name: str) -> dict[str, Any]:
    """Options of the configured model that another architecture also takes (e.g. embedding_dim)."""
    accepted = model_options_model(name, input_kind(cfg)).model_fields
    return {k: v for k, v in cfg.model.options.items() if k in accepted}


def _reason(e: BaseException) -> str:
    text = message(e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


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


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The parsed YAML of a file; a ConfigError for a missing, unreadable, non-UTF-8 or invalid file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, not a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start}): is it a YAML file?") from None
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None


def load(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML file, apply ``--set`` overrides, validate."""
    path = Path(path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (data, model, balancer, trainer, ...)")
    for a in overrides:
        set_dotted(raw, a)
    return validate(raw)


def dump(cfg: RunConfig) -> str:
    """The resolved config as YAML (every default written out)."""
    data = cfg.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)
