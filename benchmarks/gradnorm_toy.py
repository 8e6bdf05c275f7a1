"""The synthetic multi-task regression of GradNorm (Chen et al., ICML 2018, Section 4): T = 10 tasks whose
outputs differ in scale, one shared trunk. Measured: how fast every balancing method drives down the
task-normalised test loss sum_i L_i(t) / L_i(0), and how GradNorm's task weights evolve.

Data (fixed by --data-seed):  f_i(x) = sigma_i * tanh((B + eps_i) x),  x in R^250 ~ N(0, I),  f_i(x) in R^100,
B and eps_i with iid N(0, 10^2) and N(0, 3.5^2) entries (standard deviations 10 and 3.5, the usual reading of
the paper's N(0, 10) and N(0, 3.5)), sigma_i = i for i = 1..10; 5,000 training and 2,000 test samples.
Model: a trunk of 4 fully connected ReLU layers of 100 units (250-100-100-100-100), one affine head per task
(100 -> 100). Loss per task: mean squared error. Every method starts from the same initialisation and sees
the same minibatches (64 samples); Adam, lr 1e-3, for the model and for the balancer's own parameters
(GradNorm's w, Uncertainty's log-variances, IMTL-L's scales), 3,000 steps.

    python benchmarks/gradnorm_toy.py [--steps 3000] [--jobs 1] [--out docs/benchmarks]

Prints a markdown table (final test sum_i L_i/L_i(0), its best value during training, the spread of the
per-task ratios, wall and CPU seconds) and writes gradnorm_toy_loss_ratio.png and gradnorm_toy_weights.png.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from multitask import Task, autograd
from multitask.balancing import BALANCERS
from multitask.models.base import MultiTaskModel

T = 10
D_IN, D_OUT, HIDDEN = 250, 100, 100
SIGMAS = [float(i) for i in range(1, T + 1)]
TASKS = [Task(f"t{i + 1}", "regression", n_outputs=D_OUT) for i in range(T)]


def make_data(n_train: int, n_test: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(D_OUT, D_IN, generator=g) * 10.0
    eps = torch.randn(T, D_OUT, D_IN, generator=g) * 3.5
    x = torch.randn(n_train + n_test, D_IN, generator=g)
    y = torch.stack([s * torch.tanh(x @ (B + e).T) for s, e in zip(SIGMAS, eps)])  # [T, N, D_OUT]
    return (x[:n_train], y[:, :n_train]), (x[n_train:], y[:, n_train:])


class ToyNet(MultiTaskModel):
    def __init__(self) -> None:
        super().__init__()
        self.task_names = [t.name for t in TASKS]
        layers, d = [], D_IN
        for _ in range(4):
            layers += [nn.Linear(d, HIDDEN), nn.ReLU()]
            d = HIDDEN
        self.trunk = nn.Sequential(*layers)
        self.task_heads = nn.ModuleDict({t: nn.Linear(HIDDEN, D_OUT) for t in self.task_names})

    def shared(self, inputs):
        return self.trunk(inputs)

    def heads(self, rep, tasks):
        return {t: self.task_heads[t](rep) for t in tasks}

    def shared_parameters(self):
        return self.trunk.parameters()

    def task_parameters(self, task):
        return self.task_heads[task].parameters()


@dataclass
class Method:
    label: str
    name: str
    kwargs: dict = field(default_factory=dict)
    epoch_end_every: int = 0  # DWA: call epoch_end every this many steps (one pass over the training set)


def methods(steps_per_epoch: int) -> list[Method]:
    P = dict(mode="parameters")
    return [
        Method("equal", "equal"),
        Method("uncertainty", "uncertainty"),
        Method("gradnorm (parameters, α=0.12)", "gradnorm", dict(mode="parameters", alpha=0.12)),
        Method("gradnorm (features, α=0.12)", "gradnorm", dict(mode="features", alpha=0.12)),
        Method(f"dwa (epoch = {steps_per_epoch} steps)", "dwa", {}, epoch_end_every=steps_per_epoch),
        Method("rlw", "rlw"),
        Method("gls", "gls"),
        Method("imtl_l", "imtl_l"),
        Method("famo", "famo"),
        Method("mgda", "mgda", dict(P, normalize="none")),
        Method("mgda (loss+)", "mgda", dict(P, normalize="loss+")),
        Method("pcgrad", "pcgrad", P),
        Method("gradvac", "gradvac", P),
        Method("cagrad (c=0.4)", "cagrad", dict(P, c=0.4)),
        Method("imtl_g", "imtl_g", P),
        Method("aligned_mtl", "aligned_mtl", P),
        Method("nash_mtl", "nash_mtl", P),
        Method("upgrad", "upgrad", P),
        Method("db_mtl", "db_mtl", P),
        Method("db_mtl (β=0: no gradient averaging)", "db_mtl", dict(P, beta=0.0)),
        Method("db_mtl (features)", "db_mtl", dict(mode="features")),
        Method("graddrop (features)", "graddrop", dict(mode="features")),
    ]


@torch.no_grad()
def test_losses(model: ToyNet, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    out = model(x)
    return np.array([float(((out[t] - y[i]) ** 2).mean()) for i, t in enumerate(model.task_names)])


def run(method: Method, args) -> dict:
    torch.set_num_threads(1)
    (xtr, ytr), (xte, yte) = make_data(args.n_train, args.n_test, args.data_seed)
    torch.manual_seed(args.seed)  # the same initialisation for every method
    model = ToyNet()
    balancer = BALANCERS[method.name](TASKS, **method.kwargs)
    opt = torch.optim.Adam(list(model.parameters()) + list(balancer.parameters()), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed + 1)  # the same minibatches for every method
    index = {t: i for i, t in enumerate(model.task_names)}
    batch_y: list = [None]

    def loss_of(task, out):
        return ((out - batch_y[0][index[task]]) ** 2).mean()

    L0 = test_losses(model, xte, yte)
    log_steps, ratios, weights = [0], [L0 / L0], [balancer.weights()]
    perm, pos = torch.randperm(args.n_train, generator=g), 0
    status = "ok"
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(1, args.steps + 1):
        if pos + args.batch_size > args.n_train:
            perm, pos = torch.randperm(args.n_train, generator=g), 0
        idx = perm[pos:pos + args.batch_size]
        pos += args.batch_size
        batch_y[0] = ytr[:, idx]
        opt.zero_grad(set_to_none=True)
        autograd.backward(model, balancer, xtr[idx], loss_of)
        opt.step()
        if method.epoch_end_every and step % method.epoch_end_every == 0:
            balancer.epoch_end(step // method.epoch_end_every)
        if step % args.log_every == 0 or step == args.steps:
            L = test_losses(model, xte, yte)
            log_steps.append(step)
            ratios.append(L / L0)
            weights.append(balancer.weights())
            if not np.isfinite(L).all():
                status = f"non-finite loss at step {step}"
                break
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"  {method.label:34s} sum L_i/L_i(0) = {ratios[-1].sum():.4f}  {wall:.0f}s {status}", flush=True)
    return dict(label=method.label, name=method.name, steps=np.array(log_steps), ratios=np.array(ratios),
                weights=weights, wall=wall, cpu=cpu, status=status, L0=L0)


def table(results: list[dict]) -> str:
    out = ["| method | final Σ L_i/L_i(0) | best Σ during training | per-task ratio min / max | wall s | CPU s |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["ratios"].sum(1)
        last = r["ratios"][-1]
        note = "" if r["status"] == "ok" else f" ({r['status']})"
        out.append(f"| {r['label']}{note} | {s[-1]:.4f} | {np.nanmin(s):.4f} | {last.min():.3f} / {last.max():.3f} | "
                   f"{r['wall']:.0f} | {r['cpu']:.0f} |")
    return "\n".join(out)


def plot_ratios(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 7))
    cmap = plt.get_cmap("tab20")
    styles = ["-", "--", ":", "-."]
    for k, r in enumerate(results):
        s = r["ratios"].sum(1)
        bold = r["name"] in ("equal", "uncertainty", "gradnorm")
        ax.plot(r["steps"], s, color="k" if r["name"] == "equal" else cmap(k % 20),
                ls=styles[(k // 5) % 4] if not bold else "-", lw=2.6 if bold else 1.3,
                label=f"{r['label']}: {s[-1]:.3f}")
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("step")
    ax.set_ylabel("Σ_i L_i(t) / L_i(0)  (test set, T = 10)")
    ax.set_title("GradNorm toy: task-normalised test loss (lower is better); legend: final value")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_weights(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in results if r["name"] in ("gradnorm", "uncertainty")]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, r in zip(axes[0], shown):
        W = np.array([[w[t.name] for t in TASKS] for w in r["weights"]])
        for i in range(T):
            ax.plot(r["steps"], W[:, i], color=cmap(i / (T - 1)), lw=1.6, label=f"task {i + 1} (σ={SIGMAS[i]:g})")
        ax.set_title(r["label"], fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("task weight" if r["name"] == "gradnorm" else "weight 0.5·exp(-s_i)")
        if r["name"] == "uncertainty":
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle("Task weights during training (task i has outputs of scale σ_i = i)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--out", default="docs/benchmarks", help="folder for the PNG plots")
    ap.add_argument("--jobs", type=int, default=1, help="methods run in this many processes (1 thread each)")
    ap.add_argument("--methods", nargs="*", default=None, help="labels or balancer names (default: all)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps_per_epoch = args.n_train // args.batch_size
    chosen = [m for m in methods(steps_per_epoch)
              if not args.methods or m.label in args.methods or m.name in args.methods]
    t0 = time.perf_counter()
    print(f"{len(chosen)} methods x {args.steps} steps, jobs={args.jobs}", flush=True)
    if args.jobs > 1:
        import multiprocessing as mp
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            results = [f.result() for f in [pool.submit(run, m, args) for m in chosen]]
    else:
        results = [run(m, args) for m in chosen]
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}; jobs={args.jobs}; total {time.perf_counter() - t0:.0f}s")
    print("initial test losses L_i(0): " + ", ".join(f"{v:.2f}" for v in results[0]["L0"]))
    print()
    print(table(results))
    os.makedirs(args.out, exist_ok=True)
    plot_ratios(results, os.path.join(args.out, "gradnorm_toy_loss_ratio.png"))
    plot_weights(results, os.path.join(args.out, "gradnorm_toy_weights.png"))
    print(f"\nwrote {args.out}/gradnorm_toy_loss_ratio.png, {args.out}/gradnorm_toy_weights.png")


if __name__ == "__main__":
    main()
