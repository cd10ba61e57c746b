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
    said = []
    run = train(cfg, "xor_mlp.yaml", runs_dir=tmp_path, echo=said.append).run_dir
    assert list((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert f"TensorBoard logs: tensorboard --logdir {run / 'tensorboard'}" in said


@needs_data
def test_a_diverging_loss_stops_the_run_and_says_what_to_try(tmp_path, runner):
    """The issue's own case: SGD at 1e5 (the loss explodes to ~1e30, finite) used to end at chance, unremarked."""
    from cnnlab.cli import app

    args = ["train", str(REPO / "configs" / "dnn.yaml"), "--runs-dir", str(tmp_path), "--set", "train.optimizer.name=sgd",
            "--set", "train.optimizer.learning_rate=100000.0", "--set", "data.train_samples=5000", "--set", "train.epochs=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    (run,) = tmp_path.iterdir()
    line = result.stderr.strip().splitlines()[-1]  # after the status lines ("loading mnist ...")
    assert line.startswith(f"error: {run}: training diverged: the loss reached ")
    assert "at epoch 1, batch " in line and "no checkpoint saved" in line
    assert "--set train.optimizer.learning_rate=0.01, sgd's default" in line
    assert "test accuracy" not in result.stdout  # nothing to score
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "diverged" and info["diverged_at"]["epoch"] == 1 and info["epochs_completed"] == 0
    assert not (run / "best.keras").exists() and not (run / "metrics.json").exists()


@needs_data
def test_a_run_that_diverges_later_scores_the_checkpoint_it_had(tmp_path, monkeypatch):
    import cnnlab.train as training

    class LearningRateBlowsUpInEpoch2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.optimizer.learning_rate = 1e9

    run_fit = training._run_fit
    monkeypatch.setattr(training, "_run_fit", lambda keras_, model, cfg_, splits, validation, callbacks, first_epoch:
                        run_fit(keras_, model, cfg_, splits, validation, [*callbacks, LearningRateBlowsUpInEpoch2()],
                                first_epoch))
    said = []
    with pytest.raises(training.Diverged, match=r"at epoch 2, batch \d+ of 250.*best.keras, from the 1 epoch\(s\) before, "
                                                 r"is scored above") as err:
        train(validate_config(small_dnn(epochs=3), "s"), "s", runs_dir=tmp_path, echo=said.append)
    run = err.value.run_dir
    assert err.value.epoch == 2
    assert any(line.startswith("test accuracy") for line in said)  # the epoch-1 checkpoint, scored
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85 and metrics["diverged_at"]["epoch"] == 2 and metrics["best_epoch"] == 1
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())["epochs"]] == [1]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "diverged" and info["epochs_completed"] == 1
    assert np.isfinite(keras.saving.load_model(run / "best.keras").get_weights()[0]).all()


@needs_data
def test_init_from_a_run_starts_from_its_weights(tmp_path, runner):
    from cnnlab.cli import app

    cfg = validate_config(small_dnn(epochs=1), "s")
    first = train(cfg, "s", runs_dir=tmp_path / "a", echo=lambda _: None).run_dir
    said = []
    second = train(validate_config(small_dnn(epochs=1, init_from=str(first)), "s"), "s", runs_dir=tmp_path / "b",
                   echo=said.append).run_dir
    assert f"starting from the weights of {first / 'best.keras'}" in said
    assert json.loads((second / "run.json").read_text())["init_from"] == str(first / "best.keras")
    scratch = json.loads((first / "history.json").read_text())["epochs"][0]
    started = json.loads((second / "history.json").read_text())["epochs"][0]
    assert started["accuracy"] > scratch["accuracy"] + 0.03  # about 0.95 against 0.87
    # a model of another shape: the first layer that does not fit is named
    data = small_dnn(epochs=1, init_from=str(first))
    data["model"]["layers"][1]["units"] = 32
    path = tmp_path / "narrow.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert (f"{path}: train.init_from: {first}: layer 1 (dense) has weights of shape (784, 64), this config's "
            "model.layers[1] (dense) needs (784, 32).") in result.stderr
    assert not (tmp_path / "c").exists()  # refused before any folder was made


@needs_data
def test_quiet_prints_only_the_result(tmp_path, runner, write_config):
    from cnnlab.cli import app

    result = runner.invoke(app, ["train", str(write_config(small_dnn(epochs=1))), "--runs-dir", str(tmp_path / "r"),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "r").iterdir()
    assert result.stdout.splitlines() == [result.stdout.splitlines()[0]]
    assert result.stdout.startswith("test accuracy ") and f"{run}/best.keras" in result.stdout
    assert result.stderr == ""
