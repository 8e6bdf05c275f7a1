"""LibMTL's HPS, Cross_stitch, MTAN, CGC and PLE beside our architecture families on Multi-Fashion, same rows,
same optimiser, same batches, interleaved in one run (issue 10, `architectures` benchmark, the LibMTL part).

Rows: load_multi_fashion(seed=0), the first --train-size training composites, the whole validation (6,000) and
test (10,000) splits; tasks left and right (10 classes each). Every run: Adam (lr --lr, no weight decay), batch
--batch-size, --epochs epochs, the batch order of our Trainer (multitask.data.sampling: epoch_generator(seed,
epoch) -> shuffled_batches), summed cross-entropy (our `equal`, LibMTL's EW: both weight every task 1), the
epoch of lowest mean validation loss restored before the test (our Trainer's default; reproduced in the LibMTL
loop). torch.manual_seed(seed) before each model is built.

Runs (each over every seed, seeds outer so that all runs share the machine's noise):
  libmtl  HPS, Cross_stitch, MTAN, CGC, PLE on `SmallResNet` (below: ResNet-18 topology, two basic blocks per
          stage, widths --widths, 1 input channel), linear decoders on globally average-pooled features;
  ours    independent, hard_sharing, cross_stitch, mtan, cgc, ple at their image-builder defaults (LeNet-like);
  ours    independent, hard_sharing, cross_stitch, mtan, cgc on the same SmallResNet (user `Blocks`), linear
          heads: the comparison at equal network (our PLE's second level needs flat experts, so no PLE here).
Optional (--full-mtan-seeds): LibMTL MTAN unmodified on the ResNet widths it hard-codes (64-512).

LibMTL is not a dependency: its source folder (LIBMTL_PATH or --libmtl-path; a checkout of
github.com/median-research-group/LibMTL) is imported without its package __init__ (which imports its Trainer:
torch_geometric, cvxpy, and a hard-coded cuda:0 device). Only LibMTL.architecture, LibMTL.model.resnet (MTAN's
blocks) and LibMTL.weighting.EW are loaded; they need torch and numpy alone. LibMTL's Trainer is not used (it
puts the model on cuda:0 unconditionally); `train_libmtl` is its train_singlelevel step on CPU: forward, task
losses, zero_grad, model.backward(losses) (EW's), optimizer.step().

    LIBMTL_PATH=/work/libmtl-src python benchmarks/libmtl_arch.py [--train-size 4000] [--epochs 3] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import re
import statistics
import sys
import time
import types
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy
import torch
from torch import Tensor, nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arch_common import NOTES, kept_notes, machine_line  # noqa: E402

from multitask.balancing import BALANCERS  # noqa: E402
from multitask.data.multi_fashion import load_multi_fashion  # noqa: E402
from multitask.data.sampling import epoch_generator, shuffled_batches  # noqa: E402
from multitask.experiment import count_parameters  # noqa: E402
from multitask.metrics import delta_m  # noqa: E402
from multitask.models import CGC, MTAN, CrossStitch, HardSharing, Independent, build_model  # noqa: E402
from multitask.models.blocks import Blocks  # noqa: E402
from multitask.models.conv import ImageSpec, Normalize  # noqa: E402
from multitask.tasks import Task  # noqa: E402
from multitask.training import Trainer, TrainerConfig  # noqa: E402

TASK_NAMES = ["left", "right"]
TASKS = [Task(t, "multiclass", n_outputs=10, metrics=["accuracy"]) for t in TASK_NAMES]
LIBMTL_ARCHS = ["HPS", "Cross_stitch", "MTAN", "CGC", "PLE"]
OUR_LENET = ["independent", "hard_sharing", "cross_stitch", "mtan", "cgc", "ple"]
OUR_RESNET = ["independent", "hard_sharing", "cross_stitch", "mtan", "cgc"]
MTAN_RESNET_WIDTHS = (64, 128, 256, 512)  # LibMTL/architecture/MTAN.py: ch = np.array([64, 128, 256, 512]) * expansion
EXPERTS = (1, 1, 1)  # LibMTL num_experts [shared, left, right]: our cgc/ple image defaults (1 shared, 1 per task)
EVAL_BATCH = 2048  # both libraries (our TrainerConfig.eval_batch_size); 8192 at widths 64-512 is GBs per map


# ------------------------------------------------------------------------------------------------ the encoder
class BasicBlock(nn.Module):
    """He et al. 2016's basic residual block: 3x3 conv-BN-ReLU, 3x3 conv-BN, plus the input (through a strided
    1x1 conv-BN when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


