"""MLflow tracking: a run's config, epochs, test metrics and files, logged to an MLflow store.

A config with `track: {mlflow: {uri: ..., experiment: ...}}` (see `cnnlab.config.schema.MlflowSection`)
logs each run as an MLflow run:
- params: the config as trained, flattened (`train.optimizer.learning_rate`, `model.layers.0.filters`);
- metrics: every epoch's history row with the epoch as its step, then the test metrics
  (`test_accuracy`, `test_accuracy_per_class/<class>`, ...) at the last epoch's step;
- tags: the run directory (`cnnlab.run_dir`), the data set (`cnnlab.data`), the config file and the
  git commit of the repository it is in (`mlflow.source.name`, `mlflow.source.git.commit`);
- artifacts: the run directory's config.yaml, report.html, PNGs, metrics.json, history.csv, data.json
  and environment.json (not the model: best.keras stays in the run directory).
A tuning study is one MLflow run and its trials are its child runs (`mlflow.parentRunId`). With
several workers (train.distribute: multi_worker) only the chief logs.

The store: `uri`, else MLFLOW_TRACKING_URI (MLflow's own convention), else the SQLite file
`<runs folder>/mlflow.db` with artifacts in `<runs folder>/mlartifacts/` (MLflow 3 no longer
takes its old folder store). `mlflow ui --backend-store-uri sqlite:///<runs folder>/mlflow.db`
shows them.

Everything MLflow does happens in one background thread per run (`Tracker`): importing mlflow
(~1.5 s of CPU), connecting, every request. Training waits for none of it; `Tracker.finish`
waits for what is still queued at the end of the run. The first failure (a server that is down,
or goes away mid-run) costs one warning line, and the rest of that run's logging (and a study's)
is dropped: tracking never stops a training. A run that does not track never imports mlflow.

Example:
    tracker = start(cfg, run_dir, "configs/cnn.yaml")      # None when cfg.track is None
    callbacks = [RunRecorder(...), *callbacks_for(tracker, rows)]
    ...
    finish(tracker)                                        # reads run.json's status and metrics.json
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from cnnlab import rundir
from cnnlab.study_storage import shown

Echo = Callable[[str], None]

DEFAULT_STORE = "mlflow.db"  # in the runs folder, when neither the config nor MLFLOW_TRACKING_URI names a store
ARTIFACT_FOLDER = "mlartifacts"  # beside a SQLite store: the artifacts of the runs in it
URI_ENV = "MLFLOW_TRACKING_URI"
# what run.json's status becomes in MLflow
STATUS = {"completed": "FINISHED", "timeout": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED",
          "failed": "FAILED"}
# the run directory's files that go to the run's artifacts (the PNGs too)
ARTIFACTS = (rundir.CONFIG, "report.html", rundir.METRICS, rundir.HISTORY_CSV, rundir.DATA, rundir.ENVIRONMENT)
# A server that does not answer fails in seconds, not after MLflow's ~4 minutes of retries (7, doubling),
# and the client prints no "View run ... at" lines of its own into cnnlab's output; a user's own settings win.
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
FINISH_TIMEOUT = 120.0  # seconds `finish` waits for the queue; a store slower than that loses the rest
MAX_BATCH = 100  # params or metrics in one log_batch request (MLflow's limit for params)
_NAME_CHARS = re.compile(r"[^\w.\- /:]")  # what MLflow refuses in a param or metric name


def store_uri(uri: str | None, runs_dir: str | Path) -> str:
    """The tracking URI a run logs to: the config's, else MLFLOW_TRACKING_URI, else runs_dir/mlflow.db."""
    return uri or os.environ.get(URI_ENV) or f"sqlite:///{(Path(runs_dir) / DEFAULT_STORE).resolve()}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite file; a server decides its own."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        return (database.parent / ARTIFACT_FOLDER).resolve().as_uri()
    return None


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: `{"train": {"epochs": 5}}` -> `{"train.epochs": "5"}`; list items by number."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, (list, tuple)) and value:
        items = ((str(i), item) for i, item in enumerate(value))
    else:
        return {prefix: value if isinstance(value, str) else json.dumps(value)}
    out: dict[str, str] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def metric_name(name: str) -> str:
    """A name MLflow takes as a metric or param key (a class called `a+b` becomes `a_b`)."""
    return _NAME_CHARS.sub("_", name)


def epoch_metrics(row: dict) -> dict[str, float]:
    """One history row's numbers, by MLflow metric name (the epoch is the step; `seconds` the epoch's)."""
    out = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out["epoch_seconds" if key == "seconds" else metric_name(key)] = float(value)
    return out


def test_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's numbers by MLflow metric name: one level of dicts (per class) joined with `/`."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update({metric_name(f"{key}/{name}"): float(v) for name, v in value.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[metric_name(key)] = float(value)
    return {key: value for key, value in out.items() if math.isfinite(value)}


