"""Multi-Task Attention Network (Liu, Johns & Davison, "End-to-end multi-task learning with attention",
CVPR 2019).

One shared trunk learns a global pool of features; each task reads it through its own soft attention
masks, one per trunk layer: a_t^i = sigmoid(g_t^i([u^i, q_t^i(a^_t^{i-1})])), a^_t^i = a_t^i * p^i, where
p^i = u^i is the output of trunk layer i (our layers are single units, so the paper's in-block features u^i
and block output p^i coincide) and the task's head reads a^_t of the last layer. Shared: the encoder and the
trunk layers. A task's own: its attention branch (g_t^i: two 1x1 convolutions / linear maps, ReLU between,
sigmoid after; q_t^i: a 1x1 projection from layer i-1's width to layer i's) and its head. Cost: one trunk
plus per task and layer i about 3 w_i^2 / r + w_{i-1} w_i weights (w_i: layer i's width, r:
``attention_reduction``, default 1), and per task a pass of those small maps; the trunk runs once.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks
from multitask.models.conv import ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, check_count, task_heads
from multitask.tasks import Task


class ChannelLinear(nn.Linear):
    """A linear map of dim 1 (features / channels) at every position: a 1x1 convolution on images, a plain
    linear layer on [N, features]."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return super().forward(x)
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def match_positions(x: Tensor, like: Tensor) -> Tensor:
    """`x` brought to `like`'s positions (dims after 1): unchanged when they agree, adaptive max-pooled to
    them when both have the same number of spatial dims (e.g. after a layer that pools), averaged over all
    positions when `like` is flat ([N, features], e.g. the first fully connected layer after the convs)."""
    if x.shape[2:] == like.shape[2:]:
        return x
    if like.dim() == 2:
        return x.flatten(2).mean(-1)
    pool = {3: F.adaptive_max_pool1d, 4: F.adaptive_max_pool2d, 5: F.adaptive_max_pool3d}.get(x.dim())
    if pool is None or x.dim() != like.dim():
        raise ValueError(f"MTAN cannot carry an attended activation of shape {tuple(x.shape)} to the next layer's "
                         f"{tuple(like.shape)}")
    return pool(x, like.shape[2:])


class Attention(nn.Module):
    """One task's attention module at trunk layer i: the mask a = sigmoid(g([u, q(prev)])) over u's width."""

    def __init__(self, width: int, prev_width: int | None, hidden: int | None = None) -> None:
        super().__init__()
        self.project = ChannelLinear(prev_width, width) if prev_width is not None else None
        d, hidden = width * (2 if prev_width is not None else 1), hidden or width
        self.g = nn.Sequential(ChannelLinear(d, hidden), nn.ReLU(), ChannelLinear(hidden, width))

    def forward(self, u: Tensor, prev: Tensor | None) -> Tensor:
        x = u if self.project is None else torch.cat([u, self.project(match_positions(prev, u))], dim=1)
        return torch.sigmoid(self.g(x))


class MTAN(MultiTaskModel):
    """The representation is the tuple of the trunk's layer outputs (p^0, ..., p^{L-1}), which every task's
    attention branch reads; `heads` runs only the asked tasks' branches and heads, so balancing in features
    mode differentiates against all trunk layers' outputs.

    Layers differ in width and (on images) in size, so a task's attended features a^_t^{i-1} are carried to
    level i by its own projection q_t^i: adaptive max-pooling to layer i's height and width (a layer pools),
    or an average over all positions where layer i is fully connected, then a 1x1 map to layer i's width.
    The first level's mask reads u^0 alone, as in the paper. g_t^i's hidden layer has w_i /
    ``attention_reduction`` units (1: w_i, as in the paper; larger values shrink the branches of wide layers,
    e.g. on tables)."""

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, attention_reduction: int = 1,
                 head_hidden: Sequence[int] = (64,), dropout: float = 0.0) -> None:
        super().__init__()
        check_count("attention_reduction", attention_reduction)
        self.task_names = [t.name for t in tasks]
        self.blocks = blocks
        self.encoder = blocks.encoder()
        self.trunk = nn.ModuleList(blocks.layer(i) for i in range(blocks.n_layers))
        w = blocks.widths
        self.attention = nn.ModuleDict(
            {t: nn.ModuleList(Attention(w[i], w[i - 1] if i else None, max(1, w[i] // attention_reduction))
                              for i in range(len(w)))
             for t in self.task_names})
        self.task_heads = task_heads(tasks, blocks.out_dim, head_hidden, dropout)

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0, attention_reduction: int = 1,
                batch_norm: bool = True) -> "MTAN":
        return cls(tasks, MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                                    batch_norm=batch_norm),
                   attention_reduction, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, attention_reduction: int = 1, batch_norm: bool = False) -> "MTAN":
        return cls(tasks, ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout,
                                     batch_norm), attention_reduction,
                   head_hidden, dropout)

    def shared(self, inputs: Inputs) -> tuple[Tensor, ...]:
        h, out = self.encoder(inputs), []
        for layer in self.trunk:
            h = layer(h)
            out.append(h)
        return tuple(out)

    def heads(self, representation: tuple[Tensor, ...], tasks: Sequence[str]) -> dict[str, Tensor]:
        out = {}
        for t in tasks:
            attended = None
            for attend, p in zip(self.attention[t], representation):
                attended = attend(p, attended) * p
            out[t] = self.task_heads[t](self.blocks.flat(attended))
        return out

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.trunk.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.attention[task].parameters()
        yield from self.task_heads[task].parameters()
