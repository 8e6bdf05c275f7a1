"""Hard parameter sharing (Caruana 1997): one shared trunk, one small head per task."""
from __future__ import annotations

from typing import Iterator, Sequence

from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel, has_hooks
from multitask.models.conv import ConvTrunk, ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, TabularMLP, task_heads
from multitask.tasks import Task


class HardSharing(MultiTaskModel):
    """``trunk`` is any module mapping inputs to a [N, trunk_dim] representation; heads are MLPs on top."""

    def __init__(self, tasks: Sequence[Task], trunk: nn.Module, trunk_dim: int,
                 head_hidden: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.trunk = trunk
        self.task_heads = task_heads(tasks, trunk_dim, head_hidden, dropout)

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0,
                batch_norm: bool = True) -> "HardSharing":
        """The built-in tabular model: categorical embeddings + MLP trunk, MLP heads. `embedding_std` and
        `embedding_width` are `TabularEncoder`'s; `batch_norm` puts BatchNorm1d in the trunk's layers."""
        trunk = TabularMLP(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width, batch_norm)
        return cls(tasks, trunk, trunk.out_dim, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, batch_norm: bool = False) -> "HardSharing":
        """The built-in image model: the LeNet-like `ConvTrunk` shared, MLP heads; `batch_norm` puts
        BatchNorm1d in the trunk's fully connected layers."""
        trunk = ConvTrunk(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        return cls(tasks, trunk, trunk.out_dim, head_hidden, dropout)

    def shared(self, inputs: Inputs) -> Tensor:
        return self.trunk(inputs)

    def heads(self, representation: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        return {t: self.task_heads[t](representation) for t in tasks}

    def head_entries(self) -> dict[str, nn.Linear] | None:
        """Each head's first layer, when every head is still an unhooked `nn.Sequential` that starts with an
        `nn.Linear` (as built here) and `heads` is not overridden."""
        if type(self).heads is not HardSharing.heads:
            return None
        entries = {}
        for t in self.task_names:
            head = self.task_heads[t]
            if (not isinstance(head, nn.Sequential) or type(head).forward is not nn.Sequential.forward
                    or len(head) == 0 or not isinstance(head[0], nn.Linear) or has_hooks(head)):
                return None
            entries[t] = head[0]
        return entries

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.task_heads[task].parameters()
