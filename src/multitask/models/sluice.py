"""Sluice networks (Ruder, Bingel, Augenstein and Søgaard, "Latent Multi-Task Architecture Learning",
AAAI 2019).

Cross-stitch columns whose layers are cut into `subspaces` pieces along the features/channels: after each
stitched layer a learned (T*k) x (T*k) matrix alpha mixes the (task, subspace) pieces, so a network can learn
to share one subspace and keep another private. Each task's head reads a learned beta-weighted combination of
its column's layer outputs (skip connections from every depth), and an optional orthogonality penalty pushes
the subspaces of each layer apart.

Shared: every column layer up to the last stitch and the alpha matrices; task-specific: column t's layers
after the last stitch, its betas and head. Cost: T times one network, (T*k)^2 scalars per stitch, T betas per
layer; the head's input is wider with ``layer_mixing="concat"`` (the sum of the layer widths).
"""
from __future__ import annotations

from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks
from multitask.models.conv import ImageSpec
from multitask.models.cross_stitch import StitchedColumns, check_choice, mixing_init
from multitask.models.layers import EMBEDDING_STD, InputSchema, check_count
from multitask.tasks import Task


class Sluice(StitchedColumns):
    """A sluice network over per-task columns built from `blocks`.

    - ``subspaces`` (k, default 2): pieces per layer output along dim 1. A width k does not divide is
      zero-padded to the next multiple for the mixing (the last piece holds fewer real features; the padding
      is dropped afterwards). k = 1 is a cross-stitch network with layer mixing.
    - ``stitch_after``: the layers followed by an alpha unit (default: every layer).
    - ``init``: ``"misra"`` (default) starts alpha at 0.9 for each piece itself and 0.1/(T-1) for the same
      subspace of each other task (0 across subspaces), i.e. as `CrossStitch`'s default; ``"identity"``
      starts as separate networks.
    - ``layer_mixing`` (what head t reads from its column's layer outputs h_1..h_L, taken after their
      stitch): ``"concat"`` (default) ``[beta_t1 * pool(h_1), ..., beta_tL * flat(h_L)]`` where ``pool``
      averages any spatial dims (so a conv layer enters as its channel means) and the last layer enters
      flattened, as every head reads it; betas start at 1. ``"sum"``: the paper's ``sum_l beta_tl h_l``, which
      needs every layer as wide as the last; betas start at 1/L. ``"last"``: no betas, the last layer only.
      Layers of different widths cannot be summed, hence concatenation as the general form: head t's first
      linear layer then weights each depth separately, and beta remains a per-depth gain.
    - ``orthogonality`` (lambda, default 0): per stitched layer, per column,
      ``lambda * sum_{a<b} ||G_a^T G_b||_F^2 / M^2`` where G_a is subspace a of the layer's output (before
      its stitch) as an [M, width/k] matrix, M = rows x spatial positions (divided by M^2 so that lambda does
      not depend on the batch size). The paper's penalty is a sum over columns; column t's part is task t's
      term in `penalties` (it depends only on parameters task t's loss depends on), so the terms' sum is the
      full penalty and so are its gradients.
    """

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, subspaces: int = 2,
                 stitch_after: Sequence[int] | None = None, init: Literal["identity", "misra"] = "misra",
                 layer_mixing: Literal["concat", "sum", "last"] = "concat", orthogonality: float = 0.0,
                 head_hidden: Sequence[int] = (64,), dropout: float = 0.0) -> None:
        check_count("subspaces", subspaces)
        check_choice("layer_mixing", layer_mixing, ("concat", "sum", "last"))
        if (isinstance(orthogonality, bool) or not isinstance(orthogonality, (int, float))
                or not 0 <= orthogonality < float("inf")):
            raise ValueError(f"orthogonality must be a number >= 0, got {orthogonality!r}")
        n = blocks.n_layers
        if layer_mixing == "sum" and any(w != blocks.out_dim for w in blocks.widths[:-1]):
            raise ValueError(f"layer_mixing 'sum' adds the layer outputs, so every layer must be as wide as the "
                             f"last one ({blocks.out_dim} features); the layers have {list(blocks.widths[:-1])} "
                             "before it. Use layer_mixing: concat")
        head_in = blocks.out_dim + (sum(blocks.widths[:-1]) if layer_mixing == "concat" else 0)
        super().__init__(tasks, blocks, stitch_after, head_in, head_hidden, dropout)
        narrow = [(i, blocks.widths[i]) for i in self.stitched if blocks.widths[i] < subspaces]
        if narrow:
            raise ValueError(f"subspaces: {subspaces} pieces do not fit layer {narrow[0][0]}, which has only "
                             f"{narrow[0][1]} features; use fewer subspaces or stitch_after without it")
        self.subspaces, self.layer_mixing, self.orthogonality = subspaces, layer_mixing, float(orthogonality)
        T, k = len(self.task_names), subspaces
        # task-major order of pieces: (t, a) is row t*k + a; alpha is the task matrix on every subspace alone
        alpha = torch.kron(mixing_init(init, T), torch.eye(k))
        self.alphas = nn.ParameterDict({str(i): nn.Parameter(alpha.clone()) for i in self.stitched})
        if layer_mixing != "last":
            beta = torch.ones(n) if layer_mixing == "concat" else torch.full((n,), 1.0 / n)
            self.betas = nn.ParameterDict({t: nn.Parameter(beta.clone()) for t in self.task_names})
        self._terms: dict[str, Tensor] | None = None

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, hidden: Sequence[int] = (256, 128),
                head_hidden: Sequence[int] = (64,), embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD,
                embedding_width: str = "per_column", dropout: float = 0.0, subspaces: int = 2,
                stitch_after: Sequence[int] | None = None, init: Literal["identity", "misra"] = "misra",
                layer_mixing: Literal["concat", "sum", "last"] = "concat", orthogonality: float = 0.0,
                batch_norm: bool = True) -> "Sluice":
        """Per task an embedding encoder and the MLP layers `hidden`, cut into `subspaces` and mixed."""
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, subspaces, stitch_after, init, layer_mixing, orthogonality, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, hidden: Sequence[int] = (50,), head_hidden: Sequence[int] = (50,),
              dropout: float = 0.0, subspaces: int = 2, stitch_after: Sequence[int] | None = None,
              init: Literal["identity", "misra"] = "misra", layer_mixing: Literal["concat", "sum", "last"] = "concat",
              orthogonality: float = 0.0, batch_norm: bool = False) -> "Sluice":
        """Per task the LeNet-like layers (convs first, then fully connected; channels are cut into subspaces)."""
        blocks = ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout, batch_norm)
        return cls(tasks, blocks, subspaces, stitch_after, init, layer_mixing, orthogonality, head_hidden, dropout)

    # -- pieces
    def _padded(self, h: Tensor) -> Tensor:
        extra = -h.shape[1] % self.subspaces
        if not extra:
            return h
        pad = [0, 0] * (h.dim() - 2) + [0, extra]  # F.pad counts from the last dim
        return F.pad(h, pad)

    def _mix(self, i: int, h: dict[str, Tensor], rows: list[str]) -> dict[str, Tensor]:
        T, k, width = len(self.task_names), self.subspaces, self.blocks.widths[i]
        alpha = self.alphas[str(i)]
        if len(rows) < T:
            alpha = alpha[[self.task_names.index(t) * k + a for t in rows for a in range(k)]]
        stack = torch.stack([self._padded(h[t]) for t in self.task_names])  # [T, N, k*m, ...]
        n, rest = stack.shape[1], stack.shape[3:]
        pieces = stack.reshape((T, n, k, -1) + rest).movedim(2, 1).reshape((T * k, n, -1) + rest)
        mixed = torch.tensordot(alpha.to(stack.dtype), pieces, dims=1)  # [R*k, N, m, ...]
        out = mixed.reshape((len(rows), k, n, -1) + rest).movedim(1, 2).reshape((len(rows), n, -1) + rest)
        return {t: out[r, :, :width] for r, t in enumerate(rows)}

    # -- orthogonality
    def _layer_output(self, i: int, h: dict[str, Tensor], asked: list[str]) -> None:
        if i == 0:
            self._terms = None
        if not (self.orthogonality and self.training and torch.is_grad_enabled() and i in self.stitched):
            return
        if self._terms is None:
            self._terms = {}
        for t in asked:
            term = self.orthogonality * self.subspace_overlap(h[t])
            self._terms[t] = term if t not in self._terms else self._terms[t] + term

    def subspace_overlap(self, h: Tensor) -> Tensor:
        """``sum_{a<b} ||G_a^T G_b||_F^2 / M^2`` for the subspaces G_a of one layer output h [N, C, ...]."""
        x = self._padded(h).movedim(1, -1)
        x = x.reshape(-1, x.shape[-1])  # [M, k*m]
        k, m = self.subspaces, x.shape[1] // self.subspaces
        gram = (x.T @ x) / x.shape[0]
        total = gram.new_zeros(())
        for a in range(k):
            for b in range(a + 1, k):
                total = total + gram[a * m:(a + 1) * m, b * m:(b + 1) * m].square().sum()
        return total

    def penalties(self, tasks: Sequence[str]) -> dict[str, Tensor]:
        """Per asked task its column's orthogonality term from the latest training forward (the engine asks
        once, after the step's forward; the terms are handed over, not kept); empty when orthogonality is 0 or
        no such forward computed the task."""
        if not self.orthogonality or not self.stitched or self._terms is None:
            return {}
        terms, self._terms = self._terms, None  # read once: the step's graph is not kept past the step
        return {t: terms[t] for t in tasks if t in terms}

    # -- layer mixing
    def _keeps_layer_outputs(self) -> bool:
        return self.layer_mixing != "last"

    def _head_input(self, task: str, outputs: list[Tensor]) -> Tensor:
        last = self.blocks.flat(outputs[-1])
        if self.layer_mixing == "last":
            return last
        beta = self.betas[task].to(last.dtype)
        parts = [h.flatten(2).mean(2) if h.dim() > 2 else h for h in outputs[:-1]] + [last]
        if self.layer_mixing == "sum":
            return sum(beta[l] * p for l, p in enumerate(parts))
        return torch.cat([beta[l] * p for l, p in enumerate(parts)], dim=1)

    def _mixing_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.alphas.values())

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        yield from super().task_parameters(task)
        if self.layer_mixing != "last":
            yield self.betas[task]
