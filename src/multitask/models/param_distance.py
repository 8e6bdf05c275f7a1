"""Soft parameter sharing by a distance between the task networks' parameters (Duong, Cohn, Bird and Cook,
"Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in a Neural Network Parser", ACL 2015; the
trace-norm variant after Yang and Hospedales, "Trace Norm Regularised Deep Multi-Task Learning", ICLR 2017
workshop).

One whole network per task, as `Independent`, plus a penalty that pulls corresponding layers together:
``"l2"``: ``lambda/2 * sum_t ||theta_t - mean_s theta_s||^2``; ``"trace"``: ``lambda * ||W||_*``, the nuclear
norm of the matrix whose row t is task t's layer parameters, flattened (low rank = the columns span few
directions). Nothing is shared, so tasks never trade gradients on a parameter: the penalty is the only
coupling, and it enters each task's own loss (`penalties`). Cost: T networks, plus the penalty's O(T * P)
per step (and a T x P thin SVD per tied layer for ``"trace"``).
"""
from __future__ import annotations

from typing import Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks
from multitask.models.conv import ImageSpec
from multitask.models.cross_stitch import check_choice, check_layer_list
from multitask.models.layers import EMBEDDING_STD, InputSchema, mlp
from multitask.tasks import Task


class Column(nn.Module):
    """One task's network from `blocks`: encoder, every layer, then `head` on the flattened last output."""

    def __init__(self, blocks: Blocks, head: nn.Module) -> None:
        super().__init__()
        self.encoder = blocks.encoder()
        self.layers = nn.ModuleList(blocks.layer(i) for i in range(blocks.n_layers))
        self.head = head
        self._flat = blocks.flat

    def forward(self, inputs: Inputs) -> Tensor:
        h = self.encoder(inputs)
        for layer in self.layers:
            h = layer(h)
        return self.head(self._flat(h))


class ParameterDistance(MultiTaskModel):
    """Per task a `Column`; the layers `layers` (default: every layer of `blocks`, weights and biases; not the
    encoder, whose embeddings stay free, nor the heads) are tied softly by `penalty` with weight `strength`.

    Task t's term in `penalties` touches only column t, with the same gradient on it as the full penalty:
    ``"l2"``: ``lambda/2 * ||theta_t - stopgrad(mean)||^2`` (the gradient of the full penalty on theta_t is
    ``lambda * (theta_t - mean)``, because the deviations from the mean sum to zero); ``"trace"``:
    ``lambda * <stopgrad(U V^T)[t], W_t>`` with ``W = U S V^T`` (``U V^T`` is the gradient of ``||W||_*``,
    and the terms sum to ``lambda * ||W||_*`` itself). With ``strength=0`` this is `Independent`.
    """

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, penalty: Literal["l2", "trace"] = "l2",
                 strength: float = 0.01, layers: Sequence[int] | None = None, head_hidden: Sequence[int] = (64,),
                 dropout: float = 0.0) -> None:
        super().__init__()
        check_choice("penalty", penalty, ("l2", "trace"))
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength < float("inf"):
            raise ValueError(f"strength must be a number >= 0, got {strength!r}")
        self.tied = check_layer_list("layers", layers, blocks)
        if not self.tied:
            raise ValueError("layers: name at least one layer to tie (or null for every layer; strength 0 ties none)")
        self.penalty, self.strength = penalty, float(strength)
        self.task_names = [t.name for t in tasks]
        self.columns = nn.ModuleDict({
            t.name: Column(blocks, mlp(blocks.out_dim, head_hidden, t.out_dim, dropout=dropout, option="head_hidden"))
            for t in tasks})

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0, penalty: Literal["l2", "trace"] = "l2",
                strength: float = 0.01, layers: Sequence[int] | None = None,
                batch_norm: bool = True) -> "ParameterDistance":
        """Per task an embedding encoder and the MLP layers `hidden`; the layers `layers` of `hidden` are tied."""
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, penalty, strength, layers, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, penalty: Literal["l2", "trace"] = "l2", strength: float = 0.01,
              layers: Sequence[int] | None = None, batch_norm: bool = False) -> "ParameterDistance":
        """Per task the LeNet-like layers (convs first, then fully connected, numbered together) and a head."""
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        return cls(tasks, blocks, penalty, strength, layers, head_hidden, dropout)

    def shared(self, inputs: Inputs) -> Inputs:
        return inputs  # nothing is shared: every column reads the raw inputs

    def heads(self, representation: Inputs, tasks: Sequence[str]) -> dict[str, Tensor]:
        return {t: self.columns[t](representation) for t in tasks}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.columns[task].parameters()

    def tied_parameters(self, i: int) -> list[list[nn.Parameter]]:
        """Layer i's parameters, one list per column (in task order)."""
        return [list(self.columns[t].layers[i].parameters()) for t in self.task_names]

    def penalties(self, tasks: Sequence[str]) -> dict[str, Tensor]:
        """Task t's share of the distance penalty (see the class docstring); empty when strength is 0."""
        if not self.strength:
            return {}
        rows = [self.task_names.index(t) for t in tasks]
        terms: dict[str, Tensor] = {}

        def add(t: str, value: Tensor) -> None:
            terms[t] = value if t not in terms else terms[t] + value

        for i in self.tied:
            per_column = self.tied_parameters(i)
            if not per_column[0]:
                continue
            if self.penalty == "l2":
                for j in range(len(per_column[0])):
                    mean = torch.stack([ps[j].detach() for ps in per_column]).mean(0)
                    for r, t in zip(rows, tasks):
                        add(t, (self.strength / 2) * (per_column[r][j] - mean).square().sum())
            else:
                W = torch.stack([torch.cat([p.detach().reshape(-1) for p in ps]) for ps in per_column])
                U, _, Vh = torch.linalg.svd(W, full_matrices=False)
                D = U @ Vh  # the gradient of ||W||_* (a subgradient where W is rank-deficient)
                for r, t in zip(rows, tasks):
                    add(t, self.strength * (D[r] * torch.cat([p.reshape(-1) for p in per_column[r]])).sum())
        return terms

    def full_penalty(self) -> Tensor:
        """The whole penalty, differentiable in every column (what the per-task terms add up to)."""
        total = next(self.parameters()).new_zeros(())
        for i in self.tied:
            per_column = self.tied_parameters(i)
            if not per_column[0]:
                continue
            if self.penalty == "l2":
                for j in range(len(per_column[0])):
                    stacked = torch.stack([ps[j] for ps in per_column])
                    total = total + (self.strength / 2) * (stacked - stacked.mean(0)).square().sum()
            else:
                W = torch.stack([torch.cat([p.reshape(-1) for p in ps]) for ps in per_column])
                total = total + self.strength * torch.linalg.matrix_norm(W, ord="nuc")
        return total
