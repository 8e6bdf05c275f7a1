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
  When the model names its heads' entry layers (``head_entries()``: head_t(z) = rest_t(z W_t^T + b_t)),
  the gradients are taken at those layers' outputs instead, and F_i = D_i W_i is kept as its two factors
  (`FactoredGradients`): the Gramian, combinations and GradDrop's sums come from small products, and F is
  formed only for a method that needs its entries.
  Tasks without labels in the batch drop out of F and J for that step. With ``every=k`` the weights are
  recomputed every k steps; in between the cached weights combine F with no Gramian and no solver.
As in Sener & Koltun (2018), task-specific parameters get their task's plain gradient; only the shared
parameters receive the balanced direction.

Under torch.distributed a `Reducer` (`multitask.training.distributed`) is passed in: each rank's losses are its
share of the global batch's mean losses, and the engine reduces, at four points and whatever the method, what the
method must see for the GLOBAL batch: the loss values (T floats), the features-mode Gramian (T x T), the
features-mode Jacobian columns of the other ranks' rows (Jacobian methods only), the parameters-mode Jacobian
(T x P). Everything else is each rank's share of a gradient, summed by the caller afterwards.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn.modules import module as _nn_module  # its global hook registries

from multitask.balancing.base import Balancer, GradientBalancer, GramianBalancer, JacobianBalancer, LossBalancer
from multitask.errors import NonFiniteError
from multitask.models.base import MultiTaskModel, has_hooks

LossOf = Callable[[str, Tensor], Tensor]  # (task name, model output) -> scalar loss


class Reducer(Protocol):
    """What the engine needs from a process group (implemented by `multitask.training.distributed`).

    `loss_of` then returns this rank's SHARE of each global mean loss (its labelled entries / the global batch's),
    so the global loss is the sum of the shares and so is every gradient; `row_share` is this rank's rows / the
    global batch's rows (a model's penalties, means over rows or functions of the parameters, are scaled by it)."""

    world_size: int
    row_share: float

    def sum(self, x: Tensor, kind: str) -> Tensor:
        """`x` summed over the ranks (every rank gets the same result); `kind` names the reduction point
        ("losses", "gramian", "jacobian"), for counting."""
        ...

    def gather_rows(self, x: Tensor, dim: int, kind: str = "columns") -> tuple[Tensor, int]:
        """The ranks' `x` concatenated along `dim` in rank order (sizes may differ), and this rank's offset."""
        ...

    def mark_reduced(self, params: Sequence[torch.nn.Parameter]) -> None:
        """These parameters' `.grad` is already the global one: the final gradient sum must leave them."""
        ...


def backward(model: MultiTaskModel, balancer: Balancer, inputs: Any, loss_of: LossOf,
             present: Mapping[str, bool] | None = None, reducer: Reducer | None = None,
             scale: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Run one step's forward and write `.grad`; returns the per-task losses (with their graphs freed).

    With a `reducer`, `present` must be the global one (a task with labels on any rank) and `.grad` is this
    rank's share, to be summed over the ranks by the caller (except the parameters `reducer.mark_reduced`).
    `scale` (fp16 loss scaling, e.g. ``GradScaler.scale``) multiplies the combined loss before its backward;
    loss balancers only, since scaling would change the gradients a gradient balancer sees."""
    tasks = balancer.task_names
    if scale is not None and not isinstance(balancer, LossBalancer):
        raise ValueError(f"loss scaling (fp16) applies to loss balancers only, not to {type(balancer).__name__}")
    present = present if present is not None else {t: True for t in tasks}
    # a model's own loss terms join their task's loss
    loss_of = _with_penalties(loss_of, model, tasks, present, 1.0 if reducer is None else reducer.row_share)
    if isinstance(balancer, LossBalancer):
        outputs = model(inputs)
        losses = _global_losses({t: loss_of(t, outputs[t]) for t in tasks}, reducer)
        total = balancer.combine(losses, present)
        (scale(total) if scale is not None else total).backward()
        return losses
    if isinstance(balancer, GradientBalancer):
        # a penalty may reach the shared parameters directly, which the representation path would not see
        if not model.shares_representation or (balancer.mode == "parameters" and _has_penalties(model)):
            return _joint_step(model, balancer, inputs, loss_of, present, reducer)
        return _gradient_step(model, balancer, inputs, loss_of, present, reducer)
    raise TypeError(f"{type(balancer).__name__} requires {balancer.requires!r}, which this engine does not provide")


def _global_losses(losses: dict[str, Tensor], reducer: Reducer | None) -> dict[str, Tensor]:
    """Reduction point 1: each loss with the global batch's value (the sum of the ranks' shares, identical on
    every rank) and this rank's share's gradient: (l - l.detach()) is exactly 0 and carries l's graph."""
    if reducer is None:
        return losses
    names = list(losses)
    total = reducer.sum(torch.stack([losses[t].detach().double() for t in names]), "losses")
    return {t: (losses[t] - losses[t].detach()) + total[i].to(losses[t].dtype) for i, t in enumerate(names)}


