"""Branching at chosen depths: a tree of layers (Lu et al., CVPR 2017 "Fully-adaptive feature sharing";
Vandenhende et al., BMVC 2019 "Branched multi-task networks").

The config names, layer by layer, which tasks share a copy of that layer, e.g. for two layers
``branches: [[income, marital, education], [[income, education], [marital]]]``: layer 0 is shared by all
three tasks, layer 1 has one copy for income and education and one for marital. A layer's groups must split
the groups of the layer before (a tree); layers after the last entry keep its grouping; each task ends in its
own head. ``[[a, b, c]]`` is hard sharing; ``[[a], [b], [c]]`` at layer 0 is one model per task.

Shared parameters are the encoder and the leading layers that every task shares; their output is the
representation feature-mode balancing works on (when layer 0 is already split there is none). A copy shared
by some tasks only is a group parameter: it gets the plain sum of those tasks' gradients. `forward(tasks=...)`
runs only the copies on the asked tasks' paths, each once.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from torch import Tensor, nn

from multitask.models.base import Inputs, MultiTaskModel, has_hooks
from multitask.models.blocks import Blocks, ConvBlocks, MLPBlocks
from multitask.models.conv import ImageSpec
from multitask.models.layers import EMBEDDING_STD, InputSchema, task_heads
from multitask.tasks import Task

Group = tuple[str, ...]


def parse_branches(branches: Sequence[Any] | None, tasks: Sequence[str], n_layers: int) -> list[list[Group]]:
    """Per layer, the groups of tasks that share one copy of it (checked: each layer partitions the tasks and
    refines the layer before). A layer given as a flat list of names is one group."""
    if branches is None:
        return [[tuple(tasks)] for _ in range(n_layers)]
    if isinstance(branches, (str, bytes)) or not isinstance(branches, Sequence) or not branches:
        raise ValueError("branches: expected a list with one entry per layer, e.g. [[a, b, c], [[a, c], [b]]]")
    if len(branches) > n_layers:
        raise ValueError(f"branches: {len(branches)} layers given but the network has {n_layers} "
                         f"(one entry per layer of hidden/conv_channels)")
    layers: list[list[Group]] = []
    for i, entry in enumerate(branches):
        where = f"branches[{i}]"
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or not entry:
            raise ValueError(f"{where}: expected a list of task names or a list of groups, got {entry!r}")
        groups = [entry] if all(isinstance(x, str) for x in entry) else list(entry)
        parsed: list[Group] = []
        for g in groups:
            if isinstance(g, (str, bytes)) or not isinstance(g, Sequence) or not g or \
                    not all(isinstance(x, str) for x in g):
                raise ValueError(f"{where}: each group is a non-empty list of task names, got {g!r}")
            parsed.append(tuple(g))
        named = [t for g in parsed for t in g]
        unknown = sorted(set(named) - set(tasks))
        if unknown:
            raise ValueError(f"{where}: unknown task(s) {unknown}; the tasks are {list(tasks)}")
        twice = sorted({t for t in named if named.count(t) > 1})
        if twice:
            raise ValueError(f"{where}: task(s) {twice} are in more than one group")
        missing = [t for t in tasks if t not in named]
        if missing:
            raise ValueError(f"{where}: task(s) {missing} are in no group (every layer places every task)")
        if layers:
            for g in parsed:
                parents = {p for p in layers[-1] if set(g) & set(p)}
                if len(parents) > 1:
                    raise ValueError(f"{where}: group {list(g)} joins tasks that branches[{i - 1}] has already "
                                     f"split ({[list(p) for p in parents]}); a branch never merges again")
        # a canonical order (the tasks' order) so that names and results do not depend on how groups were listed
        layers.append(sorted((tuple(t for t in tasks if t in g) for g in parsed), key=lambda g: tasks.index(g[0])))
    while len(layers) < n_layers:
        layers.append(list(layers[-1]))
    return layers


def _key(i: int, group: Group) -> str:
    return f"{i}:" + "+".join(group)


class Branched(MultiTaskModel):
    """A tree of copies of the Blocks' layers, given by `branches` (see the module docstring); one MLP head
    per task after the last layer."""

    def __init__(self, tasks: Sequence[Task], blocks: Blocks, branches: Sequence[Any] | None = None,
                 head_hidden: Sequence[int] = (64,), dropout: float = 0.0) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.blocks = blocks
        self.layout = parse_branches(branches, self.task_names, blocks.n_layers)
        # leading layers that one group of every task shares: the shared trunk (depth k)
        self.depth = next((i for i, groups in enumerate(self.layout) if len(groups) > 1), blocks.n_layers)
        self.trunk = nn.Sequential(*(blocks.layer(i) for i in range(self.depth))) if self.depth else None
        self.encoders = nn.ModuleDict({"+".join(g): blocks.encoder() for g in self.layout[0]})
        self.nodes = nn.ModuleDict({_key(i, g): blocks.layer(i) for i in range(self.depth, blocks.n_layers)
                                    for g in self.layout[i]})
        self.task_heads = task_heads(tasks, blocks.out_dim, head_hidden, dropout)

    @classmethod
    def tabular(cls, tasks: Sequence[Task], schema: InputSchema, branches: Sequence[Any] | None = None,
                hidden: Sequence[int] = (256, 128), head_hidden: Sequence[int] = (64,), embedding_dim: int = 8,
                embedding_std: float | None = EMBEDDING_STD, embedding_width: str = "per_column",
                dropout: float = 0.0, batch_norm: bool = True) -> "Branched":
        """`branches` over the layers of `hidden` (MLP layers on categorical embeddings and numeric columns)."""
        blocks = MLPBlocks(schema, hidden, embedding_dim, dropout, embedding_std, embedding_width,
                           batch_norm=batch_norm)
        return cls(tasks, blocks, branches, head_hidden, dropout)

    @classmethod
    def image(cls, tasks: Sequence[Task], spec: ImageSpec, branches: Sequence[Any] | None = None,
              conv_channels: Sequence[int] = (10, 20), kernel_size: int = 5, hidden: Sequence[int] = (50,),
              head_hidden: Sequence[int] = (50,), dropout: float = 0.0, batch_norm: bool = False) -> "Branched":
        """`branches` over the conv layers then the fully connected ones (len(conv_channels) + len(hidden))."""
        return cls(tasks, ConvBlocks(spec, conv_channels, kernel_size, hidden, dropout,
                                     batch_norm), branches, head_hidden,
                   dropout)

    # ---------------------------------------------------------------------------------------------- structure
    def _group_of(self, i: int, task: str) -> Group:
        return next(g for g in self.layout[i] if task in g)

    def shared(self, inputs: Inputs) -> Any:
        if len(self.layout[0]) > 1:
            return inputs  # layer 0 is already split: nothing is shared, each branch encodes the raw inputs
        h = self.encoders["+".join(self.layout[0][0])](inputs)
        return self.trunk(h) if self.trunk is not None else h

    def heads(self, representation: Any, tasks: Sequence[str]) -> dict[str, Tensor]:
        cache: dict[str, Any] = {}
        split_at_input = len(self.layout[0]) > 1

        def value(i: int, group: Group) -> Any:  # the output of layer i's copy for `group` (i >= depth)
            key = _key(i, group)
            if key not in cache:
                if i == self.depth:
                    below = self.encoders["+".join(group)](representation) if split_at_input else representation
                else:
                    below = value(i - 1, self._group_of(i - 1, group[0]))
                cache[key] = self.nodes[key](below)
            return cache[key]

        out = {}
        for t in tasks:
            h = representation if self.depth == self.blocks.n_layers else \
                value(self.blocks.n_layers - 1, self._group_of(self.blocks.n_layers - 1, t))
            out[t] = self.task_heads[t](self.blocks.flat(h))
        return out

    def head_entries(self) -> dict[str, nn.Linear] | None:
        """The heads' first layers when every layer is shared (then the tree is hard sharing) and the heads
        are plain, unhooked MLPs starting with an nn.Linear."""
        if self.depth < self.blocks.n_layers or type(self).heads is not Branched.heads:
            return None
        entries = {}
        for t in self.task_names:
            head = self.task_heads[t]
            if (type(head).forward is not nn.Sequential.forward or len(head) == 0
                    or not isinstance(head[0], nn.Linear) or has_hooks(head)):
                return None
            entries[t] = head[0]
        return entries

    # ---------------------------------------------------------------------------------------------- partition
    def _owned_by(self) -> Iterator[tuple[Group, nn.Module]]:
        """(the tasks that use it, module) for every encoder and layer copy after the shared trunk."""
        if len(self.layout[0]) > 1:
            for g in self.layout[0]:
                yield g, self.encoders["+".join(g)]
        for i in range(self.depth, self.blocks.n_layers):
            for g in self.layout[i]:
                yield g, self.nodes[_key(i, g)]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        if len(self.layout[0]) == 1:
            yield from self.encoders.parameters()
            if self.trunk is not None:
                yield from self.trunk.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        for g, module in self._owned_by():
            if g == (task,):
                yield from module.parameters()
        yield from self.task_heads[task].parameters()

    def group_parameters(self) -> dict[tuple[str, ...], list[nn.Parameter]]:
        groups: dict[tuple[str, ...], list[nn.Parameter]] = {}
        for g, module in self._owned_by():
            if len(g) > 1:
                groups.setdefault(g, []).extend(module.parameters())
        return groups
