"""torch.distributed (gloo, 2 CPU processes): every balancer, in both modes where it has them, trained by 2 ranks
on a batch split in two gives the weights and parameters of 1 process on the whole batch; the ranks agree
exactly; a 2-rank resume equals an uninterrupted run; a rank that dies ends the run with a clear error and
leaves the last checkpoint intact.

The two processes are started once (module fixture) and loop over every case; the 1-process references run
in the test process afterwards."""
from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import synthetic
from multitask import HardSharing, InputSchema, MMoE, Trainer
from multitask.balancing import BALANCERS, GradientBalancer
from multitask.errors import DistributedError
from multitask.models import build_model
from multitask.training import Callback, StopTraining
from multitask.training.checkpoint import load_checkpoint

WORLD = 2
STEPS_EPOCHS = 2  # epochs of the equality runs (6 steps each: DWA's epoch statistics are used too)


# (method, mode, variant): the other paths of the engine and trainer, each with one or two methods
VARIANTS = {
    "cross_stitch": ({"model": "cross_stitch"}, {}),  # no shared representation: the joint path
    "param_distance": ({"model": "param_distance", "strength": 0.1}, {}),  # a model's penalty on parameters
    "every2": ({"every": 2}, {}),  # cached weights on the step in between
    "accumulate": ({}, {"accumulate_shared": 14, "accumulate_task": 10}),  # UberNet-style accumulation
    # accumulation of group parameters (a cascade's earlier heads), counted on the global rows labelled for any
    # of a group's tasks
    "accumulate_groups": ({"model": "cascade"}, {"accumulate_shared": 14, "accumulate_task": 10}),
    "grad_clip": ({}, {"grad_clip": 0.05}),
    "mmoe": ({"model": "mmoe"}, {}),  # a representation of two parts (inputs, experts [N, E, d])
    "stacked": ({"model": "stacked"}, {}),  # no head entry layers: F kept as it is, not factored
}
EXTRA = [("pcgrad", "parameters", "cross_stitch"), ("equal", None, "cross_stitch"),
         ("mgda", "parameters", "param_distance"), ("uncertainty", None, "param_distance"),
         ("mgda", "features", "every2"), ("upgrad", "parameters", "every2"),
         ("equal", None, "accumulate"), ("equal", None, "accumulate_groups"), ("mgda", "features", "accumulate"), ("cagrad", "parameters", "grad_clip"),
         ("graddrop", "features", "mmoe"), ("db_mtl", "features", "mmoe"), ("mgda", "features", "mmoe"),
         ("graddrop", "features", "stacked"), ("upgrad", "features", "stacked")]


def cases() -> list[tuple[str, str | None, str | None]]:
    """(method, mode, variant): every balancer, both modes for the gradient-based ones, then the variants."""
    out = []
    for name, cls in BALANCERS.items():
        for mode in (("parameters", "features") if issubclass(cls, GradientBalancer) else (None,)):
            out.append((name, mode, None))
    return out + EXTRA


def batches() -> list:
    """Three global batches in a fixed order: 7 rows (shards of 4 and 3), task 'bin' without labels on rank 1's
    rows; 7 rows, 'reg' without labels at all and 'cls' only on rank 0's rows; 1 row (rank 1's shard empty)."""
    tasks, data = synthetic(n=15, seed=3)
    y = {t: v.clone() for t, v in data.targets.items()}
    y["bin"][4:7] = float("nan")
    y["reg"][7:14] = float("nan")
    y["cls"][11:14] = -1
    return tasks, [(data.inputs[a:b], {t: v[a:b] for t, v in y.items()}) for a, b in ((0, 7), (7, 14), (14, 15))]


class Record(Callback):
    """The balancer's weights after every step."""

    def __init__(self) -> None:
        self.weights: list[dict[str, float]] = []

    def on_step_end(self, trainer, info) -> None:
        self.weights.append(trainer.balancer.weights())


def _model(tasks, dropout: float = 0.0, name: str = "hard_sharing", **options):
    torch.manual_seed(0)
    if name == "mmoe":
        return MMoE.tabular(tasks, InputSchema(8), n_experts=2, expert_hidden=(8,), tower_hidden=(4,),
                            batch_norm=False)
    if name == "stacked":
        model = _model(tasks)
        model.head_entries = lambda: None
        return model
    if name != "hard_sharing":
        return build_model(name, tasks, InputSchema(8), hidden=(16,), head_hidden=(8,), batch_norm=False, **options)
    return HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,), dropout=dropout,
                               batch_norm=False)  # rows processed independently: the exactness condition


