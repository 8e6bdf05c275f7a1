"""The README's Python example: your own tensors, three kinds of task, missing labels, fit/evaluate/predict."""
import torch

from multitask import HardSharing, InputSchema, MultiTaskData, Task, Trainer, Uncertainty

x = torch.randn(2000, 10)
tasks = [Task("price", "regression"), Task("clicked", "binary"), Task("category", "multiclass", n_outputs=3)]
clicked = (x[:, 1] > 0).float()
clicked[::4] = float("nan")                                    # missing labels: NaN (or -1 for classes)
data = MultiTaskData(x, {"price": x[:, 0] * 2 + 0.1 * torch.randn(2000), "clicked": clicked,
                         "category": torch.bucketize(x[:, 2].contiguous(), torch.tensor([-0.5, 0.5]))})
train, test = data.subset(torch.arange(1600)), data.subset(torch.arange(1600, 2000))

model = HardSharing.tabular(tasks, InputSchema(num_features=10), hidden=(64, 32))
trainer = Trainer(model, tasks, Uncertainty(tasks), epochs=20, batch_size=64, progress=False)
trainer.fit(train, val=test)
print(trainer.evaluate(test)["metrics"])                       # {'price': {'mse': ..., 'r2': ...}, ...}
print(trainer.predict(test.inputs[:3], tasks=["clicked"]))     # runs only the 'clicked' head
