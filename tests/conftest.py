"""Shared test setup: the package is imported first, so every test runs offline; fixtures used by several modules."""

import os

import pytest
from helpers import checkpoints, digits_data, task_checkpoints

import yolo_advamd  # noqa: F401  (sets the offline environment before Ultralytics is imported)
from yolo_advamd.data import resolve_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A 32/16-scene, 64 px digits-det build (real handwritten digits)."""
    root = tmp_path_factory.mktemp("data")
    yaml = root / "tiny.yaml"
    yaml.write_text("builder: digits-det\nseed: 3\nn_train: 32\nn_val: 16\nimgsz: 64\n")
    old = os.environ.get("YOLO_ADVAMD_DATA")
    os.environ["YOLO_ADVAMD_DATA"] = str(root / "cache")
    try:
        return resolve_dataset(str(yaml))
    finally:
        if old is None:
            os.environ.pop("YOLO_ADVAMD_DATA")
        else:
            os.environ["YOLO_ADVAMD_DATA"] = old


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict:
    """The 16-image digits-det build, the detector fitted to it as a stock checkpoint and as an amended one."""
    base = tmp_path_factory.getbasetemp()
    return {"data": digits_data(base), **checkpoints(base)}


@pytest.fixture(scope="session")
def fitted_tasks(tmp_path_factory) -> dict:
    """A segmentation and a classification model fitted to small digits-seg and digits-cls splits, as checkpoints."""
    return task_checkpoints(tmp_path_factory.getbasetemp())
