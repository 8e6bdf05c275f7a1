"""Architectures: each maps inputs to ``{task: output}`` and knows its shared and task-specific parameters.

A model is built from an input spec: `InputSchema` (a table) goes to the class's ``tabular`` builder,
`ImageSpec` (images) to its ``image`` builder; `build_model` dispatches, `builder` names the one a spec uses.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from multitask.models.aitm import AITM
from multitask.models.base import MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks
from multitask.models.branched import Branched
from multitask.models.cascade import Cascade
from multitask.models.conv import ConvFeatures, ConvTrunk, ImageSpec
from multitask.models.cross_stitch import CrossStitch
from multitask.models.dselect_k import DSelectK
from multitask.models.esmm import ESMM
from multitask.models.hard_sharing import HardSharing
from multitask.models.independent import Independent
from multitask.models.layers import InputSchema, TabularEncoder, TabularMLP, mlp
from multitask.models.mmoe import MMoE
from multitask.models.modulation import Modulation
from multitask.models.mtan import MTAN
from multitask.models.param_distance import ParameterDistance
from multitask.models.ple import CGC, PLE
from multitask.models.sluice import Sluice
from multitask.models.soft_order import SoftOrder
from multitask.models.task_conditioned import TaskConditioned
from multitask.models.task_norm import TaskNorm

# one line per architecture family: its config name and its class
MODELS = {
    "independent": Independent,
    "hard_sharing": HardSharing,
    "mmoe": MMoE,
    "cgc": CGC,
    "ple": PLE,
    "branched": Branched,
    "cross_stitch": CrossStitch,
    "sluice": Sluice,
    "param_distance": ParameterDistance,
    "task_conditioned": TaskConditioned,
    "mtan": MTAN,
    "modulation": Modulation,
    "task_norm": TaskNorm,
    "cascade": Cascade,
    "esmm": ESMM,
    "aitm": AITM,
    "soft_order": SoftOrder,
    "dselect_k": DSelectK,
}
# input kind -> (the spec class, the name of the classmethod that builds a model from it)
BUILDERS = {"table": (InputSchema, "tabular"), "image": (ImageSpec, "image")}


def input_kind(spec: Any) -> str:
    """'table' or 'image': which builder a spec goes to."""
    for kind, (cls, _) in BUILDERS.items():
        if isinstance(spec, cls):
            return kind
    raise TypeError(f"a model is built from an InputSchema or an ImageSpec, got {type(spec).__name__}")


def builder(name: str, kind: str) -> Callable[..., MultiTaskModel]:
    """The classmethod of model `name` that builds it for inputs of `kind`; its keyword arguments are the
    model's options (what the config validates)."""
    method = BUILDERS[kind][1]
    fn = getattr(MODELS[name], method, None)
    if fn is None:
        raise ValueError(f"model {name!r} has no builder for {kind} inputs (no {method}() classmethod)")
    return fn


def build_model(name: str, tasks: Sequence[Any], spec: Any, **options: Any) -> MultiTaskModel:
    """Model `name` for `tasks` on inputs described by `spec` (an InputSchema or an ImageSpec)."""
    return builder(name, input_kind(spec))(tasks, spec, **options)


__all__ = [
    "MultiTaskModel", "Blocks", "MLPBlocks", "ConvBlocks", "InputSchema", "ImageSpec", "TabularEncoder",
    "TabularMLP", "ConvFeatures", "ConvTrunk", "mlp", "MODELS", "BUILDERS", "build_model", "builder",
    "input_kind", "Independent", "HardSharing", "MMoE", "CGC", "PLE", "Branched", "CrossStitch", "Sluice",
    "ParameterDistance", "TaskConditioned", "MTAN", "Modulation", "TaskNorm", "Cascade", "ESMM", "AITM",
    "SoftOrder", "DSelectK",
]
