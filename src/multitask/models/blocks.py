"""Blocks: a network cut into an input encoder and numbered layers, so that every architecture family is
built the same way on tables and on images.

A family (cross-stitch, MTAN, a branching tree, ...) decides which copies of which layers exist and how they
are wired; `Blocks` says how to build one copy of the encoder and of layer ``i``. `MLPBlocks` is the table
version (embeddings, then Linear-ReLU layers), `ConvBlocks` the image version (conv-pool-ReLU layers, then
fully connected ones). A user block is any `Blocks` subclass (or an object with the same four members).

Every layer's output has its features (or channels) on dim 1, ``widths[i]`` of them, which is what the
per-task modulations (FiLM, task-specific normalisation, attention masks, cross-stitch units) act on.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from multitask.models.conv import ImageSpec, Normalize, conv_output_size
from multitask.models.layers import (BatchNorm1d, InputSchema, TabularEncoder, check_dropout, check_flag,
                                    check_widths)


class Blocks:
    """How to build an encoder and ``n_layers`` layers; ``widths[i]`` is the size of dim 1 after layer i,
    ``in_width`` after the encoder, ``out_dim`` the flattened features after the last layer."""

    widths: tuple[int, ...]
    in_width: int
    out_dim: int

    @property
    def n_layers(self) -> int:
        return len(self.widths)

    def encoder(self) -> nn.Module:
        raise NotImplementedError

    def layer(self, i: int, in_width: int | None = None) -> nn.Module:
        """A fresh layer i. `in_width` (default: the width before it) lets a family feed it more features,
        e.g. a task embedding concatenated to its input."""
        raise NotImplementedError

    def flat(self, h: Tensor) -> Tensor:
        """An activation as [N, features] (a head's input)."""
        return h.flatten(1)

    def width_before(self, i: int) -> int:
        return self.in_width if i == 0 else self.widths[i - 1]


class MLPBlocks(Blocks):
    """Tables: `TabularEncoder` (numeric columns and categorical embeddings), then one Linear-ReLU(-Dropout)
    layer per entry of `hidden` (Linear-BatchNorm1d-ReLU(-Dropout) with `batch_norm`)."""

    def __init__(self, schema: InputSchema, hidden: Sequence[int] = (256, 128), embedding_dim: int = 8,
                 dropout: float = 0.0, embedding_std: float | None = None,
                 embedding_width: str = "per_column", option: str = "hidden", batch_norm: bool = False) -> None:
        check_widths(option, hidden)
        if not hidden:
            raise ValueError(f"{option}: needs at least one layer")
        check_dropout(dropout)
        check_flag("batch_norm", batch_norm)
        self.schema, self.embedding_dim, self.dropout, self.batch_norm = schema, embedding_dim, dropout, batch_norm
        self.embedding = dict(embedding_std=embedding_std, embedding_width=embedding_width)
        probe = TabularEncoder(schema, embedding_dim, **self.embedding)  # checks the options now, not at build time
        self.in_width = probe.out_dim
        self.widths = tuple(hidden)
        self.out_dim = self.widths[-1]

    def encoder(self) -> nn.Module:
        return TabularEncoder(self.schema, self.embedding_dim, **self.embedding)

    def layer(self, i: int, in_width: int | None = None) -> nn.Module:
        d = self.width_before(i) if in_width is None else in_width
        parts: list[nn.Module] = [nn.Linear(d, self.widths[i])]
        if self.batch_norm:
            parts.append(BatchNorm1d(self.widths[i]))
        parts.append(nn.ReLU())
        if self.dropout > 0:
            parts.append(nn.Dropout(self.dropout))
        return nn.Sequential(*parts)


class ConvLayer(nn.Module):
    """conv (no padding), 2x2 max-pool, ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(c_in, c_out, kernel_size), nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.pool(self.conv(x)))


class DenseLayer(nn.Module):
    """Flatten (when given an image activation), Linear, optional BatchNorm1d, ReLU, optional dropout."""

    def __init__(self, d_in: int, d_out: int, dropout: float, batch_norm: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.norm = BatchNorm1d(d_out) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(torch.relu(self.norm(self.linear(x.flatten(1)))))


class ConvBlocks(Blocks):
    """Images: the LeNet-like trunk cut into layers, one conv-pool-ReLU layer per entry of `conv_channels`
    then one fully connected ReLU layer per entry of `hidden` (the first flattens; with BatchNorm1d before the
    ReLU when `batch_norm`). The encoder only scales and normalises the pixels (`Normalize`), so it has no
    parameters."""

    def __init__(self, spec: ImageSpec, conv_channels: Sequence[int] = (10, 20), kernel_size: int = 5,
                 hidden: Sequence[int] = (50,), dropout: float = 0.0, batch_norm: bool = False,
                 option: str = "hidden") -> None:
        h, w = conv_output_size(spec, conv_channels, kernel_size)
        check_widths(option, hidden)
        check_dropout(dropout)
        check_flag("batch_norm", batch_norm)
        self.spec, self.kernel_size, self.dropout, self.batch_norm = spec, kernel_size, dropout, batch_norm
        self.n_conv = len(conv_channels)
        self.flat_conv = conv_channels[-1] * h * w
        self.in_width = spec.channels
        self.widths = tuple(conv_channels) + tuple(hidden)
        self.out_dim = hidden[-1] if hidden else self.flat_conv

    def encoder(self) -> nn.Module:
        return Normalize(self.spec)

    def layer(self, i: int, in_width: int | None = None) -> nn.Module:
        if i < self.n_conv:
            return ConvLayer(self.width_before(i) if in_width is None else in_width, self.widths[i], self.kernel_size)
        d = (self.flat_conv if i == self.n_conv else self.widths[i - 1]) if in_width is None else in_width
        return DenseLayer(d, self.widths[i], self.dropout, self.batch_norm)


def column(blocks: Blocks, start: int = 0, stop: int | None = None) -> nn.Sequential:
    """Layers start..stop-1 of one column, chained."""
    stop = blocks.n_layers if stop is None else stop
    return nn.Sequential(*(blocks.layer(i) for i in range(start, stop)))


def check_depth(option: str, depth: int, blocks: Blocks, allow_end: bool = True) -> None:
    """A layer index in 0..n_layers (or n_layers-1); the error names the option and the layers there are."""
    top = blocks.n_layers if allow_end else blocks.n_layers - 1
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= top:
        raise ValueError(f"{option} must be an integer layer index in 0..{top} (the network has "
                         f"{blocks.n_layers} layers), got {depth!r}")