def _has_penalties(model: MultiTaskModel) -> bool:
    return type(model).penalties is not MultiTaskModel.penalties


def _with_penalties(loss_of: LossOf, model: MultiTaskModel, tasks: list[str],
                    present: Mapping[str, bool], share: float = 1.0) -> LossOf:
    """`loss_of` plus the model's `penalties` for the tasks with labels in this batch (as their losses, a task
    without labels contributes nothing), asked for once, at the first loss: after this step's forward, so a
    penalty may come from the activations that forward computed (Sluice's subspace orthogonality). Under
    torch.distributed each rank adds `share` (its rows / the global batch's) of its penalty: the sum over ranks
    is the penalty itself when it depends on the parameters only, and the global mean when it is a mean over rows."""
    if not _has_penalties(model):
        return loss_of
    penalties: list[Mapping[str, Tensor]] = []

    def with_penalty(t: str, output: Tensor) -> Tensor:
        loss = loss_of(t, output)
        if not penalties:
            penalties.append(model.penalties([u for u in tasks if present[u]]))
        if not (present[t] and t in penalties[0]):
            return loss
        term = penalties[0][t].to(loss.dtype)
        return loss + (term if share == 1.0 else term * share)
    return with_penalty


def _joint_step(model: MultiTaskModel, balancer: GradientBalancer, inputs: Any, loss_of: LossOf,
                present: Mapping[str, bool], reducer: Reducer | None = None) -> dict[str, Tensor]:
    """Balancing for a family without a shared representation (cross-stitch, task-conditioned, ...): one
    forward of the whole model, then one backward per present task into the shared parameters (J, T' x P)
    and that task's own (and group) parameters. Parameters mode only."""
    if balancer.mode == "features":
        raise ValueError(model.feature_mode_error() or "mode 'features' needs a shared representation")
    tasks = balancer.task_names
    outputs = model(inputs)
    losses = _global_losses({t: loss_of(t, outputs[t]) for t in tasks}, reducer)
    with _without_autocast(tuple(outputs.values())):
        active = [t for t in tasks if present[t]]
        if not active:
            return {t: l.detach() for t, l in losses.items()}
        index = np.array([tasks.index(t) for t in active])
        loss_values = torch.stack([losses[t].detach() for t in active])
        _check_finite_losses(active, loss_values)
        scales = balancer.head_weights(loss_values, index)
        head_params, shared = _parameter_lists(model, balancer)
        live = [i for i, t in enumerate(active) if losses[t].requires_grad]
        if not shared or not live:
            _head_gradients(losses, active, live, head_params, scales)
            balancer._record([1.0] * len(active), index)
            return {t: l.detach() for t, l in losses.items()}
        recompute = balancer.recompute_now(index)
        balancer.steps.add_(1)
        if isinstance(balancer, GramianBalancer) and not recompute:
            # the cached weights: one backward of sum_i w_i L_i into the shared parameters, no J, no solver
            w = balancer.cached_weights[torch.as_tensor(index, device=balancer.cached_weights.device)]
            balancer._record(w.tolist(), index)
            combined = sum(w[i].to(losses[active[i]].dtype) * losses[active[i]] for i in live)
            for p, g in zip(shared, torch.autograd.grad(combined, shared, retain_graph=True, allow_unused=True)):
                if g is not None:
                    _accumulate(p, g, fresh=True)
            _head_gradients(losses, active, live, head_params, scales)
            return {t: l.detach() for t, l in losses.items()}
        sizes = [p.numel() for p in shared]
        J = _workspace(balancer, "J", (len(active), sum(sizes)), shared[0])
        J.zero_()  # rows of tasks whose loss has no graph stay zero
        wrt = shared + head_params
        for k, i in enumerate(live):
            grads = torch.autograd.grad(losses[active[i]], wrt, retain_graph=k < len(live) - 1, allow_unused=True)
            _fill_row(J, i, grads[:len(shared)], sizes)
            for p, g in zip(head_params, grads[len(shared):]):  # a task's own parameters: its (scaled) gradient
                if g is not None:
                    _accumulate(p, g if scales is None else g * scales[i].detach().to(g.dtype))
        losses = {t: l.detach() for t, l in losses.items()}
        _balance_jacobian(balancer, J, shared, loss_values, index, reducer)
        return losses


