"""Cascade of task heads (Dai, He & Sun, "Instance-aware semantic segmentation via multi-task network
cascades", CVPR 2016).

A shared trunk computes z; the heads run in an order, and each head after the first reads [z, the previous
head's output], so a later task builds on an earlier task's prediction (and, unless ``detach``, trains the
earlier heads too). Shared: the encoder and the trunk. A task's own: its head, when no later head reads it;
an earlier head belongs to the group of tasks from it to the end of the order (their losses all reach it).
Cost: one trunk and one head per task (each head's first layer has out_dim of the previous task more
inputs); heads up to the last asked task run, the trunk once.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks
from multitask.models.conv import ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, mlp
from multitask.tasks import Task


class Cascade(MultiTaskModel):
    """Heads chained in `order` (default: the task order): head_1 reads z; head_k reads [z, y_{k-1}], the raw
    output of head_{k-1} (logits for classification tasks), detached when ``detach`` (then each head is its
    task's alone and later losses do not train earlier heads).

    The representation is z (the last trunk layer's flattened features), so features-mode balancing works;
    `heads` computes only the chain the asked tasks need (up to the last of them in the order). There are
    no `head_entries` since a head reads more than z.
    """

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, order: Sequence[str] | None = None,
                 detach: bool = False, head_hidden: Sequence[int] = (64,), dropout: float = 0.0) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        if order is None:
            order = list(self.task_names)
        if isinstance(order, (str, bytes)) or not isinstance(order, Sequence) \
                or sorted(map(str, order)) != sorted(self.task_names) or len(set(order)) != len(order):
            raise ValueError(f"order must list every task once, e.g. {self.task_names}, got {order!r}")
        if not isinstance(detach, bool):
            raise ValueError(f"detach must be true or false, got {detach!r}")
        self.order, self.detach = list(order), detach
        self.blocks = blocks
        self.encoder = blocks.encoder()
        self.trunk = nn.Sequential(*(blocks.layer(i) for i in range(blocks.n_layers)))
        out_dim = {t.name: t.out_dim for t in tasks}
        self.task_heads = nn.ModuleDict()
        for k, t in enumerate(self.order):
            extra = out_dim[self.order[k - 1]] if k else 0
            self.task_heads[t] = mlp(blocks.out_dim + extra, head_hidden, out_dim[t], dropout=dropout,
                                     option="head_hidden")

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0, order: Sequence[str] | None = None,
                detach: bool = False, batch_norm: bool = True) -> "Cascade":
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, order, detach, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, order: Sequence[str] | None = None, detach: bool = False,
              batch_norm: bool = False) -> "Cascade":
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        return cls(tasks, blocks, order, detach, head_hidden, dropout)

    def shared(self, inputs: Inputs) -> Tensor:
        return self.blocks.flat(self.trunk(self.encoder(inputs)))

    def heads(self, representation: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        if not tasks:
            return {}
        last = max(self.order.index(t) for t in tasks)
        outputs, previous = {}, None
        for t in self.order[:last + 1]:
            x = representation if previous is None else torch.cat(
                [representation, previous.detach() if self.detach else previous], dim=1)
            previous = outputs[t] = self.task_heads[t](x)
        return {t: outputs[t] for t in tasks}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.trunk.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        if self.detach or task == self.order[-1]:
            yield from self.task_heads[task].parameters()

    def group_parameters(self) -> dict[tuple[str, ...], list[nn.Parameter]]:
        """Each head but the last, keyed by the tasks from it to the end of the order (none when detached)."""
        if self.detach:
            return {}
        return {tuple(self.order[k:]): list(self.task_heads[t].parameters()) for k, t in enumerate(self.order[:-1])}
