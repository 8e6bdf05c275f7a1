"""DSelect-k gates on MMoE's experts (Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong and Chi,
"DSelect-k: Differentiable Selection in the Mixture of Experts with Applications to Multi-Task Learning",
NeurIPS 2021).

MMoE with each task's softmax gate replaced by a differentiable sparse one: k single-expert selectors, each a
smooth-step binary code over the n experts (m = ceil(log2 n) bits: r(z)_e = prod_j [b_ej S(z_j) + (1 - b_ej)
(1 - S(z_j))] with S the cubic smooth-step of width gamma), combined by softmax weights: q = sum_i
softmax(alpha)_i r(z_i). Once S saturates (every |z_j| >= gamma/2) each selector names one expert, so at most
k experts get a nonzero weight, and the gate is still trained by ordinary gradients. Here z and alpha are linear
in the encoded input (per-example routing, as MMoE's gates).

n not a power of 2: code c >= n names expert c - 2^(m-1) (its top bit is dropped), so every code names an
expert, each selector's weights sum to 1 exactly and a saturated selector names one real expert (the reference
implementation leaves weight on the missing codes and adds a 1/sum penalty instead). The optional entropy
penalty ``entropy_reg * mean_rows sum_i H(r(z_i))`` pushes selectors to saturate; it enters each task's loss
through `penalties()`, computed from the step's encoded input with the input detached, so it trains the task's
own gate only (and works in every balancing mode).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs
from multitask.models.conv import ConvFeatures, ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, TabularEncoder
from multitask.models.mmoe import MMoE
from multitask.tasks import Task

ENTROPY_EPS = 1e-6  # r log(r + eps): finite value and gradient where a selector's weight is exactly 0
Z_INIT = 0.01  # selector logits start in [-gamma/100, gamma/100]: inside the cubic region, where S has a gradient


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """S(t): 0 for t <= -gamma/2, 1 for t >= gamma/2, -2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2 between;
    continuous with a continuous first derivative. (The cubic is evaluated on t clamped to the cubic region,
    where it reaches 0 and 1 at the ends, so large |t| cannot overflow it.)"""
    c = t.clamp(-gamma / 2, gamma / 2)
    return (-2.0 / gamma ** 3) * c ** 3 + (1.5 / gamma) * c + 0.5


def binary_codes(n_experts: int) -> tuple[Tensor, Tensor]:
    """(bits [2^m, m], fold [2^m, n]): code c's binary digits (most significant first) and which expert it
    names (c itself, or c - 2^(m-1) for the codes c >= n that have no expert)."""
    m = math.ceil(math.log2(n_experts)) if n_experts > 1 else 0
    codes = torch.arange(2 ** m)
    bits = ((codes.unsqueeze(1) >> torch.arange(m - 1, -1, -1)) & 1).float()
    expert = torch.where(codes < n_experts, codes, codes - 2 ** (m - 1) if m else codes)
    return bits, nn.functional.one_hot(expert, n_experts).float()


class DSelectGate(nn.Module):
    """One task's gate: ``forward(x) -> (weights [N, n], selectors [N, k, n])``; ``weights`` sums to 1 over the
    experts, ``selectors[:, i]`` is selector i's distribution r(z_i)."""

    def __init__(self, in_dim: int, n_experts: int, k: int, gamma: float) -> None:
        super().__init__()
        bits, fold = binary_codes(n_experts)
        self.register_buffer("bits", bits, persistent=False)
        self.register_buffer("fold", fold, persistent=False)
        self.k, self.n_bits, self.gamma = k, bits.shape[1], float(gamma)
        self.selector_logits = nn.Linear(in_dim, k * self.n_bits)
        nn.init.uniform_(self.selector_logits.weight, -Z_INIT * gamma, Z_INIT * gamma)
        nn.init.uniform_(self.selector_logits.bias, -Z_INIT * gamma, Z_INIT * gamma)
        # one selector has weight 1: no weight logits (they would get no gradient)
        self.weight_logits = nn.Linear(in_dim, k) if k > 1 else None

    def selectors(self, x: Tensor) -> Tensor:
        """[N, k, n]: r(z_i) for each row and selector, z = the selector logits of x."""
        s = smooth_step(self.selector_logits(x).view(x.shape[0], self.k, 1, self.n_bits), self.gamma)
        per_code = (self.bits * s + (1 - self.bits) * (1 - s)).prod(-1)  # [N, k, 2^m]
        return per_code @ self.fold

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r = self.selectors(x)
        if self.weight_logits is None:
            return r[:, 0], r
        alpha = torch.softmax(self.weight_logits(x), dim=-1)  # [N, k]
        return torch.einsum("nk,nke->ne", alpha, r), r


