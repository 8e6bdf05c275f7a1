"""Batches from data that need not fit in memory: the `collate` function for a `torch.utils.data.DataLoader`
and a sampler whose order depends on (seed, epoch) only, so a resumed run sees the same batches.

A `Dataset` item is one row: ``(inputs, targets)`` where `inputs` is a tensor (or a dict of tensors, e.g.
``{"num": float32[F], "cat": int64[C]}``) and `targets` is ``{task: label}`` (a number, or a tensor for
multilabel / wide regression; NaN or -1 for a missing label). `collate` stacks rows into the structure
the in-memory batcher gives, so `Trainer.fit(loader)` trains exactly as `Trainer.fit(data)` does on the same
batch order (see examples/dataloader.py).
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from multitask.data.dataset import MultiTaskData, index_inputs
from multitask.data.sampling import epoch_generator, shuffled_batches


def _stack(values: Sequence[Any], what: str) -> Tensor:
    first = values[0]
    if isinstance(first, Tensor):
        return torch.stack(list(values))
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        raise TypeError(f"collate: {what} must be a tensor or a number per row, got {type(first).__name__}")
    if isinstance(first, int) and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.int64)  # class labels (-1 = missing)
    return torch.tensor(values, dtype=torch.float32)  # 0/1 and regression labels (NaN = missing)


def collate(rows: Sequence[tuple[Any, Mapping[str, Any]]]) -> tuple[Any, dict[str, Tensor]]:
    """Rows ``(inputs, {task: label})`` as one batch ``(inputs, {task: Tensor})``: tensors stacked along a new
    first dimension (a dict of inputs key by key); Python ints become int64 labels, floats float32."""
    if not rows:
        raise ValueError("collate: an empty batch")
    inputs = [r[0] for r in rows]
    if isinstance(inputs[0], Mapping):
        batch_inputs: Any = {k: _stack([x[k] for x in inputs], f"input {k!r}") for k in inputs[0]}
    else:
        batch_inputs = _stack(inputs, "inputs")
    tasks = list(rows[0][1])
    return batch_inputs, {t: _stack([r[1][t] for r in rows], f"the label of task {t!r}") for t in tasks}


class RowsDataset(torch.utils.data.Dataset):
    """The rows of an in-memory `MultiTaskData` as a map-style Dataset (mostly for tests and comparisons)."""

    def __init__(self, data: MultiTaskData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Tensor]]:
        idx = torch.tensor(i)
        return index_inputs(self.data.inputs, idx), {t: y[idx] for t, y in self.data.targets.items()}


class EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches of row indices whose order depends on (seed, epoch) alone: the order the in-memory
    batcher uses. `Trainer.fit` calls `set_epoch` on the loader's batch sampler before each epoch, so a
    resumed run gets the batches it would have had (pass it as ``DataLoader(..., batch_sampler=...)``)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.epoch = int(n), int(batch_size), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in shuffled_batches(self.n, self.batch_size, epoch_generator(self.seed, self.epoch)):
            yield idx.tolist()


__all__ = ["collate", "RowsDataset", "EpochBatchSampler"]
