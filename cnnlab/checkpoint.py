"""Load a model to evaluate or predict with: a cnnlab run directory or any Keras model file.

TARGET is one of
- a run directory (`runs/cnn-20261123-012542`): its `best.keras`, and the dataset and
  scaling of its `config.yaml`;
- a `.keras` file, or a `.h5`/`.hdf5` file written by Keras 3 or by Keras 2 (legacy
  full-model HDF5): the dataset and scaling are given by the user (MNIST, x / 255 by
  default), or come from the run directory the file sits in.

A `.keras` file is a zip archive: before any entry is read (by cnnlab or by Keras),
`check_archive` compares the sizes its directory declares with sane limits, so a small
file that expands to gigabytes (a decompression bomb) is refused without costing memory.

Loading never runs code from the file. Before Keras sees it, the model's config is
read as plain JSON (the `config.json` of a `.keras` zip, the `model_config` attribute
of an HDF5 file) and a `Lambda` layer, whose Python bytecode would run while the model
is built, is refused unless the user passes `unsafe=True`; Keras itself then loads in
safe mode as a second guard. A Keras 2 `.h5` whose first layer carries
`batch_input_shape` (which Keras 3 turns into a 5-D input, "Kernel shape must have the
same length as input") is loaded from a patched copy with that shape moved into an
`InputLayer`.

The model's own input shape decides how samples are shaped: (28, 28), (28, 28, 1) or
flat (784,). `LoadedModel` is everything evaluate and predict need; `load_checkpoint`
is the one function that makes one (a TensorFlow-free loader could replace it).

Example:
    loaded = load_checkpoint("runs/cnn-20261123-012542")
    probs = loaded.predict(loaded.prepare(raw_images))  # raw_images: (N, 28, 28) uint8
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, get_args

import numpy as np

from cnnlab import rundir
from cnnlab.data import DATASETS, DatasetInfo, describe, info_from_record
from cnnlab.errors import CnnlabError
from cnnlab.litert import TFLITE, LiteModel
from cnnlab.model import available_memory, format_bytes

if TYPE_CHECKING:
    from cnnlab.config import Loss

DEFAULT_DATASET = "mnist"
DEFAULT_SCALE = 255.0
_LOSS_CLASSES = {  # a loss object in a file's compile config, by its Keras class
    "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
    "CategoricalCrossentropy": "categorical_crossentropy", "BinaryCrossentropy": "binary_crossentropy",
    "MeanSquaredError": "mse", "MeanAbsoluteError": "mae",
}


@dataclass
class LoadedModel:
    """A Keras model with what it takes to feed it: its data set, scaling and input shape.

    Args:
        model: the Keras model (uncompiled).
        path: the model file.
        kind: what the file is, for people ("cnnlab run", ".keras file", ".h5 file (Keras 2.3.1)").
        dataset: the data set the model reads (`mnist`, `fashion_mnist`, `folder`, ...).
        scale: pixels are divided by this, as in training.
        input_shape: one sample as the model takes it, e.g. (28, 28, 1) or (784,).
        loss: the loss the model was trained with (name, label smoothing, from_logits), where
            the file or run says it.
        run_dir: the run directory, for a cnnlab run (results go there).
        data_settings: the data section of the run's config (a bare file: the data set's defaults).
        test_files: a run on a user's data set: the test images it was scored on.
        info: the data set: class names, image size and colour, how predict prepares a picture.
    """

    model: Any
    path: Path
    kind: str
    dataset: str
    scale: float
    input_shape: tuple[int, ...]
    loss: "Loss | None" = None
    run_dir: Path | None = None
    data_settings: Any = None
    test_files: list[str] | None = None
    info: DatasetInfo | None = None

    def __post_init__(self):
        if self.info is None:
            self.info = DATASETS[self.dataset]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """Raw samples (e.g. (N, 28, 28, 1) grey levels 0..255) as the model takes them: scaled, shaped."""
        x = np.asarray(raw, dtype=np.float32)
        if self.info.is_image:
            x = x / np.float32(self.scale)
        return x.reshape((len(x), *self.input_shape))

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities, (N, classes); a model that outputs logits gets a softmax.

        A single unit trained on a logit (`from_logits: true`) gets a sigmoid.
        """
        if isinstance(self.model, LiteModel):
            probs = self.model.predict(x)
        else:
            import keras

            if len(x) <= batch_size:  # one eager call: no graph to trace for a few images
                probs = keras.ops.convert_to_numpy(self.model(x, training=False))
            else:  # Keras' compiled loop: about twice as fast on a whole test set
                probs = self.model.predict(x, batch_size=batch_size, verbose=0)
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape[-1] == 1 and self.loss is not None and self.loss.from_logits:
            return 1.0 / (1.0 + np.exp(-probs))
        if probs.shape[-1] > 1 and not _are_probabilities(probs):
            shifted = np.exp(probs - probs.max(axis=-1, keepdims=True))
            probs = shifted / shifted.sum(axis=-1, keepdims=True)
        return probs


