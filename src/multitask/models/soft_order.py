"""Soft layer ordering (Meyerson and Miikkulainen, "Beyond Shared Hierarchies: Deep Multitask Learning
through Soft Layer Ordering", ICLR 2018).

D shared layers of one shape, and no fixed order: at each depth d every task mixes all of them, with its own
learned scalars, h_t^d = sum_k softmax(s_t[d])_k layer_k(h_t^(d-1)), so each task finds its own soft ordering
of the same layers (a shared hierarchy is the special case of one-hot rows). Tables: an input projection to
`width` features (the stem), then D Linear-ReLU layers of `width`; images: the conv-pool-ReLU stem of
`conv_channels`, then D convolutions of its last channel count ('same' padding keeps the shape). A head per task.

Shared: the stem and the D layers; a task's own: its D x D scalars (zeros at init: an even mix) and its head.
Cost: each task runs every layer at every depth, D + T * D * (D - 1) layer calls per forward (the first depth
reads the stem output, the same for every task, and runs once); asking for one task skips the others' work.
After the stem no representation is common to the tasks, and the shared layers lie after it, so balancing
runs in parameters mode only (features mode is refused).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import ConvBlocks, MLPBlocks
from multitask.models.conv import ImageSpec, conv_output_size
from multitask.models.layers import InputSchema, check_count, check_dropout, check_flag, mlp
from multitask.tasks import Task


class SameConv(nn.Module):
    """A convolution that keeps the shape [N, C, H, W] (stride 1, zero padding of (k - 1) // 2 before and the rest
    after, as PyTorch's 'same'; an odd kernel pads inside the conv), then ReLU."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        before, after = (kernel_size - 1) // 2, kernel_size // 2
        self.pad = (before, after, before, after) if before != after else None
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=before if self.pad is None else 0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x if self.pad is None else nn.functional.pad(x, self.pad)))


class SoftOrder(MultiTaskModel):
    """A shared `stem`, shared `layers` (each maps the stem's output shape to itself) applied in a per-task soft
    order, and a head per task on the flattened result.

    ``order[t][d, k]`` is the logit of layer k at depth d for task t (softmax over k). The model has as many
    depths as layers, as in the paper.
    """

    shares_representation = False

    def __init__(self, tasks: Sequence[Task], stem: nn.Module, layers: Sequence[nn.Module], head_in: int,
                 head_hidden: Sequence[int] = (32,), dropout: float = 0.0, head_batch_norm: bool = False) -> None:
        super().__init__()
        if not layers:
            raise ValueError("depth must be an integer >= 1 (soft ordering needs at least one shared layer)")
        self.task_names = [t.name for t in tasks]
        self.stem = stem
        self.layers = nn.ModuleList(layers)
        d = len(self.layers)
        self.order = nn.ParameterDict({t: nn.Parameter(torch.zeros(d, d)) for t in self.task_names})
        self.task_heads = nn.ModuleDict({
            t.name: mlp(head_in, head_hidden, t.out_dim, dropout=dropout, option="head_hidden",
                        batch_norm=head_batch_norm) for t in tasks})

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, width: int = 64, depth: int = 3,
                head_hidden: Sequence[int] = (32,), embedding_dim: int = 8, embedding_std: float | None = None,
                embedding_width: str = "per_column", dropout: float = 0.0,
                batch_norm: bool = False) -> "SoftOrder":
        """Embeddings and a Linear-ReLU projection to `width` (the stem), then `depth` Linear-ReLU layers of
        `width` (`batch_norm`: Linear-BatchNorm-ReLU, in the stem and the shared layers)."""
        check_count("width", width)
        check_count("depth", depth)
        blocks = MLPBlocks(schema, (width,) * (depth + 1), embedding_dim, dropout, embedding_std, embedding_width,
                           option="width", batch_norm=batch_norm)
        stem = nn.Sequential(blocks.encoder(), blocks.layer(0))
        return cls(tasks, stem, [blocks.layer(i) for i in range(1, depth + 1)], width, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, depth: int = 3, head_hidden: Sequence[int] = (50,), dropout: float = 0.0,
              batch_norm: bool = False) -> "SoftOrder":
        """The conv-pool-ReLU layers of `conv_channels` (the stem), then `depth` 'same' convolutions of
        `conv_channels[-1]` channels and `kernel_size`; `batch_norm` puts BatchNorm1d in the heads' hidden
        (fully connected) layers, `dropout` applies there too."""
        check_count("depth", depth)
        check_dropout(dropout)
        check_flag("batch_norm", batch_norm)
        h, w = conv_output_size(spec, conv_channels, kernel_size)
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden=())
        stem = nn.Sequential(blocks.encoder(), *(blocks.layer(i) for i in range(blocks.n_conv)))
        c = conv_channels[-1]
        return cls(tasks, stem, [SameConv(c, kernel_size) for _ in range(depth)], c * h * w, head_hidden, dropout,
                   head_batch_norm=batch_norm)

    @classmethod
    def feature_mode_error(cls) -> str | None:
        return ("SoftOrder has no representation that every task reads after its stem (each task runs the shared "
                "layers in its own soft order, so they lie after any common representation, where a balancer "
                "working on features could not give them the balanced direction); use mode: parameters")

    def mixing_weights(self, task: str) -> Tensor:
        """[depth, layer]: task's softmax weights, each row sums to 1."""
        return torch.softmax(self.order[task], dim=1)

    @staticmethod
    def _mix(weights: Tensor, outputs: list[Tensor]) -> Tensor:
        stacked = torch.stack(outputs)  # [D, N, ...]
        return torch.tensordot(weights.to(stacked.dtype), stacked, dims=1)

    def forward(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        asked = self._check_tasks(tasks)
        h0 = self.stem(inputs)
        first = [layer(h0) for layer in self.layers]  # depth 0 reads the stem output, the same for every task
        out = {}
        for t in asked:
            w = self.mixing_weights(t)
            h = self._mix(w[0], first)
            for d in range(1, len(self.layers)):
                h = self._mix(w[d], [layer(h) for layer in self.layers])
            out[t] = self.task_heads[t](h.flatten(1))
        return out

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.stem.parameters()
        yield from self.layers.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield self.order[task]
        yield from self.task_heads[task].parameters()
