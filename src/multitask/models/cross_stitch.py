"""Cross-stitch networks (Misra, Shrivastava, Gupta and Hebert, "Cross-stitch Networks for Multi-task
Learning", CVPR 2016).

One column (encoder and layers) per task. After each stitched layer i the columns' activations are mixed by a
learned cross-stitch unit: ``h~_t = sum_s alpha_i[t, s] h_s`` (one scalar per task pair, or per task pair and
channel with ``per_channel``); each task's head reads its own column after the last layer. The network learns
how much of the other tasks' features each task uses, from none (alpha = identity: separate networks) to all.

Shared: every column layer up to the last stitch and every stitch unit (every task's loss reaches them through
the mixing); task-specific: column t's layers after the last stitch and head t. Cost: T times the parameters
and compute of one network, plus T^2 scalars (T^2 * channels with ``per_channel``) per stitch.
"""
from __future__ import annotations

from typing import Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks
from multitask.models.conv import ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, task_heads
from multitask.tasks import Task

MISRA_SAME = 0.9  # the paper's best initialisation: alpha_same 0.9, the rest of each row split evenly


def check_layer_list(option: str, layers: Sequence[int] | None, blocks: Blocks) -> tuple[int, ...]:
    """Distinct layer indices 0..n_layers-1, sorted (None: every layer); the error names the option."""
    n = blocks.n_layers
    if layers is None:
        return tuple(range(n))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ValueError(f"{option}: expected a list of layer indices in 0..{n - 1} (or null for every layer), "
                         f"got {layers!r}")
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise ValueError(f"{option}: layer indices must be integers in 0..{n - 1} (the network has {n} "
                             f"layers), got {list(layers)!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{option}: a layer is named twice in {list(layers)!r}")
    return tuple(sorted(layers))