def _are_probabilities(values: np.ndarray) -> bool:
    return bool(values.min(initial=0) >= 0 and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3))


def load_checkpoint(target: str | Path, dataset: str | None = None, scale: float | None = None,
                    unsafe: bool = False, fast: bool = False, threads: int | None = None) -> LoadedModel:
    """Load TARGET (a run directory or a model file) ready to evaluate or predict.

    Args:
        target: a cnnlab run directory, or a `.keras` / `.h5` / `.hdf5` model file.
        dataset: the data set of a bare model file (default: mnist, or the config of
            the run directory the file is in). A run directory keeps its own.
        scale: pixels are divided by this (default: 255, or the run's `data.scale`).
        unsafe: allow Lambda layers, whose Python code runs while loading. Only for
            files from a source you trust.
        fast: for a run directory, use the run's `model.tflite` (checked against Keras
            when training wrote it) when it was made from this `best.keras` (see
            `_lite_is_current`): no TensorFlow import, a cold prediction in a fraction of a second.
        threads: the threads of that TFLite model's interpreter (default: one per core). A
            server's workers, each predicting one image beside the others, want 1: a second
            thread only spins.
    """
    target = Path(target)
    if not target.exists():
        raise CnnlabError(f"{target}: no such run directory or model file.")
    run_dir, settings, test_files, info = None, None, None, None
    if target.is_dir():
        run = rundir.open_run(target)
        if run.is_baseline:
            raise CnnlabError(
                f"{target}: is a baseline run, {run.baseline_summary()}; it holds no network to evaluate or "
                f"predict with, but `cnnlab compare RUN... {target}` draws its accuracy beside trained runs' curves."
            )
        run_dir, path = run.path, run.checkpoint
        if not path.exists():
            raise CnnlabError(f"{target}: the run has no {rundir.BEST}: {why_no_checkpoint(run)}")
        cfg = _run_config(run_dir)
        _refuse_other_data(cfg, run_dir, dataset, scale)
        info, test_files = run_data(run_dir, cfg)
        dataset, scale, settings = cfg.data.dataset, cfg.data.scale, cfg.data
        kind, loss = "cnnlab run", cfg.train.loss
        lite = run_dir / TFLITE
        if fast and lite.exists() and _lite_is_current(run_dir, path, lite):
            try:
                model = LiteModel(lite, threads)
            except ValueError as exc:  # LiteRT's word for a file that is no flatbuffer, or an empty one
                raise CnnlabError(f"{lite}: LiteRT cannot load it ({_first_line(exc)}); the file is damaged: "
                                  f"delete it, and predict and serve use {rundir.BEST} through Keras.") from None
            return LoadedModel(
                model=model, path=lite, kind="cnnlab run (TFLite copy of best.keras)", dataset=dataset,
                scale=float(scale), input_shape=_fit_input(model, lite, info), loss=loss, run_dir=run_dir,
                data_settings=settings, test_files=test_files, info=info,
            )
    else:
        path = target
        rundir.refuse_config(path)
        if path.suffix.lower() not in rundir.MODEL_SUFFIXES:
            raise CnnlabError(
                f"{path}: is not a model file cnnlab can load; give a run directory or a "
                f"{', '.join(rundir.MODEL_SUFFIXES)} file."
            )
        kind, loss = f"{path.suffix.lower()} file", None
        owner = _owning_run(path)
        if owner is not None:  # e.g. runs/<run>/dm_03_0.98.keras: the run knows its data
            cfg = _run_config(owner)
            if dataset in (None, cfg.data.dataset):  # scored on the run's test images, comparable with best.keras
                info, test_files = run_data(owner, cfg)
                dataset, settings = cfg.data.dataset, cfg.data
            scale = scale if scale is not None else cfg.data.scale
    dataset = dataset or DEFAULT_DATASET
    scale = float(scale if scale is not None else DEFAULT_SCALE)
    if info is None:
        if dataset not in DATASETS:
            raise CnnlabError(f"dataset {dataset!r} is unknown; use one of {', '.join(DATASETS)}.")
        info = DATASETS[dataset]
    if settings is None:
        from cnnlab.config import DataSection

        settings = DataSection(dataset=dataset, scale=scale)
    if not (scale > 0 and np.isfinite(scale)):
        raise CnnlabError(f"--scale {scale:g}: must be a positive, finite number (pixels are divided by it), e.g. 255.")

    config, saved_by, file_loss = _read_model_config(path)
    if saved_by:
        kind += f" (Keras {saved_by})"
    _refuse_lambdas(path, config, unsafe)
    model = _load_keras(path, config, unsafe)
    input_shape = _fit_input(model, path, info)
    _check_output(model, path, info)
    return LoadedModel(
        model=model, path=path, kind=kind, dataset=dataset, scale=scale, input_shape=input_shape,
        loss=loss or file_loss, run_dir=run_dir, data_settings=settings, test_files=test_files, info=info,
    )


