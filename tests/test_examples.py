"""The shipped examples run as documented."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from multitask import config

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_learns():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    metrics = ast.literal_eval(out.splitlines()[0])  # the printed dict of metrics
    assert metrics["price"]["r2"] > 0.9 and metrics["clicked"]["auc"] > 0.9


def test_example_configs_are_valid():
    for path in (ROOT / "examples").glob("*.yaml"):
        config.validate(yaml.safe_load(path.read_text()))


def test_custom_model_example_runs_and_learns():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_model.py")], capture_output=True,
                         text=True, check=True, timeout=300).stdout.splitlines()
    assert float(out[0].rsplit(":", 1)[1]) < 1e-6  # factored and generic paths agree
    losses = ast.literal_eval(out[1])
    assert all(float(a) > 5 * float(b) for a, b in (v.split(" -> ") for v in losses.values()))


def test_from_frame_example_runs_and_reports_grams():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "from_frame.py")], capture_output=True,
                         text=True, check=True, timeout=300).stdout.splitlines()
    assert "target 'species': multiclass (inferred: 3 distinct values)" in out
    metrics = ast.literal_eval(next(line for line in out if line.startswith("{")))
    assert metrics["species"]["accuracy"] > 0.8 and 50 < metrics["body_mass_g"]["mae"] < 400  # grams
    assert out[-3].split()[1] in {"Adelie", "Chinstrap", "Gentoo"}  # labels back, first of three rows


def test_custom_blocks_example_runs_and_learns():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_blocks.py")], capture_output=True,
                         text=True, check=True, timeout=300).stdout.splitlines()
    metrics = ast.literal_eval(out[0])
    assert metrics["a"]["r2"] > 0.9 and metrics["b"]["r2"] > 0.9 and metrics["c"]["auc"] > 0.95
    assert out[1] == "branches: [('a', 'b')] shared tensors: 2"


def test_lightning_example_runs_both_kinds_of_balancer():
    pytest.importorskip("lightning")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "lightning_example.py")], capture_output=True,
                         text=True, check=True, timeout=300).stdout.splitlines()
    assert [line.split(":")[0] for line in out] == ["uncertainty", "mgda"]
    for line in out:
        r2, auc = float(line.split("r2=")[1].split()[0]), float(line.split("auc=")[1].split()[0])
        assert r2 > 0.8 and auc > 0.95
