"""Exports of a model: the TensorFlow-free copy for instant predictions, and `cnnlab export`.

At the end of training the best checkpoint is also written as `model.tflite` (a
TensorFlow Lite flatbuffer) and checked against Keras on real test images; predicting
then needs only `cnnlab.litert.LiteModel`, with no TensorFlow.

`export_model` writes a run's model in the format another runtime loads: a TF
SavedModel (TensorFlow Serving), TFLite, or ONNX (onnxruntime), each checked in that
runtime against Keras on the run's test images before it is put in place.

Example:
    max_diff = export_tflite(model, run_dir / "model.tflite", x_test[:64])
    export_model("runs/cnn-20261123-012542", "onnx")  # runs/cnn-.../export/model.onnx
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.backend import silenced
from cnnlab.errors import CnnlabError
from cnnlab.litert import TFLITE, LiteModel
from cnnlab.rundir import atomic_path, refuse_config, update_json

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
    with silenced(), atomic_path(path, suffix=".tflite") as tmp:  # the converter prints pages of details
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


FORMATS = ("saved_model", "tflite", "onnx")
EXPORT_DIR = "export"  # inside a run directory: where `cnnlab export` writes unless told otherwise
EXPORTS_RECORD = f"{EXPORT_DIR}/exports.json"  # there: each format's last export and its measured difference
_DEFAULT_NAMES = {"saved_model": "saved_model", "tflite": TFLITE, "onnx": "model.onnx"}
_CHECK_SAMPLES = 256  # test images each export is compared with Keras on


@dataclass
class Exported:
    """What `export_model` wrote: the path, the format, and how closely it agrees with Keras."""

    path: Path
    format: str
    max_abs_diff: float
    samples: int
    input: str = ""  # e.g. "input 'input_layer' float32 [batch, 28, 28, 1]"

    def report(self) -> str:
        what = f"{self.format}; {self.input}" if self.input else self.format
        return (f"wrote {self.path} ({what}); on {self.samples} test images its outputs differ from "
                f"Keras' by at most {self.max_abs_diff:.1e} (tolerance {TOLERANCE:g})")


def export_model(target: str | Path, format: str, output: str | Path | None = None, force: bool = False) -> Exported:
    """Export TARGET's Keras model as a TF SavedModel, a TFLite file or ONNX, checked against Keras.

    The export is written beside its final path and moved there only once it loads in its
    own runtime (TensorFlow, LiteRT, onnxruntime) and its outputs on the run's test images
    are within `TOLERANCE` of Keras'. What is already at the output path is replaced only
    with `force`, and only when it is an export cnnlab wrote (see `replaceable`): a user's
    folder, a device or any other file is refused, `force` or not.

    Args:
        target: a run directory or a .keras / .h5 / .hdf5 file (see `cnnlab.checkpoint`).
        format: "saved_model" (a folder, for TensorFlow Serving), "tflite" or "onnx".
        output: where to write (default: `<run>/export/saved_model`, `model.tflite` or `model.onnx`).
        force: replace an earlier export at `output`.
    """
    from cnnlab.checkpoint import check_output_dir, load_checkpoint, make_output_dir
    from cnnlab.evaluate import test_set

    if format not in FORMATS:
        raise CnnlabError(f"--format {format}: unknown; use one of {', '.join(FORMATS)}.")
    target = Path(target)
    refuse_config(target)
    if output is None:
        if not target.is_dir():
            raise CnnlabError(f"{target}: is a model file; give -o PATH for the {format} export "
                              "(only a run directory has a default place, <run>/export/).")
        output = target / EXPORT_DIR / _DEFAULT_NAMES[format]
        label = f"{output} (the default export path)"
    else:
        output = Path(output)
        label = f"-o {output}"
    existing = replaceable(output, format, label)
    if existing and not force:
        raise CnnlabError(f"{label}: already exists; pass --force to replace it, or choose another -o.")
    check_output_dir(output.parent, label)  # before the slow load: a read-only or impossible place
    loaded = load_checkpoint(target)
    make_output_dir(output.parent, "-o", where=label)
    images, _ = test_set(loaded)
    sample = loaded.prepare(images[:_CHECK_SAMPLES])
    model = loaded.model
    expected = np.asarray(model(sample, training=False))  # also builds the call graph Keras' export needs
    try:
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
            written = Path(tmp) / output.name
            with silenced():  # TensorFlow and tf2onnx print pages of details
                if format == "tflite":
                    try:
                        export_tflite(model, written, sample, expected=expected)
                    except ValueError as exc:  # it differs from Keras: said below, as for the other formats
                        raise CnnlabError(f"{target}: the tflite export failed its check: {exc}; "
                                          "nothing was written.") from None
                else:
                    model.export(str(written), format="tf_saved_model" if format == "saved_model" else "onnx",
                                 verbose=False)
                actual = _run_export(written, format, sample)
            diff = float(np.abs(actual - expected).max())
            if diff > TOLERANCE:
                raise CnnlabError(f"{target}: the {format} export's outputs differ from Keras' by {diff:.2e} "
                                  f"(> {TOLERANCE:g}) on the test images; nothing was written.")
            _mark(written, format, export_metadata(loaded))
            replaceable(output, format, label)  # again: what is there may have changed while we worked
            _put_in_place(written, output, Path(tmp))
    except OSError as exc:
        raise CnnlabError(f"{label}: cannot be written ({exc.strerror or exc}).") from None
    # listed in the run's report; an export written elsewhere (-o) leaves the run directory as it was
    if target.is_dir() and output.resolve().is_relative_to(target.resolve()):
        update_json(target / EXPORTS_RECORD, **{format: {"path": str(output), "max_abs_diff": diff,
                                                         "samples": len(sample)}})
    return Exported(path=output, format=format, max_abs_diff=diff, samples=len(sample),
                    input=_input_description(output, format))


# What --force may replace: what cnnlab can show it wrote. A TFLite file carries the format's
# identifier; cnnlab's ONNX and SavedModel exports carry a mark (ONNX metadata_props, a file in the
# SavedModel's assets.extra/, where TensorFlow Serving expects extra files) with the model's metadata.
MARK_KEY = "cnnlab"
SAVED_MODEL_MARK = "assets.extra/cnnlab.json"
_SAVED_MODEL_ENTRIES = {"saved_model.pb", "fingerprint.pb", "variables", "assets", "assets.extra"}


def replaceable(path: Path, format: str, label: str) -> bool:
    """Whether `path` holds an earlier export (True) or nothing (False); anything else is refused.

    Refused, `--force` or not: a symbolic link, a device, pipe or socket, a folder where a
    file goes (or a file where a SavedModel folder goes), and a file or folder that is not
    one of cnnlab's exports of `format` (a user's notes, photos, another program's model).
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    except NotADirectoryError:  # a path under a regular file
        return False  # the folder check before writing names the file
    except OSError as exc:
        raise CnnlabError(f"{label}: cannot be read ({exc.strerror}).") from None
    import stat

    if stat.S_ISLNK(mode):
        raise CnnlabError(f"{label}: is a symbolic link; cnnlab replaces only an export it wrote, "
                          "not what a link points to; choose another -o.")
    if format == "saved_model":
        if not stat.S_ISDIR(mode):
            raise CnnlabError(f"{label}: is not a folder; a saved_model export is a folder, so cnnlab will not "
                              "replace this; choose another -o.")
        foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in _SAVED_MODEL_ENTRIES)
        if not (path / SAVED_MODEL_MARK).is_file() or foreign:
            what = f"holds {', '.join(foreign[:3])}" if foreign else "is not a SavedModel cnnlab exported"
            raise CnnlabError(f"{label}: is a folder that {what}; cnnlab replaces only its own exports, even "
                              "with --force; choose another -o.")
        return True
    if stat.S_ISDIR(mode):
        raise CnnlabError(f"{label}: is a folder; a {format} export is a file, so give a file name, e.g. "
                          f"-o {path / _DEFAULT_NAMES[format]}.")
    if not stat.S_ISREG(mode):
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a named pipe" if stat.S_ISFIFO(mode) else "a socket")
        raise CnnlabError(f"{label}: is {kind}, not a file; cnnlab will not replace it, even with --force; "
                          "choose another -o.")
    if not _is_own_file(path, format):
        raise CnnlabError(f"{label}: is a file that is not a {format} model cnnlab exported; cnnlab replaces "
                          "only its own exports, even with --force; choose another -o.")
    return True


