"""Seconds per training step of every balancing method, beside torchjd 0.18.0 and LibMTL, measured in one run.

Problem (the same for every library): shared MLP trunk 64 -> 256 -> 256 (ReLU), one linear regression head
per task, batch 256 (one fixed batch), MSE per task, SGD lr 1e-3, CPU, T in {2, 3, 10, 40}.
Every step callable of every library is built first; then, round after round, all of them run in a freshly
shuffled order, so that changes in machine speed hit every cell alike. Reported: the median seconds per
step of each cell and its ratio to the same library's equal-weighting step; for multitask, parameter mode
(gradients on the shared parameters) and feature mode (on the trunk's output); the ratio of multitask's
parameter mode to torchjd (its `mtl_backward`, also parameter space) and LibMTL (its default, parameter
space) for the same method.

Run in the benchmark environment (benchmarks/compare_env.sh), which has torchjd and LibMTL:
    LIBMTL_PATH=... .bench-env/bin/python benchmarks/balancing_speed.py [--T 2 3 10 40] [--threads 1]
    [--budget 40] [--out docs/benchmarks]
Without torchjd / LibMTL importable it measures multitask alone.

Gramian cost (section "Gramian cost", also alone with --gramian-only, which rewrites only that section of
the report and the "gramian" entry of the JSON): the engine's Gramian of hard float32 Jacobians (T = 10,
P = 100k: correlated rows, badly scaled rows, both, ill-conditioned, plus a plain random one) against a
float32 J J^T, the previous rule (float32 product, float64 redo when cond(K) > 1e4) and float64 products,
in interleaved rounds; with each one's largest entry error against float64 products.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from multitask import HardSharing, Task, autograd  # noqa: E402
from multitask.balancing import BALANCERS, GradientBalancer  # noqa: E402

# multitask name -> (torchjd aggregator, LibMTL weighting): the same method in each library, where it exists
SAME_METHOD = {
    "equal": ("Mean", "EW"), "mgda": ("MGDA", "MGDA"), "pcgrad": ("PCGrad", "PCGrad"),
    "cagrad": ("CAGrad", "CAGrad"), "nash_mtl": ("NashMTL", "Nash_MTL"), "imtl_g": ("IMTLG", "IMTL"),
    "aligned_mtl": ("AlignedMTL", "Aligned_MTL+symeig_shim"), "upgrad": ("UPGrad", "UPGrad"),
    "gradvac": ("GradVac", "GradVac"), "graddrop": ("GradDrop", "GradDrop"), "db_mtl": (None, "DB_MTL"),
    "gradnorm": (None, "GradNorm"), "famo": (None, "FAMO"), "uncertainty": (None, "UW"), "dwa": (None, "DWA"),
    "rlw": ("Random", "RLW"), "gls": (None, "GLS"), "imtl_l": (None, None), "static": (None, None),
}
IN_DIM, HIDDEN, BATCH, LR = 64, 256, 256, 1e-3


class HardSharingGenericPath(HardSharing):
    """The same model without naming its heads' entry layers: the engine takes per-task gradients on the
    trunk's output itself (the generic path, as for any model), so the factored path's gain is visible."""

    def head_entries(self) -> None:
        return None


def multitask_step(method: str, T: int, mode: str | None, seed: int = 0, entries: bool = True) -> Callable[[], None]:
    torch.manual_seed(seed)
    tasks = [Task(f"t{i}", "regression") for i in range(T)]
    trunk = nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
    model = (HardSharing if entries else HardSharingGenericPath)(tasks, trunk, HIDDEN)  # heads: Linear(256, 1)
    balancer = BALANCERS[method](tasks, mode=mode) if mode else BALANCERS[method](tasks)
    opt = torch.optim.SGD(list(model.parameters()) + list(balancer.parameters()), lr=LR)
    gen = torch.Generator().manual_seed(10_000 + seed)
    x, y = torch.randn(BATCH, IN_DIM, generator=gen), torch.randn(BATCH, T, generator=gen)
    column = {t.name: i for i, t in enumerate(tasks)}

    def loss_of(task: str, out: torch.Tensor) -> torch.Tensor:
        return ((out[:, 0] - y[:, column[task]]) ** 2).mean()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        autograd.backward(model, balancer, x, loss_of)
        opt.step()

    return step


def jacobian_floor_step(T: int, seed: int = 0) -> Callable[[], None]:
    """The least any exact parameter-mode method computes: the trunk's forward pass and T backward passes
    through it (per-task gradients on the shared parameters), with no heads, losses, solver or optimizer."""
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
    params = list(trunk.parameters())
    gen = torch.Generator().manual_seed(10_000 + seed)
    x, cotangents = torch.randn(BATCH, IN_DIM, generator=gen), torch.randn(T, BATCH, HIDDEN, generator=gen)

    def step() -> None:
        z = trunk(x)
        for i in range(T):
            torch.autograd.grad(z, params, cotangents[i], retain_graph=i < T - 1)

    return step


def gemm_step() -> Callable[[], None]:
    """One (10 * batch) x 256 x 256 float32 matrix product: this machine's sustained GEMM rate right now."""
    a, b = torch.randn(10 * BATCH, HIDDEN), torch.randn(HIDDEN, HIDDEN)
    return lambda: torch.mm(a, b)


