"""Data: in-memory multi-task datasets, preprocessing, and the real datasets (read offline from disk)."""
from multitask.data.census import census_tasks, load_census_income
from multitask.data.dataset import DatasetBundle, MultiTaskData, batches
from multitask.data.preprocessing import TabularPreprocessor
from multitask.data.yeast import N_LABELS, load_yeast
from multitask.tasks import Task

DATASETS = {"census-income": load_census_income, "yeast": load_yeast}
# task names of each dataset, known without reading it (configs are checked before any data is loaded)
DATASET_TASKS = {"census-income": ["income", "marital"], "yeast": [f"class{i}" for i in range(1, N_LABELS + 1)]}
# rows of the file the train/validation split is drawn from, and the fraction held out of it for test
# (census-income has its own test file), so that a split leaving no training rows is refused up front
DATASET_ROWS = {"census-income": (199_523, 0.0), "yeast": (2_417, 0.3)}


def dataset_tasks(name: str) -> list[Task]:
    """The tasks of a built-in dataset, without reading it."""
    if name == "census-income":
        return census_tasks()
    return [Task(t, "binary") for t in DATASET_TASKS[name]]


__all__ = ["DatasetBundle", "MultiTaskData", "batches", "TabularPreprocessor", "load_census_income",
           "load_yeast", "DATASETS", "DATASET_TASKS", "DATASET_ROWS", "dataset_tasks"]