def run_case(name: str, mode: str | None, variant: str | None = None) -> dict:
    """Train one case (in whatever process group is current) and return its weights per step and final state."""
    tasks, data = batches()
    options, overrides = VARIANTS.get(variant, ({}, {}))
    options = dict(options)
    model = _model(tasks, name=options.pop("model", "hard_sharing"),
                   **({"strength": options.pop("strength")} if "strength" in options else {}))
    balancer = BALANCERS[name](tasks, **({"mode": mode} if mode else {}), **options)
    rec = Record()
    trainer = Trainer(model, tasks, balancer, epochs=STEPS_EPOCHS, lr=1e-2, progress=False, **overrides)
    trainer.fit(data, callbacks=[rec])
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    state.update({f"balancer.{k}": v.clone() for k, v in trainer.balancer.state_dict().items()
                  if isinstance(v, torch.Tensor) and v.is_floating_point()})
    return {"weights": rec.weights, "state": state}


def run_planned(run_dir: Path | None, epochs: int, stop_after: int | None = None, resume: bool = False,
                die_at: tuple[int, int] | None = None) -> Trainer:
    """A shuffled in-memory run (dropout on, PCGrad's random orders) with checkpoints: the resume and crash
    scenarios. `die_at=(epoch, step)`: rank 1 exits abruptly there."""
    tasks, data = synthetic(n=40, seed=1, missing=0.2)
    trainer = Trainer(_model(tasks, dropout=0.2), tasks, BALANCERS["pcgrad"](tasks, mode="features"),
                      epochs=epochs, batch_size=10, lr=1e-2, progress=False, run_dir=run_dir)

    class Stop(Callback):
        def on_step_start(self, tr, inputs, targets, masks) -> None:
            if die_at is not None and tr.dist is not None and tr.dist.rank == 1 and \
                    (tr.epoch, tr.global_step) >= die_at:
                os._exit(3)  # a crash: no exception, no clean-up

        def on_epoch_end(self, tr, record) -> None:
            if stop_after is not None and record["epoch"] == stop_after:
                raise StopTraining

    trainer.fit(data.subset(torch.arange(30)), data.subset(torch.arange(30, 40)), resume=resume, callbacks=[Stop()])
    return trainer


def _worker(rank: int, port: int, out: str) -> None:
    """One rank: every case, then the resume scenario, then the crash scenario (rank 1 dies)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import datetime

    import torch.distributed as dist
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    out_dir = Path(out)
    try:
        results = {}
        for case in cases():
            try:
                results[case] = run_case(*case)
            except Exception:  # recorded for the test to show; the ranks are out of step now: stop at once
                results[case] = {"error": traceback.format_exc()}
                torch.save(results, out_dir / f"cases{rank}.pt")
                os._exit(4)
        torch.save(results, out_dir / f"cases{rank}.pt")
        straight = run_planned(out_dir / "straight", epochs=3)
        run_planned(out_dir / "resumed", epochs=3, stop_after=1)
        resumed = run_planned(out_dir / "resumed", epochs=3, resume=True)
        evals = [t.evaluate(synthetic(n=40, seed=1, missing=0.2)[1])["metrics"] for t in (straight, resumed)]
        torch.save(evals, out_dir / f"evals{rank}.pt")
        try:
            run_planned(out_dir / "crash", epochs=3, die_at=(1, 5))  # epoch 2, after the first checkpoint
            (out_dir / f"crash{rank}.txt").write_text("no error")
        except DistributedError as e:
            (out_dir / f"crash{rank}.txt").write_text(f"DistributedError: {e}")
            raise SystemExit(1)
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    # fork: the ranks inherit the imported modules (torch, multitask), which spawning would import again (seconds
    # per process); each rank then makes its own process group
    ctx = mp.get_context("fork")
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: once, here
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
    codes = [p.exitcode for p in procs]
    return out, codes


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||; NaN entries (DWA's history before two epochs) must sit at the same places."""
    a, b = a.double(), b.double()
    nan = torch.isnan(b)
    if not torch.equal(torch.isnan(a), nan):
        return float("inf")
    a, b = a[~nan], b[~nan]
    return float((a - b).norm() / max(float(b.norm()), 1e-12))


def test_two_ranks_equal_one_process_for_every_balancer(ranks):
    out, _ = ranks
    got = torch.load(out / "cases0.pt", weights_only=False)
    other = torch.load(out / "cases1.pt", weights_only=False)
    errors = [f"rank {r}, {c}: {res['error']}" for r, results in enumerate((got, other))
              for c, res in results.items() if "error" in res]
    assert not errors, "\n".join(errors)
    assert len(got) == len(cases()) == 32 + len(EXTRA)  # 20 methods, 12 of them with two modes; variants
    bad = []
    for (name, mode, variant), res in got.items():
        label = f"{name}/{mode}" + (f"/{variant}" if variant else "")
        if "error" in res:
            bad.append(f"{label}: {res['error']}")
            continue
        # the ranks agree exactly: the same weights and the same parameters on both
        if res["weights"] != other[(name, mode, variant)]["weights"]:
            bad.append(f"{label}: ranks' weights differ")
        if any(not torch.equal(v, other[(name, mode, variant)]["state"][k]) for k, v in res["state"].items()):
            bad.append(f"{label}: ranks' parameters differ")
        ref = run_case(name, mode, variant)  # one process, whole batches
        assert len(ref["weights"]) == len(res["weights"]) == 3 * STEPS_EPOCHS
        for step, (w, v) in enumerate(zip(res["weights"], ref["weights"])):
            err = _rel(torch.tensor([w[t] for t in v]), torch.tensor(list(v.values())))
            if err > 1e-5:
                bad.append(f"{label}: weights of step {step + 1} differ by {err:.2g} ({w} vs {v})")
        for k, v in ref["state"].items():
            err = _rel(res["state"][k], v)
            if err > 1e-5:
                bad.append(f"{label}: {k} differs by {err:.2g}")
    assert not bad, "\n".join(bad)