def git_commit(folder: Path) -> str | None:
    """The commit checked out in the git repository that holds `folder`, or None (no git, no repository)."""
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


class OneWarning:
    """The one warning a tracked run (or a whole study, trials included) prints when MLflow fails."""

    def __init__(self, say: Echo):
        self.say, self.given = say, False

    def give(self, uri: str, exc: BaseException) -> None:
        if self.given:
            return
        self.given = True
        lines = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
        self.say(f"warning: MLflow tracking to {shown(uri)} stopped ({why}); training goes on without it")


class Tracker:
    """One MLflow run, fed from a background thread; see the module's docstring.

    Args:
        uri: the tracking URI (`store_uri`).
        experiment: the experiment's name (made when missing).
        run_name: the MLflow run's name (the run directory's name, or the study's).
        params: the flattened config (`flatten`).
        tags: the run's tags.
        say: prints the warning line.
        parent: the study's Tracker: this run becomes its child, and shares its one warning.
        folder: the run (or study) directory whose files `finish` logs.

    Example:
        tracker = Tracker("sqlite:///runs/mlflow.db", "cnn", "cnn-20260101-120000", {"seed": "42"}, {}, print)
        tracker.epochs([{"epoch": 1, "loss": 0.3}])
        tracker.finish("FINISHED", {"test_accuracy": 0.98}, [Path("runs/cnn-20260101-120000/config.yaml")])
    """

    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, str], tags: dict[str, str],
                 say: Echo, parent: Tracker | None = None, folder: Path | None = None):
        self.uri, self.experiment, self.folder, self.parent = uri, experiment, folder, parent
        self.warning = parent.warning if parent is not None else OneWarning(say)
        self.run_id: str | None = None
        self._opened = threading.Event()  # set once the run exists, or opening it failed
        self._failed = False
        self._last_step = 0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs.put(lambda: self._open(experiment, run_name, params, tags))
        self._thread = threading.Thread(target=self._work, name=THREAD, daemon=True)
        self._thread.start()

    # --- what the training thread calls (each only queues work) ---

    def epochs(self, rows: list[dict]) -> None:
        """Log finished epochs' history rows, each at its epoch as the step."""
        stamp = int(time.time() * 1000)
        batch = [(name, value, stamp, int(row["epoch"])) for row in rows for name, value in epoch_metrics(row).items()]
        if rows:
            self._last_step = max(self._last_step, *(int(row["epoch"]) for row in rows))
        self._jobs.put(lambda: self._log_metrics(batch))

    def finish(self, status: str, metrics: dict[str, float], files: list[Path], tags: dict[str, str] | None = None,
               timeout: float = FINISH_TIMEOUT) -> None:
        """Log the final metrics, tags and files, end the run with `status` (FINISHED, KILLED, FAILED); wait."""
        stamp = int(time.time() * 1000)
        batch = [(name, value, stamp, self._last_step) for name, value in metrics.items()]
        self._jobs.put(lambda: self._close(status, batch, files, tags or {}))
        self._jobs.put(None)
        self._thread.join(timeout)

    def wait_opened(self, timeout: float | None = None) -> str | None:
        """The MLflow run id once the run exists; None when opening it failed (or took longer than `timeout`)."""
        self._opened.wait(timeout)
        return self.run_id

    # --- the background thread ---

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._failed:
                continue
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - any failure of the store costs the run only its tracking
                self._failed = True
                self.warning.give(self.uri, exc)
            finally:
                if self._failed or self.run_id is not None:
                    self._opened.set()

    def _open(self, experiment: str, run_name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        for name, value in MLFLOW_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
            logging.getLogger(name).setLevel(logging.WARNING)
        _quiet_retries()
        self._client = client = MlflowClient(tracking_uri=self.uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(experiment, artifact_location=artifact_location(self.uri))
            except Exception:  # another process made it in the meantime (a study's workers)
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        if self.parent is not None:
            parent_id = self.parent.wait_opened()
            if parent_id is None:  # the study's run failed and said so: its trials log nothing either
                raise _Skip()
            tags = {**tags, "mlflow.parentRunId": parent_id}
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        items = [Param(key, value[:6000]) for key, value in params.items()]
        for start in range(0, len(items), MAX_BATCH):
            client.log_batch(run.info.run_id, params=items[start:start + MAX_BATCH], synchronous=True)
        self.run_id = run.info.run_id

    def _log_metrics(self, batch: list[tuple]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(name, value, stamp, step) for name, value, stamp, step in batch
                   if math.isfinite(value)]
        for start in range(0, len(metrics), MAX_BATCH * 10):
            self._client.log_batch(self.run_id, metrics=metrics[start:start + MAX_BATCH * 10], synchronous=True)

    def _close(self, status: str, batch: list[tuple], files: list[Path], tags: dict[str, str]) -> None:
        self._log_metrics(batch)
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value, synchronous=True)
        for path in files:
            if path.is_file():
                self._client.log_artifact(self.run_id, str(path))
        self._client.set_terminated(self.run_id, status)


THREAD = "cnnlab-mlflow"


def _from_this_thread(record: logging.LogRecord) -> bool:
    return record.threadName != THREAD


def _quiet_retries() -> None:
    """urllib3's "Retrying (...) after connection broken" lines, for the tracker's own requests only:
    a failing server is the one warning line, and other code's retries still show."""
    pool = logging.getLogger("urllib3.connectionpool")
    if _from_this_thread not in pool.filters:
        pool.addFilter(_from_this_thread)


class _Skip(Exception):
    """A child run whose parent could not be opened: nothing to log, and the warning was given."""


def start(cfg, run_dir: Path, source: str | Path, parent: Tracker | None = None, chief: bool = True,
          say: Echo = print) -> Tracker | None:
    """The Tracker of a run about to train in `run_dir`; None when `cfg.track` is None or this is not the chief.

    Args:
        cfg: the run's `cnnlab.config.Config`.
        run_dir: its run directory (its folder's mlflow.db is the default store).
        source: the config file (its git commit is tagged).
        parent: a study's Tracker (`cnnlab tune`): the run is its child, in its store and experiment.
        chief: False on the other workers of a multi_worker run, which log nothing.
        say: prints the warning line.
    """
    if cfg.track is None or not chief:
        return None
    settings, folder = cfg.track.mlflow, Path(run_dir)
    if parent is not None:  # a trial: in the study's store and experiment
        uri, experiment = parent.uri, parent.experiment
    else:
        uri, experiment = store_uri(settings.uri, folder.parent), settings.experiment or cfg.name
    params = params_of(cfg.model_dump(mode="json", exclude={"track", "tune"}))
    return Tracker(uri, experiment, folder.name, params, tags_of(cfg, folder, source), say, parent, folder)


def start_study(cfg, folder: Path, source: str | Path, name: str, say: Echo = print) -> Tracker | None:
    """The MLflow run of the tuning study in `folder` (its trials' runs are its children); None without cfg.track.

    Its params are the config with its `tune:` section (the search space as `tune.space.<key>...`).
    """
    if cfg.track is None:
        return None
    settings = cfg.track.mlflow
    params = params_of(cfg.model_dump(mode="json", exclude={"track"}))
    return Tracker(store_uri(settings.uri, Path(folder).parent), settings.experiment or cfg.name, name, params,
                   {"cnnlab.study": name, **tags_of(cfg, Path(folder), source)}, say, folder=Path(folder))


def params_of(config: dict) -> dict[str, str]:
    return {metric_name(key): value for key, value in flatten(config).items()}


def tags_of(cfg, folder: Path, source: str | Path) -> dict[str, str]:
    """The tags of a run (or study) in `folder` trained from the config file `source`."""
    data = cfg.data
    tags = {"cnnlab.run_dir": str(folder.resolve()), "cnnlab.data": f"{data.dataset}:{data.path}" if data.path
            else data.dataset, "mlflow.source.name": str(source)}
    commit = git_commit(Path(source).resolve().parent)
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit
    return tags


def callbacks_for(tracker: Tracker | None, rows: list[dict]) -> list:
    """The Keras callback that hands each recorded epoch to `tracker` (none without one); Keras must be imported."""
    if tracker is None:
        return []
    from cnnlab.callbacks import TrackEpochs

    return [TrackEpochs(rows, tracker.epochs)]


def finish(tracker: Tracker | None) -> None:
    """End a run's MLflow run as its run.json says it ended, with metrics.json's numbers and its files."""
    if tracker is None:
        return
    folder = tracker.folder
    info = _read(folder / rundir.RUN)
    metrics = test_metrics(_read(folder / rundir.METRICS)) if (folder / rundir.METRICS).exists() else {}
    files = [folder / name for name in ARTIFACTS] + sorted(folder.glob("*.png"))
    tracker.finish(STATUS.get(info.get("status"), "FAILED"), metrics, files)


def finish_study(tracker: Tracker | None, status: str, objective: str, best=None, finished: int = 0) -> None:
    """End a study's MLflow run: its best value and trial, the study folder's files (trials.csv, figures, report)."""
    if tracker is None:
        return
    from cnnlab.study_storage import BEST_CONFIG, FIGURES, TRIALS_CSV

    metrics = {"trials_finished": float(finished)}
    if best is not None:
        metrics.update({metric_name(f"best_{objective}"): float(best.value), "best_trial": float(best.number)})
    folder = tracker.folder
    files = [folder / name for name in (TRIALS_CSV, BEST_CONFIG, "report.html", *FIGURES)]
    tracker.finish(STATUS.get(status, "FAILED"), metrics, files)


def _read(path: Path) -> dict:
    try:
        return rundir.read_json(path)
    except Exception:  # noqa: BLE001 - a file the run could not write is a run that failed
        return {}
