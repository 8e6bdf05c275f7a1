"""Seconds per training step of the task-balancing methods of LibMTL and torchjd, on one fixed toy problem.

This file only *imports* the two libraries at run time; neither is a dependency of `multitask` and neither is
vendored here. Run it with an interpreter that has them (see "Environment" below), not with the project venv:

    /work/bench-env/bin/python benchmarks/compare_libs.py [--T 2 3 10 40] [--budget 1.0] [--methods EW Mean ...] [--threads 1] [--out FILE]

Problem (identical for every library and method, fixed per seed):
    shared trunk  Linear(64,256) ReLU Linear(256,256) ReLU          (82,432 shared parameters)
    T heads       Linear(256,1), one per task (regression)
    batch         x ~ N(0,1) [256,64], y ~ N(0,1) [256,T]; the SAME batch every step
    loss          MSE per task
    optimizer     torch.optim.SGD(lr=1e-3, no momentum) over every trainable parameter, including the
                  method's own ones (UW / IMTL / GradNorm loss scales live in the LibMTL model)
One "step" = forward, per-task losses, the library's balancing backward, optimizer.step() (plus, for
LibMTL FAMO, the extra no-grad forward + update_w() that LibMTL's Trainer does after every step).

LibMTL is driven without its Trainer: `_LibMTLHost` is a small nn.Module that subclasses the LibMTL
weighting class and provides what `AbsWeighting` and the methods read (task_num, task_name, device,
rep_grad, rep / rep_tasks, encoder, get_share_params(), zero_grad_share_params(), epoch,
train_loss_buffer). Default is parameter mode (rep_grad=False: per-task gradients w.r.t. the shared
parameters, one backward per task); GradDrop only exists in representation mode in LibMTL, so it runs
with rep_grad=True (mode "rep"; note that in LibMTL's rep mode the loss-weighting methods EW/UW/DWA/
RLW/GLS/FAMO never reach the trunk, because the heads sit on detached copies of the representation and
those methods call plain loss.backward()). Hyper-parameters are LibMTL's own defaults from LibMTL/config.py (`LIBMTL_KWARGS`).
`LibMTL/__init__.py` imports its Trainer, which needs torch_geometric; we avoid that by registering an
empty `LibMTL` package object pointing at the source folder and importing `LibMTL.weighting` from it.

torchjd: default mode "mtl_backward" = `torchjd.autojac.mtl_backward(losses, features=trunk output)`
(Jacobian of the losses w.r.t. the shared parameters, task heads get their ordinary gradients), then
`jac_to_grad(shared_params, aggregator)`. This aggregates in parameter space, like LibMTL's default.
Mode "backward" = `torchjd.autojac.backward(losses, inputs=all params)`, aggregator on the shared
parameters' Jacobian and `Sum()` on the heads' (block-sparse) Jacobians; mode "backward_all" feeds the
whole model's Jacobian (shared + heads) to the aggregator. Select with `make_step(..., mode=...)` or a
method-name suffix, e.g. "UPGrad@backward".

Environment used (outside the repo): /work/bench-env with torch==2.13.0 (CPU), torchjd[full]==0.18.0
(adds quadprog, qpsolvers, cvxpy, ecos, scipy), numpy, scipy, cvxpy; LibMTL source at
$LIBMTL_PATH (default /work/bench-libs/LibMTL), not pip-installed (its requirements pin torch 2.3+cu121).
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import random
import statistics
import sys
import time
import types
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LIBMTL_PATH = os.environ.get("LIBMTL_PATH", "/work/bench-libs/LibMTL")
IN_DIM, HIDDEN, BATCH, LR = 64, 256, 256, 1e-3

# LibMTL/config.py argparse defaults for every method benchmarked here (passed as **kwargs to backward()).
LIBMTL_KWARGS: dict = dict(
    mgda_gn="none",  # MGDA gradient normalisation
    GradVac_beta=0.5, GradVac_group_type=0,  # GradVac: EMA decay, whole-model grouping
    alpha=1.5,  # GradNorm
    leak=0.0,  # GradDrop
    calpha=0.5, rescale=1,  # CAGrad
    update_weights_every=1, optim_niter=20, max_norm=1.0,  # Nash_MTL
    DB_beta=0.9, DB_beta_sigma=0.0,  # DB_MTL
    T=2.0,  # DWA temperature
    FAMO_w_lr=0.025, FAMO_w_gamma=1e-3,  # FAMO
    UPGrad_norm_eps=1e-4, UPGrad_reg_eps=1e-4,  # UPGrad
)

LIBMTL_METHODS = [
    "EW", "MGDA", "PCGrad", "CAGrad", "Nash_MTL", "IMTL", "GradVac", "GradDrop", "Aligned_MTL",
    "Aligned_MTL+symeig_shim", "DB_MTL", "FAMO", "GradNorm", "UW", "DWA", "RLW", "GLS", "UPGrad",
]
# Methods that LibMTL only implements for one gradient mode.
_LIBMTL_REP_ONLY = {"GradDrop"}

TORCHJD_METHODS = [
    "Mean", "UPGrad", "MGDA", "CAGrad", "NashMTL", "PCGrad", "IMTLG", "AlignedMTL", "DualProj",
    "GradDrop", "Random", "GradVac",
]
TORCHJD_MODES = ("mtl_backward", "backward", "backward_all")

EQUAL = {"libmtl": "EW", "torchjd": "Mean"}

# (lib, method) -> "ExceptionType: message" for the ones that failed in available()
FAILURES: dict[tuple[str, str], str] = {}


# --------------------------------------------------------------------------- problem
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _problem(T: int, seed: int):
    _seed_all(seed)
    trunk = nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
    heads = nn.ModuleList([nn.Linear(HIDDEN, 1) for _ in range(T)])
    gen = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(BATCH, IN_DIM, generator=gen)
    y = torch.randn(BATCH, T, generator=gen)
    return trunk, heads, x, y


def _split_mode(method: str, mode: str | None) -> tuple[str, str | None]:
    if "@" in method:
        method, suffix = method.split("@", 1)
        if mode is not None and mode != suffix:
            raise ValueError(f"mode given twice: {suffix!r} and {mode!r}")
        mode = suffix
    return method, mode


# --------------------------------------------------------------------------- LibMTL
def _libmtl_weighting_module():
    if "LibMTL.weighting" in sys.modules:
        return sys.modules["LibMTL.weighting"]
    pkg_dir = os.path.join(LIBMTL_PATH, "LibMTL")
    if not os.path.isdir(pkg_dir):
        raise ImportError(f"LibMTL source not found at {pkg_dir} (set LIBMTL_PATH)")
    if "LibMTL" not in sys.modules:
        # Skip LibMTL/__init__.py (it imports the Trainer -> torch_geometric); the weighting
        # sub-package only needs torch, numpy, scipy, cvxpy and qpsolvers.
        stub = types.ModuleType("LibMTL")
        stub.__path__ = [pkg_dir]
        sys.modules["LibMTL"] = stub
    return importlib.import_module("LibMTL.weighting")


def _symeig_shim(M, eigenvectors=True):
    # torch.symeig was removed in torch 2.x; eigh has the same (ascending eigenvalues, eigenvectors) output.
    return torch.linalg.eigh(M)


def _libmtl_host_class(weighting_cls):
    class _LibMTLHost(weighting_cls):
        """The attributes LibMTL's AbsWeighting mixin expects from the model it is mixed into."""

        def __init__(self, trunk, heads, rep_grad: bool, epoch: int, loss_buffer: np.ndarray):
            super().__init__()
            self.encoder = trunk
            self.decoders = heads
            self.task_num = len(heads)
            self.task_name = [f"task{i}" for i in range(len(heads))]
            self.device = torch.device("cpu")
            self.rep_grad = rep_grad
            self.multi_input = False
            self.rep = None
            self.rep_tasks = {}
            self.epoch = epoch
            self.train_loss_buffer = loss_buffer
            self.init_param()

        def get_share_params(self):
            return self.encoder.parameters()

        def zero_grad_share_params(self):
            self.encoder.zero_grad(set_to_none=False)

        def forward(self, x):
            feats = self.encoder(x)
            outs = []
            for t, name in enumerate(self.task_name):
                rep = feats
                if self.rep_grad:  # one detached leaf copy per task, gradients come back via self.rep
                    self.rep = feats
                    rep = feats.detach().clone().requires_grad_(True)
                    self.rep_tasks[name] = rep
                outs.append(self.decoders[t](rep))
            return torch.cat(outs, dim=1)

    return _LibMTLHost