def _lite_is_current(run_dir: Path, checkpoint: Path, lite: Path) -> bool:
    """Whether `lite` was converted from `checkpoint`: the checkpoint's SHA-256 that training recorded
    in metrics.json (a copied run keeps it, as it keeps no file times). A run from before that record:
    the TFLite file is not older than the checkpoint."""
    try:
        metrics = rundir.read_json(run_dir / rundir.METRICS)
        recorded = metrics.get("tflite_from_sha256")
    except (OSError, ValueError):  # no metrics, or damaged (rundir.Damaged): the checkpoint through Keras
        return False
    if recorded is None:
        return metrics.get("tflite") == TFLITE and lite.stat().st_mtime >= checkpoint.stat().st_mtime
    return recorded == rundir.sha256(checkpoint)


def load_model_file(path: Path, unsafe: bool = False, unsafe_hint: str = ""):
    """The Keras model in a .keras/.h5/.hdf5 file, loaded as `load_checkpoint` loads it (uncompiled).

    Its config is read as JSON first and a Lambda layer refused (unless `unsafe`, with
    `unsafe_hint` telling how to allow it), then Keras loads it in safe mode.
    """
    config, _, _ = _read_model_config(path)
    _refuse_lambdas(path, config, unsafe, unsafe_hint)
    return _load_keras(path, config, unsafe)


def _refuse_lambdas(path: Path, config: dict, unsafe: bool,
                    hint: str = " Pass --unsafe only if you trust where the file comes from.") -> None:
    lambdas = _lambda_layers(config)
    if lambdas and not unsafe:
        raise CnnlabError(
            f"{path}: the model has a Lambda layer ({', '.join(lambdas)}), whose Python code would run "
            f"on loading; cnnlab refuses it.{hint}"
        )


def why_no_checkpoint(run: rundir.Run) -> str:
    """Why a run has no best.keras, and what can be done, from what its run.json says is true."""
    info = run.info()
    status = info.get("status")
    again = f"`cnnlab train {run.path / rundir.CONFIG}` trains its config again"
    if status == "running" and rundir.process_alive(info):
        return (f"it is still training its first epoch (process {info['pid']}); "
                "evaluate it once an epoch has finished.")
    if status == "diverged":
        at = info.get("diverged_at") or {}
        return (f"its loss diverged at epoch {at.get('epoch', '?')} before any checkpoint was saved; {again}, "
                "with a smaller learning rate (--set train.optimizer.learning_rate=...).")
    if status == "completed":
        return f"the run completed but the file is gone (deleted?); {again}."
    if (run.path / rundir.RESUME_STATE).exists():
        return f"it stopped before a checkpoint was saved; continue it with `cnnlab train --resume {run.path}`."
    if status == "failed":
        error = info.get("error", "error unknown")
        return f"it failed before its first epoch finished ({error}); fix that, then {again}."
    if status == "running":
        how = f"run.json says running, but its process {info.get('pid', '')} is gone: killed?".replace("  ", " ")
    else:
        how = status or "status unknown"
    return (f"it stopped before its first epoch finished ({how}), so nothing was saved and "
            f"there is nothing to resume; {again} (this folder can then be deleted).")


