"""torch.distributed for the `Trainer`: every rank trains on its shard of each global batch, and the gradient
engine reduces what the balancing method must see for the GLOBAL batch (`multitask.autograd.Reducer`).

- Launch: ``torchrun --nproc-per-node N -m multitask train CONFIG`` (or ``multitask train CONFIG --nproc N``),
  or, from Python, ``torch.distributed.init_process_group`` before building the `Trainer`; gloo on CPU, NCCL on
  CUDA (``cuda:LOCAL_RANK``).
- Data: ``trainer.batch_size`` is the GLOBAL batch; each step's rows (the order drawn from (seed, epoch), the same
  on every rank) are cut into `world_size` contiguous shards, rank r keeping shard r.
- Exactness: rank r's loss for task t is its share n_rt / N_t of the global mean loss (n_rt its labelled
  entries, N_t the global batch's, one all-reduce of T + 1 counts per step), so global losses and gradients are
  sums over ranks; the losses' VALUES are replaced by the global ones before any method sees them; after the
  engine, the model's `.grad` is summed over ranks in one flat all-reduce (`reduce_gradients`).
- Checkpoints, metrics.jsonl, trainer.json, progress bars and printing: rank 0 only; every rank saves nothing.

DDP's module wrapper is not used: the engine calls the model's parts (`shared`, `heads`) and writes `.grad`
itself (autograd.grad, per-task backward passes), which DDP's autograd hooks would neither see nor reduce. The
explicit sum after the step is exact and is what DDP's bucketed all-reduce computes, without its overlap of
communication with the backward pass. See docs/distributed.md.
"""
from __future__ import annotations

import datetime
import os
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from multitask.errors import DistributedError

R = TypeVar("R")


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    return rank_and_size()[0] == 0


