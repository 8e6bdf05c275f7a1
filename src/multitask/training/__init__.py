"""Training: the `Trainer`, checkpoints, early stopping, distillation for missing labels, per-task convergence."""
from multitask.training.callbacks import Callback, StepInfo
from multitask.training.convergence import TaskConvergence
from multitask.training.distillation import Distillation, FixedTeachers, PreviousSelf, Teacher
from multitask.training.trainer import StopTraining, Trainer, TrainerConfig, read_metrics

__all__ = ["Trainer", "TrainerConfig", "StopTraining", "Callback", "StepInfo", "read_metrics", "Distillation",
           "PreviousSelf", "FixedTeachers", "Teacher", "TaskConvergence"]