def _run_config(run_dir: Path):
    from cnnlab.config import read_run_config, validate_config

    path = run_dir / rundir.CONFIG
    return validate_config(read_run_config(path, rundir.data_source(run_dir)), path)



def run_data(run_dir: Path, cfg) -> tuple[DatasetInfo, list[str] | None]:
    """A run's data set and its recorded test images, from its data.json.

    A run written before data.json existed trained on a built-in set: its config says all.
    """
    record_path = run_dir / rundir.DATA
    if record_path.exists():
        record = rundir.read_json(record_path)
        _check_record(record, record_path)
        try:
            return info_from_record(record), record.get("test_files")
        except (KeyError, TypeError, ValueError) as exc:  # what the checks above do not know of
            raise rundir.Damaged(record_path, f"{type(exc).__name__}: {exc}") from None
    if cfg.data.dataset not in DATASETS:
        raise CnnlabError(f"{run_dir}: the run has no {rundir.DATA}; it cannot tell its classes and images.")
    return describe(cfg.data, str(run_dir / rundir.CONFIG)), None


_RECORD_TYPES = {  # data.json's keys that predict and evaluate read: (what each must be, its test)
    "dataset": ("a data set's name", lambda v: isinstance(v, str)),
    "classes": ("a list of class names", lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v) and v),
    "sample_shape": ("a list of sizes", lambda v: isinstance(v, list) and all(type(d) is int and d > 0 for d in v)),
    "samples": ("train and test counts", lambda v: isinstance(v, dict) and all(type(v.get(k)) is int
                                                                              for k in ("train", "test"))),
    "test_files": ("a list of file names", lambda v: v is None or isinstance(v, list)
                   and all(isinstance(f, str) for f in v)),
    "image_size": ("a [height, width] pair", lambda v: v is None or isinstance(v, list) and len(v) == 2
                   and all(type(d) is int and d > 0 for d in v)),
}


def _check_record(record: dict, path: Path) -> None:
    for key, (what, valid) in _RECORD_TYPES.items():
        if key not in record and key in ("dataset", "classes", "sample_shape", "samples"):
            raise rundir.Damaged(path, f"no {key!r}")
        if key in record and not valid(record[key]):
            raise rundir.Damaged(path, f"{key} is {json.dumps(record[key])[:60]}, not {what}")


def _refuse_other_data(cfg, run_dir: Path, dataset: str | None, scale: float | None) -> None:
    """A run is evaluated on the data it was trained for; a differing --dataset/--scale is a mistake."""
    if dataset not in (None, cfg.data.dataset) or (scale is not None and float(scale) != cfg.data.scale):
        raise CnnlabError(
            f"{run_dir}: the run was trained on {cfg.data.dataset} scaled by 1/{cfg.data.scale:g} "
            f"({rundir.CONFIG}); --dataset and --scale are for bare model files, leave them out for a run."
        )


def _owning_run(path: Path) -> Path | None:
    """The run directory a model file sits in, if any (its config gives the data)."""
    folder = path.resolve().parent
    if (folder / rundir.CONFIG).is_file() and (folder / rundir.RUN).is_file():
        return folder
    return None


