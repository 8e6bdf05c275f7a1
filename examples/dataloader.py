"""Training on data that need not fit in memory: a Dataset reading rows lazily from memory-mapped .npy files,
batched by a DataLoader with the library's `collate`, given straight to `Trainer.fit`.

`EpochBatchSampler` shuffles with a generator seeded by (seed, epoch), the order the in-memory batcher uses,
so the run resumes bit-identically and trains exactly as `Trainer.fit(MultiTaskData)` would on the same rows
(the last line checks it).
"""
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from multitask import HardSharing, InputSchema, MultiTaskData, Task, Trainer
from multitask.data import EpochBatchSampler, collate


class NpyRows(Dataset):
    """Rows of features.npy / price.npy / clicked.npy, read one at a time from the memory-mapped files."""

    def __init__(self, folder: Path) -> None:
        self.x = np.load(folder / "features.npy", mmap_mode="r")
        self.price = np.load(folder / "price.npy", mmap_mode="r")
        self.clicked = np.load(folder / "clicked.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        inputs = torch.from_numpy(np.array(self.x[i]))              # one row: float32[10]
        return inputs, {"price": float(self.price[i]), "clicked": float(self.clicked[i])}  # NaN = missing


# a table written to disk (in practice: far more rows than memory holds)
folder = Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
x = rng.standard_normal((3000, 10)).astype("float32")
clicked = (x[:, 1] > 0).astype("float32")
clicked[::4] = np.nan                                           # missing labels
np.save(folder / "features.npy", x)
np.save(folder / "price.npy", (2 * x[:, 0] + 0.1 * rng.standard_normal(3000)).astype("float32"))
np.save(folder / "clicked.npy", clicked)

tasks = [Task("price", "regression"), Task("clicked", "binary")]
rows = NpyRows(folder)
n_train = 2500                                                  # rows 0..2499 train, the rest test
loader = DataLoader(rows, batch_sampler=EpochBatchSampler(n_train, batch_size=64, seed=0), collate_fn=collate,
                    generator=torch.Generator())                # leaves the global RNG (dropout) untouched


def trained(train) -> Trainer:
    torch.manual_seed(0)
    model = HardSharing.tabular(tasks, InputSchema(num_features=10), hidden=(64, 32), dropout=0.1)
    trainer = Trainer(model, tasks, epochs=4, batch_size=64, seed=0, progress=False)
    trainer.fit(train)
    return trainer


trainer = trained(loader)
test = MultiTaskData(*collate([rows[i] for i in range(n_train, len(rows))]))  # small enough for memory
print(trainer.evaluate(test)["metrics"])
in_memory = trained(MultiTaskData(*collate([rows[i] for i in range(n_train)])))
same = all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(),
                                             in_memory.model.state_dict().values()))
print(f"same weights as the in-memory batcher: {same}")
