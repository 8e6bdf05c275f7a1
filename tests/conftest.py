import pytest
import torch

from multitask import Task
from multitask.data import MultiTaskData


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a run gets as far as reading data (a config error must be found before any work)."""
    from multitask import experiment

    def refuse(*a, **k):
        raise AssertionError("data was loaded before the config error was found")
    monkeypatch.setattr(experiment, "load_data", refuse)


@pytest.fixture(scope="session")
def census_small():
    from multitask.data import load_census_income

    return load_census_income(limit=3000, seed=0)


@pytest.fixture(scope="session")
def yeast_small():
    from multitask.data import load_yeast

    return load_yeast(seed=0)


def synthetic(n: int = 512, seed: int = 0, missing: float = 0.0) -> tuple[list[Task], MultiTaskData]:
    """Three tasks of three kinds on 8 numeric inputs; a `missing` fraction of labels removed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 3, generator=g)
    z = x @ w
    reg = z[:, 0] + 0.1 * torch.randn(n, generator=g)
    binary = (z[:, 1] > 0).float()
    cls = torch.bucketize(z[:, 2].contiguous(), torch.tensor([-0.5, 0.5]))
    if missing:
        reg[torch.rand(n, generator=g) < missing] = float("nan")
        binary[torch.rand(n, generator=g) < missing] = float("nan")
        cls[torch.rand(n, generator=g) < missing] = -1
    tasks = [Task("reg", "regression"), Task("bin", "binary"), Task("cls", "multiclass", n_outputs=3)]
    return tasks, MultiTaskData(x, {"reg": reg, "bin": binary, "cls": cls})


@pytest.fixture(autouse=True)
def _no_run_reports(monkeypatch):
    """`multitask train` writes report.html at the end of a run; tests that do not look at it skip it (the
    report tests remove this variable)."""
    monkeypatch.setenv("MULTITASK_NO_REPORT", "1")