def _read_model_config(path: Path) -> tuple[dict, str | None, str | None]:
    """The model's config as plain JSON, the Keras version that saved it, its training loss.

    Reads the file without Keras, so nothing in it can run; a file that is not a
    complete model is a clear error here.
    """
    if path.is_dir():
        raise CnnlabError(f"{path}: is a folder; a model file ends in {', '.join(rundir.MODEL_SUFFIXES)}.")
    if path.suffix.lower() == ".keras":
        check_archive(path)  # before any entry is read, by us or by Keras
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
                metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in archive.namelist() else {}
        except (zipfile.BadZipFile, EOFError):
            raise CnnlabError(f"{path}: is not a complete .keras file (not a zip archive: truncated or corrupt).") from None
        except KeyError:
            raise CnnlabError(f"{path}: is not a Keras model file (the .keras archive has no config.json).") from None
        except (OSError, ValueError) as exc:
            raise CnnlabError(f"{path}: cannot read the .keras file ({exc}).") from None
        compiled = (config.get("compile_config") if isinstance(config, dict) else None) or {}
        return _as_model_config(config, path), metadata.get("keras_version"), _file_loss(compiled.get("loss"))
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
    except OSError:
        raise CnnlabError(f"{path}: is not a complete HDF5 file (truncated, corrupt or another format).") from None
    raw = attrs.get("model_config")
    if raw is None:
        raise CnnlabError(
            f"{path}: holds no model architecture (only weights?); cnnlab needs a whole model, "
            "as `model.save(...)` writes it."
        )
    try:
        config = json.loads(_text(raw))
        training = json.loads(_text(attrs["training_config"])) if "training_config" in attrs else {}
    except (ValueError, UnicodeDecodeError):
        raise CnnlabError(f"{path}: the model_config in the file is not valid JSON (corrupt file).") from None
    version = attrs.get("keras_version")
    return _as_model_config(config, path), _text(version) if version is not None else None, _file_loss(training.get("loss"))


# What a real .keras archive holds: config.json and metadata.json (a few KB), model.weights.h5,
# and maybe assets. Keras stores its entries uncompressed; float weights deflate by about 1.1x,
# JSON by 5-20x. Deflate itself cannot exceed about 1032x: that is what a bomb uses.
ARCHIVE_JSON_LIMITS = {"config.json": 8 * 2**20, "metadata.json": 2**20}
ARCHIVE_MAX_ENTRIES = 1000
ARCHIVE_MAX_RATIO = 100  # uncompressed / compressed, for entries above ARCHIVE_RATIO_FLOOR
ARCHIVE_RATIO_FLOOR = 2**20
_END_OF_CENTRAL_DIRECTORY = b"PK\x05\x06"


def check_archive(file: str | Path | IO[bytes], name: str | None = None, available: int | None = None) -> None:
    """Refuse a .keras (zip) archive whose declared sizes could exhaust memory, before reading an entry.

    Only the archive's directory is read: each entry's declared size (which also caps what
    reading it can produce), its compression ratio, the entry count and the total, against
    the limits above and half of this machine's free memory (Keras holds the weights file
    and the model's variables at once). For a model file the user gives, and for uploads.

    Args:
        file: a path, or a seekable binary file object (an upload).
        name: how to name the file in messages (default: the path).
        available: bytes of free memory (default: measured, see `cnnlab.model.available_memory`).

    Example:
        check_archive("model.keras")
        check_archive(io.BytesIO(upload), name="upload.keras")
    """
    label = name or str(file)
    try:
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(open(file, "rb")) if isinstance(file, (str, Path)) else file
            stack.callback(handle.seek, 0)  # an upload is read again from its start
            _check_directory_size(handle, label)
            entries = stack.enter_context(zipfile.ZipFile(handle)).infolist()
    except (zipfile.BadZipFile, EOFError):
        raise CnnlabError(f"{label}: is not a complete .keras file (not a zip archive: truncated or corrupt).") from None
    except OSError as exc:
        raise CnnlabError(f"{label}: cannot read the .keras file ({exc.strerror or exc}).") from None
    refuse = f"{label}: cnnlab refuses this .keras file:"
    if len(entries) > ARCHIVE_MAX_ENTRIES:
        raise CnnlabError(f"{refuse} it has {len(entries):,} entries; a Keras model has a few (at most "
                          f"{ARCHIVE_MAX_ENTRIES:,} are accepted).")
    for entry in entries:
        declared, stored = entry.file_size, entry.compress_size
        limit = ARCHIVE_JSON_LIMITS.get(entry.filename)
        if limit is not None and declared > limit:
            raise CnnlabError(
                f"{refuse} its {entry.filename} declares {format_bytes(declared)} (stored in "
                f"{format_bytes(stored)}); a model's {entry.filename} is a few KB (at most {format_bytes(limit)} "
                "is accepted)."
            )
        if declared > ARCHIVE_RATIO_FLOOR and declared > ARCHIVE_MAX_RATIO * max(stored, 1):
            raise CnnlabError(
                f"{refuse} its entry {entry.filename} declares {format_bytes(declared)} but stores "
                f"{format_bytes(stored)} ({declared / max(stored, 1):,.0f}x compressed; model weights "
                f"never compress more than {ARCHIVE_MAX_RATIO}x): a decompression bomb."
            )
    total = sum(entry.file_size for entry in entries)
    available = available_memory() if available is None else available
    if available is not None and total > available // 2:
        biggest = max(entries, key=lambda entry: entry.file_size)
        raise CnnlabError(
            f"{refuse} its entries expand to {format_bytes(total)} ({biggest.filename}: "
            f"{format_bytes(biggest.file_size)}), more than half of this machine's "
            f"{format_bytes(available)} of free memory, which loading it would need."
        )


