"""Channel-wise task modulation (Zhao, Li, Shen, Liang & Wu, "A modulation module for multi-task learning with
applications in image retrieval", ECCV 2018).

One network whose weights every task shares; from layer ``modulate_from`` on, each layer's output channels
are multiplied by a learned per-task vector (1 at init), so each task steers the shared filters towards its
own features and the tasks' gradients on the shared weights conflict less. Shared: the encoder and every
layer. A task's own: one vector of layer width per modulated layer, and its head. Cost: one network plus
those vectors (sum of the modulated widths per task); compute: the layers before ``modulate_from`` once, the
modulated layers once per requested task.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks, check_depth
from multitask.models.conv import ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, task_heads
from multitask.tasks import Task


class Modulation(MultiTaskModel):
    """Layers ``modulate_from``..L-1 are run once per requested task with that task's channel multipliers.

    The layers before ``modulate_from`` compute a representation every task reads, but the layers after it are
    shared weights that each task runs with its own modulation: they belong to every task's loss yet lie
    after that representation, where a feature-level balancer could not give them a balanced gradient. So
    ``shares_representation = False``: the engine takes each task's gradient on all shared weights
    (parameters mode), and features mode is refused.
    """

    shares_representation = False

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, modulate_from: int = 0,
                 head_hidden: Sequence[int] = (64,), dropout: float = 0.0) -> None:
        super().__init__()
        check_depth("modulate_from", modulate_from, blocks, allow_end=False)
        self.task_names = [t.name for t in tasks]
        self.blocks, self.modulate_from = blocks, modulate_from
        self.encoder = blocks.encoder()
        self.layers = nn.ModuleList(blocks.layer(i) for i in range(blocks.n_layers))
        self.modulations = nn.ModuleDict(
            {t: nn.ParameterList(nn.Parameter(torch.ones(blocks.widths[i]))
                                 for i in range(modulate_from, blocks.n_layers)) for t in self.task_names})
        self.task_heads = task_heads(tasks, blocks.out_dim, head_hidden, dropout)

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0, modulate_from: int = 0,
                batch_norm: bool = True) -> "Modulation":
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, modulate_from, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, modulate_from: int = 0, batch_norm: bool = False) -> "Modulation":
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        return cls(tasks, blocks, modulate_from, head_hidden, dropout)

    def forward(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        tasks = self._check_tasks(tasks)
        h = self.encoder(inputs)
        for layer in self.layers[:self.modulate_from]:
            h = layer(h)
        out = {}
        for t in tasks:
            x = h
            for layer, m in zip(self.layers[self.modulate_from:], self.modulations[t]):
                x = layer(x)
                x = x * m.reshape(1, -1, *([1] * (x.dim() - 2)))
            out[t] = self.task_heads[t](self.blocks.flat(x))
        return out

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.layers.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.modulations[task].parameters()
        yield from self.task_heads[task].parameters()
