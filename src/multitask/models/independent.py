"""One separate network per task: the single-task baselines, trained side by side (no shared parameters)."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.conv import ConvTrunk, ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, TabularMLP, mlp
from multitask.tasks import Task


class Independent(MultiTaskModel):
    """``make_network(task)`` builds each task's whole network; losses never meet in any parameter."""

    def __init__(self, tasks: Sequence[Task], make_network: Callable[[Task], nn.Module]) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.networks = nn.ModuleDict({t.name: make_network(t) for t in tasks})

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0,
                batch_norm: bool = True) -> "Independent":
        """Per task: the same layers as `HardSharing.tabular`, but not shared."""

        def make(task: Task) -> nn.Module:
            trunk = TabularMLP(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width, batch_norm)
            return nn.Sequential(trunk, mlp(trunk.out_dim, head_hidden, task.out_dim, dropout=dropout,
                                            option="head_hidden"))

        return cls(tasks, make)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, batch_norm: bool = False) -> "Independent":
        """Per task: the same layers as `HardSharing.image`, but not shared."""

        def make(task: Task) -> nn.Module:
            trunk = ConvTrunk(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
            return nn.Sequential(trunk, mlp(trunk.out_dim, head_hidden, task.out_dim, dropout=dropout,
                                            option="head_hidden"))

        return cls(tasks, make)

    def shared(self, inputs: Inputs) -> Inputs:
        return inputs  # nothing is shared: every network reads the raw inputs

    def heads(self, representation: Inputs, tasks: Sequence[str]) -> dict[str, Tensor]:
        return {t: self.networks[t](representation) for t in tasks}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.networks[task].parameters()