def _is_own_file(path: Path, format: str) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    if format == "tflite":
        return head[4:8] == b"TFL3"  # the flatbuffer's file identifier
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and others: not an ONNX model
        return False
    return any(prop.key == MARK_KEY for prop in model.metadata_props)


def export_metadata(loaded) -> dict[str, str]:
    """What a program needs to feed an exported model as cnnlab did: class names, scale, preprocessing."""
    from importlib.metadata import version

    info = loaded.info
    meta = {MARK_KEY: version("cnnlab"), "class_names": json.dumps(list(loaded.class_names)),
            "input_scale": f"{loaded.scale:g}", "input_shape": json.dumps([None, *loaded.input_shape])}
    if info.spec is not None:
        meta.update(image_size=json.dumps([info.spec.height, info.spec.width]), color=info.spec.color,
                    preprocess=info.preprocess,
                    preprocessing=f"convert to {info.spec.color}, resize to {info.spec.height}x{info.spec.width} "
                                  f"({info.spec.interpolation}), divide pixels by {loaded.scale:g}"
                                  + ("" if info.preprocess == "none" else
                                     f"; a user's picture first gets cnnlab's {info.preprocess} steps"))
    return meta


def _mark(written: Path, format: str, meta: dict[str, str]) -> None:
    """Put the metadata (and so cnnlab's mark) into an export: ONNX metadata_props, a SavedModel's assets.extra/."""
    if format == "onnx":
        import onnx

        model = onnx.load(str(written))
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(written))
    elif format == "saved_model":
        (written / SAVED_MODEL_MARK).parent.mkdir(exist_ok=True)
        (written / SAVED_MODEL_MARK).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _put_in_place(written: Path, output: Path, scratch: Path) -> None:
    """Move an export to `output`, onto an earlier one: a file in one rename; a folder moved aside first
    (into `scratch`, deleted with it)."""
    if output.is_dir():
        os.rename(output, scratch / "replaced")
        os.rename(written, output)
    else:
        os.replace(written, output)


def _input_description(path: Path, format: str) -> str:
    """The exported model's input as its runtime names it: "input 'x' float32 [batch, 28, 28, 1]"."""
    if format == "onnx":
        import onnxruntime

        first = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
        name, shape = first.name, first.shape
        dtype = {"float": "float32", "double": "float64"}.get(first.type[7:-1], first.type[7:-1])  # "tensor(float)"
    elif format == "tflite":
        details = LiteModel(path).input_details
        name, shape, dtype = details["name"], details["shape"].tolist(), details["dtype"].__name__
    else:
        return ""
    dims = ", ".join("batch" if i == 0 or not isinstance(d, int) else str(d) for i, d in enumerate(shape))
    return f"input {name!r} {dtype} [{dims}]"


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