def test_resume_of_a_two_rank_run_equals_an_uninterrupted_one(ranks):
    out, _ = ranks
    a = load_checkpoint(out / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "resumed" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3 and len(a["rng_ranks"]) == WORLD
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["balancer_rng"], b["balancer_rng"])
    assert len((out / "resumed" / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "resumed" / "trainer.json").read_text())["world_size"] == WORLD
    evals = [torch.load(out / f"evals{r}.pt", weights_only=False) for r in range(WORLD)]
    assert evals[0] == evals[1] and evals[0][0] == evals[0][1]  # gathered metrics: the same on every rank


def test_a_dead_rank_ends_the_run_with_a_clear_error_and_an_intact_checkpoint(ranks, tmp_path):
    out, codes = ranks
    assert codes == [1, 3], codes  # rank 1 died (exit 3); rank 0 stopped with an error (exit 1), no hang
    text = (out / "crash0.txt").read_text()
    assert text.startswith("DistributedError: rank 0 of 2") and "--resume" in text, text
    state = load_checkpoint(out / "crash" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert not list((out / "crash" / "checkpoints").glob("*.tmp"))
    # the 2-rank checkpoint resumes in one process (rank 0's generator state; the global batch is the same)
    import shutil
    shutil.copytree(out / "crash", tmp_path / "crash")
    trainer = run_planned(tmp_path / "crash", epochs=2, resume=True)
    assert trainer.epoch == 2


def test_cli_nproc_runs_torchrun_and_matches_one_process(tmp_path, capfd):
    """`multitask train CONFIG --nproc 2` (torchrun, gloo): final.json says how it was trained, and its
    validation and test metrics (gathered over the ranks) equal one process's."""
    import numpy as np
    import pandas as pd
    import yaml

    from multitask.cli import main

    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({"price": rng.normal(size=n).round(3), "hour": rng.integers(0, 24, n),
                       "device": rng.choice(["ios", "android", "web"], n)})
    df["click"] = (df["price"] + rng.normal(size=n) > 0).astype(float)
    df["value"] = (df["price"] * 2 + df["hour"] / 10 + rng.normal(size=n)).round(3)
    df.loc[rng.random(n) < 0.3, "value"] = np.nan  # missing labels: shares of a global mean over labelled rows
    df.to_csv(tmp_path / "t.csv", index=False)
    raw = {"data": {"name": "table", "path": str(tmp_path / "t.csv"),
                    "targets": {"click": "binary", "value": "regression"}},
           "model": {"name": "hard_sharing", "hidden": [8], "head_hidden": [4], "batch_norm": False},
           "balancer": {"name": "pcgrad", "mode": "features"},
           "trainer": {"epochs": 2, "batch_size": 25, "progress": False}, "baselines": "none"}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--out", str(tmp_path / "one")]) == 0
    capfd.readouterr()
    assert main(["train", str(cfg), "--out", str(tmp_path / "two"), "--nproc", "2"]) == 0
    assert capfd.readouterr().out.count("run directory:") == 1  # rank 0 alone prints
    one, two = (json.loads((tmp_path / d / "final.json").read_text()) for d in ("one", "two"))
    assert (one["world_size"], one["per_rank_batch_size"]) == (1, 25)
    assert (two["world_size"], two["per_rank_batch_size"]) == (2, 13)
    for split in ("val", "test"):
        for t, metrics in one[split].items():
            for m, v in metrics.items():
                assert two[split][t][m] == pytest.approx(v, rel=1e-5, abs=1e-7), (split, t, m)
    assert main(["train", str(cfg), "--out", str(tmp_path / "x"), "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capfd.readouterr().err
    # distillation and per-task convergence are one-process features: refused before anything is launched
    for extra in (["--set", "trainer.per_task_patience=2"], ["--set", "distill.kind=previous_self"]):
        assert main(["train", str(cfg), "--out", str(tmp_path / "y"), "--nproc", "2", *extra]) == 2
        assert "run in one process only" in capfd.readouterr().err
        assert not (tmp_path / "y" / "checkpoints").exists()


def test_shards_cover_the_batch_in_order_like_tensor_split():
    from multitask.training.distributed import shard_range

    for n in range(0, 12):
        for world in range(1, 5):
            spans = [shard_range(n, r, world) for r in range(world)]
            parts = torch.arange(n).tensor_split(world)
            assert [torch.arange(a, b).tolist() for a, b in spans] == [p.tolist() for p in parts]
