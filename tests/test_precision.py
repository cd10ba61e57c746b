"""train.precision: Keras mixed-precision policies per layer, the output in float32, recorded in the run."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from cnnlab.cli import app
from cnnlab.config import validate_config
from cnnlab.errors import CnnlabError
from cnnlab.evaluate import evaluate
from cnnlab.model import build_model
from cnnlab.train import train

from conftest import needs_data, small_dnn


def small_cnn(**train_options) -> dict:
    data = small_dnn(**train_options)
    data["model"]["layers"] = [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "max_pooling2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    return data


def test_precision_is_float32_by_default_and_one_of_three():
    assert validate_config(small_dnn(), "c.yaml").train.precision == "float32"
    with pytest.raises(CnnlabError) as err:
        validate_config(small_dnn(precision="float16"), "c.yaml")
    message = str(err.value)
    assert "train.precision" in message and "mixed_bfloat16" in message and "\n" not in message


def test_mixed_bfloat16_computes_in_bfloat16_with_a_float32_output():
    cfg = validate_config(small_cnn(precision="mixed_bfloat16"), "c.yaml")
    model = build_model(cfg, (28, 28, 1))
    *hidden, output = model.layers
    assert {layer.dtype_policy.name for layer in hidden} == {"mixed_bfloat16"}
    assert all(layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32" for layer in hidden)
    assert output.dtype_policy.name == "float32"
    probs = model(np.zeros((2, 28, 28, 1), np.float32))
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"
    # Keras' global policy is left alone: the next model of the process is float32 again
    plain = build_model(validate_config(small_cnn(), "c.yaml"), (28, 28, 1))
    assert {layer.dtype_policy.name for layer in plain.layers} == {"float32"}


@needs_data
def test_mixed_float16_on_a_cpu_is_refused_before_any_run_folder(runner, write_config, tmp_path):
    path = write_config(small_dnn(precision="mixed_float16"))
    result = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {path}: train.precision: mixed_float16")
    assert "slower" in line and "mixed_bfloat16" in line and "float32" in line
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
    # with --device cpu it is known before anything loads or starts
    assert "starting TensorFlow" not in result.stderr
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):  # --device auto on a machine without a GPU: refused too
        auto = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs")])
        assert auto.exit_code == 2 and "train.precision: mixed_float16" in auto.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "runs").exists()


@needs_data
def test_a_mixed_bfloat16_run_is_recorded_and_its_checkpoint_evaluates(tmp_path):
    cfg = validate_config(small_cnn(epochs=1, precision="mixed_bfloat16"), "c.yaml")
    result = train(cfg, "c.yaml", runs_dir=tmp_path, device="cpu", echo=lambda _: None, quiet=True)
    run = result.run_dir
    assert json.loads((run / "environment.json").read_text())["precision"] == "mixed_bfloat16"
    assert "precision: mixed_bfloat16" in (run / "config.yaml").read_text()
    assert result.metrics["test_accuracy"] > 0.8
    # TFLite has no bfloat16 convolutions: the file is the float32 twin, and predict uses it
    assert result.metrics["tflite"] == "model.tflite" and result.metrics["tflite_max_abs_diff"] < 1e-4
    # the checkpoint keeps its policies, and scores as training said
    again = evaluate(run, out=tmp_path / "evaluation")
    assert again.samples == 2000
    assert again.accuracy == pytest.approx(result.metrics["test_accuracy"], abs=0.002)
    assert again.loss == pytest.approx(result.metrics["test_loss"], rel=0.02)