def _balance_jacobian(balancer: GradientBalancer, J: Tensor, shared: list[torch.nn.Parameter], loss_values: Tensor,
                      index: np.ndarray, reducer: Reducer | None = None) -> None:
    """Parameters mode: the method's direction from the per-task gradients J on the shared parameters (through
    its weights for a Gramian method), added to their `.grad`.

    Reduction point 4 (torch.distributed): the global J is the sum of the ranks' (each row is a gradient of a
    sum of loss shares), so J itself is summed (T' x P); its Gramian is not the sum of the ranks' Gramians (the
    cross terms J_r J_s^T are missing). Every rank then computes the same direction: the shared parameters'
    `.grad` is global and is left out of the final sum."""
    if reducer is not None:
        J = reducer.sum(J, "jacobian")
        reducer.mark_reduced(shared)
    if isinstance(balancer, GramianBalancer):
        w = _solve(balancer, _stricter(balancer, _gram(J), lambda: _exact_gram(J)), loss_values, index)
        d = w.to(J.dtype) @ J
    else:
        _keep(balancer, index, lambda: _gram(J))
        d = _aggregate(balancer, J, loss_values, index)
    for p, g in zip(shared, _split(d, shared)):
        _accumulate(p, g)


def keep_gramian(balancer: GradientBalancer, on: bool = True) -> None:
    """Ask the engine to keep the Gramian of the task gradients of each step where the balancer's direction is
    computed afresh (for observers such as `multitask.diagnostics`); a Jacobian method's Gramian is then formed
    for it. Record-keeping only: the step is unchanged."""
    _space(balancer)["keep_gramian"] = bool(on)