def stage(c_in: int, c_out: int, stride: int, n_blocks: int = 2) -> nn.Sequential:
    return nn.Sequential(BasicBlock(c_in, c_out, stride), *(BasicBlock(c_out, c_out) for _ in range(n_blocks - 1)))


class SmallResNet(nn.Module):
    """ResNet-18's topology for 1x36x36 images with narrow widths: stem conv1 (5x5, no padding: 32x32) - bn1 -
    relu - maxpool (2x2): 16x16; layer1..layer4, two basic blocks each, strides 1, 2, 2, 2: 16, 8, 4, 2 pixels
    (MTAN needs each stage to halve the size exactly: it max-pools its attention path by 2 to follow them).
    The attribute names (conv1, bn1, relu, maxpool, layer1..4, feature_dim) are those LibMTL's Cross_stitch,
    MTAN and PLE take apart; two blocks per stage is the fewest MTAN accepts (it splits each stage into
    layer[:-1] and layer[-1]). forward returns the layer4 feature map (what LibMTL's decoders read)."""

    def __init__(self, widths: Sequence[int] = (8, 16, 32, 64), in_channels: int = 1) -> None:
        super().__init__()
        w = list(widths)
        self.conv1 = nn.Conv2d(in_channels, w[0], 5, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = stage(w[0], w[0], 1)
        self.layer2 = stage(w[0], w[1], 2)
        self.layer3 = stage(w[1], w[2], 2)
        self.layer4 = stage(w[2], w[3], 2)
        self.feature_dim = w[3]

    def stem(self) -> nn.Sequential:
        return nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def pooled_linear(width: int, n_out: int = 10) -> nn.Sequential:
    """A decoder / head: global average pooling, then one linear layer."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_out))


class ResNetBlocks(Blocks):
    """`SmallResNet` as our `Blocks`: the encoder only normalises pixels; layer 0 is the stem, layers 1-4 the
    stages (one fresh SmallResNet per call, of which the layer is kept); `flat` average-pools."""

    def __init__(self, spec: ImageSpec, widths: Sequence[int]) -> None:
        self.spec, self.net_widths = spec, tuple(widths)
        self.in_width = spec.channels
        self.widths = (widths[0], widths[0], widths[1], widths[2], widths[3])
        self.out_dim = widths[3]

    def encoder(self) -> nn.Module:
        return Normalize(self.spec)

    def layer(self, i: int, in_width: int | None = None) -> nn.Module:
        if in_width is not None and in_width != self.width_before(i):
            raise ValueError("ResNetBlocks layers take their own input width only")
        net = SmallResNet(self.net_widths, self.spec.channels)
        return net.stem() if i == 0 else getattr(net, f"layer{i}")

    def flat(self, h: Tensor) -> Tensor:
        """The last stage's maps average-pooled (what the heads read); anything else flattened (the image a
        CGC gate reads)."""
        if h.dim() == 4 and h.shape[1] == self.out_dim:
            return h.mean(dim=(2, 3))
        return h.flatten(1)


# ------------------------------------------------------------------------------------------------ LibMTL
def import_libmtl(path: str) -> tuple[types.ModuleType, type]:
    """(LibMTL.architecture, LibMTL.weighting.EW.EW) from the source folder `path`, skipping the package
    __init__ files of LibMTL and LibMTL.weighting (they import the Trainer and every weighting method, i.e.
    torch_geometric, cvxpy, qpsolvers)."""
    root = Path(path) / "LibMTL"
    if not (root / "architecture" / "MTAN.py").exists():
        raise SystemExit(f"LibMTL source not found under {path!r} (set LIBMTL_PATH or --libmtl-path to a checkout "
                         "of github.com/median-research-group/LibMTL)")
    for name, folder in (("LibMTL", root), ("LibMTL.weighting", root / "weighting")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(folder)]
            sys.modules[name] = stub
    arch = importlib.import_module("LibMTL.architecture")
    ew = importlib.import_module("LibMTL.weighting.EW").EW
    return arch, ew


class _NumpyScaledWidths:
    """numpy, except that ``array([64, 128, 256, 512])`` (the widths LibMTL's MTAN hard-codes) gives `widths`."""

    def __init__(self, widths: Sequence[int]) -> None:
        self.widths = list(widths)

    def array(self, values: Any, *args: Any, **kwargs: Any) -> numpy.ndarray:
        if isinstance(values, list) and values == list(MTAN_RESNET_WIDTHS):
            return numpy.array(self.widths, *args, **kwargs)
        return numpy.array(values, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(numpy, name)


@contextlib.contextmanager
def mtan_widths(widths: Sequence[int]) -> Iterator[None]:
    """While building, LibMTL's MTAN sizes its attention modules for `widths` instead of 64-512 (the only
    change to LibMTL: the module's `np` seen through `_NumpyScaledWidths`); a no-op for 64-512."""
    module = sys.modules["LibMTL.architecture.MTAN"]
    if tuple(widths) == MTAN_RESNET_WIDTHS:
        yield
        return
    saved = module.np
    module.np = _NumpyScaledWidths(widths)
    try:
        yield
    finally:
        module.np = saved


def build_libmtl(libmtl: tuple[types.ModuleType, type], arch_name: str, widths: Sequence[int],
                 spec: ImageSpec) -> nn.Module:
    """LibMTL's model as its Trainer builds it (class MTLmodel(architecture, weighting), then init_param()),
    on the CPU, with `SmallResNet(widths)` encoders and pooled linear decoders."""
    arch_mod, ew = libmtl
    arch_cls = getattr(arch_mod, arch_name)

    class MTLmodel(arch_cls, ew):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            kwargs = {}
            if arch_name in ("CGC", "PLE", "MMoE"):
                kwargs = {"img_size": [spec.channels, spec.height, spec.width], "num_experts": list(EXPERTS)}
            super().__init__(TASK_NAMES, partial(SmallResNet, tuple(widths), spec.channels),
                             nn.ModuleDict({t: pooled_linear(widths[-1]) for t in TASK_NAMES}),
                             False, False, torch.device("cpu"), **kwargs)
            self.init_param()

    with mtan_widths(widths) if arch_name == "MTAN" else contextlib.nullcontext():
        return MTLmodel()


def eval_chunks(model: nn.Module, x: Tensor, y: dict[str, Tensor], norm: nn.Module):
    """(outputs, targets) per chunk of EVAL_BATCH rows of a whole split, in eval mode without grad."""
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            yield model(norm(x[start:start + EVAL_BATCH])), {t: y[t][start:start + EVAL_BATCH] for t in TASK_NAMES}


def val_loss(model: nn.Module, x: Tensor, y: dict[str, Tensor], norm: nn.Module) -> float:
    """Mean over tasks of the mean cross-entropy on a whole split (eval mode, no grad)."""
    sums = {t: 0.0 for t in TASK_NAMES}
    for out, target in eval_chunks(model, x, y, norm):
        for t in TASK_NAMES:
            sums[t] += F.cross_entropy(out[t], target[t], reduction="sum").item()
    return statistics.mean(s / len(x) for s in sums.values())


def accuracy(model: nn.Module, x: Tensor, y: dict[str, Tensor], norm: nn.Module) -> dict[str, float]:
    right = {t: 0 for t in TASK_NAMES}
    for out, target in eval_chunks(model, x, y, norm):
        for t in TASK_NAMES:
            right[t] += (out[t].argmax(1) == target[t]).sum().item()
    return {t: right[t] / len(x) for t in TASK_NAMES}


def train_libmtl(bundle, arch_name: str, widths: Sequence[int], seed: int, args, libmtl) -> dict:
    """LibMTL's train_singlelevel step (forward, per-task CE, zero_grad, EW backward, Adam step) on our batch
    order, the lowest-validation-loss epoch restored, then test accuracy."""
    spec = bundle.preprocessor.schema
    norm = Normalize(spec)
    torch.manual_seed(seed)
    model = build_libmtl(libmtl, arch_name, widths, spec)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    xs, ys = bundle.train.inputs, bundle.train.targets
    best, best_state, best_epoch, seconds, cpu = float("inf"), None, -1, [], []
    for epoch in range(args.epochs):
        model.train()
        start, start_cpu = time.perf_counter(), time.process_time()
        for idx in shuffled_batches(len(xs), args.batch_size, epoch_generator(seed, epoch)):
            preds = model(norm(xs[idx]))
            losses = torch.stack([F.cross_entropy(preds[t], ys[t][idx]) for t in TASK_NAMES])
            opt.zero_grad(set_to_none=False)
            model.backward(losses)
            opt.step()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        loss = val_loss(model, bundle.val.inputs, bundle.val.targets, norm)
        if loss < best:
            best, best_state, best_epoch = loss, copy.deepcopy(model.state_dict()), epoch + 1  # 1-based, as ours
    model.load_state_dict(best_state)
    return {"test_accuracy": accuracy(model, bundle.test.inputs, bundle.test.targets, norm),
            "epoch_seconds": seconds, "epoch_cpu_seconds": cpu, "parameters": count_parameters(model),
            "best_epoch": best_epoch}


# ------------------------------------------------------------------------------------------------ ours
class CPUTimedTrainer(Trainer):
    """Our Trainer; each epoch record also has `cpu_seconds`, the process CPU time of its training part (on a
    shared machine a niced process's wall time mostly measures how long it waited for a core)."""

    def _train_epoch(self, batches: Any, train: Any) -> dict:
        start = time.process_time()
        record = super()._train_epoch(batches, train)
        record["cpu_seconds"] = time.process_time() - start
        return record


def our_resnet_model(family: str, spec: ImageSpec, widths: Sequence[int]) -> nn.Module:
    """Our family on SmallResNet: the same encoder and linear heads as the LibMTL runs (stitches after the
    stages 1-3, as LibMTL's Cross_stitch; CGC experts are whole SmallResNets gated on the flattened image)."""
    blocks = ResNetBlocks(spec, widths)
    if family == "independent":
        return Independent(TASKS, lambda t: nn.Sequential(Normalize(spec), SmallResNet(widths, spec.channels),
                                                           pooled_linear(widths[-1], t.out_dim)))
    if family == "hard_sharing":
        trunk = nn.Sequential(Normalize(spec), SmallResNet(widths, spec.channels), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten())
        return HardSharing(TASKS, trunk, widths[-1], head_hidden=())
    if family == "cross_stitch":
        return CrossStitch(TASKS, blocks, stitch_after=[1, 2, 3], head_hidden=())
    if family == "mtan":
        return MTAN(TASKS, blocks, head_hidden=())
    if family == "cgc":
        return CGC(TASKS, blocks, n_shared_experts=EXPERTS[0], n_task_experts=EXPERTS[1], tower_hidden=(),
                   in_dim=spec.channels * spec.height * spec.width)
    raise ValueError(f"no SmallResNet version of {family!r}")


def train_ours(bundle, family: str, network: str, widths: Sequence[int], seed: int, args) -> dict:
    spec = bundle.preprocessor.schema
    torch.manual_seed(seed)
    model = (build_model(family, TASKS, spec) if network == "lenet" else our_resnet_model(family, spec, widths))
    trainer = CPUTimedTrainer(model, TASKS, BALANCERS["equal"](TASKS),
                      TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                                    eval_batch_size=EVAL_BATCH, progress=False))
    history = trainer.fit(bundle.train, bundle.val)
    test = trainer.evaluate(bundle.test)["metrics"]
    return {"test_accuracy": {t: test[t]["accuracy"] for t in TASK_NAMES},
            "epoch_seconds": [r["seconds"] for r in history],
            "epoch_cpu_seconds": [r["cpu_seconds"] for r in history], "parameters": count_parameters(model),
            "best_epoch": trainer.early.best_epoch}


# ------------------------------------------------------------------------------------------------ the run
def plan(args) -> list[tuple[str, str, str, tuple[int, ...], list[int]]]:
    """(library, architecture, network label, widths, seeds) per run, in the order they interleave."""
    w = tuple(args.widths)
    net = "SmallResNet " + "-".join(map(str, w))
    runs = [("LibMTL", a, net, w, args.seeds) for a in LIBMTL_ARCHS]
    runs += [("multitask", f, "LeNet (image defaults)", w, args.seeds) for f in OUR_LENET]
    runs += [("multitask", f, net, w, args.seeds) for f in OUR_RESNET]
    if args.full_mtan_seeds:
        runs.append(("LibMTL", "MTAN", "SmallResNet 64-128-256-512 (unmodified LibMTL MTAN)", MTAN_RESNET_WIDTHS,
                     args.full_mtan_seeds))
    if args.only:
        runs = [r for r in runs if any(o.lower() in f"{r[0]}:{r[1]}:{r[2]}".lower() for o in args.only)]
    return runs


def warm_up(bundle, args, libmtl) -> None:
    """A few untimed steps of LibMTL HPS and of our hard_sharing, so that the first timed run does not pay for
    torch's one-off kernel and allocator set-up."""
    small = argparse.Namespace(**{**vars(args), "epochs": 1})
    bundle_small = copy.copy(bundle)
    bundle_small.train = bundle.train.subset(torch.arange(min(3 * args.batch_size, len(bundle.train))))
    bundle_small.val = bundle_small.test = bundle.val.subset(torch.arange(min(args.batch_size, len(bundle.val))))
    train_libmtl(bundle_small, "HPS", tuple(args.widths), 0, small, libmtl)
    train_ours(bundle_small, "hard_sharing", "resnet", tuple(args.widths), 0, small)


def run_one(bundle, run, seed: int, args, libmtl) -> dict:
    library, arch, network, widths, _ = run
    if library == "LibMTL":
        r = train_libmtl(bundle, arch, widths, seed, args, libmtl)
    else:
        r = train_ours(bundle, arch, "lenet" if network.startswith("LeNet") else "resnet", widths, seed, args)
    return {"library": library, "architecture": arch, "network": network, "seed": seed, **r,
            "s_per_epoch": statistics.median(r["epoch_seconds"]),
            "cpu_s_per_epoch": statistics.median(r["epoch_cpu_seconds"])}


def key(r: dict) -> tuple[str, str, str]:
    return r["library"], r["architecture"], r["network"]


def median_or_none(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


LOG_LINE = re.compile(r"^(LibMTL|multitask)\s+(\S+)\s+(.+?)\s+seed (\d+): left ([\d.]+) right ([\d.]+), "
                      r"(?:([\d.]+) CPU s/epoch \(([\d.]+) wall\)|([\d.]+) s/epoch), ([\d,]+) params$")


def results_from_log(path: str) -> tuple[dict[str, int], list[dict]]:
    """Row counts and per-run results from the printed lines of a run of this script that did not finish (the
    machine is shared; a run can outlast its slot). Lines of older versions carry wall s/epoch only."""
    lines = Path(path).read_text().splitlines()
    head = re.match(r"train (\d+), val (\d+), test (\d+)", lines[0]) if lines else None
    if head is None:
        raise SystemExit(f"{path}: not a log of benchmarks/libmtl_arch.py (no 'train N, val N, test N' first line)")
    rows = dict(zip(("train", "val", "test"), map(int, head.groups())))
    results = []
    for line in lines[1:]:
        m = LOG_LINE.match(line.strip())
        if m:
            lib, arch, net, seed, left, right, cpu, wall_new, wall_old, params = m.groups()
            results.append({"library": lib, "architecture": arch, "network": net.strip(), "seed": int(seed),
                            "test_accuracy": {"left": float(left), "right": float(right)},
                            "parameters": int(params.replace(",", "")), "best_epoch": None,
                            "s_per_epoch": float(wall_new or wall_old),
                            "cpu_s_per_epoch": float(cpu) if cpu else None, "from_log": True})
    return rows, results


def summarise(results: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    base_key = next((k for k in groups if k[0] == "multitask" and k[1] == "independent" and k[2].startswith("LeNet")),
                    None)
    base = None if base_key is None else {
        t: {"accuracy": statistics.mean(r["test_accuracy"][t] for r in groups[base_key])} for t in TASK_NAMES}
    rows = []
    for k, rs in groups.items():
        acc = {t: [r["test_accuracy"][t] for r in rs] for t in TASK_NAMES}
        dms = [delta_m({t: {"accuracy": r["test_accuracy"][t]} for t in TASK_NAMES}, base) for r in rs] if base else []
        rows.append({"library": k[0], "architecture": k[1], "network": k[2], "seeds": [r["seed"] for r in rs],
                     **{f"{t}_mean": statistics.mean(v) for t, v in acc.items()},
                     **{f"{t}_std": statistics.stdev(v) if len(v) > 1 else 0.0 for t, v in acc.items()},
                     "delta_m_mean": statistics.mean(dms) if dms else None,
                     "delta_m_std": (statistics.stdev(dms) if len(dms) > 1 else 0.0) if dms else None,
                     "s_per_epoch": median_or_none(r["s_per_epoch"] for r in rs),
                     "cpu_s_per_epoch": median_or_none(r.get("cpu_s_per_epoch") for r in rs),
                     "parameters": rs[0]["parameters"],
                     "best_epochs": [r["best_epoch"] for r in rs]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| library | architecture | network | seeds | left acc | right acc | Δm % vs our Independent (LeNet) "
             "| parameters | train CPU s/epoch | train wall s/epoch | best epochs |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        dm = "—" if r["delta_m_mean"] is None else f"{r['delta_m_mean']:+.2f} ± {r['delta_m_std']:.2f}"
        lines.append(f"| {r['library']} | {r['architecture']} | {r['network']} | {len(r['seeds'])} | "
                     f"{r['left_mean']:.4f} ± {r['left_std']:.4f} | {r['right_mean']:.4f} ± {r['right_std']:.4f} | "
                     f"{dm} | {r['parameters']:,} | {fmt(r['cpu_s_per_epoch'], '.2f')} | {fmt(r['s_per_epoch'], '.1f')} | "
                     f"{' '.join('—' if e is None else str(e) for e in r['best_epochs'])} |")
    return "\n".join(lines)


def libmtl_commit(path: str) -> str:
    """The LibMTL commit: `git rev-parse HEAD` in `path`, else a COMMIT file there (an exported tree), else "unknown"."""
    import subprocess

    try:
        if not (Path(path) / ".git").exists():
            raise OSError("not a git checkout")
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        marker = Path(path) / "COMMIT"
        return marker.read_text().strip() if marker.exists() else "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=4000, help="first N training composites; 0 = all of them")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--widths", type=int, nargs=4, default=[8, 16, 32, 64], help="SmallResNet stage widths")
    p.add_argument("--full-mtan-seeds", type=int, nargs="*", default=[],
                   help="also run LibMTL MTAN unmodified (widths 64-512) for these seeds")
    p.add_argument("--only", nargs="*", default=[], help="run only runs whose library:architecture:network "
                   "contains one of these strings (quick checks)")
    p.add_argument("--time-only", action="store_true", help="timing pass: validation and test cut to their "
                   "first 256 rows (the accuracies are then meaningless; only the s/epoch columns count)")
    p.add_argument("--from-log", default=None, help="write the report from the printed lines of a run that did "
                   "not finish (pass the same settings it ran with); trains nothing")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--libmtl-path", default=os.environ.get("LIBMTL_PATH", "/work/libmtl-src"))
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--name", default="architectures_libmtl")
    args = p.parse_args()
    if args.epochs < 1 or args.batch_size < 1 or args.train_size < 0 or args.lr <= 0 or min(args.widths) < 1:
        p.error("--epochs, --batch-size and --widths must be >= 1, --train-size >= 0, --lr > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_log:
        counts, results = results_from_log(args.from_log)
        seeds = sorted({r["seed"] for r in results})
    else:
        libmtl = import_libmtl(args.libmtl_path)
        bundle = load_multi_fashion(seed=0)
        if args.train_size:
            bundle.train = bundle.train.subset(torch.arange(min(args.train_size, len(bundle.train))))
        if args.time_only:
            bundle.val = bundle.val.subset(torch.arange(256))
            bundle.test = bundle.test.subset(torch.arange(256))
        counts = {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)}
        runs = plan(args)
        seeds = sorted({s for r in runs for s in r[4]})
        print(f"train {len(bundle.train)}, val {len(bundle.val)}, test {len(bundle.test)}; {args.epochs} epochs; "
              f"seeds {seeds}; {len(runs)} runs; torch threads {torch.get_num_threads()}", flush=True)
        warm_up(bundle, args, libmtl)
        results = []
        for seed in seeds:
            for run in runs:
                if seed not in run[4]:
                    continue
                r = run_one(bundle, run, seed, args, libmtl)
                results.append(r)
                print(f"{r['library']:<9} {r['architecture']:<13} {r['network']:<28} seed {seed}: left "
                      f"{r['test_accuracy']['left']:.4f} right {r['test_accuracy']['right']:.4f}, "
                      f"{r['cpu_s_per_epoch']:.2f} CPU s/epoch ({r['s_per_epoch']:.1f} wall), "
                      f"{r['parameters']:,} params", flush=True)
                (out / f"{args.name}.partial.json").write_text(json.dumps(results, indent=2))  # a run can be cut
        (out / f"{args.name}.partial.json").unlink(missing_ok=True)
    rows = summarise(results)
    wall = time.perf_counter() - start
    text = table(rows)
    print(text)
    print(f"wall time {wall:.0f} s")
    command = " ".join(["python"] + [a if " " not in a else repr(a) for a in sys.argv])
    settings = {**vars(args), "train_rows": counts["train"], "val_rows": counts["val"],
                "test_rows": counts["test"], "libmtl_commit": libmtl_commit(args.libmtl_path),
                "libmtl_experts": list(EXPERTS), "machine": machine_line(),
                "wall_seconds": wall, "command": command}
    (out / f"{args.name}.json").write_text(json.dumps({"settings": settings, "summary": rows, "runs": results},
                                                      indent=2))
    md = out / f"{args.name}.md"
    notes = kept_notes(md)
    md.write_text(
        f"# LibMTL's architectures beside ours on Multi-Fashion ({args.name})\n\n"
        f"Command: `{command}`\n\n"
        f"Multi-Fashion (data seed 0), tasks left and right: {counts['train']:,} train (the first of the "
        f"training composites) / {counts['val']:,} validation / {counts['test']:,} test; seeds {seeds}; Adam "
        f"lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs, summed cross-entropy (our equal = LibMTL "
        f"EW), lowest-validation-loss epoch restored; LibMTL at commit {settings['libmtl_commit'][:12]}, CGC/PLE "
        f"num_experts {list(EXPERTS)}\n"
        + ("Timing pass (--time-only): validation and test are their first 256 rows, so the accuracy and Δm "
           "columns mean nothing here; only parameters and s/epoch count.\n" if args.time_only else "")
        + (f"Written from the printed lines of a run that did not finish ({args.from_log}): the seeds it "
           "completed; lines of its version carry wall s/epoch only.\n" if args.from_log else "")
        + f"{machine_line()}\n\n"
        "Accuracy: test, mean ± std over seeds. Δm: against our Independent (LeNet) mean over seeds, per seed, "
        "then mean ± std. train CPU / wall s/epoch: training only (no validation), process CPU seconds (one torch "
        "thread) and wall seconds, median over epochs then seeds; on this shared machine the wall time of a niced "
        "process is mostly waiting, so compare the CPU column. Best "
        "epochs: the restored epoch per seed (1-based).\n\n"
        f"{text}\n\nWall time {wall:.0f} s.\n"
        + (notes or f"\n{NOTES}\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
