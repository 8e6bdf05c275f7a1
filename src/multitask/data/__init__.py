"""Data: in-memory multi-task datasets, preprocessing, and the real datasets (read offline from disk)."""
from multitask.data.census import DEFAULT_TASKS as CENSUS_DEFAULT_TASKS
from multitask.data.census import TASKS as CENSUS_TASKS
from multitask.data.census import census_tasks, load_census_income
from multitask.data.census_funnel import FUNNEL_TASKS, census_funnel_tasks, load_census_funnel
from multitask.data.dataset import DatasetBundle, MultiTaskData, batches
from multitask.data.loading import EpochBatchSampler, collate
from multitask.data.multi_fashion import TASKS as MULTI_FASHION_TASKS
from multitask.data.multi_fashion import load_multi_fashion, multi_fashion_tasks
from multitask.data.preprocessing import TabularPreprocessor
from multitask.data.yeast import N_LABELS, load_yeast
from multitask.tasks import Task

DATASETS = {"census-income": load_census_income, "yeast": load_yeast, "multi-fashion": load_multi_fashion,
            "census-funnel": load_census_funnel}
# task names of each dataset, known without reading it (configs are checked before any data is loaded)
DATASET_TASKS = {"census-income": list(CENSUS_TASKS), "yeast": [f"class{i}" for i in range(1, N_LABELS + 1)],
                 "multi-fashion": list(MULTI_FASHION_TASKS), "census-funnel": list(FUNNEL_TASKS)}
# the tasks trained when a config has no `tasks:` section
DEFAULT_TASKS = {"census-income": list(CENSUS_DEFAULT_TASKS), "yeast": DATASET_TASKS["yeast"],
                 "multi-fashion": list(MULTI_FASHION_TASKS), "census-funnel": list(FUNNEL_TASKS)}
# rows of the file the train/validation split is drawn from, and the fraction held out of it for test
# (census-income has its own test file), so that a split leaving no training rows is refused up front
DATASET_ROWS = {"census-income": (199_523, 0.0), "yeast": (2_417, 0.3), "multi-fashion": (60_000, 0.0),
                "census-funnel": (199_523, 0.0)}


def dataset_tasks(name: str, names: list[str] | None = None) -> list[Task]:
    """The tasks `names` (default: the dataset's default tasks) of a built-in dataset, without reading it."""
    names = DEFAULT_TASKS[name] if names is None else names
    if name == "census-income":
        return census_tasks(names)
    if name == "multi-fashion":
        return multi_fashion_tasks(names)
    if name == "census-funnel":  # works, then high_income after works
        return [t for t in census_funnel_tasks() if t.name in names]
    return [Task(t, "binary") for t in DATASET_TASKS[name] if t in names]


__all__ = ["DatasetBundle", "MultiTaskData", "batches", "collate", "EpochBatchSampler", "TabularPreprocessor",
           "load_census_income", "load_yeast", "load_multi_fashion", "load_census_funnel", "DATASETS", "DATASET_TASKS", "DATASET_ROWS",
           "DEFAULT_TASKS", "dataset_tasks"]
