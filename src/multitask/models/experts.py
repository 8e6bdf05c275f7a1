"""Mixture-of-experts building blocks computed for all experts (and all asked tasks' gates) at once.

MMoE, CGC and PLE keep one module per expert and per gate (so each is a parameter of its part, and the state
dict names them one by one), but looping over them costs a kernel call per expert and per task, which grows
with T. Here the experts' weights are concatenated at forward time (cheap: the weights are small next to a
batch's activations) and run as one matmul per layer (a batch norm in eval mode folded into it); gates
likewise as one Linear with k x m outputs and one softmax; mixtures as batched matmuls or multiply-adds.
Results equal the per-module loops' up to float rounding (tests/test_experts.py).

Fusion applies to experts that are stacks of `nn.Linear`, `BatchNorm1d`, `nn.ReLU`, `nn.Dropout`,
`nn.Identity` (nested `nn.Sequential`s and `blocks.DenseLayer` included) of the same shapes and settings, and
to gates that are plain `nn.Linear`; anything else (another layer type, a module with hooks, experts that
differ) runs module by module, with the same result. (Global module hooks are not seen by the fused path.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from multitask.models.base import has_hooks
from multitask.models.blocks import DenseLayer
from multitask.models.layers import BatchNorm1d

FLATTEN = "flatten"


def _ops(module: nn.Module) -> list[nn.Module | str] | None:
    """The module as a flat list of primitive layers (FLATTEN for DenseLayer's flatten), or None when it holds
    something else or a hook."""
    if has_hooks(module):
        return None
    if type(module) is nn.Sequential:
        out: list[nn.Module | str] = []
        for m in module:
            sub = _ops(m)
            if sub is None:
                return None
            out += sub
        return out
    if type(module) is DenseLayer:
        parts = [_ops(module.linear), _ops(module.norm), [nn.ReLU()], _ops(module.dropout)]
        return None if any(p is None for p in parts) else [FLATTEN] + [m for p in parts for m in p]
    if type(module) in (nn.Linear, nn.ReLU, nn.Dropout, BatchNorm1d, nn.BatchNorm1d):
        return [module]
    if type(module) is nn.Identity:
        return []
    return None


def _same(layers: Sequence[nn.Module | str]) -> bool:
    """True when the experts' i-th layers can run as one: same type, shapes and settings."""
    first = layers[0]
    if isinstance(first, str):
        return all(m == first for m in layers)
    if any(type(m) is not type(first) for m in layers):
        return False
    if isinstance(first, nn.Linear):
        return all(m.weight.shape == first.weight.shape and (m.bias is None) == (first.bias is None) for m in layers)
    if isinstance(first, nn.Dropout):
        return all(m.p == first.p and m.training == first.training for m in layers)
    if isinstance(first, _BatchNorm):
        key = (first.num_features, first.eps, first.momentum, first.affine, first.track_running_stats, first.training)
        return all((m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, m.training) == key
                   and (first.momentum is not None or not first.track_running_stats
                        or torch.equal(m.num_batches_tracked, first.num_batches_tracked)) for m in layers)
    return True  # ReLU


def fused_layers(experts: Sequence[nn.Module]) -> list[list[nn.Module | str]] | None:
    """Per layer position, the experts' layers at it; None when the experts cannot run as one."""
    ops = [_ops(e) for e in experts]
    if not ops or any(o is None for o in ops) or len({len(o) for o in ops}) != 1:
        return None
    layers = [list(col) for col in zip(*ops)]
    kinds = [c[0] for c in layers]
    if not any(isinstance(k, nn.Linear) for k in kinds):
        return None
    first_linear = next(i for i, k in enumerate(kinds) if isinstance(k, nn.Linear))
    if any(not isinstance(k, str) and not isinstance(k, nn.Linear) for k in kinds[:first_linear]):
        return None  # a normalisation or activation before the first Linear would act on the shared input
    return layers if all(_same(c) for c in layers) else None


def _stacked(layer: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """The experts' Linear weights [E, out, in] and biases [E, out] (None without biases)."""
    W = torch.stack([m.weight for m in layer])
    return W, (torch.stack([m.bias for m in layer]) if layer[0].bias is not None else None)


def _uses_running_stats(layer: list[nn.Module], rows: int) -> bool:
    """True when the experts' batch norms normalise with their running statistics (eval mode, or
    BatchNorm1d's one-row training batch), i.e. act as a fixed affine map that can fold into a Linear."""
    first = layer[0]
    return first.track_running_stats and (not first.training or (rows == 1 and isinstance(first, BatchNorm1d)))


def _fold(W: Tensor, b: Tensor | None, layer: list[nn.Module]) -> tuple[Tensor, Tensor]:
    """Linear (W, b) followed by batch norms with running statistics, as one Linear: the norm is
    y = x * a + c with a = gamma / sqrt(var + eps), c = beta - mean * a (per channel, as torch computes it),
    so the pair is (W * a) x + (b * a + c)."""
    first = layer[0]
    a = torch.stack([m.running_var for m in layer]).add(first.eps).rsqrt()
    if first.affine:
        a = a * torch.stack([m.weight for m in layer])
    c = -torch.stack([m.running_mean for m in layer]) * a
    if first.affine:
        c = c + torch.stack([m.bias for m in layer])
    return W * a.unsqueeze(-1), (c if b is None else b * a + c)


def _linear(W: Tensor, b: Tensor | None, h: Tensor, groups: int | None) -> Tensor:
    """The experts' Linear layers (W [E, out, in], b [E, out]) on h: h [N, in] read by every expert (groups
    None; returns [N, E, out]), or [N, G, in] with expert g * (E // G) + j reading h[:, g] (groups G; returns
    [N, G, E // G, out]), or one input per expert, [N, E, in] or [N, G, E // G, in] (groups "split"; returns
    the same layout). Grouped results are views of a [G, N, ...] product, not copied into [N, ...] order."""
    E, out, d_in = W.shape
    N = h.shape[0]
    if groups is None:
        y = F.linear(h, W.reshape(E * out, d_in), None if b is None else b.reshape(E * out))
        return y.view(N, E, out)
    shape, split = h.shape, groups == "split"
    if split:
        h, groups = h.reshape(N, E, d_in), E
    per = E // groups  # experts reading each input: weights [G, in, per * out]
    Wg = W.view(groups, per * out, d_in).transpose(1, 2)
    hg = h.transpose(0, 1)  # [G, N, in]
    y = torch.bmm(hg, Wg) if b is None else torch.baddbmm(b.view(groups, 1, per * out), hg, Wg)
    y = y.view(groups, N, per, out).permute(1, 0, 2, 3)  # [N, G, per, out]
    if split:  # one input per expert: the input's layout
        y = y[:, :, 0]
        return y.unflatten(1, shape[1:3]) if len(shape) == 4 else y
    return y


def _batch_norm(layer: list[nn.Module], h: Tensor) -> Tensor:
    """BatchNorm1d of every expert on h [N, E, d] (or [N, G, E // G, d]) as one over E * d channels (statistics
    are per channel either way); running statistics are updated in each expert's own buffers, as its module
    would."""
    first = layer[0]
    shape, N, d = h.shape, h.shape[0], h.shape[-1]
    training, momentum = first.training, first.momentum
    tracked = first.track_running_stats
    if training and N == 1 and tracked and isinstance(first, BatchNorm1d):
        training, momentum = False, 0.0  # BatchNorm1d's one-row rule: the running statistics, not updated
    mean = torch.cat([m.running_mean for m in layer]) if tracked else None
    var = torch.cat([m.running_var for m in layer]) if tracked else None
    factor = 0.0
    if training and tracked:
        for m in layer:
            m.num_batches_tracked.add_(1)
        factor = 1.0 / float(first.num_batches_tracked) if momentum is None else momentum
    elif momentum is not None:
        factor = momentum
    w = torch.cat([m.weight for m in layer]) if first.affine else None
    b = torch.cat([m.bias for m in layer]) if first.affine else None
    y = F.batch_norm(h.reshape(N, -1), mean, var, w, b, training or not tracked, factor, first.eps)
    if training and tracked:
        with torch.no_grad():
            for i, m in enumerate(layer):
                m.running_mean.copy_(mean[i * d:(i + 1) * d])
                m.running_var.copy_(var[i * d:(i + 1) * d])
    return y.view(shape)


def run_experts(experts: Sequence[nn.Module], x: Tensor, groups: int | None = None,
                flat: Callable[[Tensor], Tensor] = lambda t: t) -> Tensor:
    """Every expert's output (flattened by `flat`): [N, E, d] when x [N, ...] is read by every expert (groups
    None); [N, G, E // G, d] when x is [N, G, in] and expert g * (E // G) + j reads x[:, g] (groups G).
    A batch norm with running statistics (eval mode) is folded into the Linear before it."""
    layers = fused_layers(experts)
    if layers is None:
        if groups is None:
            return torch.stack([flat(e(x)) for e in experts], dim=1)
        per = len(experts) // groups
        return torch.stack([flat(e(x[:, i // per])) for i, e in enumerate(experts)], dim=1).unflatten(1, (groups, per))
    h, state = x, groups  # state: None / G while the input is shared / grouped; "split" after the first Linear
    skip = -1
    for i, layer in enumerate(layers):
        first = layer[0]
        if i == skip:
            continue
        if first == FLATTEN:  # (a no-op on a grouped input, and after a Linear: each expert's input is flat)
            h = h.flatten(1) if state is None else h
        elif isinstance(first, nn.Linear):
            W, b = _stacked(layer)
            after = layers[i + 1][0] if i + 1 < len(layers) else None
            if isinstance(after, _BatchNorm) and _uses_running_stats(layers[i + 1], h.shape[0]):
                W, b = _fold(W, b, layers[i + 1])
                skip = i + 1
            h = _linear(W, b, h, state)
            state = "split"
        elif isinstance(first, _BatchNorm):
            h = _batch_norm(layer, h)
        elif isinstance(first, nn.ReLU):  # in place: h is this function's own (a Linear's or a norm's output)
            h = torch.relu_(h)
        elif isinstance(first, nn.Dropout):
            h = F.dropout(h, first.p, first.training)
    return h


def gate_weights(gates: Sequence[nn.Module], x: Tensor, grouped: bool = False) -> Tensor:
    """[N, k, m]: softmax(gate_i(input_i)) for k gates of m outputs; x [N, in] read by every gate, or (grouped)
    [N, k, in] with gate i reading x[:, i]. Plain Linear gates run as one matmul."""
    if all(type(g) is nn.Linear and not has_hooks(g) and g.bias is not None for g in gates) \
            and len({g.weight.shape for g in gates}) == 1:
        k, (m, d_in) = len(gates), gates[0].weight.shape
        W = torch.stack([g.weight for g in gates])  # [k, m, in]
        b = torch.stack([g.bias for g in gates])  # [k, m]
        if not grouped:
            logits = F.linear(x, W.reshape(k * m, d_in), b.reshape(k * m)).view(x.shape[0], k, m)
        else:
            logits = torch.baddbmm(b.unsqueeze(1), x.transpose(0, 1), W.transpose(1, 2)).transpose(0, 1)
    else:
        logits = torch.stack([g(x[:, i] if grouped else x) for i, g in enumerate(gates)], dim=1)
    return softmax_last(logits)


def softmax_last(logits: Tensor) -> Tensor:
    """softmax over the last dimension, written out: exp(l - max) / sum. The same arithmetic as
    torch.softmax, several times faster on CPU when that dimension is as short as a gate's (a few experts)."""
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)


BLOCK_BYTES = 16 * 2 ** 20


def task_blocks(tasks: Sequence[str], bytes_per_task: int) -> list[list[str]]:
    """`tasks` in consecutive blocks whose per-task activations (`bytes_per_task` each) stay within 16 MiB.
    Why: on CPU, glibc's allocator maps a tensor above its mmap threshold (at most 32 MiB) fresh from the OS
    on every call and unmaps it when freed, and touching those new pages costs more than the arithmetic on
    them (about 1 ms per MiB measured here); a few tasks at a time keep every tensor below it."""
    size = max(1, BLOCK_BYTES // max(1, bytes_per_task))
    return [list(tasks[i:i + size]) for i in range(0, len(tasks), size)]


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """[N, k, d]: sum_e weights[:, i, e] experts[:, e] for each of k weightings [N, k, E] of experts [N, E, d]."""
    return torch.bmm(weights, experts)


def mix_own_and_shared(weights: Tensor, own: Tensor, shared: Tensor) -> Tensor:
    """[N, k, d]: for each of k tasks, its gate's weights [N, k, n_own + n_shared] applied to the
    concatenation of its own experts own[:, i] ([N, k, n_own, d]) and the shared ones ([N, n_shared, d]),
    without building that concatenation: one multiply-add over [N, k, d] per expert of a task (a task has few;
    this is several times faster than batched matmuls of one row each)."""
    n_own = own.shape[2]
    out = weights[..., 0, None] * own[:, :, 0]
    for j in range(1, n_own):
        out.addcmul_(weights[..., j, None], own[:, :, j])
    for j in range(shared.shape[1]):
        out.addcmul_(weights[..., n_own + j, None], shared[:, None, j])
    return out


__all__ = ["fused_layers", "gate_weights", "mix", "mix_own_and_shared", "run_experts", "softmax_last", "task_blocks"]
