"""Mixed precision and torch.compile for the `Trainer`: what `trainer.precision` and `trainer.compile` do.

- ``precision``: ``"32"`` (plain float32), ``"bf16"`` or ``"fp16"``: the forward pass and the task losses run
  under `torch.autocast` with that dtype; the gradient engine leaves autocast for its own algebra (Gramian,
  solvers, the update written to ``.grad`` stay in float32/float64, see ``multitask.autograd``), so a balancer
  sees the same kind of numbers as in float32. ``fp16`` has too little range for raw gradients, so its losses
  are scaled by a `torch.amp.GradScaler` (CUDA, and CPU where torch supports it). Loss scaling would change
  what a gradient balancer sees (its Gramian, its loss values), so ``fp16`` is refused for them: use
  ``bf16``, which has float32's range and needs no scaling.
- ``compile``: ``torch.compile`` of what the engine calls. A loss balancer calls the whole model (compiled in
  place, so its ``state_dict`` keys do not change); a gradient balancer runs the shared trunk and the heads
  separately, with hooks on the heads' entry layers that change every step, so only the trunk
  (``model.shared``) is compiled and the heads run eagerly. A model without a shared representation
  (cross-stitch, task-conditioned, ...) is called whole by the engine and compiled whole.
"""
from __future__ import annotations

import contextlib
import os
import shutil

import torch

from multitask.balancing.base import Balancer, GradientBalancer
from multitask.models.base import MultiTaskModel

PRECISIONS = ("32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def normalise_precision(value: object) -> str:
    """The precision as one of `PRECISIONS` (YAML reads ``32`` as a number); a ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 32:
        return "32"
    text = str(value).strip().lower() if isinstance(value, str) else None
    aliases = {"32": "32", "fp32": "32", "float32": "32", "bf16": "bf16", "bfloat16": "bf16",
               "fp16": "fp16", "float16": "fp16", "16": "fp16"}
    if text not in aliases:
        raise ValueError(f"precision must be one of 32, bf16, fp16; got {value!r}")
    return aliases[text]


def precision_problem(precision: str, device: str | torch.device, balancer: Balancer) -> str | None:
    """Why `precision` cannot train `balancer` on `device` (None when it can)."""
    if precision == "fp16" and isinstance(balancer, GradientBalancer):
        return (f"fp16 needs loss scaling, which would change what the gradient balancer "
                f"{type(balancer).__name__} sees (its Gramian and loss values); use precision: bf16 (float32's "
                "range, no scaling needed) or 32")
    if precision == "fp16" and torch.device(device).type not in ("cuda", "cpu"):
        return f"fp16 loss scaling is available on cuda and cpu only, not on {torch.device(device).type}"
    return None


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """`torch.autocast` for `precision` on `device`'s type, or a no-op for float32."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (None for 32 and bf16, which need no loss scaling)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def compile_backend(value: bool | str) -> str | None:
    """The torch.compile backend `trainer.compile` asks for: None (off), "inductor" for true, or a named one."""
    if value is False or value is None:
        return None
    if value is True:
        return "inductor"
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"compile must be true, false or a torch.compile backend name, got {value!r}")


def compile_problem(backend: str | None, device: str | torch.device) -> str | None:
    """Why `backend` cannot compile here (None when it can, as far as can be told before compiling)."""
    if backend is None:
        return None
    known = torch._dynamo.list_backends(exclude_tags=()) if hasattr(torch, "_dynamo") else []
    if backend not in known:
        return f"unknown torch.compile backend {backend!r}; torch {torch.__version__} has: {', '.join(known)}"
    if backend == "inductor" and torch.device(device).type == "cpu" and not cpp_compiler():
        return ("the inductor backend needs a C++ compiler on CPU (g++ or clang++, or $CXX) and none was found; "
                "install one, or set compile: false")
    return None


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU, if any is on PATH."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def compile_model(model: MultiTaskModel, balancer: Balancer, backend: str) -> str:
    """Compile what the engine will call for `balancer`, in place; returns what was compiled."""
    if isinstance(balancer, GradientBalancer) and model.shares_representation:
        # the engine calls model.shared, then each head on a detached copy with per-step hooks: the trunk
        # is compiled, the heads stay eager (hooks registered anew each step would recompile them every step)
        model.shared = torch.compile(model.shared, backend=backend)  # an instance attribute shadowing the method
        return "shared trunk (model.shared); heads eager"
    model.compile(backend=backend)  # nn.Module.compile: in place, state_dict keys unchanged
    return "whole model"


__all__ = ["PRECISIONS", "normalise_precision", "precision_problem", "autocast", "make_scaler", "compile_backend",
           "compile_problem", "compile_model", "cpp_compiler"]
