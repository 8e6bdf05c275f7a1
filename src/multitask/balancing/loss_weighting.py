"""Loss-based weighting methods that need no gradients: DWA, RLW, GLS (geometric mean) and FAMO."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from multitask.balancing.base import LossBalancer
from multitask.tasks import Task


def _require_positive(method: str, names: Sequence[str], L: Tensor, keep: Tensor) -> None:
    """Methods built on log-losses need L > 0: a negative loss is an error naming the task, not a silent clamp."""
    bad = [names[i] for i in range(len(names)) if bool(keep[i]) and float(L[i]) < 0]
    if bad:
        raise ValueError(f"{method} needs positive losses; task(s) {bad} have negative ones "
                         f"(shift them, e.g. FAMO's min_loss, or use another method)")


def _present_mask(names: Sequence[str], present: Mapping[str, bool] | None, device: torch.device) -> Tensor:
    if present is None:
        return torch.ones(len(names), dtype=torch.bool, device=device)
    return torch.tensor([bool(present[t]) for t in names], device=device)


class DWA(LossBalancer):
    """Dynamic Weight Average (Liu et al., CVPR 2019): w_k = T softmax(r_k / tau) with
    r_k = L_k(e-1) / L_k(e-2), the ratio of the last two epochs' mean training losses; 1 for the first two epochs."""

    name = "dwa"

    def __init__(self, tasks: Sequence[Task], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not temperature > 0:
            raise ValueError(f"dwa: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        T = len(tasks)
        self.register_buffer("history", torch.full((2, T), float("nan"), dtype=torch.float64))  # epochs e-2, e-1
        self.register_buffer("sums", torch.zeros(T, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(T, dtype=torch.float64))
        self.register_buffer("w", torch.ones(T))

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None) -> Tensor:
        self._check(losses)
        L = torch.stack([losses[t] for t in self.task_names])
        keep = _present_mask(self.task_names, present, L.device)
        self.sums += torch.where(keep, L.detach(), torch.zeros_like(L)).to(self.sums)
        self.counts += keep.to(self.counts)
        self._record(self.w.tolist())
        return (self.w.to(L.device) * L).sum()

    def epoch_end(self, epoch: int) -> None:
        means = self.sums / self.counts.clamp_min(1)
        self.history = torch.stack([self.history[1], means])
        self.sums.zero_()
        self.counts.zero_()
        if not torch.isnan(self.history).any():
            r = self.history[1] / self.history[0].clamp_min(1e-30)
            self.w = (len(self.task_names) * torch.softmax(r / self.temperature, dim=0)).float()


class RLW(LossBalancer):
    """Random Loss Weighting (Lin et al., TMLR 2022): fresh weights softmax(z), z ~ N(0, I), every step."""

    name = "rlw"

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None) -> Tensor:
        self._check(losses)
        L = torch.stack([losses[t] for t in self.task_names])
        w = torch.softmax(torch.randn(len(L), generator=self.generator), dim=0).to(L.device, L.dtype)
        self._record(w.tolist())
        return (w * L).sum()


class GeometricMean(LossBalancer):
    """GLS (Chennupati et al., CVPRW 2019): minimise the geometric mean (prod_t L_t)^(1/T) of the losses.

    Its gradient weights each task by (geometric mean) / (T L_t): small losses get large weights.
    Tasks without labels in the batch are left out of the product rather than zeroing it.
    """

    name = "gls"

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None) -> Tensor:
        self._check(losses)
        L = torch.stack([losses[t] for t in self.task_names])
        keep = _present_mask(self.task_names, present, L.device)
        _require_positive("gls", self.task_names, L.detach(), keep)
        logs = torch.where(keep, torch.log(L.clamp_min(1e-12)), torch.zeros_like(L))
        n = keep.sum().clamp_min(1)
        total = torch.exp(logs.sum() / n)
        w = torch.where(keep, total.detach() / (n * L.detach().clamp_min(1e-12)), torch.zeros_like(L))
        self._record(w.tolist())
        return total


class FAMO(LossBalancer):
    """FAMO (Liu et al., NeurIPS 2023): fast adaptive multitask optimisation, one backward per step.

    Task logits xi give z = softmax(xi); the model follows sum_i c z_i / l_i grad l_i with
    c = 1 / sum_j (z_j / l_j) (a balanced decrease of log-losses). After each step xi moves along
    -(dz/dxi)^T [log l(t) - log l(t+1)] with weight decay `gamma`, by Adam with rate `lr` as in the authors' code.
    Here l(t+1) is measured on the next batch (no extra forward pass); l_i = L_i - `min_loss` + 1e-8, where
    `min_loss` is one lower bound for all tasks or a mapping {task: bound}.
    """

    name = "famo"

    def __init__(self, tasks: Sequence[Task], lr: float = 0.025, gamma: float = 0.01,
                 min_loss: float | Mapping[str, float] = 0.0) -> None:
        super().__init__(tasks)
        T = len(tasks)
        self.lr, self.gamma = float(lr), float(gamma)
        if isinstance(min_loss, Mapping):
            unknown = [t for t in min_loss if t not in self.task_names]
            if unknown:
                raise KeyError(f"famo: min_loss names unknown task(s) {unknown}; tasks are {self.task_names}")
            bounds = [float(min_loss.get(t, 0.0)) for t in self.task_names]
        else:
            bounds = [float(min_loss)] * T
        self.register_buffer("min_loss", torch.tensor(bounds))  # a lower bound per task (or one for all)
        self.register_buffer("xi", torch.zeros(T))
        self.register_buffer("prev_log", torch.full((T,), float("nan")))
        self.register_buffer("m", torch.zeros(T))
        self.register_buffer("v", torch.zeros(T))
        self.register_buffer("t", torch.zeros((), dtype=torch.long))

    def _update_logits(self, log_l: Tensor, keep: Tensor) -> None:
        ok = keep & ~torch.isnan(self.prev_log)
        if not ok.any():
            return
        delta = torch.where(ok, self.prev_log - log_l, torch.zeros_like(log_l))
        z = torch.softmax(self.xi, 0)
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.xi  # (dz/dxi)^T delta + weight decay
        self.t += 1
        b1, b2 = 0.9, 0.999
        self.m.mul_(b1).add_((1 - b1) * grad)
        self.v.mul_(b2).add_((1 - b2) * grad * grad)
        m_hat = self.m / (1 - b1 ** int(self.t))
        v_hat = self.v / (1 - b2 ** int(self.t))
        self.xi -= self.lr * m_hat / (v_hat.sqrt() + 1e-8)

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None) -> Tensor:
        self._check(losses)
        L = torch.stack([losses[t] for t in self.task_names])
        keep = _present_mask(self.task_names, present, self.xi.device)
        l = (L - self.min_loss.to(L)).clamp_min(0) + 1e-8
        log_l = torch.log(l.detach()).to(self.xi)
        with torch.no_grad():
            self._update_logits(log_l, keep)
            self.prev_log = torch.where(keep, log_l, self.prev_log)
        z = torch.softmax(self.xi, 0).to(L.device, L.dtype)
        inv = torch.where(keep.to(L.device), z / l.detach(), torch.zeros_like(L))  # weights c z_i / l_i
        w = inv / inv.sum().clamp_min(1e-30)
        self._record(w.tolist())
        return (w * L).sum()