def launched() -> bool:
    """True inside a process started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu", timeout_s: float = 600.0) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1): NCCL when `device` is
    CUDA (each rank on cuda:LOCAL_RANK), gloo otherwise. False (nothing done) in a single process."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return dist.is_available() and dist.is_initialized()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return True


def close() -> None:
    """Leave the process group (at the end of a launched run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of rank `rank` when `n` rows are cut into `world_size` contiguous shards whose sizes
    differ by at most one (the first n % world_size shards take the extra row), like `torch.tensor_split`."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ProcessGroupReducer:
    """The engine's `Reducer` over the default process group, plus the trainer's per-step collectives.

    `bytes` counts, per kind of reduction, the bytes this rank contributed to collectives (all-reduce: the
    tensor's size; all-gather: the padded piece it sends), for the distributed benchmark."""

    def __init__(self, device: torch.device) -> None:
        self.rank, self.world_size = rank_and_size()
        self.device = device
        self.backend = dist.get_backend()
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors (and CUDA ones by copying them)
        self.comm_device = device if self.backend == "nccl" else torch.device("cpu")
        self.row_share = 1.0
        self.bytes: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.seconds = 0.0  # wall time spent inside collectives (waiting for the other ranks included)
        self._reduced: set[int] = set()

    # ------------------------------------------------------------------ collectives, with a clear error
    def _run(self, what: str, fn: Callable[[], R]) -> R:
        start = time.perf_counter()
        try:
            return fn()
        except DistributedError:
            raise
        except (RuntimeError, ValueError) as e:  # gloo / NCCL: a peer closed its connection, a timeout, ...
            detail = " ".join(str(e).split())[:300]
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: the {what} collective failed, so another rank of the run "
                f"stopped (it crashed, was killed or raised an error; its own message says why). The last "
                f"checkpoint written is intact: continue with --resume. ({detail})") from None
        finally:
            self.seconds += time.perf_counter() - start

    def _count(self, kind: str, t: Tensor) -> None:
        self.bytes[kind] += t.numel() * t.element_size()
        self.calls[kind] += 1

    def all_reduce(self, x: Tensor, kind: str) -> Tensor:
        """`x` summed over ranks (a new tensor on x's device and dtype)."""
        buf = x.detach().to(self.comm_device, copy=True).contiguous()
        self._count(kind, buf)
        self._run(f"all-reduce ({kind})", lambda: dist.all_reduce(buf))
        return buf.to(x.device)

    # ------------------------------------------------------------------ the engine's Reducer
    def sum(self, x: Tensor, kind: str) -> Tensor:
        """The engine's reduction (`kind`: losses, gramian, jacobian): `x` summed over ranks."""
        return self.all_reduce(x, kind)

    def gather_rows(self, x: Tensor, dim: int, kind: str = "columns") -> tuple[Tensor, int]:
        """The ranks' `x` concatenated along `dim` in rank order (sizes along `dim` may differ; each piece is
        padded to the largest), and this rank's offset in it."""
        sizes = self._run("all-gather (sizes)", lambda: self._gather_sizes(x.shape[dim]))
        biggest = max(sizes)
        piece = x.detach().to(self.comm_device)
        if piece.shape[dim] < biggest:
            pad = list(piece.shape)
            pad[dim] = biggest - piece.shape[dim]
            piece = torch.cat([piece, piece.new_zeros(pad)], dim=dim)
        piece = piece.contiguous()
        out = [torch.empty_like(piece) for _ in range(self.world_size)]
        self._count(kind, piece)
        self._run(f"all-gather ({kind})", lambda: dist.all_gather(out, piece))
        full = torch.cat([o.narrow(dim, 0, s) for o, s in zip(out, sizes)], dim=dim)
        return full.to(x.device), sum(sizes[:self.rank])

    def _gather_sizes(self, n: int) -> list[int]:
        mine = torch.tensor([n], dtype=torch.long, device=self.comm_device)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine)
        return [int(o) for o in out]

    def mark_reduced(self, params: Sequence[torch.nn.Parameter]) -> None:
        """The engine wrote these parameters' global `.grad` (parameters-mode direction): not summed again."""
        self._reduced.update(id(p) for p in params)

    # ------------------------------------------------------------------ the trainer's collectives
    def shares(self, local: Sequence[float]) -> list[float]:
        """One all-reduce of this step's counts (rows, each task's labelled entries, ...): their global sums."""
        return self.all_reduce(torch.tensor(list(local), dtype=torch.float64), "counts").tolist()

    def shard(self, idx: Tensor) -> Tensor:
        """This rank's contiguous shard of a global batch's row indices."""
        a, b = shard_range(len(idx), self.rank, self.world_size)
        return idx[a:b]

    def reduce_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum `.grad` over ranks, in one flat all-reduce per dtype, for every trainable parameter not marked
        reduced by the engine. A parameter without a gradient on some rank counts as zeros there, and stays
        without one (None: the optimiser leaves it) only when no rank has a gradient for it."""
        todo = [p for p in params if p.requires_grad and id(p) not in self._reduced]
        self._reduced.clear()
        groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = defaultdict(list)
        for p in todo:
            groups[(p.dtype, p.device)].append(p)
        for (dtype, device), ps in groups.items():
            sizes = [p.numel() for p in ps]
            flat = torch.zeros(sum(sizes) + len(ps), dtype=dtype, device=device)
            offset = 0
            for k, (p, n) in enumerate(zip(ps, sizes)):
                if p.grad is not None:
                    flat[offset:offset + n] = p.grad.reshape(-1)
                    flat[sum(sizes) + k] = 1.0  # "has a gradient" flags, summed with the gradients
                offset += n
            flat = self.all_reduce(flat, "gradients")
            offset, flags = 0, flat[sum(sizes):]
            for k, (p, n) in enumerate(zip(ps, sizes)):
                p.grad = flat[offset:offset + n].view_as(p) if bool(flags[k] > 0) else None
                offset += n

    def broadcast_module(self, module: torch.nn.Module, buffers_only: bool = False) -> None:
        """Rank 0's parameters (unless `buffers_only`) and floating buffers on every rank, in one broadcast: the
        same start everywhere, and (after each step) rank 0's running statistics, as DDP's broadcast_buffers."""
        tensors = [] if buffers_only else [p.data for p in module.parameters()]
        tensors += [b for b in module.buffers() if b.is_floating_point()]
        if not tensors:
            return
        for dtype in {t.dtype for t in tensors}:
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.detach().reshape(-1).to(self.comm_device) for t in group])
            self._count("buffers" if buffers_only else "broadcast", flat)
            self._run("broadcast", lambda: dist.broadcast(flat, src=0))
            offset = 0
            with torch.no_grad():
                for t in group:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order."""
        out: list[Any] = [None] * self.world_size
        self._run("all-gather (objects)", lambda: dist.all_gather_object(out, obj))
        return out

    def barrier(self) -> None:
        self._run("barrier", lambda: dist.barrier())


def current(device: torch.device) -> ProcessGroupReducer | None:
    """The reducer of the default process group when it has more than one rank, else None."""
    return ProcessGroupReducer(device) if rank_and_size()[1] > 1 else None


def rank_device(device: str) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for a bare "cuda" under torchrun, else `device` as given."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None and rank_and_size()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return d


def rank_seed(seed: int, rank: int) -> int:
    """The seed of torch's global generator on rank `rank` (rank 0: the run's seed, as in one process): what
    differs per rank (dropout masks) must differ, while the data order and the balancers' draws use generators
    of their own, seeded by `seed` alone and so the same on every rank."""
    return seed + 1_000_003 * rank


def balancer_generator(seed: int) -> torch.Generator:
    """The generator of a balancer's per-step randomness (shared by the ranks: the same draws on each)."""
    return torch.Generator().manual_seed((seed * 2_654_435_761 + 97) % (2 ** 63))


__all__ = ["ProcessGroupReducer", "DistributedError", "init_from_env", "close", "current", "is_main",
           "rank_and_size", "launched", "shard_range", "rank_device", "rank_seed", "balancer_generator"]
