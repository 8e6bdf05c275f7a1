"""Adaptive Information Transfer Multi-task (Xi et al., KDD 2021): each funnel step attends to the one before it.

Xi, Chen, Yan, Zhang, Zhu, Zhuang and Chen, "Modeling the Sequential Dependence among Audience Multi-step
Conversions with Multi-task Learning in Targeted Display Advertising", KDD 2021.

Steps of a funnel (click -> application -> approval) have ever fewer positives; AITM lets each step learn what to
take from the step before. Every task has a tower q_t on the shared encoder. For a task that follows another
(`Task.after`), a transfer network turns the previous task's representation z_{t-1} into p_{t-1}, and the
adaptive information transfer (AIT) attention mixes {p_{t-1}, q_t}: weights softmax_u(<h1(u), h2(u)> / sqrt(d)),
z_t = sum_u w_u h3(u) (z_t = q_t for a first step). A head maps z_t to the task's logit. The behavioural
expectation calibrator adds alpha * mean(max(sigmoid(y_t) - sigmoid(y_{t-1}), 0)) to a later task's training
loss (a later step is no likelier than the one before it), as `penalties()`.

Shared: the encoder (embeddings) and any shared bottom layers, and the node modules (tower, transfer, attention)
of the tasks every task follows. A task's node modules serve it and every task after it (a group, or its own for
the last of a chain); its head serves it and, through the calibrator, the tasks right after it (a group of those,
as the calibrator reads but does not feed their outputs). Cost: per task a tower and a head, per link a transfer
network and three d x d attention projections; task t's forward runs its chain. Skips the work of tasks not
asked for. No features mode: a later task's calibrator reads an earlier task's output, which a representation
read by independent heads cannot carry, so balancers work in parameters mode.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks, check_depth, column
from multitask.models.conv import ImageSpec
from multitask.models.funnel import Funnel, Tower
from multitask.models.layers import EMBEDDING_STD, InputSchema, mlp
from multitask.tasks import Task


class InformationTransfer(nn.Module):
    """The AIT attention over the two vectors {p, q} ([N, d] each): z = sum_u softmax_u(<h1(u), h2(u)> /
    sqrt(d)) h3(u), with h1, h2, h3 linear maps."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.h1, self.h2, self.h3 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.scale = 1.0 / math.sqrt(d)

    def forward(self, p: Tensor, q: Tensor) -> Tensor:
        u = torch.stack([p, q], dim=1)  # [N, 2, d]
        weights = torch.softmax((self.h1(u) * self.h2(u)).sum(-1) * self.scale, dim=1)  # [N, 2]
        return (weights.unsqueeze(-1) * self.h3(u)).sum(1)


