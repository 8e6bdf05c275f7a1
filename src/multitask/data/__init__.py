"""Data: in-memory multi-task datasets, preprocessing, and the real datasets (read offline from disk)."""
from multitask.data.census import load_census_income
from multitask.data.dataset import DatasetBundle, MultiTaskData, batches
from multitask.data.preprocessing import TabularPreprocessor
from multitask.data.yeast import load_yeast

DATASETS = {"census-income": load_census_income, "yeast": load_yeast}

__all__ = ["DatasetBundle", "MultiTaskData", "batches", "TabularPreprocessor", "load_census_income",
           "load_yeast", "DATASETS"]
