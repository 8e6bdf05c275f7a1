"""Train a multitask model with a PyTorch Lightning Trainer (pip install 'multitask[lightning]').

The same model, tasks and balancer as with multitask's own Trainer; Lightning brings its Trainer, callbacks
and loggers. A loss balancer (Uncertainty) trains by Lightning's automatic optimisation, a gradient balancer
(MGDA) by manual optimisation through multitask's gradient engine.
"""
import warnings

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from multitask import BALANCERS, HardSharing, InputSchema, MultiTaskData, Task
from multitask.data.loading import RowsDataset, collate
from multitask.lightning import MultiTaskModule

warnings.filterwarnings("ignore", ".*does not have many workers.*")  # a tiny in-memory example
torch.manual_seed(0)
x = torch.randn(800, 10)
tasks = [Task("price", "regression"), Task("clicked", "binary")]
clicked = (x[:, 1] > 0).float()
clicked[::4] = float("nan")                                    # missing labels are masked, as in multitask
data = MultiTaskData(x, {"price": x[:, 0] * 2 + 0.1 * torch.randn(800), "clicked": clicked})
train, val = data.subset(torch.arange(600)), data.subset(torch.arange(600, 800))


def loader(split: MultiTaskData, shuffle: bool) -> DataLoader:
    return DataLoader(RowsDataset(split), batch_size=100, shuffle=shuffle, collate_fn=collate)


for name in ("uncertainty", "mgda"):
    model = HardSharing.tabular(tasks, InputSchema(num_features=10), hidden=(32,))
    module = MultiTaskModule(model, tasks, BALANCERS[name](tasks), lr=1e-2)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader(train, True), loader(val, False))
    m = trainer.callback_metrics
    print(f"{name}: val price r2={float(m['val/price/r2']):.3f} clicked auc={float(m['val/clicked/auc']):.3f} "
          f"weights={ {t: round(w, 3) for t, w in module.balancer.weights().items()} }")
