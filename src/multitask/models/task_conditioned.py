"""Task-conditioned network: one network for every task, told which task to compute by a task descriptor.

As in conditional / task-embedding networks (e.g. FiLM, Perez et al., AAAI 2018, for the ``film`` join; the
task one-hot or a learned task embedding appended to a layer's input for ``concat``), the same layers compute
every task's prediction; a task descriptor z_t enters at layer ``join_at`` and makes everything from there on
task-dependent. Shared: the encoder and every layer. A task's own: its descriptor embedding or its FiLM scale
and shift, and its head. Cost: the parameters of one network plus small per-task vectors and heads; compute:
the layers before the join point once, the layers from it on once per requested task.
"""
from __future__ import annotations

from typing import Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks, check_depth
from multitask.models.conv import ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, check_count, task_heads
from multitask.tasks import Task

DESCRIPTORS = ("onehot", "embedding")
JOINS = ("concat", "film")


def _channels(v: Tensor, like: Tensor) -> Tensor:
    """A per-channel vector [C] shaped [1, C, 1, ...] to broadcast over `like` (channels on dim 1)."""
    return v.reshape(1, -1, *([1] * (like.dim() - 2)))


class TaskConditioned(MultiTaskModel):
    """One network for all tasks; forward(tasks=[...]) runs its task-dependent part once per requested task.

    ``join="concat"``: z_t (``descriptor="onehot"``: the task's one-hot over the model's tasks;
    ``"embedding"``: a learned vector of ``descriptor_dim`` entries per task (default 8), N(0, 1) at init) is
    concatenated along dim 1 to the input of layer ``join_at`` (0: to the encoded input), broadcast over H and
    W when that input is an image; when layer ``join_at`` is the first fully connected layer of a `ConvBlocks`,
    it is appended to the flattened features instead (a user `Blocks` gets ``layer(join_at, width_before +
    dim)``). With a one-hot, the join amounts to a learned per-task bias of layer ``join_at``.
    ``join="film"``: layer ``join_at``'s output channels are scaled and shifted per task, h * gamma_t + beta_t,
    with gamma_t = 1 and beta_t = 0 at init (so the model starts as the plain network); the descriptor options
    do not apply to it.

    The output is one head per task (an MLP of `head_hidden` on the last layer's flattened features), since
    task outputs differ in size. Every other parameter except the descriptors / FiLM vectors is shared, but the
    layers from the join point on compute a different function for each task, so there is no representation
    every task reads: ``shares_representation = False`` (balancing in parameters mode only).
    """

    shares_representation = False

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, descriptor: str = "onehot",
                 descriptor_dim: int | None = None, join: str = "concat", join_at: int = 0,
                 head_hidden: Sequence[int] = (64,), dropout: float = 0.0) -> None:
        super().__init__()
        if join not in JOINS:
            raise ValueError(f"join must be one of {list(JOINS)}, got {join!r}")
        if descriptor not in DESCRIPTORS:
            raise ValueError(f"descriptor must be one of {list(DESCRIPTORS)}, got {descriptor!r}")
        if join == "film" and descriptor != "onehot":
            raise ValueError(f"descriptor: join 'film' learns a scale and shift per task directly; descriptor "
                             f"{descriptor!r} applies to join 'concat' only")
        if descriptor_dim is not None and (join != "concat" or descriptor != "embedding"):
            raise ValueError("descriptor_dim: only descriptor 'embedding' (with join 'concat') takes it; the "
                             "one-hot has one entry per task")
        if descriptor_dim is not None:
            check_count("descriptor_dim", descriptor_dim)
        check_depth("join_at", join_at, blocks, allow_end=False)
        self.task_names = [t.name for t in tasks]
        self.blocks, self.descriptor, self.join, self.join_at = blocks, descriptor, join, join_at
        self.encoder = blocks.encoder()
        if join == "concat":
            dim = len(self.task_names) if descriptor == "onehot" else (descriptor_dim or 8)
            # ConvBlocks' first dense layer flattens its input itself; the descriptor joins the flat features
            self.flatten_at_join = isinstance(blocks, ConvBlocks) and join_at == blocks.n_conv
            width = (blocks.flat_conv if self.flatten_at_join else blocks.width_before(join_at)) + dim
            self.layers = nn.ModuleList(blocks.layer(i, width if i == join_at else None)
                                        for i in range(blocks.n_layers))
            self.descriptor_dim = dim
            if descriptor == "embedding":
                self.embeddings = nn.ParameterDict({t: nn.Parameter(torch.randn(dim)) for t in self.task_names})
        else:
            self.layers = nn.ModuleList(blocks.layer(i) for i in range(blocks.n_layers))
            c = blocks.widths[join_at]
            self.scales = nn.ParameterDict({t: nn.Parameter(torch.ones(c)) for t in self.task_names})
            self.shifts = nn.ParameterDict({t: nn.Parameter(torch.zeros(c)) for t in self.task_names})
        self.task_heads = task_heads(tasks, blocks.out_dim, head_hidden, dropout)

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0,
                descriptor: Literal["onehot", "embedding"] = "onehot", descriptor_dim: int | None = None,
                join: Literal["concat", "film"] = "concat", join_at: int = 0,
                batch_norm: bool = True) -> "TaskConditioned":
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, descriptor, descriptor_dim, join, join_at, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, descriptor: Literal["onehot", "embedding"] = "onehot",
              descriptor_dim: int | None = None, join: Literal["concat", "film"] = "concat",
              join_at: int = 0, batch_norm: bool = False) -> "TaskConditioned":
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        return cls(tasks, blocks, descriptor, descriptor_dim, join, join_at, head_hidden, dropout)

    def descriptor_of(self, task: str, like: Tensor) -> Tensor:
        """z_t as a [descriptor_dim] vector (concat only)."""
        if self.descriptor == "embedding":
            return self.embeddings[task]
        z = torch.zeros(self.descriptor_dim, dtype=like.dtype, device=like.device)
        z[self.task_names.index(task)] = 1.0
        return z

    def forward(self, inputs: Inputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        tasks = self._check_tasks(tasks)
        h = self.encoder(inputs)
        split = self.join_at + (self.join == "film")  # FiLM acts on layer join_at's output: that layer is common
        for layer in self.layers[:split]:
            h = layer(h)
        out = {}
        for t in tasks:
            x = self._join(h, t)
            for layer in self.layers[split:]:
                x = layer(x)
            out[t] = self.task_heads[t](self.blocks.flat(x))
        return out

    def _join(self, h: Tensor, task: str) -> Tensor:
        if self.join == "film":
            return h * _channels(self.scales[task], h) + _channels(self.shifts[task], h)
        if self.flatten_at_join:
            h = h.flatten(1)
        z = self.descriptor_of(task, h).to(h.dtype)
        z = _channels(z, h).expand(h.shape[0], -1, *h.shape[2:])
        return torch.cat([h, z], dim=1)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.layers.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        if self.join == "film":
            yield self.scales[task]
            yield self.shifts[task]
        elif self.descriptor == "embedding":
            yield self.embeddings[task]
        yield from self.task_heads[task].parameters()