def jacobian_macs(T: int) -> int:
    """Multiply-adds of the trunk forward plus T per-task backward passes (weight and input gradients of
    layer 2, weight gradient of layer 1; the input needs no gradient)."""
    forward = BATCH * IN_DIM * HIDDEN + BATCH * HIDDEN * HIDDEN
    return forward + T * (2 * BATCH * HIDDEN * HIDDEN + BATCH * IN_DIM * HIDDEN)


def build_cells(T: int, others: dict) -> dict[tuple[str, str, str], Callable[[], None]]:
    cells = {("floor", "jacobian", "-"): jacobian_floor_step(T), ("floor", "gemm", "-"): gemm_step()}
    for name, cls in BALANCERS.items():
        if issubclass(cls, GradientBalancer):
            for mode in ("parameters", "features"):
                cells[("multitask", name, mode)] = multitask_step(name, T, mode)
            cells[("multitask", name, "features-generic")] = multitask_step(name, T, "features", entries=False)
        else:
            cells[("multitask", name, "-")] = multitask_step(name, T, None)
    for lib, (make_step, names) in others.items():
        for name in names:
            try:
                cells[(lib, name, "default")] = make_step(lib, name, T)
            except Exception as exc:  # noqa: BLE001 - a method a library cannot run is reported, not fatal
                print(f"  {lib} {name}: cannot build at T={T}: {type(exc).__name__}: {exc}", flush=True)
    return cells


