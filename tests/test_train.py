"""Real training runs, short: the run directory a user gets, and accuracy floors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import yaml

from cnnlab import rundir
from cnnlab.config import load_config, validate_config
from cnnlab.train import train

from conftest import REPO, needs_data, small_dnn

RUN_FILES = [
    "config.yaml", "run.json", "environment.json", "summary.txt", "best.keras",
    "history.csv", "history.json", "loss.png", "accuracy.png", "metrics.json", "resume/state.keras",
]


@needs_data
def test_short_mnist_run_writes_a_complete_run_directory(tmp_path):
    cfg = validate_config(small_dnn(), "small.yaml")
    result = train(cfg, "small.yaml", runs_dir=tmp_path / "runs", echo=lambda _: None)
    run = result.run_dir
    assert run.parent == tmp_path / "runs" and run.name.startswith("small-")
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.88  # 10k images, 3 epochs: about 0.92
    assert metrics["test_samples"] == 2000 and metrics["epochs_completed"] == 3
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history[0])
    assert (run / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["train_samples"] == 10000
    assert "Total params: 50,890" in (run / "summary.txt").read_text()  # Keras' own table of this model
    # the checkpoint is a plain Keras file: the best epoch by val_accuracy
    best = keras.saving.load_model(run / "best.keras")
    assert best.count_params() == 50_890
    best_epoch = max(history, key=lambda row: row["val_accuracy"])["epoch"]
    assert metrics["best_epoch"] == best_epoch
    # PNGs are real images
    for png in ("loss.png", "accuracy.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_data
def test_a_second_run_never_overwrites_the_first(tmp_path):
    cfg = validate_config(small_dnn(epochs=1), "s")
    first = train(cfg, "s", runs_dir=tmp_path, echo=lambda _: None).run_dir
    second = train(cfg, "s", runs_dir=tmp_path, echo=lambda _: None).run_dir
    assert first != second and first.exists() and second.exists()


def test_xor_mlp_learns_xor(tmp_path):
    cfg = load_config(REPO / "configs" / "xor_mlp.yaml")
    result = train(cfg, "xor_mlp.yaml", runs_dir=tmp_path, echo=lambda _: None)
    assert result.metrics["test_accuracy"] == 1.0


def test_categorical_loss_trains_on_one_hot_labels(tmp_path):
    data = small_dnn(loss="categorical_crossentropy", epochs=1)
    data["data"] = {"dataset": "xor", "validation": {"method": "none"}, "repeat": 50}
    data["model"]["layers"] = [{"type": "dense", "units": 8, "activation": "relu"},
                               {"type": "dense", "units": 2, "activation": "softmax"}]
    data["train"]["checkpoint"] = {"monitor": "loss"}
    data["train"]["epochs"] = 3
    result = train(validate_config(data, "x"), "x", runs_dir=tmp_path, echo=lambda _: None)
    # Keras refuses integer labels for a 2-unit categorical loss; here it trains, and learns
    history = json.loads((result.run_dir / "history.json").read_text())["epochs"]
    assert history[-1]["loss"] < history[0]["loss"] and np.isfinite(result.metrics["test_loss"])


def test_tensorboard_logs_when_enabled(tmp_path):
    cfg = load_config(REPO / "configs" / "xor_mlp.yaml", ["train.tensorboard=true", "train.epochs=2"])
    run = train(cfg, "xor_mlp.yaml", runs_dir=tmp_path, echo=lambda _: None).run_dir
    assert list((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