class AITM(MultiTaskModel):
    """Per task a tower (layers ``shared_layers..`` of `blocks`, flattened: q_t, [N, blocks.out_dim]) and a
    head (MLP `head_hidden` to one logit); per `after` link a transfer (Linear-ReLU(-Dropout)) and an
    `InformationTransfer`. `alpha` weighs the calibrator (0 turns it off)."""

    shares_representation = False

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, head_hidden: Sequence[int] = (), dropout: float = 0.0,
                 shared_layers: int = 0, alpha: float = 0.6) -> None:
        super().__init__()
        self.funnel = Funnel(tasks, "AITM")
        check_depth("shared_layers", shared_layers, blocks)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < float("inf"):
            raise ValueError(f"alpha must be a number >= 0 (the calibrator's weight; 0 turns it off), got {alpha!r}")
        self.alpha = float(alpha)
        self.task_names = list(self.funnel.names)
        d = blocks.out_dim
        self.encoder = blocks.encoder()
        self.bottom = column(blocks, 0, shared_layers)
        self.towers = nn.ModuleDict({t: Tower(blocks, shared_layers) for t in self.task_names})
        followers = [t for t in self.task_names if self.funnel.parent[t] is not None]
        self.transfers = nn.ModuleDict({
            t: nn.Sequential(nn.Linear(d, d), nn.ReLU(), *([nn.Dropout(dropout)] if dropout > 0 else []))
            for t in followers})
        self.attention = nn.ModuleDict({t: InformationTransfer(d) for t in followers})
        self.task_heads = nn.ModuleDict({t: mlp(d, head_hidden, 1, dropout=dropout, option="head_hidden")
                                         for t in self.task_names})
        self._last: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (128, 64),
                head_hidden: Sequence[int] = (), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0, batch_norm: bool = True,
                alpha: float = 0.6) -> "AITM":
        """Categorical embeddings shared (`TabularEncoder`'s options); per task a tower of `hidden` layers (with
        BatchNorm1d when `batch_norm`); `alpha` weighs the calibrator."""
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, head_hidden, dropout, alpha=alpha)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (),
              dropout: float = 0.0, batch_norm: bool = False, alpha: float = 0.6) -> "AITM":
        """The conv layers shared; per task a tower of fully connected `hidden` layers."""
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        if not hidden:
            raise ValueError("hidden: AITM needs at least one fully connected layer per task tower")
        return cls(tasks, blocks, head_hidden, dropout, shared_layers=blocks.n_conv, alpha=alpha)

    @classmethod
    def feature_mode_error(cls) -> str | None:
        return ("AITM has no representation that independent task heads read (a later task reads an earlier "
                "task's transferred representation and, through the calibrator, its output), so a balancer cannot "
                "work in mode 'features' on it; use mode: parameters")

    def representations(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """z_t, [N, d], for the asked tasks and every task on their chains."""
        tasks = self._check_tasks(tasks)
        h = self.bottom(self.encoder(inputs))
        z: dict[str, Tensor] = {}
        for t in tasks:
            for u in self.funnel.path[t]:
                if u not in z:
                    q = self.towers[u](h)
                    parent = self.funnel.parent[u]
                    z[u] = q if parent is None else self.attention[u](self.transfers[u](z[parent]), q)
        return z

    def forward(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        tasks = self._check_tasks(tasks)
        z = self.representations(inputs, tasks)
        out = {t: self.task_heads[t](z[t]) for t in tasks}
        # kept for this step's calibrator (`penalties`), only when training with gradients
        self._last = (z, out) if self.training and torch.is_grad_enabled() and self.alpha > 0 else None
        return out

    def penalties(self, tasks: Sequence[str]) -> dict[str, Tensor]:
        """The behavioural expectation calibrator of the last training forward, per asked task that follows
        another: alpha * mean(max(sigmoid(y_t) - sigmoid(y_prev), 0)). Read once (the engine asks once per
        step); empty without such a forward."""
        last, self._last = self._last, None
        if last is None:
            return {}
        z, out = last

        def output(t: str) -> Tensor:
            if t not in out:
                out[t] = self.task_heads[t](z[t])
            return out[t]

        terms = {}
        for t in tasks:
            prev = self.funnel.parent[t]
            if prev is not None and t in z:
                excess = torch.sigmoid(output(t)) - torch.sigmoid(output(prev))
                terms[t] = self.alpha * torch.relu(excess).mean()
        return terms

    # ------------------------------------------------------------------------------------------- partition
    def _node(self, t: str) -> Iterator[nn.Parameter]:
        yield from self.towers[t].parameters()
        if t in self.transfers:
            yield from self.transfers[t].parameters()
            yield from self.attention[t].parameters()

    def _head_group(self, t: str) -> tuple[str, ...]:
        """The tasks whose training loss reads t's head: t, and the tasks right after it when calibrated."""
        readers = {t} | (set(self.funnel.children[t]) if self.alpha > 0 else set())
        return tuple(u for u in self.task_names if u in readers)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.bottom.parameters()
        for t in self.funnel.common:
            yield from self._node(t)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        if self.funnel.subtree[task] == (task,):
            yield from self._node(task)
        if self._head_group(task) == (task,):
            yield from self.task_heads[task].parameters()

    def group_parameters(self) -> dict[tuple[str, ...], list[nn.Parameter]]:
        groups: dict[tuple[str, ...], list[nn.Parameter]] = {}
        for t in self.task_names:
            key = self.funnel.subtree[t]
            if 1 < len(key) < len(self.task_names):
                groups.setdefault(key, []).extend(self._node(t))
            key = self._head_group(t)
            if len(key) > 1:
                groups.setdefault(key, []).extend(self.task_heads[t].parameters())
        return groups