def _check_directory_size(handle: IO[bytes], label: str) -> None:
    """The archive's directory, from its last record, before zipfile builds an object per entry."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    tail_size = min(size, 22 + 65535)  # the end record, and a comment of at most 64 KiB
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    handle.seek(0)
    at = tail.rfind(_END_OF_CENTRAL_DIRECTORY)
    if at < 0 or len(tail) - at < 22:
        return  # not a zip: zipfile says so
    entries, directory_bytes = struct.unpack("<HI", tail[at + 10:at + 16])
    if entries != 0xFFFF and entries > ARCHIVE_MAX_ENTRIES:  # 0xFFFF: zip64, counted once parsed
        raise CnnlabError(f"{label}: cnnlab refuses this .keras file: it has {entries:,} entries; a Keras model "
                          f"has a few (at most {ARCHIVE_MAX_ENTRIES:,} are accepted).")
    if directory_bytes != 0xFFFFFFFF and directory_bytes > ARCHIVE_MAX_ENTRIES * 1024:
        raise CnnlabError(f"{label}: cnnlab refuses this .keras file: its directory of entries takes "
                          f"{directory_bytes:,} bytes; a Keras model's takes a few hundred.")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _as_model_config(config, path: Path) -> dict:
    if not isinstance(config, dict) or "class_name" not in config:
        raise CnnlabError(f"{path}: the file's model config is not a Keras model (no class_name).")
    return config


def _file_loss(loss) -> Loss | None:
    """The loss a file's compile config names: a string, or a serialised Keras loss object."""
    from cnnlab.config.schema import Loss, LossName  # pydantic: only where a file names its loss (predict stays light)

    if isinstance(loss, str):
        return Loss(name=loss) if loss in get_args(LossName) else None
    if not isinstance(loss, dict) or loss.get("class_name") not in _LOSS_CLASSES:
        return None
    options = loss.get("config") if isinstance(loss.get("config"), dict) else {}
    name = _LOSS_CLASSES[loss["class_name"]]
    try:
        return Loss(name=name, **{key: options[key] for key in ("label_smoothing", "from_logits") if key in options})
    except ValueError:  # options this cnnlab cannot represent: the loss is then unknown
        return None


def _lambda_layers(config) -> list[str]:
    """Names of the Lambda layers (and Python lambdas) anywhere in a model config."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") in ("Lambda", "__lambda__") or node.get("function_type") == "lambda":
                inner = node.get("config")
                found.append(str(inner.get("name", "lambda")) if isinstance(inner, dict) else "lambda")
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def _load_keras(path: Path, config: dict, unsafe: bool):
    """Keras' own loader (safe mode unless `unsafe`); a Keras 2 Sequential .h5 from a patched copy."""
    from cnnlab.backend import init_backend

    keras, _ = init_backend("auto")
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="cnnlab-load-") as tmp:
        warnings.simplefilter("ignore")  # Keras' advice to the author of the file, not to our user
        source = path
        patched = _input_layer_first(config) if path.suffix.lower() != ".keras" else None
        if patched is not None:
            source = Path(tmp) / f"model{path.suffix.lower()}"
            _write_patched_h5(path, source, patched)
        try:
            return keras.saving.load_model(source, compile=False, safe_mode=not unsafe)
        except Exception as exc:  # any failure inside Keras means this file is not a model it can load
            raise CnnlabError(f"{path}: Keras cannot load this model: {_first_line(exc)}") from None