def measure(cells: dict, budget_s: float, rng: random.Random) -> dict:
    times: dict = {k: [] for k in cells}
    for step in cells.values():  # warm-up
        step()
        step()
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or (time.perf_counter() - start < budget_s and rounds < 200):
        order = list(cells)
        rng.shuffle(order)
        for key in order:
            t0 = time.perf_counter()
            cells[key]()
            times[key].append(time.perf_counter() - t0)
        rounds += 1
    return {k: statistics.median(v) for k, v in times.items()}, rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[2, 3, 10, 40])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=40.0, help="seconds of measuring rounds per T")
    ap.add_argument("--out", default=None)
    ap.add_argument("--gramian-only", action="store_true", help="measure only the Gramian cost section")
    ap.add_argument("--gramian-rounds", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.gramian_only:
        gram = gramian_cost(args.gramian_rounds)
        text = "\n".join(gramian_report(gram, args))
        print(text)
        if args.out:
            write_gramian_section(Path(args.out), gram, text)
        return
    others = {}
    try:
        import compare_libs

        for lib in ("torchjd", "libmtl"):
            names = compare_libs.available(lib)
            if names:
                others[lib] = (compare_libs.make_step, names)
        for (lib, name), err in compare_libs.FAILURES.items():
            print(f"  {lib} {name} is not measured: {err}")
    except ImportError as exc:
        print(f"torchjd / LibMTL not importable ({exc}); measuring multitask alone")
    versions = {"torch": torch.__version__}
    try:
        import torchjd

        from importlib.metadata import version

        versions["torchjd"] = version("torchjd")
    except ImportError:
        pass
    rng = random.Random(0)
    results = {}
    for T in args.T:
        cells = build_cells(T, others)
        print(f"T={T}: {len(cells)} cells", flush=True)
        med, rounds = measure(cells, args.budget, rng)
        results[T] = {"rounds": rounds, "median_s": {"|".join(k): v for k, v in med.items()}}
    lines = report(results, others, args, versions)
    text = "\n".join(lines)
    print(text)
    gram = gramian_cost(args.gramian_rounds)
    gram_text = "\n".join(gramian_report(gram, args))
    print(gram_text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "balancing_speed.json").write_text(json.dumps({**results, "gramian": gram}, indent=1))
        (out / "balancing_speed.md").write_text(
            "# Balancing speed\n\nCommand: `LIBMTL_PATH=... .bench-env/bin/python benchmarks/balancing_speed.py"
            + "".join(f" {a}" for a in sys.argv[1:]) + "` (environment: `benchmarks/compare_env.sh`)\n\n"
            + text + "\n\n![seconds per step](balancing_speed.png)\n\n" + GRAM_BEGIN + "\n" + gram_text + "\n"
            + GRAM_END + "\n")
        plot(results, out / "balancing_speed.png")


# ------------------------------------------------------------------------------------------ Gramian cost
GRAM_BEGIN, GRAM_END = "<!-- gramian-cost -->", "<!-- /gramian-cost -->"
GRAM_T, GRAM_P = 10, 100_000


def hard_jacobians() -> dict[str, torch.Tensor]:
    """Seeded float32 Jacobians (T = 10, P = 100k) of the classes where the Gramian's precision matters."""
    g = torch.Generator().manual_seed(0)
    T, P = GRAM_T, GRAM_P

    def unit(J: torch.Tensor) -> torch.Tensor:
        return J / J.norm(dim=1, keepdim=True)

    norms = torch.logspace(-3, 3, T)[torch.randperm(T, generator=g)][:, None]  # ratio 1e6
    U = torch.linalg.qr(torch.randn(T, T, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(P, T, generator=g, dtype=torch.float64))[0]
    out = {
        "random": torch.randn(T, P, generator=g),
        "correlated (common + 1e-2 noise)": torch.randn(P, generator=g) + 1e-2 * torch.randn(T, P, generator=g),
        "badly scaled (norms 1e-3 ... 1e3)": unit(torch.randn(T, P, generator=g)) * norms,
        "correlated and badly scaled":
            unit(torch.randn(P, generator=g) + 1e-2 * torch.randn(T, P, generator=g)) * norms,
        "correlated (common + 1e-3 noise)": torch.randn(P, generator=g) + 1e-3 * torch.randn(T, P, generator=g),
        "ill-conditioned (singular values 1 ... 1e-4)": (U * torch.logspace(0, -4, T, dtype=torch.float64)) @ V.T,
    }
    return {k: v.float().contiguous() for k, v in out.items()}


def previous_gram(M: torch.Tensor) -> torch.Tensor:
    """The engine's Gramian before this change (kept here to measure against): float32 M M^T, redone with
    float64 products when lambda_min(K) < 1e-4 lambda_max(K)."""
    K = (M @ M.T).double()
    eig = torch.linalg.eigvalsh(K)
    if float(eig[-1]) > 0 and float(eig[0]) < 1e-4 * float(eig[-1]):
        Md = M.double()
        K = Md @ Md.T
    return K


def gramian_cost(rounds: int) -> dict:
    from multitask.balancing import AlignedMTL

    strict = AlignedMTL([Task(f"t{i}", "regression") for i in range(GRAM_T)])  # gramian_rcond 1e-3
    ways = {
        "float32 J J^T": lambda M: M @ M.T,
        "previous engine": previous_gram,
        "engine (MGDA, CAGrad, Nash-MTL, UPGrad, ...)": autograd._gram,
        "engine (Aligned-MTL, IMTL-G)": lambda M: autograd._stricter(strict, autograd._gram(M),
                                                                     lambda: autograd._exact_gram(M)),
        "float64 products": autograd._exact_gram,
    }
    rng = random.Random(1)
    out = {}
    for name, M in hard_jacobians().items():
        exact = autograd._exact_gram(M)
        norms = exact.diag().sqrt()
        scale = torch.outer(norms, norms).clamp_min(1e-300)
        warm: dict[str, list[float]] = {w: [] for w in ways}
        cold: dict[str, list[float]] = {w: [] for w in ways}
        for f in ways.values():  # warm-up
            f(M)
        for _ in range(rounds):
            order = list(ways)
            rng.shuffle(order)
            for w in order:  # the first call follows another way's (a cold cache), then 4 in a row
                calls = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    ways[w](M)
                    calls.append(time.perf_counter() - t0)
                cold[w].append(calls[0])
                warm[w].append(statistics.median(calls[1:]))
        out[name] = {
            "rcond_correlation": autograd._correlation_rcond(exact),
            "median_s": {w: statistics.median(v) for w, v in warm.items()},
            "median_s_first_call": {w: statistics.median(v) for w, v in cold.items()},
            "max_entry_error": {w: float(((ways[w](M).double() - exact).abs() / scale).max()) for w in ways},
        }
    return out


def gramian_report(gram: dict, args) -> list[str]:
    ways = list(next(iter(gram.values()))["median_s"])
    lines = ["## Gramian cost", "",
             f"CPU ({platform.machine()}, {os.cpu_count()} cores), {args.threads} torch thread(s), torch "
             f"{torch.__version__}; float32 Jacobians T = {GRAM_T}, P = {GRAM_P}. Command: `python "
             f"benchmarks/balancing_speed.py --gramian-only --gramian-rounds {args.gramian_rounds}"
             f"{' --out ' + args.out if args.out else ''}`.",
             f"Each of {args.gramian_rounds} rounds runs every way of forming K in a shuffled order, five calls in "
             "a row: the table gives the median of calls 2-5 (ms, and the ratio to the float32 J J^T), the last "
             "column the median of first calls, which follow another way's products (a cold cache). The engine "
             "sums float32 products of 256-column blocks in float64 and redoes K with float64 products only when "
             f"the correlation matrix D^-1 K D^-1 has lambda_min / lambda_max < {autograd.GRAM_RCOND:g} "
             "(Aligned-MTL and IMTL-G: < 1e-3); the previous engine redid it whenever cond(K) > 1e4. Error: the "
             "largest |K_ij - K64_ij| / (|g_i| |g_j|) against float64 products.", "",
             "| Jacobian | rcond(D^-1 K D^-1) | " + " | ".join(f"{w}: ms (ratio) [error]" for w in ways)
             + " | first call: float32 / engine / previous, ms |",
             "|---|---:|" + "---:|" * (len(ways) + 1)]
    for name, r in gram.items():
        base = r["median_s"][ways[0]]
        cells = [f"{1000 * r['median_s'][w]:.3f} ({r['median_s'][w] / base:.2f}x) [{r['max_entry_error'][w]:.0e}]"
                 for w in ways]
        first = r["median_s_first_call"]
        lines.append(f"| {name} | {r['rcond_correlation']:.0e} | " + " | ".join(cells)
                     + f" | {1000 * first[ways[0]]:.3f} / {1000 * first[ways[2]]:.3f} / {1000 * first[ways[1]]:.3f} |")
    return lines


def write_gramian_section(out: Path, gram: dict, text: str) -> None:
    """Replace (or append) the Gramian section of the report and the "gramian" entry of its JSON."""
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "balancing_speed.md", out / "balancing_speed.json"
    block = GRAM_BEGIN + "\n" + text + "\n" + GRAM_END
    old = md.read_text() if md.exists() else "# Balancing speed\n"
    if GRAM_BEGIN in old and GRAM_END in old:
        new = old[:old.index(GRAM_BEGIN)] + block + old[old.index(GRAM_END) + len(GRAM_END):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    md.write_text(new)
    data = json.loads(js.read_text()) if js.exists() else {}
    data["gramian"] = gram
    js.write_text(json.dumps(data, indent=1))


def _get(res: dict, lib: str, name: str | None, mode: str) -> float | None:
    return res["median_s"].get(f"{lib}|{name}|{mode}") if name else None


def report(results: dict, others: dict, args, versions: dict) -> list[str]:
    lines = [f"CPU ({platform.machine()}, {os.cpu_count()} cores), {args.threads} torch thread(s); "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + "; medians of interleaved rounds",
             "Ratios in brackets: to the same library's equal weighting (multitask: `equal`, torchjd: `Mean`, "
             "LibMTL: `EW`). Last two columns: multitask parameter mode / the other library, same method.",
             "Feature mode: per-task gradients taken at the heads' entry layers (HardSharing names them; the "
             "default); 'generic': the same model without them, gradients on the trunk's output itself."]
    checks = []
    for T, res in results.items():
        eq = _get(res, "multitask", "equal", "-")
        jd_eq = _get(res, "torchjd", "Mean", "default")
        lm_eq = _get(res, "libmtl", "EW", "default")
        lines += ["", f"### T = {T} ({res['rounds']} rounds)", "",
                  "| method | multitask parameters ms | multitask features ms | features, generic ms | torchjd ms "
                  "| LibMTL ms | ÷ torchjd | ÷ LibMTL |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        mgda_p = _get(res, "multitask", "mgda", "parameters")
        for name, cls in BALANCERS.items():
            jd_name, lm_name = SAME_METHOD.get(name, (None, None))
            grad = issubclass(cls, GradientBalancer)
            p = _get(res, "multitask", name, "parameters" if grad else "-")
            f = _get(res, "multitask", name, "features") if grad else None
            fg = _get(res, "multitask", name, "features-generic") if grad else None
            jd = _get(res, "torchjd", jd_name, "default")
            lm = _get(res, "libmtl", lm_name, "default")

            def cell(v, base):
                return "-" if v is None else f"{1000 * v:.2f} ({v / base:.2f}x)" if base else f"{1000 * v:.2f}"

            lines.append(f"| {name} | {cell(p, eq)} | {cell(f, eq)} | {cell(fg, eq)} | {cell(jd, jd_eq)} | "
                         f"{cell(lm, lm_eq)} | "
                         f"{'-' if not (p and jd) else f'{p / jd:.2f}'} | {'-' if not (p and lm) else f'{p / lm:.2f}'} |")
            if T == 10 and grad:
                if jd:
                    checks.append(f"{name}: parameters / torchjd = {p / jd:.2f} (target <= 0.6): "
                                  f"{'met' if p / jd <= 0.6 else 'NOT met'}")
                if lm:
                    checks.append(f"{name}: parameters / LibMTL = {p / lm:.2f} (target < 1): "
                                  f"{'met' if p < lm else 'NOT met'}")
                if lm and name == "graddrop":  # LibMTL runs GradDrop on the representation only
                    checks.append(f"{name}: features / LibMTL (which applies it to the representation) = "
                                  f"{f / lm:.2f}")
                checks.append(f"{name}: features / equal = {f / eq:.2f} (target <= 1.5): "
                              f"{'met' if f / eq <= 1.5 else 'NOT met'}; generic path {fg / eq:.2f}")
                if name in ("nash_mtl", "cagrad"):
                    checks.append(f"{name}: parameters / mgda parameters = {p / mgda_p:.2f} (target <= 1.3): "
                                  f"{'met' if p / mgda_p <= 1.3 else 'NOT met'}")
    if checks:
        lines += ["", "### Targets at T = 10", ""] + [f"- {c}" for c in checks]
    if 10 in results:
        res = results[10]
        floor, gemm = _get(res, "floor", "jacobian", "-"), _get(res, "floor", "gemm", "-")
        rate = 2 * 10 * BATCH * HIDDEN * HIDDEN / gemm  # flop/s
        flop_floor = 2 * jacobian_macs(10) / rate
        lines += ["", "### What exact per-task gradients cost at T = 10", "",
                  f"- trunk forward + 10 backward passes alone (no heads, losses, solver or optimizer): "
                  f"{1000 * floor:.2f} ms",
                  f"- the same flops ({2 * jacobian_macs(10) / 1e6:.0f} MFLOP) at this run's GEMM rate "
                  f"({rate / 1e9:.0f} GFLOP/s on a {10 * BATCH}x{HIDDEN}x{HIDDEN} product): {1000 * flop_floor:.2f} ms",
                  "", "| method | torchjd ms | 0.6 x torchjd ms | multitask parameters ms | "
                  "backward-pass floor ÷ torchjd | flop floor ÷ torchjd |", "|---|---:|---:|---:|---:|---:|"]
        for name in BALANCERS:
            jd = _get(res, "torchjd", SAME_METHOD.get(name, (None, None))[0], "default")
            p = _get(res, "multitask", name, "parameters")
            if jd and p and name != "equal":
                lines.append(f"| {name} | {1000 * jd:.2f} | {600 * jd:.2f} | {1000 * p:.2f} | {floor / jd:.2f} | "
                             f"{flop_floor / jd:.2f} |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = sorted(results)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5), sharey=True)
    for ax, name in zip(axes, ["mgda", "upgrad", "cagrad", "nash_mtl"]):
        jd_name, lm_name = SAME_METHOD[name]
        series = {
            "multitask (parameters)": [_get(results[T], "multitask", name, "parameters") for T in Ts],
            "multitask (features)": [_get(results[T], "multitask", name, "features") for T in Ts],
            "multitask equal": [_get(results[T], "multitask", "equal", "-") for T in Ts],
            "torchjd, same method": [_get(results[T], "torchjd", jd_name, "default") for T in Ts],
            "LibMTL, same method": [_get(results[T], "libmtl", lm_name, "default") for T in Ts],
        }
        for label, ys in series.items():
            if all(y is not None for y in ys):
                ax.plot(Ts, [1000 * y for y in ys], marker="o", label=label,
                        linestyle="--" if "equal" in label else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(Ts, [str(T) for T in Ts])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(name)
        ax.set_xlabel("tasks T")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per training step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
