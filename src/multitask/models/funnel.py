"""What the funnel families (`ESMM`, `AITM`) share: the tasks' `after` links read as a forest of binary steps
(impression -> click -> conversion), and a per-task tower built from `Blocks`.

A task's node modules (its tower, and in AITM its transfer and attention) are used by the losses of the task
and of every task after it (its subtree): shared when that is every task, the task's own when it is the task
alone, else a group keyed by the subtree.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from multitask.models.blocks import Blocks, column
from multitask.tasks import Task, check_dependencies


class Funnel:
    """The tasks' `after` links, checked for a funnel family: every task binary and in a chain (it follows a
    task or a task follows it), the links a forest (known tasks, no cycle)."""

    def __init__(self, tasks: Sequence[Task], family: str) -> None:
        for t in tasks:
            if t.kind != "binary":
                raise ValueError(f"{family}: task {t.name!r} is {t.kind}; every task of a funnel is binary (the "
                                 "probability of one step)")
        try:
            self.parent = check_dependencies(tasks)
        except ValueError as e:
            raise ValueError(f"{family}: {e}") from None
        self.names = [t.name for t in tasks]
        self.children = {t: [u for u in self.names if self.parent[u] == t] for t in self.names}
        for t in self.names:
            if self.parent[t] is None and not self.children[t]:
                others = [u for u in self.names if u != t]
                hint = f" (e.g. after: {others[0]})" if others else ""
                raise ValueError(f"{family}: task {t!r} is in no chain: give it `after`, the task it follows{hint}, "
                                 f"or name it in another task's `after`")
        self.path: dict[str, list[str]] = {}
        for t in self.names:
            chain, node = [], t
            while node is not None:
                chain.append(node)
                node = self.parent[node]
            self.path[t] = chain[::-1]  # root first
        self.subtree = {t: tuple(u for u in self.names if t in self.path[u]) for t in self.names}
        # the tasks every task follows (or is): a chain from the single root, when there is one root
        self.common = [t for t in self.names if len(self.subtree[t]) == len(self.names)]
        self.common.sort(key=lambda t: len(self.path[t]))


class Tower(nn.Module):
    """Layers ``shared_layers..`` of `blocks` (none when every layer is shared), flattened, then `head` (when
    given)."""

    def __init__(self, blocks: Blocks, shared_layers: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.body = column(blocks, shared_layers)
        self.flat: Callable[[Tensor], Tensor] = blocks.flat
        self.head = head if head is not None else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        return self.head(self.flat(self.body(h)))