def _input_layer_first(config: dict) -> dict | None:
    """A Keras 2 Sequential config with its `batch_input_shape` moved into an InputLayer.

    None when the config needs no patch. Keras 2 stored the input shape on the first
    real layer; Keras 3 reads it there as a layer argument and builds a 5-D input.
    """
    if config.get("class_name") != "Sequential":
        return None
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else inner  # Keras <= 2.2: a bare list
    if not isinstance(layers, list) or not layers:
        return None
    first = layers[0]
    first_config = first.get("config", {}) if isinstance(first, dict) else {}
    if first.get("class_name") == "InputLayer" or "batch_input_shape" not in first_config:
        return None
    first_config = dict(first_config)
    shape = first_config.pop("batch_input_shape")
    input_layer = {"class_name": "InputLayer", "config": {
        "batch_input_shape": shape, "dtype": first_config.get("dtype", "float32"),
        "sparse": False, "name": f"{first_config.get('name', 'layer')}_input",
    }}
    layers = [input_layer, {**first, "config": first_config}, *layers[1:]]
    name = inner.get("name", "sequential") if isinstance(inner, dict) else "sequential"
    return {**config, "config": {**(inner if isinstance(inner, dict) else {}), "name": name, "layers": layers}}


def _write_patched_h5(source: Path, target: Path, config: dict) -> None:
    import h5py

    shutil.copyfile(source, target)
    os.chmod(target, 0o600)  # the original may be read-only; the copy is ours
    with h5py.File(target, "r+") as handle:
        handle.attrs["model_config"] = json.dumps(config)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _fit_input(model, path: Path, info: DatasetInfo) -> tuple[int, ...]:
    """One sample's shape as the model takes it; an error when the data cannot fit it."""
    shapes = model.input_shape
    if isinstance(shapes, list) or (shapes and isinstance(shapes[0], (tuple, list))):
        raise CnnlabError(f"{path}: the model has {len(shapes)} inputs; cnnlab feeds models with one input.")
    shape = tuple(shapes[1:])
    size = int(np.prod(info.sample_shape))
    if None in shape:  # e.g. a fully convolutional model: the data's own size
        known = info.sample_shape[: len(shape)] if len(shape) >= 2 else (size,)
        shape = tuple(known[i] if dim is None else dim for i, dim in enumerate(shape))
    if int(np.prod(shape)) != size:
        sample = "x".join(map(str, info.sample_shape))
        about = ("cnnlab's image data sets (mnist, fashion_mnist) are 28x28 greyscale" if not info.own_data
                 else f"the run's images are {sample}")
        raise CnnlabError(
            f"{path}: the model takes inputs of shape {shape} ({int(np.prod(shape))} values), but "
            f"{info.name} samples are {sample} ({size} values): it was trained on other data. {about}."
        )
    return shape


def _check_output(model, path: Path, info: DatasetInfo) -> None:
    shape = model.output_shape
    units = shape[-1] if isinstance(shape, tuple) and len(shape) == 2 else None
    if units != info.num_classes and not (info.num_classes == 2 and units == 1):
        raise CnnlabError(
            f"{path}: the model's output has shape {shape}, but {info.name} has {info.num_classes} classes; "
            f"expected (None, {info.num_classes})."
        )


def make_output_dir(path: str | Path, option: str, where: str | None = None) -> Path:
    """Create the folder results go to; a clear error where it cannot or must not be written.

    `where` begins each message (default: "OPTION PATH"). See `check_output_dir`.
    """
    path = Path(path)
    where = check_output_dir(path, where or f"{option} {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnlabError(f"{where}: cannot create the folder ({exc.strerror}).") from None
    return path


def check_output_dir(path: Path, where: str) -> str:
    """Refuse a folder that cannot or must not be written, without creating anything; returns `where`.

    A folder whose permissions allow no one to write (`r-xr-xr-x`, e.g. a shared,
    read-only data folder, or /proc and /sys) is refused even for root, who could write
    there anyway; so is a path under a regular file.
    """
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise CnnlabError(f"{where}: {existing} is a file, not a folder.")
    if existing.exists() and not existing.stat().st_mode & 0o222:
        raise CnnlabError(f"{where}: {existing} is read-only; choose another folder.")
    return where
