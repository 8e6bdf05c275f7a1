"""IMTL (Liu et al., ICLR 2021): impartial multi-task learning, its gradient part IMTL-G and loss part IMTL-L.

IMTL-G: find d = sum_i a_i g_i (sum a_i = 1) whose projections on every unit gradient u_i = g_i/||g_i|| are
equal, d . u_1 = d . u_t. Closed form, with D rows g_1 - g_t and U rows u_1 - u_t (t = 2..T):
a_{2..T} = (g_1 U^T)(D U^T)^{-1}, a_1 = 1 - sum a_{2..T}; computed from the Gramian.
IMTL-L: learn s_t and minimise sum_t e^{s_t} L_t - s_t, which drives every scaled loss e^{s_t} L_t to 1.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from multitask.balancing.base import GramianBalancer, LossBalancer
from multitask.tasks import Task


class IMTLG(GramianBalancer):
    """Gradient weights that give every task the same projection of the update."""

    name = "imtl_g"
    # its weights rest on the smallest eigenvalues: the engine forms the Gramian with float64 products as soon
    # as its correlation matrix has lambda_min / lambda_max < 1e-3 (the default is 1e-6; see autograd._gram)
    gramian_rcond = 1e-3

    def solve(self, gramian: np.ndarray, losses: np.ndarray, index: np.ndarray) -> np.ndarray:
        T = len(gramian)
        if T == 1:
            return np.ones(1)
        norms = np.sqrt(np.maximum(np.diag(gramian), 0.0))
        if np.any(norms <= 1e-20 * max(norms.max(), 1e-30)):  # a zero gradient has no direction to match
            return np.full(T, 1.0 / T)
        Ku = gramian / norms[None, :]  # Ku[a, b] = g_a . u_b
        rows = np.arange(1, T)
        gU = Ku[0, 0] - Ku[0, rows]                                   # g_1 . (u_1 - u_t)
        DU = (Ku[0, 0] - Ku[0, rows][None, :]) - (Ku[rows, 0][:, None] - Ku[np.ix_(rows, rows)])  # (g_1-g_a).(u_1-u_b)
        try:
            a_rest = np.linalg.solve(DU.T, gU)  # a^T (D U^T) = g_1 U^T
        except np.linalg.LinAlgError:
            a_rest = np.linalg.lstsq(DU.T, gU, rcond=None)[0]
        return np.concatenate(([1.0 - a_rest.sum()], a_rest))


class IMTLL(LossBalancer):
    """Learned loss scales e^{s_t}; the s_t are trained with the model and kept in the checkpoint."""

    name = "imtl_l"

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__(tasks)
        self.s = nn.Parameter(torch.zeros(len(tasks)))

    def combine(self, losses: Mapping[str, Tensor], present: Mapping[str, bool] | None = None) -> Tensor:
        self._check(losses)
        L = torch.stack([losses[t] for t in self.task_names])
        terms = torch.exp(self.s) * L - self.s
        if present is not None:
            keep = torch.tensor([bool(present[t]) for t in self.task_names], device=terms.device)
            terms = torch.where(keep, terms, torch.zeros_like(terms))
        self._record(torch.exp(self.s).detach().cpu().tolist())
        return terms.sum()

    def per_task_parameters(self) -> list[nn.Parameter]:
        return [self.s]
