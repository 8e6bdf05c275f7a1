"""The run directory never lies: best/last checkpoints stay a consistent pair across a kill at any point,
temp files are cleaned up, run files are written atomically, and every run directory can be evaluated."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import synthetic
from multitask import HardSharing, InputSchema, Trainer, Uncertainty
from multitask.cli import main
from multitask.metrics import delta_m
from multitask.training import checkpoint as ckpt
from multitask.training import trainer as trainer_module


class Killed(BaseException):
    """Stands for SIGKILL at one exact point: nothing after it runs, nothing is cleaned up."""


def _model(tasks):
    torch.manual_seed(0)
    return HardSharing.tabular(tasks, InputSchema(8), hidden=(16,), head_hidden=(8,), dropout=0.1)


def _trainer(tasks, run_dir, epochs=4):
    return Trainer(_model(tasks), tasks, Uncertainty(tasks), epochs=epochs, batch_size=64, lr=1e-2,
                   progress=False, run_dir=run_dir)


def _fit(trainer, data, resume=False):
    # validation loss that improves at epochs 1, 2 and 4 but not 3 is not needed: every improvement is a best write
    return trainer.fit(data.subset(torch.arange(384)), data.subset(torch.arange(384, 512)), resume=resume)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tasks, data = synthetic()
    run = tmp_path_factory.mktemp("ref")
    tr = _trainer(tasks, run)
    _fit(tr, data)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    return tasks, data, last, best


@pytest.mark.parametrize("point", ["after best.next.pt", "after last.pt, before the rename"])
@pytest.mark.parametrize("epoch", [2, 3])
def test_a_kill_between_the_checkpoint_writes_resumes_to_the_same_run(reference, tmp_path, monkeypatch, point, epoch):
    tasks, data, ref_last, ref_best = reference
    real_save, real_replace = ckpt.save_atomic, os.replace
    calls = {"last": 0}

    def save(obj, path):
        real_save(obj, path)
        if path.name == "last.pt":
            calls["last"] += 1
        if point == "after best.next.pt" and path.name == ckpt.NEXT_BEST and calls["last"] == epoch - 1:
            raise Killed

    def replace(src, dst):
        if point != "after best.next.pt" and str(src).endswith(ckpt.NEXT_BEST) and calls["last"] == epoch:
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(trainer_module, "save_atomic", save)
    monkeypatch.setattr(trainer_module.os, "replace", replace)
    with pytest.raises(Killed):
        _fit(_trainer(tasks, tmp_path), data)
    monkeypatch.undo()
    assert (tmp_path / "checkpoints" / ckpt.NEXT_BEST).exists()  # the kill came mid-pair

    resumed = _trainer(tasks, tmp_path)
    _fit(resumed, data, resume=True)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert _same(last["model"], ref_last["model"]) and best["epoch"] == ref_best["epoch"]
    assert _same(best["model"], ref_best["model"])
    assert last["early_stopping"] == ref_last["early_stopping"]
    assert not (tmp_path / "checkpoints" / ckpt.NEXT_BEST).exists()


def test_the_old_write_order_would_have_lost_the_best_weights(reference, tmp_path):
    """What the pair guards against: best.pt older than the best epoch last.pt records. Resume must not
    restore weights that belong to another epoch."""
    tasks, data, ref_last, ref_best = reference
    tr = _trainer(tasks, tmp_path, epochs=2)
    _fit(tr, data)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    torch.save({"epoch": 1, "model": state["model"]}, tmp_path / "checkpoints" / "best.pt")  # stale best
    resumed = _trainer(tasks, tmp_path, epochs=2)
    resumed._resume()
    assert resumed.early.best_epoch == 2 and resumed._best_state is None  # no mismatched weights taken


def test_leftover_temp_files_are_removed(reference, tmp_path):
    tasks, data, *_ = reference
    tr = _trainer(tasks, tmp_path, epochs=2)
    _fit(tr, data)
    junk = [tmp_path / "checkpoints" / "last.pt.abc123.tmp", tmp_path / "checkpoints" / "best.next.pt.x.tmp"]
    for j in junk:
        j.write_bytes(b"half a checkpoint")
    _fit(_trainer(tasks, tmp_path, epochs=3), data, resume=True)
    assert not any(j.exists() for j in junk)


def test_a_half_written_metrics_line_is_dropped_on_resume(reference, tmp_path):
    tasks, data, *_ = reference
    _fit(_trainer(tasks, tmp_path, epochs=2), data)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')
    history = _fit(_trainer(tasks, tmp_path, epochs=3), data, resume=True)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


# ------------------------------------------------------------------------------------------ through the CLI
YEAST = {"data": {"name": "yeast", "limit": 400}, "tasks": {"class1": {}, "class2": {}, "class3": {}},
         "model": {"name": "hard_sharing", "hidden": [16], "head_hidden": [8]}, "balancer": {"name": "equal"},
         "trainer": {"epochs": 3, "batch_size": 64, "progress": False}, "baselines": "auto"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "c.yaml"
    cfg.write_text(yaml.safe_dump(YEAST))
    assert main(["train", str(cfg), "--out", str(tmp / "run")]) == 0
    return cfg, tmp / "run"


def test_resume_without_config_yaml_is_refused_and_writes_nothing(cli_run, tmp_path, capsys):
    cfg, run = cli_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.yaml").unlink()
    assert main(["train", str(cfg), "--resume", str(copy)]) == 2
    assert "config.yaml is missing" in capsys.readouterr().err
    assert not (copy / "config.yaml").exists()


def test_evaluate_names_the_checkpoint_it_uses(cli_run, tmp_path, capsys):
    _, run = cli_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["evaluate", str(copy)]) == 0
    assert capsys.readouterr().out.startswith("test split, best checkpoint\n")
    (copy / "checkpoints" / "best.pt").unlink()
    assert main(["evaluate", str(copy)]) == 0
    assert capsys.readouterr().out.startswith("test split, last checkpoint (the run has no best.pt)")


def test_evaluate_on_val_compares_with_the_baselines_val_metrics(cli_run, tmp_path, capsys):
    _, run = cli_run
    report = tmp_path / "val.json"
    assert main(["evaluate", str(run), "--split", "val", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    final = json.loads((run / "final.json").read_text())
    val = json.loads(report.read_text())["metrics"]
    expected = delta_m(val, final["baseline"]["val"])
    shown = float(re.search(r"Δm against single-task baselines \(val split\): ([-+][\d.]+)%", out).group(1))
    assert shown == pytest.approx(expected, abs=1e-3)
    assert expected != pytest.approx(delta_m(val, final["baseline"]["test"]), abs=1e-3)  # not the test baseline


def test_the_baseline_directory_is_a_run_of_its_own(cli_run, capsys):
    _, run = cli_run
    assert main(["evaluate", str(run / "baseline")]) == 0
    out = capsys.readouterr().out
    final = json.loads((run / "baseline" / "final.json").read_text())
    auc = float(re.search(r"class1\s+auc \(↑\)\s+([\d.]+)", out).group(1))
    assert auc == pytest.approx(final["test"]["class1"]["auc"], abs=1e-4)


def test_a_python_api_run_directory_can_be_evaluated(tmp_path, capsys):
    tasks, data = synthetic()
    tr = _trainer(tasks, tmp_path / "api", epochs=2)
    _fit(tr, data)
    assert main(["evaluate", str(tmp_path / "api")]) == 0
    out = capsys.readouterr().out
    assert "written by the Python API" in out and "reg" in out
    again = _trainer(tasks, None)
    assert again.restore(tmp_path / "api") == tr.early.best_epoch
    assert again.evaluate(data)["loss"] == tr.evaluate(data)["loss"]  # restore_best left tr at the best weights


# ------------------------------------------------------------------------------------------ real kills
def test_kill_9_at_random_moments_then_resume_gives_identical_weights():
    """SIGKILL real training processes at random moments and resume them (benchmarks/crash_resume.py, which
    runs many more kills; here one)."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "crash_resume.py"
    done = subprocess.run([sys.executable, str(script), "--kills", "1", "--seed", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("1 of 1 killed runs resumed to bit-identical"), done.stdout
