"""Exports of a model: the TensorFlow-free copy for instant predictions, and `cnnlab export`.

At the end of training the best checkpoint is also written as `model.tflite` (a
TensorFlow Lite flatbuffer) and checked against Keras on real test images. Predicting
then needs only NumPy and the small LiteRT interpreter (`ai-edge-litert`): a cold
`cnnlab predict` takes a fraction of a second instead of TensorFlow's ~7 s import.

`export_model` writes a run's model in the format another runtime loads: a TF
SavedModel (TensorFlow Serving), TFLite, or ONNX (onnxruntime), each checked in that
runtime against Keras on the run's test images before it is put in place.

Example:
    max_diff = export_tflite(model, run_dir / "model.tflite", x_test[:64])
    export_model("runs/cnn-20261123-012542", "onnx")  # runs/cnn-.../export/model.onnx
    probs = LiteModel(run_dir / "model.tflite").predict(x)
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError
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
    """A `.tflite` classifier with a Keras-like `predict` and `input_shape`.

    `predict` may be called from several threads (a server's): LiteRT's interpreter is
    not thread-safe, so one call runs at a time. `threads`: the interpreter's own (default:
    one per core).
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        with _quiet():  # LiteRT announces its CPU delegate on stderr
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple:
        return (None, *self._input["shape"][1:].tolist())

    @property
    def output_shape(self) -> tuple:
        return (None, *self._output["shape"][1:].tolist())

    def predict(self, x: np.ndarray, verbose: int = 0) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
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
    """Silence stdout and stderr at the file-descriptor level (C++ logs included), and Python's
    sys.stdout where it is not file descriptor 1 (a CLI runner's capture), and warnings."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. tf2onnx's FutureWarning on np.object: Keras' code, not the user's
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


FORMATS = ("saved_model", "tflite", "onnx")
EXPORT_DIR = "export"  # inside a run directory: where `cnnlab export` writes unless told otherwise
_DEFAULT_NAMES = {"saved_model": "saved_model", "tflite": TFLITE, "onnx": "model.onnx"}
_CHECK_SAMPLES = 256  # test images each export is compared with Keras on


@dataclass
class Exported:
    """What `export_model` wrote: the path, the format, and how closely it agrees with Keras."""

    path: Path
    format: str
    max_abs_diff: float
    samples: int

    def report(self) -> str:
        return (f"wrote {self.path} ({self.format}); on {self.samples} test images its outputs differ from "
                f"Keras' by at most {self.max_abs_diff:.1e} (tolerance {TOLERANCE:g})")


def export_model(target: str | Path, format: str, output: str | Path | None = None, force: bool = False) -> Exported:
    """Export TARGET's Keras model as a TF SavedModel, a TFLite file or ONNX, checked against Keras.

    The export is written beside its final path and moved there only once it loads in its
    own runtime (TensorFlow, LiteRT, onnxruntime) and its outputs on the run's test images
    are within `TOLERANCE` of Keras'; an existing path is replaced only with `force`.

    Args:
        target: a run directory or a .keras / .h5 / .hdf5 file (see `cnnlab.checkpoint`).
        format: "saved_model" (a folder, for TensorFlow Serving), "tflite" or "onnx".
        output: where to write (default: `<run>/export/saved_model`, `model.tflite` or `model.onnx`).
        force: replace what is at `output`.
    """
    from cnnlab.checkpoint import load_checkpoint  # export is also the module checkpoint loads LiteModel from
    from cnnlab.evaluate import test_set

    if format not in FORMATS:
        raise CnnlabError(f"--format {format}: unknown; use one of {', '.join(FORMATS)}.")
    target = Path(target)
    if output is None:
        if not target.is_dir():
            raise CnnlabError(f"{target}: is a model file; give -o PATH for the {format} export "
                              "(only a run directory has a default place, <run>/export/).")
        output = target / EXPORT_DIR / _DEFAULT_NAMES[format]
    output = Path(output)
    if output.exists() and not force:
        raise CnnlabError(f"-o {output}: already exists; pass --force to replace it, or choose another -o.")
    loaded = load_checkpoint(target)
    images, _ = test_set(loaded)
    sample = loaded.prepare(images[:_CHECK_SAMPLES])
    model = loaded.model
    expected = np.asarray(model(sample, training=False))  # also builds the call graph Keras' export needs
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        written = Path(tmp) / output.name
        with _quiet():  # TensorFlow and tf2onnx print pages of details
            if format == "tflite":
                try:
                    export_tflite(model, written, sample, expected=expected)
                except ValueError as exc:  # it differs from Keras: said below, as for the other formats
                    raise CnnlabError(f"{target}: the tflite export failed its check: {exc}; nothing was written.") from None
            else:
                model.export(str(written), format="tf_saved_model" if format == "saved_model" else "onnx",
                             verbose=False)
            actual = _run_export(written, format, sample)
        diff = float(np.abs(actual - expected).max())
        if diff > TOLERANCE:
            raise CnnlabError(f"{target}: the {format} export's outputs differ from Keras' by {diff:.2e} "
                              f"(> {TOLERANCE:g}) on the test images; nothing was written.")
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        os.replace(written, output)
    return Exported(path=output, format=format, max_abs_diff=diff, samples=len(sample))


def _run_export(path: Path, format: str, x: np.ndarray) -> np.ndarray:
    """The outputs of an exported model on `x`, in the runtime its users load it with."""
    if format == "tflite":
        return LiteModel(path).predict(x)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    import tensorflow as tf

    restored = tf.saved_model.load(str(path))  # held: its functions need its variables alive
    return restored.serve(tf.constant(x)).numpy()
