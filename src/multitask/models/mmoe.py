"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

Shared experts f_i(x); per task k a softmax gate g^k(x) = softmax(W_k x) and a tower h^k:
y_k = h^k( sum_i g^k(x)_i f_i(x) ).

Each expert and each gate is its own module (and parameter); a forward runs the experts, and the asked tasks'
gates, each as one concatenated matmul (`multitask.models.experts`), so its cost grows with T by little more
than the towers.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.conv import ConvFeatures, ImageSpec
from multitask.models.experts import gate_weights, mix, run_experts, task_blocks
from multitask.models.layers import EMBEDDING_STD, InputSchema, TabularEncoder, check_count, mlp, mlp_out_dim
from multitask.tasks import Task


class MMoE(MultiTaskModel):
    """Experts and the input encoder are shared; gates and towers belong to their task.

    The shared representation is the pair (encoded input, expert outputs [N, E, d]): gates read the first,
    towers read the gated mixture of the second.
    """

    def __init__(self, tasks: Sequence[Task], encoder: nn.Module, in_dim: int, n_experts: int = 8,
                 expert_hidden: Sequence[int] = (64,), tower_hidden: Sequence[int] = (32,),
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        check_count("n_experts", n_experts)
        if not expert_hidden:
            raise ValueError("expert_hidden needs at least one layer")
        self.task_names = [t.name for t in tasks]
        self.encoder = encoder
        self.experts = nn.ModuleList(mlp(in_dim, expert_hidden, dropout=dropout, option="expert_hidden",
                                         batch_norm=batch_norm) for _ in range(n_experts))
        d = mlp_out_dim(in_dim, expert_hidden)
        self.gates = nn.ModuleDict({t.name: nn.Linear(in_dim, n_experts) for t in tasks})
        self.towers = nn.ModuleDict({t.name: mlp(d, tower_hidden, t.out_dim, dropout=dropout, option="tower_hidden")
                                     for t in tasks})

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, n_experts: int = 8,
                expert_hidden: Sequence[int] = (64,), tower_hidden: Sequence[int] = (32,),
                embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD, embedding_width: str = "per_column",
                dropout: float = 0.0, batch_norm: bool = True) -> "MMoE":
        """Categorical embeddings (`TabularEncoder`'s options) shared; `batch_norm` puts BatchNorm1d in the
        experts' layers."""
        encoder = TabularEncoder(schema, embedding_dim, embedding_std, embedding_width)
        return cls(tasks, encoder, encoder.out_dim, n_experts, expert_hidden, tower_hidden, dropout, batch_norm)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, n_experts: int = 4, expert_hidden: Sequence[int] = (50,),
              tower_hidden: Sequence[int] = (50,), dropout: float = 0.0, batch_norm: bool = False) -> "MMoE":
        """Shared conv layers (the LeNet trunk without its fully connected layer) as the encoder; experts,
        gates and towers read its flattened features; `batch_norm` puts BatchNorm1d in the experts' layers."""
        encoder = ConvFeatures(spec, conv_channels, kernel_size)
        return cls(tasks, encoder, encoder.out_dim, n_experts, expert_hidden, tower_hidden, dropout, batch_norm)

    def shared(self, inputs: Inputs) -> tuple[Tensor, Tensor]:
        x = self.encoder(inputs)
        return x, run_experts(self.experts, x)  # all experts as one matmul per layer

    def heads(self, representation: tuple[Tensor, Tensor], tasks: Sequence[str]) -> dict[str, Tensor]:
        """The asked tasks' gates as one Linear and one softmax, their mixtures as one batched matmul (a few
        tasks at a time, see `task_blocks`); then each task's tower."""
        x, experts = representation
        out = {}
        for block in task_blocks(tasks, experts[:, 0].nelement() * experts.element_size()):
            mixed = mix(gate_weights([self.gates[t] for t in block], x), experts)  # [N, k, d]
            out.update({t: self.towers[t](mixed[:, i]) for i, t in enumerate(block)})
        return out

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.experts.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from self.gates[task].parameters()
        yield from self.towers[task].parameters()
