"""`tune.space` takes the key paths `--set` takes (keys whose default is null included), and a value
that can never train is refused before the study starts, not found out trial after trial."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_tune import tiny_study, trials_csv

from cnnlab.cli import app
from cnnlab.tune import load_search, trial_config

from conftest import DATA_DIR, needs_data


def _with_space(space: dict, base: dict | None = None) -> dict:
    data = copy.deepcopy(base or tiny_study())
    data["tune"]["space"] = space
    return data


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _conv() -> dict:
    data = tiny_study()
    data["model"]["layers"] = [{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "max_pooling2d"},
                               {"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]
    return data


# (key, search, a value tried, what the trial's config then holds at that key)
NULL_KEYS = [
    pytest.param("train.lr_schedule", {"choice": [None, {"name": "cosine"}, {"name": "step", "every_epochs": 1}]},
                 {"name": "step", "every_epochs": 1}, lambda cfg: cfg.train.lr_schedule.name == "step",
                 id="train.lr_schedule"),
    pytest.param("data.image_size", {"choice": [[28, 28], [20, 20]]}, [20, 20],
                 lambda cfg: list(cfg.data.image_size) == [20, 20], id="data.image_size"),
    pytest.param("train.optimizer.weight_decay", {"float": [0.0, 0.01]}, 0.005,
                 lambda cfg: cfg.train.optimizer.weight_decay == 0.005, id="a float range over a null number"),
    pytest.param("train.optimizer.clipnorm", {"float": [0.5, 5.0], "log": True}, 1.0,
                 lambda cfg: cfg.train.optimizer.clipnorm == 1.0, id="a log range over a null number"),
    pytest.param("train.early_stopping", {"choice": [None, {"monitor": "val_accuracy", "patience": 1}]},
                 {"monitor": "val_accuracy", "patience": 1}, lambda cfg: cfg.train.early_stopping.patience == 1,
                 id="train.early_stopping"),
    pytest.param("model.layers[1].kernel_regularizer.l2", {"float": [1.0e-5, 1.0e-3], "log": True}, 1.0e-4,
                 lambda cfg: cfg.model.layers[1].kernel_regularizer.l2 == 1.0e-4, id="a key below a null section"),
    pytest.param("train.class_weight", {"choice": [None, "auto"]}, "auto",
                 lambda cfg: cfg.train.class_weight == "auto", id="train.class_weight"),
]


@needs_data
@pytest.mark.parametrize("key, search, value, holds", NULL_KEYS)
def test_a_key_whose_default_is_null_can_be_searched(tmp_path, monkeypatch, key, search, value, holds):
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(DATA_DIR))
    config = _write(tmp_path, _with_space({key: search}))
    found = load_search(config)  # refused today: "does not exist (did you mean ...)"
    assert list(found.tune.space) == [key]
    assert holds(trial_config(found.base, {key: value}, config, "t"))


@needs_data
def test_a_study_over_the_learning_rate_schedule_trains(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    data = _with_space({"train.lr_schedule": {"choice": [None, {"name": "cosine"}]}})
    data["tune"].update(trials=2, sampler="random")
    config = _write(tmp_path, data)
    result = runner.invoke(app, ["tune", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    rows = trials_csv(tmp_path / "runs" / "tiny")
    assert [row["state"] for row in rows] == ["complete", "complete"]


def _images(folder: Path, classes: int, each: int) -> Path:
    rng = np.random.default_rng(0)
    for number in range(classes):
        (folder / f"class{number}").mkdir(parents=True, exist_ok=True)
        for index in range(each):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"class{number}" / f"{index}.png")
    return folder


def _folder_study(tmp_path: Path, other) -> dict:
    """A study of a two-class folder data set whose data.path choice adds a second folder, `other`."""
    good = _images(tmp_path / "shapes", 2, 12)
    data = tiny_study()
    data["data"] = {"dataset": "folder", "path": str(good)}
    data["model"]["layers"][-1]["units"] = 2
    bad = other(tmp_path)
    return _with_space({"data.path": {"choice": [str(good), str(bad)]}}, data), str(bad)


def _empty_classes(tmp_path: Path) -> Path:
    for name in ("class0", "class1"):
        (tmp_path / "empty" / name).mkdir(parents=True)
    return tmp_path / "empty"


def _not_images(tmp_path: Path) -> Path:
    for name in ("class0", "class1"):
        (tmp_path / "texts" / name).mkdir(parents=True)
        (tmp_path / "texts" / name / "notes.txt").write_text("not a picture")
    return tmp_path / "texts"


FOLDERS = [
    pytest.param(_empty_classes, ["data.path", "can never train"], id="a folder of empty class folders"),
    pytest.param(_not_images, ["data.path", "can never train"], id="a folder with no images"),
    pytest.param(lambda tmp: tmp / "nowhere", ["data.path", "can never train", "does not exist"],
                 id="a folder that does not exist"),
    pytest.param(lambda tmp: _images(tmp / "three", 3, 12), ["data.path", "can never train", "3 classes"],
                 id="a folder of another number of classes"),
    pytest.param(lambda tmp: _images(tmp / "one", 1, 12), ["data.path", "can never train"],
                 id="a folder of one class"),
]


@pytest.mark.parametrize("other, expected", FOLDERS)
def test_a_data_path_choice_that_cannot_train_is_refused_before_the_study(runner, tmp_path, other, expected):
    data, bad = _folder_study(tmp_path, other)
    _assert_refused(runner, tmp_path, data, [*expected, repr(bad)])


SHAPES = [
    pytest.param(_with_space({"model.layers[0].kernel_size": {"choice": [3, 40]}}, _conv()),
                 ["model.layers[0].kernel_size", "the value 40 can never train", "kernel 40x40 does not fit"],
                 id="a kernel larger than the image"),
    pytest.param(_with_space({"data.image_size": {"choice": [[28, 28], [2, 2]]}}, _conv()),
                 ["data.image_size", "the value [2, 2] can never train", "does not fit"],
                 id="an image size too small for the kernel"),
    pytest.param(_with_space({"data.dataset": {"choice": ["mnist", "xor"]}}, _conv()),
                 ["data.dataset", "'xor' can never train", "needs an image input"], id="a data set of no images"),
    pytest.param(_with_space({"model.layers[3].units": {"choice": [10, 5]}}, _conv()),
                 ["model.layers[3].units", "the value 5 can never train", "mnist has 10 classes"],
                 id="an output of the wrong size"),
    pytest.param(_with_space({"model.layers[1].units": {"choice": [16, 10**10]}}),
                 ["model.layers[1].units", "can never train", "memory"], id="a model too large for memory"),
    pytest.param(_with_space({"model.layers[0].filters": {"int": [4, 10**9]}}, _conv()),
                 ["model.layers[0].filters", "the value 1000000000 can never train", "memory"],
                 id="a range whose end cannot train"),
]


@needs_data
@pytest.mark.parametrize("data, expected", SHAPES)
def test_a_choice_whose_model_cannot_train_is_refused_before_the_study(runner, tmp_path, monkeypatch, data,
                                                                        expected):
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(DATA_DIR))
    _assert_refused(runner, tmp_path, data, expected)


def _assert_refused(runner, tmp_path: Path, data: dict, expected: list[str]) -> None:
    config = _write(tmp_path, data)
    result = runner.invoke(app, ["tune", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {config}: tune.space: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # no study, no trial