def _make_libmtl_step(method: str, T: int, seed: int, mode: str | None) -> Callable[[], None]:
    shim = method.endswith("+symeig_shim")
    base = method.removesuffix("+symeig_shim")
    wmod = _libmtl_weighting_module()
    if not hasattr(wmod, base):
        raise ValueError(f"LibMTL has no weighting {base!r}")
    if mode is None:
        mode = "rep" if base in _LIBMTL_REP_ONLY else "param"
    if mode not in ("param", "rep"):
        raise ValueError(f"LibMTL mode must be 'param' or 'rep', got {mode!r}")
    trunk, heads, x, y = _problem(T, seed)
    with torch.no_grad():
        feats = trunk(x)
        init_losses = np.array([F.mse_loss(heads[t](feats).squeeze(-1), y[:, t]).item() for t in range(T)])
    # GradNorm uses its epoch>=1 branch and DWA its epoch>1 branch (the ones that actually balance);
    # the per-epoch loss buffer they read is filled with the initial losses (DWA: a 10 % decrease).
    buffer = np.stack([init_losses, 0.9 * init_losses, 0.9 * init_losses], axis=1)
    host = _libmtl_host_class(getattr(wmod, base))(trunk, heads, rep_grad=(mode == "rep"), epoch=2,
                                                   loss_buffer=buffer)
    opt = torch.optim.SGD(host.parameters(), lr=LR)
    kwargs = dict(LIBMTL_KWARGS)
    famo = base == "FAMO"

    def losses_of(pred):
        return torch.stack([F.mse_loss(pred[:, t], y[:, t]) for t in range(T)])

    def step() -> None:
        losses = losses_of(host(x))
        opt.zero_grad(set_to_none=False)  # as LibMTL's Trainer does (its _reset_grad skips None grads)
        if shim:
            torch.symeig = _symeig_shim
        try:
            host.backward(losses, **kwargs)
        finally:
            if shim:
                del torch.symeig
        opt.step()
        if famo:  # LibMTL Trainer: after the step, re-evaluate the losses and update FAMO's logits
            with torch.no_grad():
                host.update_w(losses_of(host(x)).detach())

    return step


