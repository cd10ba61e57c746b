"""Real training runs, short: the run directory a user gets, and accuracy floors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import yaml

from cnnlab.config import load_config, validate_config
from cnnlab.data import load_raw
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
def test_adamw_cosine_warmup_label_smoothing_top3_and_l2_train_together(tmp_path):
    """The options a user reaching for accuracy sets, all from Keras, in one short real run."""
    data = small_dnn(
        optimizer={"name": "adamw", "learning_rate": 0.002},
        lr_schedule={"name": "cosine", "warmup_epochs": 1},
        loss={"name": "sparse_categorical_crossentropy", "label_smoothing": 0.1},
        metrics=["accuracy", {"name": "top_k_accuracy", "k": 3}],
        checkpoint={"monitor": "val_top_3_accuracy"},
    )
    data["data"]["train_samples"] = 5000
    data["model"]["layers"][1]["kernel_regularizer"] = {"l2": 1e-4}
    result = train(validate_config(data, "s"), "s", runs_dir=tmp_path, echo=lambda _: None)
    run = result.run_dir
    assert result.metrics["test_accuracy"] > 0.85  # 4,000 images, 3 epochs: about 0.9
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert {"top_3_accuracy", "val_top_3_accuracy"} <= set(history[0])
    assert history[-1]["val_top_3_accuracy"] > history[-1]["val_accuracy"]
    # warm-up to 0.002 over epoch 1, then the cosine decay to 0 at the last step
    assert [row["learning_rate"] for row in history] == pytest.approx([0.002, 0.001, 0.0], abs=1e-6)
    assert (run / "history.csv").read_text().splitlines()[0].split(",")[-2:] == ["learning_rate", "seconds"]
    for png in ("learning_rate.png", "top_3_accuracy.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = keras.saving.load_model(run / "best.keras")
    assert model.count_params() == 50_890  # an L2 penalty adds no weights
    assert isinstance(model.layers[1].kernel_regularizer, keras.regularizers.L2)
    assert isinstance(model.optimizer, keras.optimizers.AdamW) and model.optimizer.weight_decay == 0.004
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)  # smoothing needs one-hot targets
    assert model.loss.get_config()["label_smoothing"] == 0.1


@needs_data
def test_a_model_trained_on_logits_predicts_probabilities(tmp_path, runner):
    """from_logits: a linear output; evaluate scores it as trained and predict shows probabilities."""
    from cnnlab.cli import app
    from cnnlab.evaluate import evaluate

    data = small_dnn(epochs=1, loss={"name": "sparse_categorical_crossentropy", "from_logits": True},
                     optimizer={"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "global_clipnorm": 1.0},
                     lr_schedule={"name": "step", "every_epochs": 1, "factor": 0.5})
    data["model"]["layers"][-1]["activation"] = "linear"
    run = train(validate_config(data, "s"), "s", runs_dir=tmp_path, echo=lambda _: None).run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85
    assert json.loads((run / "history.json").read_text())["epochs"][0]["learning_rate"] == pytest.approx(0.025)
    scored = evaluate(run)
    assert scored.accuracy == metrics["test_accuracy"]
    assert scored.loss == pytest.approx(metrics["test_loss"], abs=1e-4)
    raw = load_raw("mnist", test_only=True).x_test[:1]
    from PIL import Image

    Image.fromarray(raw[0]).save(tmp_path / "digit.png")
    shown = runner.invoke(app, ["predict", str(run), str(tmp_path / "digit.png"), "--json", "--top-k", "10"])
    assert shown.exit_code == 0, shown.output
    top = json.loads(shown.stdout)["predictions"][0]["top_k"]
    assert sum(entry["probability"] for entry in top) == pytest.approx(1.0, abs=1e-3)
    assert all(0.0 <= entry["probability"] <= 1.0 for entry in top)


@needs_data
@pytest.mark.parametrize("metrics, monitor", [(["precision", "recall", "auc"], "val_auc"), (["mse"], "val_mse")])
def test_precision_recall_auc_and_mse_work_with_a_sparse_loss(tmp_path, metrics, monitor):
    """Keras compares them with one-hot targets (mse on integer labels used to crash mid-fit)."""
    data = small_dnn(epochs=1, metrics=["accuracy", *metrics], checkpoint={"monitor": monitor})
    data["data"]["train_samples"] = 2000
    result = train(validate_config(data, "s"), "s", runs_dir=tmp_path, echo=lambda _: None)
    (row,) = json.loads((result.run_dir / "history.json").read_text())["epochs"]
    for name in metrics:
        assert 0.0 < row[f"val_{name}"] < 1.0 and (result.run_dir / f"{name}.png").is_file()
    assert row.get("val_auc", 1.0) > 0.9 and row.get("val_mse", 0.0) < 0.05  # mse: over 10 one-hot columns
    assert result.metrics[f"best_{monitor}"] == row[monitor]


@pytest.mark.parametrize("loop", ["fit", "gradient_tape"])
def test_train_verbose_sets_keras_progress_output(tmp_path, capsys, loop):
    for verbose, shown in ((0, False), (2, True)):
        data = small_dnn(loss="categorical_crossentropy", epochs=2, verbose=verbose, loop=loop,
                         checkpoint={"monitor": "loss"})
        data["data"] = {"dataset": "xor", "validation": {"method": "none"}, "repeat": 8}
        data["model"]["layers"] = [{"type": "dense", "units": 4, "activation": "relu"},
                                   {"type": "dense", "units": 2, "activation": "softmax"}]
        capsys.readouterr()
        train(validate_config(data, "x"), "x", runs_dir=tmp_path, echo=lambda _: None)
        out = capsys.readouterr().out
        assert ("Epoch 2/2" in out) is shown and (" - loss: " in out) is shown, out



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
    monkeypatch.setattr(training, "_run_fit", lambda keras_, model, cfg_, splits, validation, callbacks, first_epoch,
                        **options: run_fit(keras_, model, cfg_, splits, validation,
                                           [*callbacks, LearningRateBlowsUpInEpoch2()], first_epoch, **options))
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
