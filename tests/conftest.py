"""Shared fixtures: the real data directory, a CLI runner, small configs written to tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.data import DATASETS

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


# the IDX files cnnlab reads, as its data module lists them (mnist/..., fashion-mnist/...)
DATA_FILES = [f"{info.folder}/{name}" for info in DATASETS.values() if info.folder for name, _ in info.md5]


def _data_dir() -> Path | None:
    """The real data folder; None only when it is absent (the one case real-data tests skip).

    A folder that is there but lacks a file is a broken set-up, not a reason to skip: the
    run stops, so CI cannot pass with its real-data tests silently skipped.
    """
    configured = os.environ.get("CNNLAB_DATA_DIR")
    path = Path(configured) if configured else SHARED / "datasets"
    if not path.is_dir():
        return None
    missing = [name for name in DATA_FILES if not (path / name).is_file()]
    if missing:
        raise pytest.UsageError(f"{path}: the data folder lacks {', '.join(missing)}; real-data tests cannot run.")
    return path


DATA_DIR = _data_dir()
needs_data = pytest.mark.skipif(DATA_DIR is None, reason="no data folder (set CNNLAB_DATA_DIR)")


# Tests on ../shared's real material skip only when ../shared itself is absent; a missing
# file inside it then fails the test that reads it.
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared not found beside the repository")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """Tests never download (a missing file must be an error) and never write to ~/.cache."""
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.mktemp("image-cache")))
    if DATA_DIR is not None:
        monkeypatch.setenv("CNNLAB_DATA_DIR", str(DATA_DIR))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict as YAML in tmp_path and return its path."""

    def write(data: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def small_dnn(**train) -> dict:
    """A small MNIST DNN config that trains in seconds on a subset."""
    return {
        "name": "small",
        "seed": 1,
        "data": {"dataset": "mnist", "train_samples": 10000, "test_samples": 2000,
                 "validation": {"method": "stratified", "size": 0.2}},
        "model": {"layers": [
            {"type": "flatten"},
            {"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ]},
        "train": {"epochs": 3, "batch_size": 32, **train},
    }
