"""Customized Gate Control and Progressive Layered Extraction (Tang et al., RecSys 2020): task and shared experts.

Tang, Liu, Zhao and Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020.

MMoE shares every expert, so tasks compete for them (the "seesaw" of one task improving as another degrades).
CGC gives each task its own experts beside shared ones: task t's gate mixes only its experts and the shared
ones, and its tower reads that mixture. PLE stacks CGC levels ("extraction networks"): in every level but the
last, a shared gate over all experts feeds the next level's shared experts, and each task's mixture feeds its
own experts and gate in the next level.

What is shared, exactly (every task's loss depends on it): the encoder (and any shared bottom layers), every
expert of the inner levels (task experts too: they feed the shared gate), the inner shared gates, the task
gates of the levels before the second-to-last, and the last level's shared experts. A task's own parameters:
its gate of the second-to-last level (its mixture feeds only its own last-level experts and gate), its
last-level experts and gate, its tower. CGC (one level): the shared experts are shared, the rest is the task's.

Cost: (T * n_task_experts + n_shared_experts) expert networks per level, each an expert_hidden MLP (a copy
of the layers of `Blocks` after the shared bottom); a forward runs every inner-level expert whatever tasks are
asked for, plus each asked task's last-level experts, gates and tower (it skips the other tasks' own work).
Each level's experts, and its (asked) tasks' gates, run as one concatenated matmul per layer, and the
mixtures as batched matmuls (`multitask.models.experts`): only the towers loop over tasks.
Features mode works on the representation (the last shared mixtures' inputs and expert outputs, see `shared`).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks, check_depth, column
from multitask.models.conv import ImageSpec
from multitask.models.experts import gate_weights, mix, mix_own_and_shared, run_experts, task_blocks
from multitask.models.layers import EMBEDDING_STD, InputSchema, check_widths, mlp
from multitask.tasks import Task


def _count(option: str, value: int, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{option} must be an integer >= {low}, got {value!r}")


class Level(nn.Module):
    """One extraction level: per task `n_task` experts and a gate over them and the `n_shared` shared ones; and,
    except in the last level, a shared gate over every expert of the level."""

    def __init__(self, task_names: Sequence[str], make_expert, n_task: int, n_shared: int, gate_in: int,
                 last: bool) -> None:
        super().__init__()
        self.task_experts = nn.ModuleDict({t: nn.ModuleList(make_expert() for _ in range(n_task))
                                           for t in task_names})
        self.shared_experts = nn.ModuleList(make_expert() for _ in range(n_shared))
        self.task_gates = nn.ModuleDict({t: nn.Linear(gate_in, n_task + n_shared) for t in task_names})
        self.shared_gate = None if last else nn.Linear(gate_in, len(task_names) * n_task + n_shared)


class PLE(MultiTaskModel):
    """Progressive Layered Extraction (Tang et al., RecSys 2020): levels of task-specific and shared experts.

    `n_levels` extraction levels of experts built from `blocks` (layers ``shared_layers..`` of it; layers
    before that and its encoder form a shared bottom), then one tower (an MLP of `tower_hidden`) per task.

    Gates read the bottom's output flattened (`in_dim` features; default: the width `blocks` gives after
    layer ``shared_layers - 1``, or its `in_width`) in the first level, the previous level's mixtures after.
    Experts of the second and later levels read a mixture, [N, blocks.out_dim]: their first layer must take a
    flat input of that width (true of `MLPBlocks` and of the dense layers of `ConvBlocks`).
    """

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, n_levels: int = 2, n_shared_experts: int = 2,
                 n_task_experts: int = 2, tower_hidden: Sequence[int] = (32,), dropout: float = 0.0,
                 shared_layers: int = 0, in_dim: int | None = None) -> None:
        super().__init__()
        _count("n_levels", n_levels)
        _count("n_shared_experts", n_shared_experts)
        _count("n_task_experts", n_task_experts)
        check_depth("shared_layers", shared_layers, blocks, allow_end=False)
        if in_dim is None:
            in_dim = blocks.in_width if shared_layers == 0 else blocks.widths[shared_layers - 1]
        _count("in_dim", in_dim)
        self.task_names = [t.name for t in tasks]
        self.n_levels = n_levels
        self.flat = blocks.flat
        self.encoder = blocks.encoder()
        self.bottom = column(blocks, 0, shared_layers)
        d = blocks.out_dim

        def expert(level: int):
            def make() -> nn.Module:
                first = blocks.layer(shared_layers, None if level == 0 else d)
                return nn.Sequential(first, *(blocks.layer(i) for i in range(shared_layers + 1, blocks.n_layers)))
            return make

        self.levels = nn.ModuleList(
            Level(self.task_names, expert(k), n_task_experts, n_shared_experts, in_dim if k == 0 else d,
                  last=k == n_levels - 1)
            for k in range(n_levels))
        self.towers = nn.ModuleDict({t.name: mlp(d, tower_hidden, t.out_dim, dropout=dropout, option="tower_hidden")
                                     for t in tasks})

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, n_levels: int = 2, n_shared_experts: int = 2,
                n_task_experts: int = 2, expert_hidden: Sequence[int] = (64,), tower_hidden: Sequence[int] = (32,),
                embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD, embedding_width: str = "per_column",
                dropout: float = 0.0, batch_norm: bool = True) -> "PLE":
        """Categorical embeddings shared (`TabularEncoder`'s options); every expert an MLP of `expert_hidden`
        (with BatchNorm1d when `batch_norm`)."""
        blocks = _table_blocks(schema, expert_hidden, embedding_dim, embedding_std, embedding_width, dropout,
                               batch_norm)
        return cls(tasks, blocks, n_levels=n_levels, n_shared_experts=n_shared_experts,
                   n_task_experts=n_task_experts, tower_hidden=tower_hidden, dropout=dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, n_levels: int = 2, n_shared_experts: int = 1, n_task_experts: int = 1,
              expert_hidden: Sequence[int] = (50,), tower_hidden: Sequence[int] = (50,), dropout: float = 0.0,
              batch_norm: bool = False) -> "PLE":
        """The conv layers shared (as in `MMoE.image`); experts are fully connected `expert_hidden` layers
        reading their flattened features."""
        blocks = _image_blocks(spec, conv_channels, kernel_size, expert_hidden, dropout, batch_norm)
        return cls(tasks, blocks, n_levels=n_levels, n_shared_experts=n_shared_experts,
                   n_task_experts=n_task_experts, tower_hidden=tower_hidden, dropout=dropout,
                   shared_layers=blocks.n_conv, in_dim=blocks.flat_conv)

    # ------------------------------------------------------------------------------------------- forward
    # Experts of a level run as one matmul per layer, the gates of a level's (asked) tasks as one Linear and one
    # softmax, and the mixtures as batched matmuls (`multitask.models.experts`); no loop over tasks but the
    # towers'. Task mixtures are [N, k, d] for k tasks, task experts [N, k, n_task, d].
    def _experts(self, experts: Sequence[nn.Module], x: Tensor, groups: int | None = None) -> Tensor:
        return run_experts(experts, x, groups, self.flat)  # [N, m, d]; grouped: [N, G, m / G, d]

    def _level_experts(self, level: Level, x: Tensor, s_in: Tensor, grouped: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(E [N, T, n_task, d], Es [N, n_shared, d], all [N, T * n_task + n_shared, d] or None): the level's
        task experts (reading x, or x[:, i] for task i when `grouped`) and shared experts (reading s_in); when
        every expert reads the same input, one run gives both, and `all` is their concatenation."""
        T = len(self.task_names)
        task = [e for t in self.task_names for e in level.task_experts[t]]
        if grouped:
            return self._experts(task, x, groups=T), self._experts(level.shared_experts, s_in), None
        both = self._experts(task + list(level.shared_experts), x)
        return both[:, :len(task)].unflatten(1, (T, len(task) // T)), both[:, len(task):], both

    @staticmethod
    def _shared_mix(gate: nn.Module, gate_input: Tensor, E: Tensor, Es: Tensor, both: Tensor | None) -> Tensor:
        """The shared gate's mixture [N, d] of every expert of the level (task experts, then shared)."""
        w = gate_weights([gate], gate_input)  # [N, 1, T * n_task + n_shared]
        if both is not None:
            return mix(w, both)[:, 0]
        T, n = E.shape[1], E.shape[2]  # E a view of a [T, N, ...] product (grouped): one term per expert
        out = mix(w[..., T * n:], Es)[:, 0]
        w_task = w[:, 0, :T * n].unflatten(1, (T, n))
        for t in range(T):
            for j in range(n):
                out.addcmul_(w_task[:, t, j, None], E[:, t, j])
        return out

    def shared(self, inputs: Inputs) -> tuple[Tensor, ...]:
        """CGC (one level): (x, S), the bottom's output and the shared experts' outputs [N, n_shared, d].
        PLE: (G, E, Es, S): the task gates' inputs of the second-to-last level (the flattened bottom output
        [N, D] when that level is the first, else the task mixtures [N, T, d]), that level's task experts
        [N, T, n_task, d] and shared experts [N, n_shared, d], and the last level's shared experts (reading
        the shared gate's mixture)."""
        x = self.bottom(self.encoder(inputs))
        if self.n_levels == 1:
            return x, self._experts(self.levels[0].shared_experts, x)
        xf = self.flat(x)
        ins, gins, s_in, s_gin, grouped = x, xf, x, xf, False
        for level in self.levels[:-2]:  # inner levels whose task gates are shared: computed in full
            E, Es, both = self._level_experts(level, ins, s_in, grouped)
            w = gate_weights([level.task_gates[t] for t in self.task_names], gins, grouped)
            ins = gins = mix_own_and_shared(w, E, Es)  # [N, T, d]
            s_in = s_gin = self._shared_mix(level.shared_gate, s_gin, E, Es, both)
            grouped = True
        level = self.levels[-2]
        E, Es, both = self._level_experts(level, ins, s_in, grouped)
        S = self._experts(self.levels[-1].shared_experts, self._shared_mix(level.shared_gate, s_gin, E, Es, both))
        return (xf if self.n_levels == 2 else gins), E, Es, S

    def heads(self, representation: tuple[Tensor, ...], tasks: Sequence[str]) -> dict[str, Tensor]:
        """The asked tasks a few at a time (`task_blocks`: a task's experts and mixture are n_task + 1
        tensors the size of an expert's output)."""
        S = representation[-1]
        per_task = (len(self.levels[-1].task_experts[self.task_names[0]]) + 1) * S[:, 0].nelement() * S.element_size()
        out: dict[str, Tensor] = {}
        for block in task_blocks(tasks, per_task):
            out.update(self._heads(representation, block))
        return out

    def _heads(self, representation: tuple[Tensor, ...], tasks: Sequence[str]) -> dict[str, Tensor]:
        last, k = self.levels[-1], len(tasks)
        own = [e for t in tasks for e in last.task_experts[t]]
        if self.n_levels == 1:
            x, S = representation
            h, g = x, self.flat(x)  # every asked task's experts read x, its gate the flattened x
            grouped = None
        else:
            G, E, Es, S = representation
            idx = [self.task_names.index(t) for t in tasks]
            if idx == list(range(idx[0], idx[0] + k)):  # consecutive tasks: views, no copy
                E = E[:, idx[0]:idx[0] + k]
                G = G if self.n_levels == 2 else G[:, idx[0]:idx[0] + k]
            else:  # copies of the asked tasks' slices only
                E = torch.stack([E[:, i] for i in idx], 1)
                G = G if self.n_levels == 2 else torch.stack([G[:, i] for i in idx], 1)
            w = gate_weights([self.levels[-2].task_gates[t] for t in tasks], G, grouped=self.n_levels > 2)
            h = g = mix_own_and_shared(w, E, Es)  # [N, k, d]: task i's last-level experts and gate read g[:, i]
            grouped = k
        experts = self._experts(own, h, groups=grouped)
        if grouped is None:
            experts = experts.unflatten(1, (k, len(own) // k))  # [N, k, n_task, d]
        w = gate_weights([last.task_gates[t] for t in tasks], g, grouped=grouped is not None)
        mixed = mix_own_and_shared(w, experts, S)
        return {t: self.towers[t](mixed[:, i]) for i, t in enumerate(tasks)}

    # ------------------------------------------------------------------------------------------- partition
    def shared_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.encoder.parameters()
        yield from self.bottom.parameters()
        for k, level in enumerate(self.levels):
            if k < self.n_levels - 2:
                yield from level.parameters()
            elif k == self.n_levels - 2:
                yield from level.task_experts.parameters()
                yield from level.shared_experts.parameters()
                yield from level.shared_gate.parameters()
            else:
                yield from level.shared_experts.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        if self.n_levels >= 2:
            yield from self.levels[-2].task_gates[task].parameters()
        last = self.levels[-1]
        yield from last.task_experts[task].parameters()
        yield from last.task_gates[task].parameters()
        yield from self.towers[task].parameters()


class CGC(PLE):
    """Customized Gate Control (Tang et al., RecSys 2020): PLE with one level.

    Per task its own experts and a gate over them and the shared experts; no shared
    gate. Everything but the encoder (and shared bottom) and the shared experts is a task's own."""

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, n_shared_experts: int = 2, n_task_experts: int = 2,
                 tower_hidden: Sequence[int] = (32,), dropout: float = 0.0, shared_layers: int = 0,
                 in_dim: int | None = None) -> None:
        super().__init__(tasks, blocks, n_levels=1, n_shared_experts=n_shared_experts,
                         n_task_experts=n_task_experts, tower_hidden=tower_hidden, dropout=dropout,
                         shared_layers=shared_layers, in_dim=in_dim)

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, n_shared_experts: int = 2,
                n_task_experts: int = 2, expert_hidden: Sequence[int] = (64,), tower_hidden: Sequence[int] = (32,),
                embedding_dim: int = 8, embedding_std: float | None = EMBEDDING_STD, embedding_width: str = "per_column",
                dropout: float = 0.0, batch_norm: bool = True) -> "CGC":
        """As `PLE.tabular`, one level."""
        blocks = _table_blocks(schema, expert_hidden, embedding_dim, embedding_std, embedding_width, dropout,
                               batch_norm)
        return cls(tasks, blocks, n_shared_experts=n_shared_experts, n_task_experts=n_task_experts,
                   tower_hidden=tower_hidden, dropout=dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, conv_channels: Sequence[int] = (10, 20),
              kernel_size: int = 5, n_shared_experts: int = 1, n_task_experts: int = 1,
              expert_hidden: Sequence[int] = (50,), tower_hidden: Sequence[int] = (50,), dropout: float = 0.0,
              batch_norm: bool = False) -> "CGC":
        """As `PLE.image`, one level."""
        blocks = _image_blocks(spec, conv_channels, kernel_size, expert_hidden, dropout, batch_norm)
        return cls(tasks, blocks, n_shared_experts=n_shared_experts, n_task_experts=n_task_experts,
                   tower_hidden=tower_hidden, dropout=dropout, shared_layers=blocks.n_conv, in_dim=blocks.flat_conv)


def _table_blocks(schema: InputSchema, expert_hidden: Sequence[int], embedding_dim: int,
                  embedding_std: float | None, embedding_width: str, dropout: float, batch_norm: bool) -> MLPBlocks:
    return MLPBlocks(schema, expert_hidden, embedding_dim, dropout, embedding_std, embedding_width,
                     option="expert_hidden", batch_norm=batch_norm)


def _image_blocks(spec: ImageSpec, conv_channels: Sequence[int], kernel_size: int, expert_hidden: Sequence[int],
                  dropout: float, batch_norm: bool) -> ConvBlocks:
    check_widths("expert_hidden", expert_hidden)
    if not expert_hidden:
        raise ValueError("expert_hidden: needs at least one layer")
    return ConvBlocks(spec, conv_channels, kernel_size, expert_hidden, dropout, batch_norm, option="expert_hidden")