def check_choice(option: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def mixing_init(init: str, n_tasks: int, option: str = "init") -> Tensor:
    """[T, T]: the identity, or Misra et al.'s 0.9 on the diagonal and 0.1/(T-1) elsewhere (1 when T = 1)."""
    check_choice(option, init, ("identity", "misra"))
    eye = torch.eye(n_tasks)
    if init == "identity" or n_tasks == 1:
        return eye
    return MISRA_SAME * eye + (1.0 - MISRA_SAME) / (n_tasks - 1) * (1.0 - eye)


class StitchedColumns(MultiTaskModel):
    """One column per task, built from `blocks`, whose activations are mixed after the layers in
    `stitch_after`; subclasses say how (`_mix`) and what a head reads (`_head_input`, `head_in`).

    ``forward(tasks=[t])`` computes every column up to the last stitch (task t's features there mix in every
    other column), then only t's column and head: ``skips_work = False``. There is no representation that
    every task reads (each head reads its own column), so balancing runs in parameters mode only.
    """

    shares_representation = False
    skips_work = False

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, stitch_after: Sequence[int] | None,
                 head_in: int, head_hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.blocks = blocks
        self.stitched = check_layer_list("stitch_after", stitch_after, blocks)
        self.last_stitch = self.stitched[-1] if self.stitched else -1
        n = blocks.n_layers
        self.encoders = nn.ModuleDict({t: blocks.encoder() for t in self.task_names})
        self.columns = nn.ModuleDict({t: nn.ModuleList(blocks.layer(i) for i in range(n)) for t in self.task_names})
        self.task_heads = task_heads(tasks, head_in, head_hidden, dropout)

    # -- what subclasses define
    def _mix(self, i: int, h: dict[str, Tensor], rows: list[str]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _head_input(self, task: str, outputs: list[Tensor]) -> Tensor:
        """What task's head reads, from its column's outputs of every layer (after any stitch there)."""
        return self.blocks.flat(outputs[-1])

    def _keeps_layer_outputs(self) -> bool:
        return False

    def _layer_output(self, i: int, h: dict[str, Tensor], asked: list[str]) -> None:
        """Called with the columns' outputs of layer i before its stitch (for penalties on them)."""

    # --
    def forward(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        asked = self._check_tasks(tasks)
        every, last = self.task_names, self.last_stitch
        h = {t: self.encoders[t](inputs) for t in (every if last >= 0 else asked)}
        keep = self._keeps_layer_outputs()
        kept: dict[str, list[Tensor]] = {t: [] for t in asked}
        for i in range(self.blocks.n_layers):
            h = {t: self.columns[t][i](h[t]) for t in (every if i <= last else asked)}
            self._layer_output(i, h, asked)
            if i in self.stitched:  # the last stitch computes only the asked tasks' rows
                h = self._mix(i, h, every if i < last else asked)
            if keep:
                for t in asked:
                    kept[t].append(h[t])
        return {t: self.task_heads[t](self._head_input(t, kept[t] if keep else [h[t]])) for t in asked}

    def _mixing_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every column's encoder and layers up to the last stitch, and the stitch units."""
        if self.last_stitch < 0:
            return
        for t in self.task_names:
            yield from self.encoders[t].parameters()
            for i in range(self.last_stitch + 1):
                yield from self.columns[t][i].parameters()
        yield from self._mixing_parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Task's column after the last stitch (all of it when nothing is stitched) and its head."""
        if self.last_stitch < 0:
            yield from self.encoders[task].parameters()
        for i in range(self.last_stitch + 1, self.blocks.n_layers):
            yield from self.columns[task][i].parameters()
        yield from self.task_heads[task].parameters()


class CrossStitch(StitchedColumns):
    """Cross-stitch units after the layers `stitch_after` (default: every layer) of per-task columns.

    ``init="misra"`` (default, the paper's choice) starts each unit at 0.9 for a task's own column and
    0.1/(T-1) for each other; ``"identity"`` starts as separate networks (outputs equal those of
    `Independent` with the same column weights; the units still learn: their gradients are not zero).
    ``per_channel=True`` learns one alpha per task pair and channel (the paper's channel-wise variant).
    """

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, stitch_after: Sequence[int] | None = None,
                 init: Literal["identity", "misra"] = "misra", per_channel: bool = False,
                 head_hidden: Sequence[int] = (64,), dropout: float = 0.0) -> None:
        super().__init__(tasks, blocks, stitch_after, blocks.out_dim, head_hidden, dropout)
        if not isinstance(per_channel, bool):
            raise ValueError(f"per_channel must be true or false, got {per_channel!r}")
        alpha = mixing_init(init, len(self.task_names))
        self.per_channel = per_channel
        self.stitches = nn.ParameterDict({
            str(i): nn.Parameter(alpha.unsqueeze(-1).repeat(1, 1, blocks.widths[i]) if per_channel else alpha.clone())
            for i in self.stitched})

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0, stitch_after: Sequence[int] | None = None,
                init: Literal["identity", "misra"] = "misra", per_channel: bool = False,
                batch_norm: bool = True) -> "CrossStitch":
        """Per task an embedding encoder and the MLP layers `hidden`, stitched after the layers `stitch_after`."""
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, stitch_after, init, per_channel, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, stitch_after: Sequence[int] | None = None,
              init: Literal["identity", "misra"] = "misra", per_channel: bool = False,
              batch_norm: bool = False) -> "CrossStitch":
        """Per task the LeNet-like conv and fully connected layers, stitched after the layers `stitch_after`
        (conv layers and fully connected ones are numbered together, convs first)."""
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        return cls(tasks, blocks, stitch_after, init, per_channel, head_hidden, dropout)

    def _mix(self, i: int, h: dict[str, Tensor], rows: list[str]) -> dict[str, Tensor]:
        alpha = self.stitches[str(i)]
        if len(rows) < len(self.task_names):
            alpha = alpha[[self.task_names.index(t) for t in rows]]
        stack = torch.stack([h[t] for t in self.task_names])  # [T, N, C, ...]
        if self.per_channel:  # alpha [R, T, C] broadcast over the batch and any spatial dims
            a = alpha.reshape(alpha.shape[:2] + (1, alpha.shape[2]) + (1,) * (stack.dim() - 3))
            mixed = (a * stack.unsqueeze(0)).sum(1)
        else:
            mixed = torch.tensordot(alpha.to(stack.dtype), stack, dims=1)
        return {t: mixed[k] for k, t in enumerate(rows)}

    def _mixing_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.stitches.values())