# --------------------------------------------------------------------------- torchjd
def _torchjd_aggregator(name: str, T: int):
    import torchjd.aggregation as A

    factories = {
        "Mean": lambda: A.Mean(),
        "UPGrad": lambda: A.UPGrad(),  # default projector: quadprog
        "MGDA": lambda: A.MGDA(),  # epsilon=1e-3, max_iters=100
        "CAGrad": lambda: A.CAGrad(c=0.5),  # c has no default in torchjd; LibMTL's calpha=0.5
        "NashMTL": lambda: A.NashMTL(n_tasks=T, max_norm=1.0, update_weights_every=1, optim_niter=20),
        "PCGrad": lambda: A.PCGrad(),
        "IMTLG": lambda: A.IMTLG(),
        "AlignedMTL": lambda: A.AlignedMTL(),  # scale_mode="min"
        "DualProj": lambda: A.DualProj(),
        "GradDrop": lambda: A.GradDrop(),
        "Random": lambda: A.Random(),
        "GradVac": lambda: A.GradVac(beta=0.5),
    }
    if name not in factories:
        raise ValueError(f"unknown torchjd aggregator {name!r}")
    return factories[name]()


def _make_torchjd_step(method: str, T: int, seed: int, mode: str | None) -> Callable[[], None]:
    from torchjd.aggregation import Sum
    from torchjd.autojac import backward, jac_to_grad, mtl_backward

    mode = mode or "mtl_backward"
    if mode not in TORCHJD_MODES:
        raise ValueError(f"torchjd mode must be one of {TORCHJD_MODES}, got {mode!r}")
    aggregator = _torchjd_aggregator(method, T)
    head_sum = Sum()
    trunk, heads, x, y = _problem(T, seed)
    shared = list(trunk.parameters())
    task_params = [list(h.parameters()) for h in heads]
    head_flat = [p for ps in task_params for p in ps]
    opt = torch.optim.SGD(shared + head_flat, lr=LR)

    def step() -> None:
        opt.zero_grad()
        feats = trunk(x)
        losses = [F.mse_loss(heads[t](feats).squeeze(-1), y[:, t]) for t in range(T)]
        if mode == "mtl_backward":
            mtl_backward(losses, features=feats, tasks_params=task_params, shared_params=shared)
            jac_to_grad(shared, aggregator)
        elif mode == "backward":
            backward(losses, inputs=shared + head_flat)
            jac_to_grad(shared, aggregator)
            jac_to_grad(head_flat, head_sum)
        else:  # backward_all
            backward(losses, inputs=shared + head_flat)
            jac_to_grad(shared + head_flat, aggregator)
        opt.step()

    return step