def last_gramian(balancer: GradientBalancer, clear: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """(K, index): the Gramian (float64, present tasks) kept by `keep_gramian` and the tasks' positions in
    `balancer.task_names`; None when none was kept since the last `clear`."""
    space = _space(balancer)
    return space.pop("last_gramian", None) if clear else space.get("last_gramian")


def _keep(balancer: GradientBalancer, index: np.ndarray, gram: Callable[[], Tensor]) -> None:
    """Record `gram()` for `last_gramian` when an observer asked for it (nothing is computed otherwise)."""
    space = _space(balancer)
    if space.get("keep_gramian"):
        space["last_gramian"] = (gram().detach().double().cpu().numpy().copy(), np.asarray(index).copy())


def _fill_row(J: Tensor, i: int, grads: tuple, sizes: list[int]) -> None:
    """J[i] <- the gradients of the shared parameters, flattened side by side (zeros where one is None)."""
    offset = 0
    for g, size in zip(grads, sizes):
        if g is None:
            J[i, offset:offset + size] = 0.0
        else:
            J[i, offset:offset + size] = g.reshape(-1)
        offset += size


def _head_gradients(losses: Mapping[str, Tensor], active: list[str], live: list[int], head_params: list,
                    scales: Tensor | None) -> None:
    """Task and group parameters: the sum of their tasks' (head-weighted) gradients, one backward."""
    if not live or not head_params:
        return
    total = sum((losses[active[i]] if scales is None else scales[i].detach().to(losses[active[i]].dtype)
                 * losses[active[i]]) for i in live)
    for p, g in zip(head_params, torch.autograd.grad(total, head_params, allow_unused=True)):
        if g is not None:
            _accumulate(p, g, fresh=True)


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
                   present: Mapping[str, bool], reducer: Reducer | None = None) -> dict[str, Tensor]:
    tasks = balancer.task_names
    rep = model.shared(inputs)
    parts = _as_parts(rep)
    diff = [k for k, p in enumerate(parts) if isinstance(p, Tensor) and p.requires_grad]
    head_params, shared = _parameter_lists(model, balancer)
    entries = _usable_entries(model, tasks) if diff and isinstance(rep, Tensor) else None
    losses, taps = _task_losses(model, rep, parts, diff, tasks, loss_of, entries)
    losses = _global_losses(losses, reducer)
    # the forward pass above ran under the caller's autocast, if any; the engine's own algebra (Gramian,
    # combinations, the update written to .grad) runs in the gradients' precision
    with _without_autocast(parts):
        active = [t for t in tasks if present[t]]
        if not active:  # no labels for any task in this batch: nothing to learn from, nothing to write
            return losses
        index = np.array([tasks.index(t) for t in active])
        loss_values = torch.stack([losses[t].detach() for t in active])
        _check_finite_losses(active, loss_values)  # before any head factor, Gramian or solver sees a NaN
        scales = balancer.head_weights(loss_values, index)
        wrt = [x for t in active for x in taps[t]] + head_params
        # each loss is a root of the backward pass (no summed graph to build); a loss without a graph (a
        # custom loss returning a constant) has zero gradients and is left out
        live = [i for i, t in enumerate(active) if losses[t].requires_grad]
        roots = [losses[active[i]] for i in live]
        seeds = ([torch.ones_like(r) for r in roots] if scales is None
                 else [scales[i].detach().to(r.dtype) for i, r in zip(live, roots)])
        grads = torch.autograd.grad(roots, wrt, seeds, allow_unused=True) if roots else (None,) * len(wrt)
        n_tap = len(wrt) - len(head_params)
        for p, g in zip(head_params, grads[n_tap:]):
            if g is not None:
                _accumulate(p, g, fresh=True)
        losses = {t: l.detach() for t, l in losses.items()}  # free the graphs of tasks left out of this step
        if not diff or not shared:  # nothing shared (e.g. Independent): each network already has its gradient
            balancer._record([1.0] * len(active), index)
            return losses
        taps_of = [taps[t] for t in active]
        if entries is None:
            feats: FeatureGradients = StackedGradients(
                [torch.stack([_or_zeros(grads[i * len(diff) + j], parts[k]) for i in range(len(active))],
                             out=_workspace(balancer, f"F{k}", (len(active),) + tuple(parts[k].shape), parts[k]))
                 for j, k in enumerate(diff)])
        else:
            feats = FactoredGradients([_or_zeros(g, u[0]) for g, u in zip(grads[:n_tap], taps_of)],
                                      [entries[t].weight.detach() for t in active], parts[0], balancer)
        if scales is not None:  # undo the head factors: the method must see the plain task gradients
            feats.rescale(torch.where(scales != 0, 1.0 / scales, torch.zeros_like(scales)))
        targets = [parts[k] for k in diff]
        recompute = balancer.recompute_now(index)
        balancer.steps.add_(1)

        if isinstance(balancer, GramianBalancer) and not recompute:
            w = balancer.cached_weights[torch.as_tensor(index, device=balancer.cached_weights.device)]
            balancer._record(w.tolist(), index)
            torch.autograd.backward(targets, feats.combine(w))
            return losses

        if balancer.mode == "features":
            if isinstance(balancer, GramianBalancer):
                if reducer is None:
                    K = _stricter(balancer, feats.gram(), feats.exact_gram)
                else:  # reduction point 2: the ranks' rows of F are disjoint blocks, so K is the sum of theirs
                    K = _stricter(balancer, reducer.sum(feats.gram(), "gramian"),
                                  lambda: reducer.sum(feats.exact_gram(), "gramian"))
                w = _solve(balancer, K, loss_values, index)
                torch.autograd.backward(targets, feats.combine(w))
                return losses
            _keep(balancer, index, feats.gram)
            if reducer is not None:
                d = _global_feature_direction(balancer, feats, targets, loss_values, index, reducer)
                torch.autograd.backward(targets, _split(d, targets))
                return losses
            if balancer.column_sums_suffice:
                n = sum(t.numel() for t in targets)
                d = _checked(balancer, balancer.aggregate_sums(*feats.column_sums(), index), n)
            else:
                d = _aggregate(balancer, feats.matrix(), loss_values, index)
            torch.autograd.backward(targets, _split(d, targets))
            return losses

        _balance_jacobian(balancer, _jacobian(targets, shared, feats, balancer), shared, loss_values, index, reducer)
        return losses


def _global_feature_direction(balancer: JacobianBalancer, feats: "FeatureGradients", targets: list[Tensor],
                              loss_values: Tensor, index: np.ndarray, reducer: Reducer) -> Tensor:
    """Reduction point 3 (features mode, Jacobian methods): the method sees the global batch's matrix, whose
    columns are the ranks' columns side by side (rows of the representation in rank order, as one process would
    lay out the whole batch); every rank computes the same global direction and keeps its own columns. For a
    method that needs only the column sums (GradDrop) just those two rows are gathered."""
    if balancer.column_sums_suffice:
        S, A = feats.column_sums()
        SA, spans = _gather_columns(torch.stack([S, A]), targets, reducer)
        n = SA.shape[1]
        d = _checked(balancer, balancer.aggregate_sums(SA[0], SA[1], index), n)
    else:
        M, spans = _gather_columns(feats.matrix(), targets, reducer)
        d = _aggregate(balancer, M, loss_values, index)
    return _own_columns(d, spans)


