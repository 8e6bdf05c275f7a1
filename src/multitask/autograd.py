"""The gradient engine: one training step's forward pass, per-task losses and `.grad` on every parameter,
computing only what the balancer `requires`. It knows no particular method.

- ``"losses"``: forward, ``balancer.combine(losses).backward()``: one backward pass.
- ``"gramian"`` / ``"jacobian"``: the model runs as ``heads(shared(inputs))``. Each task's head reads its
  own detached copy of the shared representation z, so ONE backward pass through the heads yields every
  task's gradient on z (F, T' x |z|) and gives each head its own task's gradient, never another's. Then
  - features mode: the method sees F (or its Gramian F F^T); z.backward(aggregated F) once through the trunk;
  - parameters mode: F is pulled back through the trunk (one batched vmap backward on CUDA, a backward per
    task on CPU, where that is faster) into the Jacobian J on the shared parameters (T' x P); the method sees
    J (or J J^T) and the aggregated row is written to `.grad`. No head is walked for another task's loss.
  Tasks without labels in the batch drop out of F and J for that step. With ``every=k`` the weights are
  recomputed every k steps; in between the cached weights combine F with no Gramian and no solver.
As in Sener & Koltun (2018), task-specific parameters get their task's plain gradient; only the shared
parameters receive the balanced direction.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from multitask.balancing.base import Balancer, GradientBalancer, GramianBalancer, JacobianBalancer, LossBalancer
from multitask.models.base import MultiTaskModel

LossOf = Callable[[str, Tensor], Tensor]  # (task name, model output) -> scalar loss


def backward(model: MultiTaskModel, balancer: Balancer, inputs: Any, loss_of: LossOf,
             present: Mapping[str, bool] | None = None) -> dict[str, Tensor]:
    """Run one step's forward and write `.grad`; returns the per-task losses (with their graphs freed)."""
    tasks = balancer.task_names
    present = present if present is not None else {t: True for t in tasks}
    if isinstance(balancer, LossBalancer):
        outputs = model(inputs)
        losses = {t: loss_of(t, outputs[t]) for t in tasks}
        balancer.combine(losses, present).backward()
        return losses
    if isinstance(balancer, GradientBalancer):
        return _gradient_step(model, balancer, inputs, loss_of, present)
    raise TypeError(f"{type(balancer).__name__} requires {balancer.requires!r}, which this engine does not provide")


def _as_parts(rep: Any) -> tuple[Tensor, ...]:
    return tuple(rep) if isinstance(rep, (tuple, list)) else (rep,)


def _like(rep: Any, parts: tuple) -> Any:
    return parts if isinstance(rep, (tuple, list)) else parts[0]


def _accumulate(param: torch.nn.Parameter, grad: Tensor, fresh: bool = False) -> None:
    """Add to `.grad`; a `fresh` tensor (just returned by autograd, referenced nowhere else) is taken as is."""
    if param.grad is None:
        param.grad = grad.detach() if fresh else grad.detach().clone()
    else:
        param.grad.add_(grad)


