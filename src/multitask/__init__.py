"""multitask: multi-task learning for PyTorch.

Declare `Task`s, pick an architecture (`Independent`, `HardSharing`, `MMoE`, ...: `models.MODELS`), a balancer (`Equal`, `Static`,
`Uncertainty`) and a `Trainer`; then `fit`, `evaluate`, `predict`.
"""
from multitask.balancing import BALANCERS, Balancer, Equal, Static, Uncertainty
from multitask.data import DatasetBundle, MultiTaskData, load_census_income, load_yeast
from multitask.metrics import delta_m
from multitask.models import (AITM, Blocks, Branched, CGC, Cascade, ConvBlocks, CrossStitch, ESMM, HardSharing,
                              ImageSpec, Independent, InputSchema, MLPBlocks, MMoE, MTAN, Modulation,
                              MultiTaskModel, PLE, ParameterDistance, Sluice, TaskConditioned, TaskNorm)
from multitask.models import DSelectK, SoftOrder
from multitask.tasks import Task
from multitask.training import Trainer, TrainerConfig

__version__ = "0.1.0"

__all__ = ["Task", "MultiTaskData", "DatasetBundle", "load_census_income", "load_yeast", "MultiTaskModel",
           "Independent", "HardSharing", "MMoE", "CGC", "PLE", "Branched", "CrossStitch", "Sluice",
           "ParameterDistance", "TaskConditioned", "MTAN", "Modulation", "TaskNorm", "Cascade", "ESMM", "AITM",
           "SoftOrder", "DSelectK",
           "Blocks", "MLPBlocks", "ConvBlocks", "InputSchema", "ImageSpec", "Balancer", "Equal", "Static",
           "Uncertainty",
           "BALANCERS", "Trainer", "TrainerConfig", "delta_m"]