Spans = list[tuple[int, int, int, int]]  # per representation part: (offset, own rows, global rows, row width)


def _gather_columns(X: Tensor, targets: list[Tensor], reducer: Reducer) -> tuple[Tensor, Spans]:
    """X [k, N_local], columns laid out part by part (each part's rows first), -> [k, N_global] laid out the
    same way for the global batch; spans (offset, own rows, global rows, row width) per part to cut it back."""
    sizes = [t.numel() for t in targets]
    out, spans = [], []
    for piece, t in zip(X.split(sizes, dim=1), targets):
        width = math.prod(t.shape[1:])
        full, offset = reducer.gather_rows(piece.reshape(X.shape[0], t.shape[0], width), dim=1)
        out.append(full.reshape(X.shape[0], -1))
        spans.append((offset, t.shape[0], full.shape[1], width))
    return torch.cat(out, dim=1) if len(out) > 1 else out[0], spans


def _own_columns(d: Tensor, spans: Spans) -> Tensor:
    """This rank's columns of a global direction (the inverse of `_gather_columns`'s layout)."""
    pieces, start = [], 0
    for offset, rows, total, width in spans:
        pieces.append(d[start + offset * width:start + (offset + rows) * width])
        start += total * width
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _usable_entries(model: MultiTaskModel, tasks: list[str]) -> dict[str, torch.nn.Linear] | None:
    """The model's head entry layers, asked afresh every step (a head may have been rebuilt), when the
    factored path can use them: one distinct plain `nn.Linear` per task with a trainable weight (so its output
    has a gradient) and no hooks, here or global, that could change what it computes or passes back."""
    entries = model.head_entries()
    if entries is None or _global_hooks():
        return None
    layers = [entries.get(t) for t in tasks]
    if any(e is None or type(e).forward is not torch.nn.Linear.forward or not e.weight.requires_grad
           or has_hooks(e) for e in layers) or len({id(e) for e in layers}) < len(layers):
        return None
    return entries


def _global_hooks() -> bool:
    return bool(_nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks
                or _nn_module._global_backward_hooks or _nn_module._global_backward_pre_hooks)


def _without_autocast(parts: tuple) -> contextlib.ExitStack:
    """Autocast switched off on every device type the representation lives on (and the CPU)."""
    stack = contextlib.ExitStack()
    for kind in {"cpu"} | {p.device.type for p in parts if isinstance(p, Tensor)}:
        stack.enter_context(torch.autocast(kind, enabled=False))
    return stack


def _task_losses(model: MultiTaskModel, rep: Any, parts: tuple, diff: list[int], tasks: list[str],
                 loss_of: LossOf, entries: dict[str, torch.nn.Linear] | None
                 ) -> tuple[dict[str, Tensor], dict[str, list[Tensor]]]:
    """Every task's loss from its head, cut off from the trunk, and per task the tensors to differentiate
    it against ("taps"): its own leaf copies of the representation's parts, or its head entry's output."""
    if entries is None:
        leaves = {t: tuple(p.detach().requires_grad_() if k in diff else p for k, p in enumerate(parts))
                  for t in tasks}
        losses = {t: loss_of(t, model.heads(_like(rep, leaves[t]), [t])[t]) for t in tasks}
        return losses, {t: [leaves[t][k] for k in diff] for t in tasks}
    z = rep.detach()
    outputs: dict[str, list[Tensor]] = {t: [] for t in tasks}
    # each hook keeps the entry's output u and hands the rest of the head a copy: a later in-place op (e.g.
    # ReLU(inplace=True)) then cannot turn u into another op's output (d/du must stay d/du)
    handles = [entries[t].register_forward_hook(lambda _m, _a, out, t=t: outputs[t].append(out) or out.clone())
               for t in tasks]
    try:
        losses = {t: loss_of(t, model.heads(z, [t])[t]) for t in tasks}
    finally:
        for h in handles:
            h.remove()
    wrong = [t for t in tasks if len(outputs[t]) != 1]
    if wrong:
        raise RuntimeError(f"{type(model).__name__}.head_entries(): the entry layer of task(s) {wrong} was not "
                           "called exactly once by that task's head; a head must read the representation "
                           "through its entry layer alone (else return None from head_entries)")
    return losses, outputs


