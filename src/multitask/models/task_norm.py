"""Task-specific normalisation (Bilen & Vedaldi, "Universal representations: the missing link between faces,
text, planktons, and cat breeds", arXiv 2017).

All layer weights are shared; after each layer every task has its own normalisation, with its own affine
scale and shift (and, for batch normalisation, its own running statistics), which re-centres and re-scales the
shared features for that task at a tiny cost. Shared: the encoder and every layer. A task's own: one
normalisation (2 x width parameters) per layer, and its head. Compute: the encoder once, all layers once per
requested task.
"""
from __future__ import annotations

from typing import Iterator, Literal, Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks
from multitask.models.conv import ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, task_heads
from multitask.tasks import Task

NORMS = ("batch", "layer")


class ChannelBatchNorm(_BatchNorm):
    """Batch normalisation of dim 1 (features or channels) for inputs of any rank >= 2: statistics over the
    batch and every position, as BatchNorm1d does on [N, C] and BatchNorm2d on [N, C, H, W]."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dims [N, C, ...], got {input.dim()}")

    def forward(self, x: Tensor) -> Tensor:
        # one value per channel (a last training batch of one row, no positions): the running statistics, as
        # `layers.BatchNorm1d` does, instead of PyTorch's refusal
        if self.training and x.numel() == x.shape[1] and self.track_running_stats:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps)
        return super().forward(x)


def make_norm(kind: str, width: int) -> nn.Module:
    """'batch': `ChannelBatchNorm`; 'layer': each sample normalised over all its features (and positions),
    then a per-channel scale and shift (`nn.GroupNorm` with one group, which takes any rank)."""
    return ChannelBatchNorm(width) if kind == "batch" else nn.GroupNorm(1, width)


class TaskNorm(MultiTaskModel):
    """The network runs once per requested task, with that task's normalisations after each shared layer.

    The normalisation follows each layer's output (after its activation and pooling, since a `Blocks` layer is
    one unit), so from the first layer on every activation is task-dependent while computed with shared
    weights: ``shares_representation = False`` (the encoded input is the only common representation, and the
    shared layers lie after it). A training batch of one row is normalised with the running statistics.
    """

    shares_representation = False

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, norm: str = "batch",
                 head_hidden: Sequence[int] = (64,), dropout: float = 0.0) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        self.task_names = [t.name for t in tasks]
        self.blocks, self.norm = blocks, norm
        self.encoder = blocks.encoder()
        self.layers = nn.ModuleList(blocks.layer(i) for i in range(blocks.n_layers))
        self.norms = nn.ModuleDict({t: nn.ModuleList(make_norm(norm, w) for w in blocks.widths)
                                    for t in self.task_names})
        self.task_heads = task_heads(tasks, blocks.out_dim, head_hidden, dropout)

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0,
                norm: Literal["batch", "layer"] = "batch", batch_norm: bool = True) -> "TaskNorm":
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, norm, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, norm: Literal["batch", "layer"] = "batch", batch_norm: bool = False) -> "TaskNorm":
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        return cls(tasks, blocks, norm, head_hidden, dropout)

    def forward(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        tasks = self._check_tasks(tasks)
        h = self.encoder(inputs)
        out = {}
        for t in tasks:
            x = h
            for layer, norm in zip(self.layers, self.norms[t]):
                x = norm(layer(x))
            out[t] = self.task_heads[t](self.blocks.flat(x))
        return out

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.layers.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.norms[task].parameters()
        yield from self.task_heads[task].parameters()
