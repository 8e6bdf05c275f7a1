"""Batch plans: which rows of an in-memory `MultiTaskData` make each training step of an epoch.

`Trainer.fit` takes a `MultiTaskData` (it is then wrapped in `ShuffledBatches`, the default batcher), any
`BatchPlan`, or any iterable of ``(inputs, targets)`` batches. A plan draws its order from the generator the
trainer hands it, seeded by ``(seed, epoch)`` alone (`epoch_generator`), so an epoch's batches are the same
after a resume.

Tasks from several sources (`multitask.data.sources`) are trained with `SourceBatches`, whose `rule` says
where each step's batch comes from:

- ``uniform``: one source per step, each with probability 1/K;
- ``proportional``: one source per step, with probability n_s / N (n_s its training rows, N their sum);
- ``temperature``: one source per step, with probability n_s^(1/τ) / Σ_r n_r^(1/τ) (τ = 1: proportional,
  τ → ∞: uniform);
- ``round_robin``: the sources in turn, in the order they are configured;
- ``mixed``: batches of the shuffled union of every source's rows (each row once per epoch).

Every rule's epoch has the same number of steps, ceil(N / batch_size): as many as one pass over the union
of the training rows takes (the default batcher's epoch, and exactly what ``mixed`` is), so that epochs,
schedules and early-stopping patience mean the same whatever the rule. With the one-source-per-step rules
each source keeps its own stream of batches: its rows shuffled and cut into batches (the last of a pass
shorter), a new shuffle when a pass is used up, and the next batch of that stream at every step that picks it.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from multitask.data.dataset import MultiTaskData

RULES = ("uniform", "proportional", "temperature", "round_robin", "mixed")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch `epoch` (0-based) of a run seeded `seed`: an epoch's order depends on these alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One shuffled pass over rows 0..n-1 cut into batches (the last one shorter)."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


class BatchPlan:
    """Rows of `data` for each step of an epoch. Subclasses define `epoch`; `log` adds to the epoch record."""

    data: MultiTaskData

    def steps(self, batch_size: int) -> int:
        """Steps in one epoch."""
        return math.ceil(len(self.data) / batch_size)

    def epoch(self, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
        """The row indices of each step of one epoch, in order."""
        raise NotImplementedError

    def log(self) -> dict[str, Any]:
        """What to add to the record of the epoch just iterated (e.g. steps per source); empty by default."""
        return {}


class ShuffledBatches(BatchPlan):
    """The default batcher: every row once per epoch, in a shuffled order, in batches of `batch_size`."""

    def __init__(self, data: MultiTaskData) -> None:
        self.data = data

    def epoch(self, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
        yield from shuffled_batches(len(self.data), batch_size, generator)


# ------------------------------------------------------------------------------------------ rules
class Rule:
    """Which source each step of an epoch draws its batch from (one source per step)."""

    name = ""

    def choose(self, sizes: Sequence[int], steps: int, generator: torch.Generator) -> Tensor:
        """The source index (into `sizes`) of each of `steps` steps."""
        raise NotImplementedError


class RandomRule(Rule):
    """Each step's source drawn independently with the probabilities `probabilities(sizes)`."""

    def probabilities(self, sizes: Sequence[int]) -> Tensor:
        raise NotImplementedError

    def choose(self, sizes: Sequence[int], steps: int, generator: torch.Generator) -> Tensor:
        return torch.multinomial(self.probabilities(sizes), steps, replacement=True, generator=generator)


class Uniform(RandomRule):
    """p_s = 1 / K: every source as often, whatever its size."""

    name = "uniform"

    def probabilities(self, sizes: Sequence[int]) -> Tensor:
        return torch.full((len(sizes),), 1.0 / len(sizes), dtype=torch.float64)