# --------------------------------------------------------------------------- public API
def make_step(lib: str, method: str, T: int, seed: int = 0, mode: str | None = None) -> Callable[[], None]:
    """One full training step (forward, losses, balancing backward, SGD step) of `lib`'s `method`.

    lib: "libmtl" (method = LibMTL weighting class name; mode "param" (default) or "rep") or
    "torchjd" (method = aggregator class name; mode "mtl_backward" (default), "backward", "backward_all").
    The mode may also be given as a method suffix: "UPGrad@backward".
    """
    method, mode = _split_mode(method, mode)
    if lib == "libmtl":
        return _make_libmtl_step(method, T, seed, mode)
    if lib == "torchjd":
        return _make_torchjd_step(method, T, seed, mode)
    raise ValueError(f"lib must be 'libmtl' or 'torchjd', got {lib!r}")


_AVAILABLE: dict[str, list[str]] = {}


def available(lib: str) -> list[str]:
    """Methods of `lib` whose step builds and runs (three steps) at T=3 and T=10 here; failures go to FAILURES."""
    if lib not in _AVAILABLE:
        names = {"libmtl": LIBMTL_METHODS, "torchjd": TORCHJD_METHODS}[lib]
        ok = []
        for name in names:
            try:
                for T in (3, 10):
                    step = make_step(lib, name, T)
                    for _ in range(3):
                        step()
                ok.append(name)
            except Exception as exc:  # noqa: BLE001 - we report every failure
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                FAILURES[(lib, name)] = f"{type(exc).__name__}: {msg}"[:200]
        _AVAILABLE[lib] = ok
    return list(_AVAILABLE[lib])