class FeatureGradients:
    """The present tasks' gradients F_i on the differentiable parts of the shared representation."""

    def __len__(self) -> int:
        raise NotImplementedError

    def gram(self) -> Tensor:
        """K = F F^T in float64 (see `_gram` for its accuracy)."""
        raise NotImplementedError

    def exact_gram(self) -> Tensor:
        """K = F F^T with float64 products throughout."""
        return _exact_gram(self.matrix())

    def combine(self, w: Tensor) -> list[Tensor]:
        """sum_i w_i F_i, one tensor per differentiable part."""
        raise NotImplementedError

    def matrix(self) -> Tensor:
        """F as a [T', N] matrix (parts flattened and concatenated)."""
        raise NotImplementedError

    def row(self, i: int) -> list[Tensor]:
        """F_i, one tensor per part."""
        raise NotImplementedError

    def stacked(self) -> list[Tensor]:
        """F per part, [T', *part.shape]."""
        raise NotImplementedError

    def rescale(self, factors: Tensor) -> None:
        """F_i <- factors_i F_i."""
        raise NotImplementedError

    def column_sums(self) -> tuple[Tensor, Tensor]:
        """(sum_i F_i, sum_i |F_i|), flattened."""
        M = self.matrix()
        return M.sum(0), M.abs().sum(0)


class StackedGradients(FeatureGradients):
    """F held as it is: one [T', *part.shape] tensor per part."""

    def __init__(self, F: list[Tensor]) -> None:
        self.F = F

    def __len__(self) -> int:
        return self.F[0].shape[0]

    def gram(self) -> Tensor:
        return _gram(self.matrix())

    def combine(self, w: Tensor) -> list[Tensor]:
        return [_combine(w, f) for f in self.F]

    def matrix(self) -> Tensor:
        return torch.cat([f.flatten(1) for f in self.F], dim=1) if len(self.F) > 1 else self.F[0].flatten(1)

    def row(self, i: int) -> list[Tensor]:
        return [f[i] for f in self.F]

    def stacked(self) -> list[Tensor]:
        return self.F

    def rescale(self, factors: Tensor) -> None:
        self.F = [f * factors.to(f.dtype).view(-1, *([1] * (f.dim() - 1))) for f in self.F]