class Temperature(RandomRule):
    """p_s ∝ n_s^(1/τ): τ = 1 is proportional, larger τ flattens towards uniform (small sources seen more)."""

    name = "temperature"

    def __init__(self, temperature: float = 2.0) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def probabilities(self, sizes: Sequence[int]) -> Tensor:
        n = torch.tensor([float(s) for s in sizes], dtype=torch.float64)
        w = (n.log() / self.temperature).exp()  # n^(1/τ), computed in logs so large tables do not overflow
        return w / w.sum()


class Proportional(Temperature):
    """p_s = n_s / N: on average each row is seen once per epoch, as in one shuffled pass."""

    name = "proportional"

    def __init__(self) -> None:
        super().__init__(1.0)


class RoundRobin(Rule):
    """Source i mod K at step i: exact turns, in the configured order."""

    name = "round_robin"

    def choose(self, sizes: Sequence[int], steps: int, generator: torch.Generator) -> Tensor:
        return torch.arange(steps) % len(sizes)


class Mixed(Rule):
    """Not one source per step: batches of the shuffled union (`SourceBatches` treats it as one pass)."""

    name = "mixed"


def make_rule(name: str, temperature: float | None = None) -> Rule:
    """The rule called `name` (see `RULES`); `temperature` is for ``temperature`` only (default 2)."""
    if name not in RULES:
        raise ValueError(f"sampling must be one of {', '.join(RULES)}; got {name!r}")
    if name == "temperature":
        return Temperature(2.0 if temperature is None else temperature)
    return {"uniform": Uniform, "proportional": Proportional, "round_robin": RoundRobin, "mixed": Mixed}[name]()


# ------------------------------------------------------------------------------------------ sources
class SourceBatches(BatchPlan):
    """Batches of `data`, whose rows are the sources' rows one source after another (`sizes`, in order),
    drawn by `rule`. Logs the steps and rows per source of each epoch."""

    def __init__(self, data: MultiTaskData, sizes: Mapping[str, int], rule: Rule | str = "proportional",
                 temperature: float | None = None) -> None:
        self.data = data
        self.rule = make_rule(rule, temperature) if isinstance(rule, str) else rule
        self.names = list(sizes)
        self.sizes = [int(sizes[s]) for s in self.names]
        if any(n < 1 for n in self.sizes):
            empty = [s for s, n in zip(self.names, self.sizes) if n < 1]
            raise ValueError(f"source(s) {empty} have no training rows")
        if sum(self.sizes) != len(data):
            raise ValueError(f"the sources' sizes add up to {sum(self.sizes)} rows but the data has {len(data)}")
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.source_of_row = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        self._steps = [0] * len(self.sizes)
        self._rows = [0] * len(self.sizes)

    def epoch(self, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
        self._steps = [0] * len(self.sizes)
        self._rows = [0] * len(self.sizes)
        steps = self.steps(batch_size)
        if isinstance(self.rule, Mixed):
            for idx in ShuffledBatches(self.data).epoch(batch_size, generator):
                counts = torch.bincount(self.source_of_row[idx], minlength=len(self.sizes)).tolist()
                for s, k in enumerate(counts):
                    self._steps[s] += k > 0
                    self._rows[s] += k
                yield idx
            return
        choice = self.rule.choose(self.sizes, steps, generator)
        streams = []
        for s, (n, start) in enumerate(zip(self.sizes, self.starts)):
            needed = int((choice == s).sum())
            passes = math.ceil(needed / math.ceil(n / batch_size)) if needed else 0
            stream = [b + start for _ in range(passes) for b in shuffled_batches(n, batch_size, generator)]
            streams.append(iter(stream))
        for s in choice.tolist():
            idx = next(streams[s])
            self._steps[s] += 1
            self._rows[s] += len(idx)
            yield idx

    def log(self) -> dict[str, Any]:
        return {"steps_per_source": dict(zip(self.names, self._steps)),
                "rows_per_source": dict(zip(self.names, self._rows))}


__all__ = ["RULES", "BatchPlan", "ShuffledBatches", "SourceBatches", "Rule", "Uniform", "Proportional",
           "Temperature", "RoundRobin", "Mixed", "make_rule", "epoch_generator", "shuffled_batches"]
