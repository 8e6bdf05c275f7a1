"""Architectures: each maps inputs to ``{task: output}`` and knows its shared and task-specific parameters."""
from multitask.models.base import MultiTaskModel
from multitask.models.hard_sharing import HardSharing
from multitask.models.independent import Independent
from multitask.models.layers import InputSchema, TabularEncoder, TabularMLP, mlp
from multitask.models.mmoe import MMoE

MODELS = {"independent": Independent, "hard_sharing": HardSharing, "mmoe": MMoE}

__all__ = ["MultiTaskModel", "HardSharing", "Independent", "MMoE", "InputSchema", "TabularEncoder",
           "TabularMLP", "mlp", "MODELS"]
