"""The runs under a folder as one table: `cnnlab runs [DIR]`.

Each row comes from a run directory's run.json and metrics.json only (data.json where an
older run.json does not name its data set): no TensorFlow, no model file opened, so
hundreds of runs list in a fraction of a second. A tuning study's folder is looked into,
its trials listed as `<study>/<trial>`. A folder that is damaged or only partly written
(no run.json, a JSON file cut short) is listed with what is wrong in its status, never
skipped and never a traceback.

Example:
    rows = list_runs("runs")            # newest first
    print(format_table(rows))
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from cnnlab import rundir
from cnnlab.errors import CnnlabError


@dataclass
class RunRow:
    """One run directory, as `cnnlab runs` shows it.

    Args:
        name: the folder, relative to the listed folder (`tune_cnn/trial-003-...` for a trial).
        data: the data set (`mnist`, or `folder:shapes` for a user's folder of images).
        status: run.json's status; `pruned` for a pruned tuning trial, `killed` for a run whose
            process on this machine is gone while it says running, `damaged: ...` for a folder
            whose files cannot be read.
        epochs_completed, epochs_planned: epochs finished, and the config's train.epochs.
        monitor, best: the checkpoint's monitor (val_accuracy, loss, ...) and its best value.
        test_accuracy: the best checkpoint's accuracy on the test split.
        seconds: from start to finish (to now for a running run).
        started: when it started (ISO 8601, local time, as run.json records it).
        path: the run directory.
    """

    name: str
    data: str | None
    status: str
    epochs_completed: int | None
    epochs_planned: int | None
    monitor: str | None
    best: float | None
    test_accuracy: float | None
    seconds: float | None
    started: str | None
    path: str

    def to_dict(self) -> dict:
        return asdict(self)


# `--sort` keys: the column, and whether the largest comes first
SORT_KEYS = {
    "started": True, "name": False, "status": False, "data": False, "epochs": True,
    "best": True, "test_accuracy": True, "duration": True,
}
_SORT_FIELDS = {"epochs": "epochs_completed", "duration": "seconds"}


def list_runs(folder: str | Path, sort: str = "started") -> list[RunRow]:
    """Every run directory under `folder` (and in its tuning studies), sorted by `sort` (see SORT_KEYS).

    Runs without a value for the sort column come last; ties keep the newest first.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CnnlabError(f"{folder}: no such folder of runs (train writes them under --runs-dir, default runs/).")
    if sort not in SORT_KEYS:
        raise CnnlabError(f"--sort {sort!r}: unknown column; valid: {', '.join(SORT_KEYS)}.")
    rows = [read_row(path, folder) for path in _run_folders(folder)]
    rows.sort(key=lambda row: row.started or "", reverse=True)
    key = _SORT_FIELDS.get(sort, sort)
    present = [row for row in rows if getattr(row, key) is not None]
    missing = [row for row in rows if getattr(row, key) is None]
    present.sort(key=lambda row: getattr(row, key), reverse=SORT_KEYS[sort])  # stable: newest first among ties
    return present + missing


def _run_folders(folder: Path) -> list[Path]:
    """The run directories in `folder`, and one level further in folders that hold runs (a study's trials)."""
    found = []
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if _looks_like_run(child):
            found.append(child)
        else:
            found += [inner for inner in sorted(child.iterdir()) if inner.is_dir() and _looks_like_run(inner)]
    return found


def _looks_like_run(folder: Path) -> bool:
    return (folder / rundir.RUN).exists() or (folder / rundir.CONFIG).exists()


def read_row(path: Path, folder: Path) -> RunRow:
    """The table row of one run directory; what cannot be read is said in its status."""
    name = path.relative_to(folder).as_posix()
    row = RunRow(name=name, data=None, status="", epochs_completed=None, epochs_planned=None, monitor=None,
                 best=None, test_accuracy=None, seconds=None, started=None, path=str(path))
    info, problem = _read(path / rundir.RUN)
    row.data = _dataset(path)
    if info is None:
        row.status = f"damaged: {rundir.RUN} {problem}"
        return row
    metrics, problem = _read(path / rundir.METRICS)
    row.status = _status(info)
    if problem is not None and (problem != "missing" or row.status == "completed"):
        row.status += f" ({rundir.METRICS} {problem})"
    metrics = metrics or {}
    row.epochs_completed = _number(info.get("epochs_completed"), int)
    row.epochs_planned = _number(info.get("epochs_planned"), int)
    row.started = info.get("started") if isinstance(info.get("started"), str) else None
    row.seconds = _duration(info, row.started)
    row.test_accuracy = _number(metrics.get("test_accuracy"), float)
    best = [(key[len("best_"):], value) for key, value in metrics.items()
            if key.startswith("best_") and key != "best_epoch" and _number(value, float) is not None]
    if best:
        row.monitor, row.best = best[0][0], float(best[0][1])
    elif _number(metrics.get("val_accuracy"), float) is not None:  # a baseline scores its validation split once
        row.monitor, row.best = "val_accuracy", float(metrics["val_accuracy"])
    return row


def _read(path: Path) -> tuple[dict | None, str | None]:
    """A JSON object, or None and what is wrong with the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, "unreadable"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, None


def _status(info: dict) -> str:
    status = info.get("status")
    if not isinstance(status, str):
        return "damaged: no status in run.json"
    if status == "completed" and isinstance(info.get("tune"), dict) and info["tune"].get("pruned_at_epoch"):
        return "pruned"
    if status == "running" and info.get("host") == socket.gethostname() and not rundir.process_alive(info):
        return "killed"  # its process is gone: `cnnlab train --resume` continues it
    return status


def _dataset(path: Path) -> str | None:
    """data.json's data set; a run without one (a baseline, a run that failed before its data loaded): the config's."""
    record, _ = _read(path / rundir.DATA)
    if record and isinstance(record.get("dataset"), str):
        return dataset_label(record["dataset"], record.get("source"))
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML was built with it
    try:
        data = yaml.load((path / rundir.CONFIG).read_text(encoding="utf-8"), Loader=loader).get("data")
        return dataset_label(data["dataset"], data.get("path"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, KeyError, TypeError):
        return None  # no config or a damaged one: no data set shown, the status says the rest


def dataset_label(dataset: str, source: str | None) -> str:
    """How a run's data is named in tables: `mnist`, or `folder:shapes` for a user's images."""
    return f"{dataset}:{Path(source).name}" if source else dataset


def _number(value, kind):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value)


def _duration(info: dict, started: str | None) -> float | None:
    end = next((info[key] for key in ("finished", "stopped") if isinstance(info.get(key), str)), None)
    try:
        begin = datetime.fromisoformat(started) if started else None
        if begin is None:
            return None
        if end is None:
            return (datetime.now() - begin).total_seconds() if info.get("status") == "running" else None
        return max((datetime.fromisoformat(end) - begin).total_seconds(), 0.0)
    except ValueError:
        return None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_table(rows: list[RunRow]) -> str:
    """The runs as an aligned text table, one line per run."""
    if not rows:
        return "no runs\n"
    header = ("run", "data", "status", "epochs", "best", "test acc", "duration", "started")
    lines = [header]
    for row in rows:
        epochs = "-" if row.epochs_completed is None else (
            f"{row.epochs_completed}/{row.epochs_planned}" if row.epochs_planned else str(row.epochs_completed))
        best = "-" if row.best is None else f"{row.monitor} {row.best:.4f}"
        test = "-" if row.test_accuracy is None else f"{row.test_accuracy:.4f}"
        started = row.started.replace("T", " ") if row.started else "-"
        lines.append((row.name, row.data or "-", row.status, epochs, best, test, format_duration(row.seconds),
                      started))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {3, 5, 6}  # numbers line up on the right
    text = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            .rstrip() for line in lines]
    return "\n".join(text) + "\n"