class FactoredGradients(FeatureGradients):
    """F_i = D_i W_i, kept as its factors: D_i = dL_i/du_i at the output u_i = z W_i^T + b_i of task i's head
    entry layer ([..., d_i]) and that layer's weight W_i ([d_i, |z|'s last dim]). When the heads are narrow
    (small d_i) the Gramian follows from small matrices, <D_s W_s, D_t W_t> = <D_s^T D_t, W_s W_t^T>, and a
    combination sum_i w_i F_i is one product [w_1 D_1 ... w_T D_T] [W_1; ...; W_T]; F is never formed."""

    def __init__(self, D: list[Tensor], W: list[Tensor], like: Tensor, balancer: GradientBalancer) -> None:
        self.like, self.balancer = like, balancer
        self.sizes = [w.shape[0] for w in W]
        self.D = torch.cat([d.reshape(-1, d.shape[-1]) for d in D], dim=1)  # [rows, sum d]: D_i side by side
        self.W = torch.cat(W, dim=0)  # [sum d, width]: W_i stacked
        if self.D.dtype != self.W.dtype:  # e.g. bfloat16 gradients from an autocast forward, float32 weights
            dtype = torch.promote_types(self.D.dtype, self.W.dtype)
            self.D, self.W = self.D.to(dtype), self.W.to(dtype)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    def __len__(self) -> int:
        return len(self.sizes)

    def _per_column(self, v: Tensor) -> Tensor:
        """A per-task vector repeated over each task's d_i columns."""
        v = v.to(device=self.D.device, dtype=self.D.dtype)
        return v if self.D.shape[1] == len(self.sizes) else v.repeat_interleave(
            torch.tensor(self.sizes, device=v.device))

    def _F(self, i: int, out: Tensor | None = None) -> Tensor:
        a, b = self.offsets[i], self.offsets[i + 1]
        rows = self.D[:, a:b] @ self.W[a:b] if out is None else torch.matmul(self.D[:, a:b], self.W[a:b], out=out)
        return rows.view(self.like.shape).to(self.like.dtype)

    def factored_gram_is_cheaper(self) -> bool:
        """Multiply-adds of the factored Gramian, (sum d)^2 (rows + width), against those of F F^T alone."""
        rows, s = self.D.shape
        width = self.W.shape[1]
        return s * s * (rows + width) <= len(self.sizes) ** 2 * rows * width / 2

    def exact_gram(self) -> Tensor:
        return self.gram() if self.factored_gram_is_cheaper() else _exact_gram(self.matrix())

    def gram(self) -> Tensor:
        if not self.factored_gram_is_cheaper():
            return _gram(self.matrix())
        D, W = self.D.double(), self.W.double()
        H = (D.T @ D) * (W @ W.T)  # entry (a, b): <column a of D, column b> <row a of W, row b>
        if D.shape[1] == len(self.sizes):
            return H
        owner = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes)).to(H.device)
        E = torch.nn.functional.one_hot(owner, len(self.sizes)).to(H.dtype)  # [sum d, T']: a column's task
        return E.T @ H @ E

    def combine(self, w: Tensor) -> list[Tensor]:
        return [((self.D * self._per_column(w)) @ self.W).view(self.like.shape).to(self.like.dtype)]

    def row(self, i: int) -> list[Tensor]:
        return [self._F(i)]

    def matrix(self) -> Tensor:
        return self.stacked()[0].flatten(1)

    def stacked(self) -> list[Tensor]:
        F = _workspace(self.balancer, "F0", (len(self.sizes),) + tuple(self.like.shape), self.D)
        rows = F.view(len(self.sizes), self.D.shape[0], self.W.shape[1])  # (explicit: a shard may have no rows)
        if self.D.shape[1] == len(self.sizes):  # one output per head: T' outer products in one broadcast
            torch.mul(self.D.T[:, :, None], self.W[:, None, :], out=rows)
        else:
            for i in range(len(self.sizes)):
                self._F(i, out=rows[i])
        return [F]

    def rescale(self, factors: Tensor) -> None:
        self.D = self.D * self._per_column(factors)

    def column_sums(self) -> tuple[Tensor, Tensor]:
        if self.D.shape[1] != len(self.sizes):
            return super().column_sums()
        # one output per head: F_i = D_i w_i is an outer product, so |F_i| = |D_i| |w_i| and both sums
        # are small products
        return (self.D @ self.W).flatten(), (self.D.abs() @ self.W.abs()).flatten()


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
        heads = _unique([p for t in balancer.task_names for p in model.task_parameters(t) if p.requires_grad]
                        + [p for ps in model.group_parameters().values() for p in ps if p.requires_grad])
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


def _jacobian(targets: list[Tensor], shared: list[torch.nn.Parameter], feats: FeatureGradients,
              balancer: GradientBalancer, batched: bool | None = None) -> Tensor:
    """Rows J[i] = d(sum_k <targets_k, F_k[i]>)/d(shared): per-task gradients on the shared parameters.

    `batched` (default: on any device but the CPU): one batched (vmap) backward; else one backward per row
    into a preallocated matrix, which measures 10-20% faster on CPU (benchmarks/balancing_speed.py) because
    the batched rules add copies.
    """
    sizes = [p.numel() for p in shared]
    if batched if batched is not None else targets[0].device.type != "cpu":
        F = feats.stacked()
        n = F[0].shape[0]
        jac = torch.autograd.grad(targets, shared, grad_outputs=[f.to(t.dtype) for f, t in zip(F, targets)],
                                  is_grads_batched=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros((n,) + p.shape, device=p.device, dtype=p.dtype))
                          .reshape(n, -1) for g, p in zip(jac, shared)], dim=1)
    n = len(feats)
    J = _workspace(balancer, "J", (n, sum(sizes)), shared[0])
    for i in range(n):
        _fill_row(J, i, torch.autograd.grad(targets, shared, grad_outputs=feats.row(i), retain_graph=i < n - 1,
                                            allow_unused=True), sizes)
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


# Gramians of float32 gradients: products of blocks of GRAM_BLOCK columns (float32), summed in float64. A single
# float32 product accumulates round-off over all P columns (about 5e-6 |g_i| |g_j| at P = 1e5); blocks of 256
# bring it to about 1e-8 for 1.1-1.4x the time (measured at T = 10, P = 1e5). The correlation matrix D^-1 K D^-1
# (D: the gradient norms) then says whether that is enough: its smallest eigenvalue relative to its largest
# must be >= GRAM_RCOND, else the Gramian is redone with float64 products (2.2-2.4x a float32 product). The test
# is scale-free, so tasks with tiny or huge gradients alone never cost a float64 pass. A method whose result
# rests on the smallest eigen-directions (Aligned-MTL, IMTL-G) asks for float64 sooner with a larger
# `gramian_rcond` attribute.
GRAM_BLOCK = 256
GRAM_RCOND = 1e-6


