"""Entire Space Multi-task Model (Ma et al., SIGIR 2018): a later funnel step as the product of the chain's steps.

Ma, Zhao, Huang, Wang, Hu, Zhu and Gai, "Entire Space Multi-Task Model: An Effective Approach for Estimating
Post-Click Conversion Rate", SIGIR 2018.

A conversion is only observed after a click, so a CVR model trained on clicked rows sees a biased sample and few
labels. ESMM trains over every row instead: the conversion task's output is the product of the chain's
probabilities, pCTCVR = pCTR x pCVR, labelled on all rows (clicked and converted), while pCVR is a tower that
is never supervised alone. Here a task declares the task it follows (`Task.after`); its output is the LOGIT
of the product of the probabilities of every tower on its chain (root first), computed in log space so that
extreme logits give neither inf nor NaN, and the ordinary binary cross-entropy trains it.

Shared: the encoder (the embeddings) and any shared bottom layers, and the towers of the tasks that every task
follows. A tower is used by its task and all tasks after it (a group of those, or the task's own for the last
of a chain). Cost: one tower per task; task t's forward runs the towers on its chain. Skips the work of tasks
not asked for and supports features mode (the representation is the encoder's output and the logits of the
towers every task reads).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks, check_depth, column
from multitask.models.conv import ImageSpec
from multitask.models.funnel import Funnel, Tower
from multitask.models.layers import EMBEDDING_STD, InputSchema, mlp
from multitask.tasks import Task


def product_logit(logits: Sequence[Tensor]) -> Tensor:
    """logit(prod_k sigmoid(logits[k])), exactly and stably: with P_k the running product and Q_k = 1 - P_k,
    log P_k = log P_{k-1} + logsigmoid(o_k) and Q_k = Q_{k-1} + P_{k-1} sigmoid(-o_k) (a log-sum-exp), so no
    1 - p is ever formed. One logit is returned as it is."""
    first, *rest = logits
    if not rest:
        return first
    log_p, log_q = F.logsigmoid(first), F.logsigmoid(-first)
    for o in rest:
        log_p, log_q = log_p + F.logsigmoid(o), torch.logaddexp(log_q, log_p + F.logsigmoid(-o))
    return log_p - log_q


class ESMM(MultiTaskModel):
    """One tower per task (layers ``shared_layers..`` of `blocks` then an MLP `head_hidden` to one logit) on a
    shared encoder; task t's output is `product_logit` of the towers on its chain (``Task.after``)."""

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, head_hidden: Sequence[int] = (), dropout: float = 0.0,
                 shared_layers: int = 0) -> None:
        super().__init__()
        self.funnel = Funnel(tasks, "ESMM")
        check_depth("shared_layers", shared_layers, blocks)
        self.task_names = list(self.funnel.names)
        self.encoder = blocks.encoder()
        self.bottom = column(blocks, 0, shared_layers)
        self.towers = nn.ModuleDict({
            t.name: Tower(blocks, shared_layers, mlp(blocks.out_dim, head_hidden, 1, dropout=dropout,
                                                     option="head_hidden"))
            for t in tasks})

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (128, 64),
                head_hidden: Sequence[int] = (), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0, batch_norm: bool = True) -> "ESMM":
        """Categorical embeddings shared (`TabularEncoder`'s options); per task a tower of `hidden` layers (with
        BatchNorm1d when `batch_norm`) and `head_hidden` ones to its logit."""
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (),
              dropout: float = 0.0, batch_norm: bool = False) -> "ESMM":
        """The conv layers shared; per task a tower of fully connected `hidden` layers and `head_hidden` ones."""
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        return cls(tasks, blocks, head_hidden, dropout, shared_layers=blocks.n_conv)

    def shared(self, inputs: Inputs) -> Tensor | tuple[Tensor, Tensor]:
        """The encoder's (and bottom's) output h; with the logits [N, k] of the towers every task follows, (h,
        logits), when there are such towers."""
        h = self.bottom(self.encoder(inputs))
        if not self.funnel.common:
            return h
        return h, torch.cat([self.towers[t](h) for t in self.funnel.common], dim=1)

    def heads(self, representation: Tensor | tuple[Tensor, Tensor], tasks: Sequence[str]) -> dict[str, Tensor]:
        h, common = representation if isinstance(representation, tuple) else (representation, None)
        logits: dict[str, Tensor] = {}
        for k, t in enumerate(self.funnel.common):
            logits[t] = common[:, k:k + 1]

        def logit(t: str) -> Tensor:
            if t not in logits:
                logits[t] = self.towers[t](h)
            return logits[t]

        return {t: product_logit([logit(u) for u in self.funnel.path[t]]) for t in tasks}

    def tower_logits(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Each task's own tower logit (the conditional step: pCVR for conversion after click), not the
        product the model outputs."""
        tasks = self._check_tasks(tasks)
        rep = self.shared(inputs)
        h = rep[0] if isinstance(rep, tuple) else rep
        return {t: self.towers[t](h) for t in tasks}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.bottom.parameters()
        for t in self.funnel.common:
            yield from self.towers[t].parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        if self.funnel.subtree[task] == (task,):
            yield from self.towers[task].parameters()

    def group_parameters(self) -> dict[tuple[str, ...], list[nn.Parameter]]:
        return {self.funnel.subtree[t]: list(self.towers[t].parameters()) for t in self.task_names
                if 1 < len(self.funnel.subtree[t]) < len(self.task_names)}