def check_gate_options(n_experts: int, k: int, gamma: float, entropy_reg: float) -> None:
    """k in 1..n_experts, gamma > 0, entropy_reg >= 0 (finite); errors name the option."""
    if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 2:
        raise ValueError(f"n_experts must be an integer >= 2 (the gate selects among experts), got {n_experts!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_experts:
        raise ValueError(f"k must be an integer in 1..n_experts ({n_experts}), got {k!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < float("inf"):
        raise ValueError(f"gamma must be a number > 0 (the width of the smooth-step's cubic part), got {gamma!r}")
    if (isinstance(entropy_reg, bool) or not isinstance(entropy_reg, (int, float))
            or not 0 <= entropy_reg < float("inf")):
        raise ValueError(f"entropy_reg must be a number >= 0, got {entropy_reg!r}")


class DSelectK(MMoE):
    """MMoE (shared encoder and experts, a tower per task) with a `DSelectGate` per task instead of a softmax
    gate; the shared representation is MMoE's (encoded input, expert outputs), so features mode works."""

    def __init__(self, tasks: Sequence[Task], encoder: nn.Module, in_dim: int, n_experts: int = 8, k: int = 2,
                 gamma: float = 1.0, entropy_reg: float = 0.0, expert_hidden: Sequence[int] = (64,),
                 tower_hidden: Sequence[int] = (32,), dropout: float = 0.0, batch_norm: bool = False) -> None:
        check_gate_options(n_experts, k, gamma, entropy_reg)
        super().__init__(tasks, encoder, in_dim, n_experts, expert_hidden, tower_hidden, dropout, batch_norm)
        self.k, self.gamma, self.entropy_reg = k, float(gamma), float(entropy_reg)
        self.gates = nn.ModuleDict({t: DSelectGate(in_dim, n_experts, k, gamma) for t in self.task_names})
        self._routing: Tensor | None = None

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, n_experts: int = 8, k: int = 2,
                gamma: float = 1.0, entropy_reg: float = 0.0, expert_hidden: Sequence[int] = (64,),
                tower_hidden: Sequence[int] = (32,), embedding_dim: int = 8,
                embedding_std: float | None = EMBEDDING_STD, embedding_width: str = "per_column",
                dropout: float = 0.0, batch_norm: bool = True) -> "DSelectK":
        """As `MMoE.tabular`, with k selectors of smooth-step width gamma per task gate."""
        check_gate_options(n_experts, k, gamma, entropy_reg)
        encoder = TabularEncoder(schema, embedding_dim, embedding_std, embedding_width)
        return cls(tasks, encoder, encoder.out_dim, n_experts, k, gamma, entropy_reg, expert_hidden, tower_hidden,
                   dropout, batch_norm)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, n_experts: int = 4, k: int = 2, gamma: float = 1.0, entropy_reg: float = 0.0,
              expert_hidden: Sequence[int] = (50,), tower_hidden: Sequence[int] = (50,), dropout: float = 0.0,
              batch_norm: bool = False) -> "DSelectK":
        """As `MMoE.image`: shared conv layers, then experts, DSelect-k gates and towers on their features."""
        check_gate_options(n_experts, k, gamma, entropy_reg)
        encoder = ConvFeatures(spec, conv_channels, kernel_size)
        return cls(tasks, encoder, encoder.out_dim, n_experts, k, gamma, entropy_reg, expert_hidden, tower_hidden,
                   dropout, batch_norm)

    def shared(self, inputs: Inputs) -> tuple[Tensor, Tensor]:
        x, experts = super().shared(inputs)
        # the encoded input of this training step, for the entropy penalty (`penalties`)
        keep = self.entropy_reg > 0 and self.training and torch.is_grad_enabled()
        self._routing = x.detach() if keep else None
        return x, experts

    def heads(self, representation: tuple[Tensor, Tensor], tasks: Sequence[str]) -> dict[str, Tensor]:
        x, experts = representation
        out = {}
        for t in tasks:
            weights, _ = self.gates[t](x)  # [N, E]
            out[t] = self.towers[t](torch.einsum("ne,ned->nd", weights, experts))
        return out

    def expert_weights(self, inputs: Inputs, task: str) -> Tensor:
        """[N, n_experts]: task's gate weights on these inputs (each row sums to 1)."""
        return self.gates[task](self.encoder(inputs))[0]

    def penalties(self, tasks: Sequence[str]) -> dict[str, Tensor]:
        """Per asked task, entropy_reg * (mean over rows of the summed entropies of its k selectors), on the
        last training step's encoded input (detached: the term trains the task's gate only). Read once per
        step; empty without such a step or with entropy_reg 0."""
        x, self._routing = self._routing, None
        if x is None:
            return {}
        terms = {}
        for t in tasks:
            r = self.gates[t].selectors(x)
            entropy = -(r * torch.log(r + ENTROPY_EPS)).sum((-1, -2)).mean()
            terms[t] = self.entropy_reg * entropy
        return terms
