"""Your own layers in any architecture family: a `Blocks` subclass (an encoder and numbered layers) given to
`Branched` here; every family's constructor takes one (docs/architectures.md)."""
import torch
from torch import nn

from multitask import Blocks, Branched, MultiTaskData, Task, Trainer
from multitask.balancing import MGDA


class Tanh(Blocks):
    """Three tanh layers on 8 numeric inputs."""

    in_width, widths, out_dim = 8, (32, 32, 16), 16

    def encoder(self) -> nn.Module:
        return nn.Identity()

    def layer(self, i: int, in_width: int | None = None) -> nn.Module:
        return nn.Sequential(nn.Linear(in_width or self.width_before(i), self.widths[i]), nn.Tanh())


g = torch.Generator().manual_seed(0)
x = torch.randn(1000, 8, generator=g)
w = torch.randn(8, 3, generator=g)
tasks = [Task("a", "regression"), Task("b", "regression"), Task("c", "binary")]
data = MultiTaskData(x, {"a": x @ w[:, 0], "b": x @ w[:, 0] + 0.1 * x @ w[:, 1], "c": (x @ w[:, 2] > 0).float()})
torch.manual_seed(0)
# layer 0 shared by all; from layer 1 on, a and b (related targets) share a branch and c has its own
model = Branched(tasks, Tanh(), branches=[["a", "b", "c"], [["a", "b"], ["c"]]], head_hidden=(8,))
trainer = Trainer(model, tasks, MGDA(tasks), epochs=12, batch_size=100, lr=5e-3, progress=False)
trainer.fit(data)
print({t: {m: round(v, 3) for m, v in ms.items()} for t, ms in trainer.evaluate(data)["metrics"].items()})
print("branches:", sorted(model.group_parameters()), "shared tensors:", len(list(model.shared_parameters())))
