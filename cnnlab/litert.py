"""The LiteRT runtime: a `.tflite` classifier that predicts without TensorFlow.

Training writes the best checkpoint also as `model.tflite` (`TFLITE`, see `cnnlab.export`);
`cnnlab predict`, `evaluate` and `serve` then need only NumPy and the small LiteRT
interpreter (`ai-edge-litert`): a cold start takes a fraction of a second instead of
TensorFlow's ~7 s import.

Example:
    probs = LiteModel(run_dir / TFLITE).predict(x)   # x: (N, *input_shape[1:]) float32
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from cnnlab.backend import silenced

TFLITE = "model.tflite"  # in a run directory: the TensorFlow-free copy of best.keras


class LiteModel:
    """A `.tflite` classifier with a Keras-like `predict` and `input_shape`.

    `predict` may be called from several threads (a server's): LiteRT's interpreter is
    not thread-safe, so one call runs at a time.

    Args:
        path: the `.tflite` file.
        threads: the interpreter's own threads (default: one per core).

    Example:
        lite = LiteModel("runs/cnn-20261123-012542/model.tflite", threads=1)
        lite.predict(np.zeros((2, 28, 28, 1), np.float32)).shape   # (2, 10)
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        with silenced():  # LiteRT announces its CPU delegate on stderr
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple:
        return (None, *self._input["shape"][1:].tolist())

    @property
    def input_details(self) -> dict:
        """LiteRT's description of the input: its name, shape (batch first) and dtype."""
        return self._input

    @property
    def output_shape(self) -> tuple:
        return (None, *self._output["shape"][1:].tolist())

    def predict(self, x: np.ndarray, verbose: int = 0) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            if self._batch != len(x):
                with silenced():
                    self._interpreter.resize_tensor_input(self._input["index"], x.shape)
                    self._interpreter.allocate_tensors()
                self._batch = len(x)
            self._interpreter.set_tensor(self._input["index"], x)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output["index"]).copy()