def time_step(step: Callable[[], None], budget_s: float = 1.0, min_reps: int = 5, max_reps: int = 50,
              warmup: int = 2) -> tuple[float, int]:
    """Median seconds of `step` after `warmup` calls; repetitions chosen to fit about `budget_s`."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    reps = max(min_reps, min(max_reps, int(budget_s / max(first, 1e-6))))
    times = [first]
    for _ in range(reps - 1):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


# --------------------------------------------------------------------------- main
def _versions() -> str:
    import importlib.metadata as md

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"threads {torch.get_num_threads()}"]
    for pkg in ("torchjd", "numpy", "scipy", "cvxpy", "qpsolvers", "quadprog", "ecos"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            parts.append(f"{pkg} -")
    commit_file = os.path.join(LIBMTL_PATH, "COMMIT")
    commit = open(commit_file).read().strip()[:12] if os.path.exists(commit_file) else "?"
    parts.append(f"LibMTL @ {commit} ({LIBMTL_PATH})")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, nargs="+", default=[2, 3, 10, 40])
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timed steps per cell (approx.)")
    ap.add_argument("--skip-over", type=float, default=2.0,
                    help="at T>=40, skip a method whose warmed-up step takes longer than this (s)")
    ap.add_argument("--torchjd-modes", nargs="+", default=["mtl_backward", "backward"], choices=TORCHJD_MODES)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: with 2 threads on a 2-core box that has any other "
                         "load, OpenMP oversubscription made steps up to ~70x slower and very noisy)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="only these method names (the equal-weighting ones are always kept for the ratios)")
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*not DPP.*")  # cvxpy, from both Nash-MTL implementations
    t_start = time.perf_counter()
    print(_versions() + f"; load average at start {os.getloadavg()[0]:.2f}")
    rows: list[tuple[str, str, str]] = []  # (lib, method, mode label)
    for lib in ("libmtl", "torchjd"):
        ok = available(lib)
        print(f"{lib}: works at T=3,10: {', '.join(ok)}")
        for (flib, name), err in FAILURES.items():
            if flib == lib:
                print(f"  FAILS {name}: {err}")
        modes = args.torchjd_modes if lib == "torchjd" else [None]
        for mode in modes:
            for name in ok:
                if args.methods is None or name in args.methods or name == EQUAL[lib]:
                    rows.append((lib, name, mode))

    results: dict[tuple[str, str, str | None, int], tuple[float, int] | str] = {}
    for (lib, name, mode) in rows:
        for T in args.T:
            try:
                step = make_step(lib, name, T, mode=mode)
                if T >= 40:
                    step(); step()
                    t0 = time.perf_counter(); step(); one = time.perf_counter() - t0
                    if one > args.skip_over:
                        results[(lib, name, mode, T)] = f"skip({one:.1f}s)"
                        continue
                results[(lib, name, mode, T)] = time_step(step, budget_s=args.budget)
            except Exception as exc:  # noqa: BLE001
                results[(lib, name, mode, T)] = f"ERR {type(exc).__name__}"
                FAILURES[(lib, f"{name}@{mode}" if mode else name)] = f"T={T}: {type(exc).__name__}: {exc}"[:200]

    plain = {T: results.get(("libmtl", "EW", None, T)) for T in args.T}
    lines = [
        "median seconds per step (reps); [x own] = ratio to the library's own equal weighting "
        "(LibMTL EW / torchjd Mean in the same mode); [x plain] = ratio to LibMTL EW (= sum(losses).backward())",
        "| lib | method | mode | " + " | ".join(f"T={T}" for T in args.T) + " |",
        "|---|---|---|" + "---|" * len(args.T),
    ]
    for (lib, name, mode) in rows:
        cells = []
        for T in args.T:
            r = results[(lib, name, mode, T)]
            if isinstance(r, str):
                cells.append(r)
                continue
            med, n = r
            eq = results.get((lib, EQUAL[lib], mode, T))
            own = f"{med / eq[0]:.1f}x own" if isinstance(eq, tuple) else "-"
            pl = plain[T]
            pls = f", {med / pl[0]:.1f}x plain" if isinstance(pl, tuple) and lib == "torchjd" else ""
            cells.append(f"{med:.3g}s ({n}) [{own}{pls}]")
        label = mode or ("rep" if lib == "libmtl" and name in _LIBMTL_REP_ONLY else
                         "param" if lib == "libmtl" else "")
        lines.append(f"| {lib} | {name} | {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    extra = [f"{lib}/{name}: {err}" for (lib, name), err in FAILURES.items()]
    if extra:
        print("failures:\n  " + "\n  ".join(extra))
    print(f"total {time.perf_counter() - t_start:.0f}s")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(_versions() + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
