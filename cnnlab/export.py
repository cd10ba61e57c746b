"""A TensorFlow-free copy of the best model, for instant predictions.

At the end of training the best checkpoint is also written as `model.tflite` (a
TensorFlow Lite flatbuffer) and checked against Keras on real test images. Predicting
then needs only NumPy and the small LiteRT interpreter (`ai-edge-litert`): a cold
`cnnlab predict` takes a fraction of a second instead of TensorFlow's ~7 s import.

Example:
    max_diff = export_tflite(model, run_dir / "model.tflite", x_test[:64])
    probs = LiteModel(run_dir / "model.tflite").predict(x)
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cnnlab.rundir import atomic_path

TFLITE = "model.tflite"
TOLERANCE = 1e-4  # largest difference from Keras' probabilities that we accept


def export_tflite(model, path: Path, sample: np.ndarray, expected: np.ndarray | None = None) -> float:
    """Write `model` as TFLite at `path` if it agrees with Keras on `sample`.

    Returns the largest absolute difference in probabilities. A model that does not
    convert, or converts with a larger difference than `TOLERANCE`, is not written
    (prediction then falls back to Keras); the exception or the difference says why.
    `expected`: Keras' outputs on `sample` when the caller has them (else predicted here).
    """
    import tensorflow as tf

    if any(layer.compute_dtype != "float32" for layer in model.layers):
        # mixed precision (train.precision): TFLite has no bfloat16 convolutions, so the file is
        # the same weights computing in float32, checked against that float32 model
        model, expected = float32_copy(model), None
    if expected is None:
        expected = model.predict(sample, verbose=0)
    with _quiet(), atomic_path(path, suffix=".tflite") as tmp:  # the converter prints pages of details
        tmp.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        diff = float(np.abs(LiteModel(tmp).predict(sample) - expected).max())
        if diff > TOLERANCE:
            raise ValueError(f"TFLite probabilities differ from Keras' by {diff:.2e} (> {TOLERANCE})")
    return diff


def float32_copy(model):
    """`model` with every layer computing in float32 (a mixed-precision model's float32 twin), same weights."""
    import keras

    copy = keras.models.clone_model(
        model, clone_function=lambda layer: type(layer).from_config({**layer.get_config(), "dtype": "float32"}))
    copy.set_weights(model.get_weights())
    return copy


class LiteModel:
    """A `.tflite` classifier with a Keras-like `predict` and `input_shape`."""

    def __init__(self, path: str | Path):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        with _quiet():  # LiteRT announces its CPU delegate on stderr
            self._interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None

    @property
    def input_shape(self) -> tuple:
        return (None, *self._input["shape"][1:].tolist())

    @property
    def output_shape(self) -> tuple:
        return (None, *self._output["shape"][1:].tolist())

    def predict(self, x: np.ndarray, verbose: int = 0) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._batch != len(x):
            with _quiet():
                self._interpreter.resize_tensor_input(self._input["index"], x.shape)
                self._interpreter.allocate_tensors()
            self._batch = len(x)
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).copy()


@contextmanager
def _quiet():
    """Silence stdout and stderr at the file-descriptor level (C++ logs included)."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
