"""The run directory: a small file format anyone can read without cnnlab.

    runs/<name>-<YYYYmmdd-HHMMSS>/
      config.yaml        the resolved config (every default filled in)
      run.json           status, times, epochs done, where it started from (init_from),
                         the training process (pid, host) and the error of a failed run
      environment.json   Python, TensorFlow, Keras versions; the device trained on; `distribute`:
                         the tf.distribute strategy, replicas, workers, global batch (docs/SCALING.md)
      data.json          the data: classes (names), image size and colour, scale, sample counts
                         (also per class and split: class_counts),
                         how predict prepares a picture, the test images of a user's data set,
                         `warnings` (uneven classes, the same image in two classes or in train and
                         test), `class_weight` (the weights train.class_weight resolved to, by class)
      summary.txt        Keras' layer table with output shapes and parameter counts
      best.keras         the best checkpoint (by train.checkpoint.monitor)
      history.csv/.json  one row per epoch: loss, metrics, val_*, learning rate, seconds
      loss.png, accuracy.png   train vs validation curves
      metrics.json       test loss and accuracy of best.keras, best epoch, timing; `tflite_from_sha256`:
                         the best.keras that model.tflite was converted from (predict's fast path)
      model.tflite       best.keras for LiteRT (predict and serve without TensorFlow)
      report.html        one self-contained page for people: results, curves, mistakes, data, config,
                         environment, exports (cnnlab.report; `cnnlab report RUN` draws it again)
      export/exports.json  each `cnnlab export` format's path and measured difference from Keras
      resume/state.keras model + optimizer after the last finished epoch (for --resume)

run.json's status is one of
      running       a process is training it (or was killed: see pid and host)
      completed     all epochs (or early stopping) done, best.keras scored: metrics.json
      interrupted   Ctrl-C, SIGTERM or a full disk; `cnnlab train --resume RUN` continues
                    it when resume/state.keras exists (at least one epoch finished)
      diverged      the loss became NaN, infinite or exploded (`diverged_at`: epoch, batch); stopped,
                    best.keras of the epochs before (if any) scored; not resumable
      failed        an error stopped it (`error`); resumable if resume/state.keras exists

`cnnlab baseline` writes a smaller run directory: config.yaml, run.json (with
`"kind": "baseline"` and the `method`) and metrics.json; no model file, no history.

Every file is written atomically (a temporary file in the same folder, then a rename),
so a kill at any moment leaves the previous version whole. A run directory is never
overwritten: a new run always gets a new folder. On a full disk a write raises
`DiskFull` (naming the file) and the previous version stays; only run.json, which is
tiny, is then rewritten in place so the run can still be marked interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from cnnlab.errors import CnnlabError

_UMASK = os.umask(0o022)
os.umask(_UMASK)

CONFIG = "config.yaml"
RUN = "run.json"
ENVIRONMENT = "environment.json"
SUMMARY = "summary.txt"
BEST = "best.keras"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
METRICS = "metrics.json"
DATA = "data.json"
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")  # the Keras model files cnnlab loads (best.keras is one)
RESUME_STATE = "resume/state.keras"


class DiskFull(CnnlabError):
    """No space left on the device while writing `path`; its previous version is intact.

    Args:
        path: the file that could not be written.
        free: bytes free on that file system after the failed write was cleaned up.
        needed: about how many bytes the write needs (its previous version's size, if it had one).
    """

    def __init__(self, path: Path, free: int | None, needed: int | None = None):
        self.path, self.free, self.needed = path, free, needed
        space = f"{_size(free)} free there" if free is not None else "the space left is unknown"
        if needed:
            space += f", about {_size(needed)} needed"
        super().__init__(f"no space left on device: {path} could not be written ({space})")


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.0f} kB"


def create_run_dir(runs_dir: str | Path, name: str, now: datetime | None = None) -> Path:
    """Make a new, empty `<runs_dir>/<name>-<timestamp>` folder (never an existing one)."""
    runs_dir = Path(runs_dir)
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnlabError(f"{runs_dir}: cannot create the runs directory ({exc.strerror}).") from None
    for attempt in range(1, 1000):
        candidate = runs_dir / (f"{name}-{stamp}" if attempt == 1 else f"{name}-{stamp}-{attempt}")
        if candidate.resolve().parent != runs_dir.resolve():
            raise CnnlabError(f"name: {name!r} would put the run outside {runs_dir}.")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise CnnlabError(f"{candidate}: cannot create the run directory ({exc.strerror}).") from None
    raise CnnlabError(f"{runs_dir}: too many runs named {name!r} in the same second.")


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path`; renamed onto `path` when the block succeeds.

    `suffix` keeps the extension writers insist on (Keras wants `.keras` or `.h5`).
    A full disk raises `DiskFull` for `path` (not for the temporary name).
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files are ordinary files
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        _unlink(tmp)  # first: the free space reported is what the user really has
        raise DiskFull(path, free_bytes(path.parent), path.stat().st_size if path.is_file() else None) from exc
    finally:
        _unlink(tmp)


def _unlink(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def free_bytes(folder: Path) -> int | None:
    """Bytes free for us on the file system of `folder` (None when it cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def remove_temporaries(run_dir: Path) -> None:
    """Delete what a write cut short by a kill left behind (`atomic_path`'s dot-files)."""
    for leftover in run_dir.rglob(".*"):
        if leftover.is_file():
            leftover.unlink()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


class Damaged(CnnlabError, ValueError):
    """A file of a run directory that is not what cnnlab wrote: truncated, emptied, not JSON, wrong types.

    Also a ValueError, as json's own error is, for readers that treat a bad file as absent.
    """

    def __init__(self, path: Path, what: str):
        self.path = path
        super().__init__(f"{path}: is damaged ({what}), not the file cnnlab wrote; restore it from a copy "
                         "of the run, or train the config again.")


def read_json(path: Path) -> dict:
    """A run file's JSON object; `Damaged` when it is anything else (a missing file stays FileNotFoundError)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError:
        raise Damaged(path, "not text") from None
    except OSError as exc:
        raise Damaged(path, f"cannot be read: {exc.strerror}") from None
    if not text.strip():
        raise Damaged(path, "empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Damaged(path, f"not valid JSON: {exc.msg.lower()}, line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise Damaged(path, f"a JSON {type(data).__name__}, not an object")
    return data


def read_history(path: Path) -> list[dict]:
    """The epochs of a history.json (none when there is no file); `Damaged` when they are not a list of rows."""
    if not path.exists():
        return []
    epochs = read_json(path).get("epochs")
    if not isinstance(epochs, list) or not all(isinstance(row, dict) for row in epochs):
        raise Damaged(path, f"epochs is {json.dumps(epochs)[:60]}, not a list of rows")
    return epochs


def update_json(path: Path, **changes) -> dict:
    """Change some keys of a JSON file; on a full disk a small existing file is rewritten in place."""
    data = read_json(path) if path.exists() else {}
    data.update(changes)
    try:
        write_json(path, data)
    except DiskFull:
        if not path.is_file():
            raise
        _rewrite_in_place(path, json.dumps(data, indent=2, default=_jsonable) + "\n")
    return data


def _rewrite_in_place(path: Path, text: str) -> None:
    """Overwrite a file's own blocks (no new ones needed for a small file): the last resort on a full disk.

    Not atomic: a kill in the middle of this write could tear the file. It is only used when
    the atomic write already failed for want of space.
    """
    encoded = text.encode("utf-8")
    with path.open("r+b") as handle:
        handle.write(encoded)
        handle.truncate(len(encoded))
        handle.flush()
        os.fsync(handle.fileno())


def installed_version(package: str) -> str | None:
    """The installed version of `package` (from its metadata, nothing imported); None when it is not installed."""
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def this_process() -> dict:
    """What run.json records about the training process, so others can tell whether it still runs."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def process_alive(info: dict) -> bool:
    """Whether the process run.json names (pid, host) is alive on this machine (False when unknown)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process of that number: alive
        return True
    return True


def data_source(run_dir: Path) -> str | None:
    """The absolute folder or CSV file a run's data.json says it trained on (None: a built-in set, or no record)."""
    record_path = run_dir / DATA
    if not record_path.exists():
        return None
    source = read_json(record_path).get("source")
    return source if isinstance(source, str) else None


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes (read a megabyte at a time)."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_file(source: Path, path: Path) -> None:
    """Copy `source` onto `path` atomically (the suffix kept, as Keras checks it on loading)."""
    with atomic_path(path, suffix=path.suffix) as tmp:
        shutil.copyfile(source, tmp)


def save_model(model, path: Path) -> None:
    """Save a Keras model atomically; `.h5`/`.hdf5` get Keras' legacy HDF5 format."""
    suffix = ".h5" if path.suffix in (".h5", ".hdf5") else ".keras"
    compile_config = getattr(getattr(model, "_compile_config", None), "config", None)
    optimizer = compile_config.get("optimizer") if isinstance(compile_config, dict) else None
    with atomic_path(path, suffix=suffix) as tmp:
        model.save(tmp)
    if optimizer is not None and "optimizer" not in compile_config:
        # Keras' HDF5 writer pops the optimizer from the model's own compile config (keras
        # legacy saving_utils.model_metadata); without it every later .keras file would
        # reload with a default RMSprop and `--resume` would lose the optimizer.
        compile_config["optimizer"] = optimizer


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


@dataclass
class Run:
    """A run directory opened for reading."""

    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / BEST

    def info(self) -> dict:
        return read_json(self.path / RUN)

    @property
    def is_baseline(self) -> bool:
        """A `cnnlab baseline` run: a classical model's scores in metrics.json, no network, no history."""
        return self.info().get("kind") == "baseline"

    def baseline_summary(self) -> str:
        """What a baseline run is and what it scored, for messages: 'a linear SVM ... test accuracy 0.9180'."""
        info = self.info()
        method = info.get("method", "?")
        what = {"svm": "a linear SVM", "kmeans": "k-means clustering"}.get(method, f"a {method} baseline")
        metrics_path = self.path / METRICS
        if not metrics_path.exists():
            return f"{what} (`cnnlab baseline --method {method}`) that has not finished ({METRICS} is missing)"
        metrics = read_json(metrics_path)
        scores = " and ".join(f"{label} {metrics[key]:.4f}" for key, label in
                              (("test_accuracy", "test accuracy"), ("val_accuracy", "validation accuracy"))
                              if isinstance(metrics.get(key), (int, float)))
        return f"{what} (`cnnlab baseline --method {method}`) with {scores or 'no scores'} (in {metrics_path})"


def refuse_config(path: Path) -> None:
    """A config file given where a trained run or model is wanted: say how to train it."""
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        raise CnnlabError(
            f"{path}: is a config file, not a trained model; train it first (cnnlab train {shlex.quote(str(path))})"
            ", then give the run directory it writes (runs/<name>/)."
        )


def open_run(path: str | Path) -> Run:
    """Open an existing run directory; a clear error when `path` is not one."""
    path = Path(path)
    if not path.exists():
        raise CnnlabError(f"{path}: no such run directory or file.")
    refuse_config(path)
    if not path.is_dir() or not (path / CONFIG).exists() or not (path / RUN).exists():
        raise CnnlabError(
            f"{path}: is not a cnnlab run directory (it needs {CONFIG} and {RUN}, as "
            "`cnnlab train` writes them)."
        )
    return Run(path)