def _exact_gram(M: Tensor) -> Tensor:
    """M M^T with float64 products."""
    Md = M if M.dtype == torch.float64 else M.double()
    return Md @ Md.T


def _blocked_gram(M: Tensor) -> Tensor:
    """M M^T in float64 from float32 products of column blocks."""
    T, P = M.shape
    nb = P // GRAM_BLOCK
    if nb < 2:
        return (M @ M.T).double()
    X = M[:, :nb * GRAM_BLOCK].reshape(T, nb, GRAM_BLOCK).transpose(0, 1)
    K = torch.bmm(X, X.transpose(1, 2)).sum(0, dtype=torch.float64)
    if nb * GRAM_BLOCK < P:
        R = M[:, nb * GRAM_BLOCK:]
        K += (R @ R.T).double()
    return K


def _correlation_rcond(K: Tensor) -> float:
    """lambda_min / lambda_max of the correlation matrix of the non-zero gradients (1 for fewer than two)."""
    Kn = K.detach().cpu().numpy()
    d = Kn.diagonal()
    if not (d > 0).all():
        alive = d > 0
        if alive.sum() < 2:
            return 1.0
        Kn, d = Kn[np.ix_(alive, alive)], d[alive]
    n = np.sqrt(d)
    eig = np.linalg.eigvalsh(Kn / np.outer(n, n))
    return float(eig[0] / eig[-1])


def _gram(M: Tensor) -> Tensor:
    """M M^T in float64: blocked float32 products summed in float64, redone with float64 products when the
    correlation matrix is too ill-conditioned for their round-off (linearly dependent tasks, say)."""
    if M.dtype == torch.float64:
        return M @ M.T
    if M.dtype in (torch.float16, torch.bfloat16):  # half-precision gradients: products in float32 at least
        M = M.float()
    K = _blocked_gram(M)
    if K.shape[0] > 1 and _correlation_rcond(K) < GRAM_RCOND:
        K = _exact_gram(M)
    return K


def _stricter(balancer: GramianBalancer, K: Tensor, exact: Callable[[], Tensor]) -> Tensor:
    """The Gramian `balancer` needs: redone with float64 products when its `gramian_rcond` is above
    GRAM_RCOND and the correlation matrix lies between the two (below GRAM_RCOND `_gram` already did it)."""
    rcond = getattr(balancer, "gramian_rcond", GRAM_RCOND)
    if rcond > GRAM_RCOND and K.shape[0] > 1 and GRAM_RCOND <= _correlation_rcond(K) < rcond:
        return exact()
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


def _check_finite_losses(tasks: list[str], values: Tensor) -> None:
    if not bool(torch.isfinite(values).all()):
        bad = [(t, v) for t, v in zip(tasks, values.tolist()) if not np.isfinite(v)]
        shown = ", ".join(f"{t!r} ({v:g})" for t, v in bad)
        raise NonFiniteError(f"the loss of task {shown} is not finite", tuple(t for t, _ in bad))


def _solve(balancer: GramianBalancer, gram: Tensor, losses: Tensor, index: np.ndarray) -> Tensor:
    K = gram.detach().double().cpu().numpy()
    _keep(balancer, index, lambda: gram)
    if not np.all(np.isfinite(K)):  # finite losses with overflowing gradients: no solver can use this
        bad = [balancer.task_names[i] for i, ok in zip(index, np.isfinite(K).all(axis=1)) if not ok]
        raise NonFiniteError(f"the gradients of task(s) {', '.join(map(repr, bad))} are not finite (or overflow in "
                             "their inner products) although every loss is", ())
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
    return _checked(balancer, balancer.aggregate(M, losses, index), M.shape[1])


def _checked(balancer: JacobianBalancer, d: Tensor, n: int) -> Tensor:
    # a finite sum proves every entry finite (NaN and inf propagate) and costs a tenth of isfinite().all();
    # the full test runs only when the sum is not finite (which finite entries can cause by overflowing)
    if d.shape != (n,) or not (torch.isfinite(d.sum()) or torch.isfinite(d).all()):
        raise FloatingPointError(f"{type(balancer).__name__} returned an invalid direction")
    return d
