"""Data: in-memory multi-task datasets, preprocessing, and the real datasets (read offline from disk)."""
from multitask.data.census import load_census_income
from multitask.data.dataset import DatasetBundle, MultiTaskData, batches
from multitask.data.preprocessing import TabularPreprocessor
from multitask.data.yeast import load_yeast

DATASETS = {"census-income": load_census_income, "yeast": load_yeast}
# task names of each dataset, known without reading it (configs are checked before any data is loaded)
DATASET_TASKS = {"census-income": ["income", "marital"], "yeast": [f"class{i}" for i in range(1, 15)]}

__all__ = ["DatasetBundle", "MultiTaskData", "batches", "TabularPreprocessor", "load_census_income",
           "load_yeast", "DATASETS", "DATASET_TASKS"]
