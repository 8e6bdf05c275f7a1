"""Your own architecture with gradient balancing: a MultiTaskModel subclass, optionally naming its heads'
entry layers so that feature-mode methods work on small per-head factors (docs/balancing.md)."""
import torch
from torch import nn

from multitask import MultiTaskData, Task, Trainer, autograd
from multitask.balancing import MGDA
from multitask.models.base import MultiTaskModel


class TwoTower(MultiTaskModel):
    """A shared residual MLP trunk; each head is Linear -> GELU -> Linear on the trunk's output."""

    def __init__(self, tasks, width=32):
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.stem = nn.Linear(8, width)
        self.block = nn.Sequential(nn.GELU(), nn.Linear(width, width))
        self.entry = nn.ModuleDict({t.name: nn.Linear(width, 16) for t in tasks})
        self.out = nn.ModuleDict({t.name: nn.Sequential(nn.GELU(), nn.Linear(16, t.out_dim)) for t in tasks})

    def shared(self, inputs):
        h = self.stem(inputs)
        return h + self.block(h)

    def heads(self, z, tasks):
        return {t: self.out[t](self.entry[t](z)) for t in tasks}  # each head reads z through entry[t] only

    def shared_parameters(self):
        return [*self.stem.parameters(), *self.block.parameters()]

    def task_parameters(self, task):
        return [*self.entry[task].parameters(), *self.out[task].parameters()]

    def head_entries(self):  # optional: without it the engine takes the generic path, same result
        return dict(self.entry.items())


class TwoTowerWithoutEntries(TwoTower):
    def head_entries(self):
        return None


torch.manual_seed(0)
x = torch.randn(1200, 8)
tasks = [Task("y", "regression"), Task("positive", "binary")]
data = MultiTaskData(x, {"y": x[:, :3].sum(1), "positive": (x[:, 3] > 0).float()})
train, test = data.subset(torch.arange(1000)), data.subset(torch.arange(1000, 1200))

model = TwoTower(tasks)
# the same model without head entries takes the generic path: one step gives the same trunk gradient
generic = TwoTowerWithoutEntries(tasks)
generic.load_state_dict(model.state_dict())
by = {t.name: t for t in tasks}
loss_of = lambda t, out: by[t].loss(out, train.targets[t])  # noqa: E731
for m in (model, generic):
    autograd.backward(m, MGDA(tasks, mode="features"), train.inputs, loss_of)
print(f"factored vs generic trunk gradient, max difference: "
      f"{(model.stem.weight.grad - generic.stem.weight.grad).abs().max():.1e}")
model.zero_grad()

trainer = Trainer(model, tasks, MGDA(tasks, mode="features"), epochs=15, batch_size=50, progress=False)
before = trainer.evaluate(test)["loss"]
trainer.fit(train, val=test)
after = trainer.evaluate(test)["loss"]
print({t: f"{before[t]:.3f} -> {after[t]:.3f}" for t in before})  # test loss per task, before -> after