def _gradient_step(model: MultiTaskModel, balancer: GradientBalancer, inputs: Any, loss_of: LossOf,
                   present: Mapping[str, bool]) -> dict[str, Tensor]:
    tasks = balancer.task_names
    rep = model.shared(inputs)
    parts = _as_parts(rep)
    diff = [k for k, p in enumerate(parts) if isinstance(p, Tensor) and p.requires_grad]
    # every task gets its own leaf copy of the differentiable parts of the representation
    leaves: dict[str, tuple] = {}
    for t in tasks:
        leaves[t] = tuple(p.detach().requires_grad_() if k in diff else p for k, p in enumerate(parts))
    losses = {t: loss_of(t, model.heads(_like(rep, leaves[t]), [t])[t]) for t in tasks}
    active = [t for t in tasks if present[t]]
    head_params, shared = _parameter_lists(model, balancer)
    if not active:  # no labels for any task in this batch: nothing to learn from, nothing to write
        return losses
    index = np.array([tasks.index(t) for t in active])
    loss_values = torch.stack([losses[t].detach() for t in active])
    scales = balancer.head_weights(loss_values, index)
    wrt = [leaves[t][k] for t in active for k in diff] + head_params
    objective = sum(losses[t] * (1.0 if scales is None else scales[i]) for i, t in enumerate(active))
    grads = torch.autograd.grad(objective, wrt, allow_unused=True)
    n_feat = len(active) * len(diff)
    for p, g in zip(head_params, grads[n_feat:]):
        if g is not None:
            _accumulate(p, g, fresh=True)
    losses = {t: l.detach() for t, l in losses.items()}  # free the graphs of tasks left out of this step
    if not diff or not shared:  # nothing shared (e.g. Independent): each network already has its gradient
        balancer._record([1.0] * len(active), index)
        return losses
    # F[k]: per-task gradients on part k of the representation, stacked [T', *part.shape]
    F = [torch.stack([_or_zeros(grads[i * len(diff) + j], parts[k]) for i in range(len(active))],
                     out=_workspace(balancer, f"F{k}", (len(active),) + tuple(parts[k].shape), parts[k]))
         for j, k in enumerate(diff)]
    if scales is not None:  # undo the head factors: the method must see the plain task gradients
        inv = torch.where(scales != 0, 1.0 / scales, torch.zeros_like(scales))
        F = [f * inv.to(f.dtype).view(-1, *([1] * (f.dim() - 1))) for f in F]
    targets = [parts[k] for k in diff]
    recompute = balancer.recompute_now(index)
    balancer.steps += 1

    if isinstance(balancer, GramianBalancer) and not recompute:
        w = balancer.cached_weights[torch.as_tensor(index, device=balancer.cached_weights.device)]
        balancer._record(w.tolist(), index)
        torch.autograd.backward(targets, [_combine(w, f) for f in F])
        return losses

    if balancer.mode == "features":
        flat = torch.cat([f.flatten(1) for f in F], dim=1) if len(F) > 1 else F[0].flatten(1)
        if isinstance(balancer, GramianBalancer):
            w = _solve(balancer, _gram(flat), loss_values, index)
            torch.autograd.backward(targets, [_combine(w, f) for f in F])
        else:
            d = _aggregate(balancer, flat, loss_values, index)
            torch.autograd.backward(targets, _split(d, [f[0] for f in F]))
        return losses

    J = _jacobian(targets, shared, F, balancer)
    if isinstance(balancer, GramianBalancer):
        w = _solve(balancer, _gram(J), loss_values, index)
        d = w.to(J.dtype) @ J
    else:
        d = _aggregate(balancer, J, loss_values, index)
    for p, g in zip(shared, _split(d, shared)):
        _accumulate(p, g)
    return losses


def _space(balancer: GradientBalancer) -> dict:
    """The engine's per-balancer scratch space (not a buffer: never checkpointed)."""
    return balancer.__dict__.setdefault("_workspace", {})


def _parameter_lists(model: MultiTaskModel, balancer: GradientBalancer) -> tuple[list, list]:
    """(task-specific, shared) trainable parameters, cached between steps; one pass over the model's
    parameters checks that none was added, removed, replaced or frozen since (else the lists are rebuilt)."""
    key = tuple((id(p), p.requires_grad) for p in model.parameters())
    space = _space(balancer)
    cached = space.get("params")
    if cached is None or cached[0] != key:
        heads = _unique(p for t in balancer.task_names for p in model.task_parameters(t) if p.requires_grad)
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        cached = space["params"] = (key, heads, shared)
    return cached[1], cached[2]


