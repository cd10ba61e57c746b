"""The hand-written tf.GradientTape loop (`train.loop: gradient_tape`): same run directory, falling loss."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest

from cnnlab.config import load_config, validate_config
from cnnlab.data import prepare
from cnnlab.errors import CnnlabError
from cnnlab.model import check_model
from cnnlab.train import Diverged, train

from conftest import REPO, needs_data, small_dnn

RUN_FILES = [
    "config.yaml", "run.json", "environment.json", "summary.txt", "best.keras", "history.csv", "history.json",
    "loss.png", "accuracy.png", "metrics.json", "resume/state.keras", "iterations.csv", "iterations.png",
]


@needs_data
def test_the_tape_loop_lowers_the_loss_and_writes_a_full_run_directory(tmp_path):
    path = REPO / "configs" / "fashion_cnn_tape.yaml"
    cfg = load_config(path, ["data.train_samples=2000", "data.test_samples=500", "train.epochs=3"])
    result = train(cfg, path, runs_dir=tmp_path, echo=lambda _: None)
    run = result.run_dir
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    with (run / "iterations.csv").open() as handle:
        iterations = list(csv.DictReader(handle))
    assert len(iterations) == 3 * 13  # 1,600 training images in batches of 128
    assert [int(row["iteration"]) for row in iterations] == list(range(1, 40))
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["val_loss"] < history[0]["val_loss"]
    first, last = (np.mean([float(r["loss"]) for r in iterations if r["epoch"] == e]) for e in ("1", "3"))
    assert last < first - 0.05
    assert result.metrics["test_accuracy"] > 0.2  # chance is 0.1; SGD at lr 0.01 is slow on 1,600 images


@needs_data
def test_the_tape_loss_is_the_true_cross_entropy_of_the_saved_model(tmp_path):
    """Training on the logits (not softmax twice): val_loss is what Keras computes for best.keras."""
    path = REPO / "configs" / "fashion_cnn_tape.yaml"
    cfg = load_config(path, ["data.train_samples=1000", "data.test_samples=100", "train.epochs=1"])
    run = train(cfg, path, runs_dir=tmp_path, echo=lambda _: None).run_dir
    (row,) = json.loads((run / "history.json").read_text())["epochs"]
    splits = prepare(cfg, check_model(cfg, str(path)).input_shape, cfg.one_hot_labels())
    model = keras.saving.load_model(run / "best.keras")
    scores = model.evaluate(splits.x_val, splits.y_val, verbose=0, return_dict=True)
    assert scores["loss"] == pytest.approx(row["val_loss"], abs=1e-4)
    assert scores["accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-6)


@needs_data
def test_sparse_labels_and_early_stopping_work_in_the_tape_loop(tmp_path):
    cfg = validate_config(small_dnn(loop="gradient_tape", epochs=30, batch_size=64,
                                    early_stopping={"monitor": "val_loss", "patience": 0, "min_delta": 10.0}), "s")
    result = train(cfg, "s", runs_dir=tmp_path, echo=lambda _: None)
    assert result.metrics["epochs_completed"] == 2 and result.metrics["stopped_early"]  # epoch 2 did not drop by 10
    assert result.metrics["test_accuracy"] > 0.6


@pytest.mark.parametrize("change, words", [
    (lambda d: d["train"].update(loss="mse"), ["train.loop: gradient_tape", "train.loss is mse"]),
    (lambda d: d["model"]["layers"][-1].update(activation="sigmoid"), ["model.layers[2]", "activation sigmoid"]),
    (lambda d: d["train"].update(metrics=["accuracy", "mae"]), ["remove mae from train.metrics"]),
])
def test_configs_the_tape_loop_cannot_train_are_refused(change, words):
    data = small_dnn(loop="gradient_tape")
    change(data)
    with pytest.raises(CnnlabError) as err:
        check_model(validate_config(data, "t.yaml"), "t.yaml")
    for word in words:
        assert word in str(err.value)


@needs_data
def test_the_tape_loop_takes_adamw_a_schedule_and_l2(tmp_path):
    """The optimizer object applies weight decay and its schedule; the L2 penalty joins the loss as in fit."""
    data = small_dnn(loop="gradient_tape", epochs=2, optimizer={"name": "adamw", "learning_rate": 0.002},
                     lr_schedule={"name": "cosine", "warmup_epochs": 1}, loss="categorical_crossentropy")
    data["data"]["train_samples"] = 3000
    data["model"]["layers"][1]["kernel_regularizer"] = {"l2": 1e-3}
    cfg = validate_config(data, "t.yaml")
    run = train(cfg, "t.yaml", runs_dir=tmp_path, echo=lambda _: None).run_dir
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [row["learning_rate"] for row in history] == pytest.approx([0.002, 0.0], abs=1e-7)
    assert history[-1]["val_accuracy"] > 0.8
    model = keras.saving.load_model(run / "best.keras")
    assert model.losses  # the penalty is part of the saved model ...
    splits = prepare(cfg, check_model(cfg, "t.yaml").input_shape, cfg.one_hot_labels())
    scores = model.evaluate(splits.x_val, splits.y_val, verbose=0, return_dict=True)
    best = max(history, key=lambda row: row["val_accuracy"])  # best.keras is that epoch's model
    assert scores["loss"] == pytest.approx(best["val_loss"], abs=1e-4)  # ... and of val_loss, as Keras counts it


def test_the_tape_loop_stops_when_the_loss_diverges(tmp_path):
    path = REPO / "configs" / "fashion_cnn_tape.yaml"
    cfg = load_config(path, ["data.train_samples=2000", "data.test_samples=500", "train.epochs=2",
                             "train.optimizer.learning_rate=1000000.0"])
    with pytest.raises(Diverged, match=r"at epoch 1, batch \d+ of 13\b") as err:
        train(cfg, path, runs_dir=tmp_path, echo=lambda _: None)
    assert err.value.batch < 13  # stopped inside the epoch, as model.fit does
    info = json.loads((err.value.run_dir / "run.json").read_text())
    assert info["status"] == "diverged"
