"""Training: the `Trainer`, checkpoints and early stopping."""
from multitask.training.callbacks import Callback, StepInfo
from multitask.training.trainer import StopTraining, Trainer, TrainerConfig, read_metrics

__all__ = ["Trainer", "TrainerConfig", "StopTraining", "Callback", "StepInfo", "read_metrics"]