def _workspace(balancer: GradientBalancer, key: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A buffer kept on the balancer between steps for the large per-step matrices (F, J): allocating
    megabytes afresh every step costs page faults that show up as a sizeable share of a small step.
    Nothing may hold on to it after the step (balancers copy what they keep, e.g. DB-MTL's averages)."""
    space = _space(balancer)
    buf = space.get(key)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = space[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


def _jacobian(targets: list[Tensor], shared: list[torch.nn.Parameter], F: list[Tensor],
              balancer: GradientBalancer) -> Tensor:
    """Rows J[i] = d(sum_k <targets_k, F_k[i]>)/d(shared): per-task gradients on the shared parameters.

    On CUDA one batched (vmap) backward; on CPU one backward per row into a preallocated matrix, which
    measures 10-20% faster there (benchmarks/balancing_speed.py) because the batched rules add copies.
    """
    n = F[0].shape[0]
    sizes = [p.numel() for p in shared]
    if targets[0].device.type != "cpu":
        jac = torch.autograd.grad(targets, shared, grad_outputs=F, is_grads_batched=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros((n,) + p.shape, device=p.device, dtype=p.dtype))
                          .reshape(n, -1) for g, p in zip(jac, shared)], dim=1)
    J = _workspace(balancer, "J", (n, sum(sizes)), shared[0])
    for i in range(n):
        grads = torch.autograd.grad(targets, shared, grad_outputs=[f[i] for f in F], retain_graph=i < n - 1,
                                    allow_unused=True)
        offset = 0
        for g, size in zip(grads, sizes):
            if g is None:
                J[i, offset:offset + size] = 0.0
            else:
                J[i, offset:offset + size] = g.reshape(-1)
            offset += size
    return J


def _unique(params) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


def _gram(M: Tensor) -> Tensor:
    """M M^T in float64. The product is formed in M's precision (fast) and redone in float64 only when the
    result is too ill-conditioned for float32 round-off to be negligible (e.g. linearly dependent tasks)."""
    K = (M @ M.T).double()
    if M.dtype != torch.float64 and K.shape[0] > 1:
        eig = torch.linalg.eigvalsh(K)
        top = float(eig[-1])
        if top > 0 and float(eig[0]) < 1e-4 * top:
            Md = M.double()
            K = Md @ Md.T
    return K


def _combine(w: Tensor, f: Tensor) -> Tensor:
    return torch.tensordot(w.to(device=f.device, dtype=f.dtype), f, dims=1)


def _split(d: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(d[offset:offset + n].view_as(t))
        offset += n
    return out


def _solve(balancer: GramianBalancer, gram: Tensor, losses: Tensor, index: np.ndarray) -> Tensor:
    K = gram.detach().double().cpu().numpy()
    w = np.asarray(balancer.solve(K, losses.double().cpu().numpy(), index), dtype=np.float64)
    if w.shape != (len(index),) or not np.all(np.isfinite(w)):
        raise FloatingPointError(f"{type(balancer).__name__} returned invalid weights {w}")
    if len(index) == len(balancer.task_names):  # every task present (the usual case): two plain copies
        balancer.cached_weights.copy_(torch.from_numpy(w))
        balancer.solved_for.fill_(True)
    else:
        full = balancer.cached_weights.cpu().numpy().copy()
        full[index] = w
        present = np.zeros(len(balancer.task_names), dtype=bool)
        present[index] = True
        balancer.cached_weights.copy_(torch.from_numpy(full))
        balancer.solved_for.copy_(torch.from_numpy(present))
    balancer._record(w.tolist(), index)
    return torch.as_tensor(w, dtype=gram.dtype, device=gram.device)


def _aggregate(balancer: JacobianBalancer, M: Tensor, losses: Tensor, index: np.ndarray) -> Tensor:
    d = balancer.aggregate(M, losses, index)
    if d.shape != (M.shape[1],) or not torch.isfinite(d).all():
        raise FloatingPointError(f"{type(balancer).__name__} returned an invalid direction")
    return d
