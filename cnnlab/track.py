"""MLflow tracking: a run's config, epochs, test metrics and files, logged to an MLflow store.

A config with `track: {mlflow: {uri: ..., experiment: ...}}` (see `cnnlab.config.schema.MlflowSection`)
logs each run as an MLflow run:
- params: the config as trained, flattened (`train.optimizer.learning_rate`, `model.layers.0.filters`);
- metrics: every epoch's history row with the epoch as its step, then the test metrics
  (`test_accuracy`, `test_accuracy_per_class/<class>`, ...) at the last epoch's step;
- tags: the run directory (`cnnlab.run_dir`), the data set (`cnnlab.data`), the config file and the
  git commit of the repository it is in (`mlflow.source.name`, `mlflow.source.git.commit`);
- artifacts: the run directory's config.yaml, report.html, PNGs, metrics.json, history.csv, data.json,
  environment.json and best.keras, as files (an MLflow Keras model flavour would need TensorFlow
  in the logging process: seconds and 600 MB more; `mlflow artifacts download` gives back a file
  `keras.saving.load_model` and `cnnlab predict` read).
A tuning study is one MLflow run and its trials are its child runs (`mlflow.parentRunId`). With
several workers (train.distribute: multi_worker) only the chief logs.

The store: `uri`, else MLFLOW_TRACKING_URI (MLflow's own convention), else the SQLite file
`<runs folder>/mlflow.db` with artifacts in `<runs folder>/mlartifacts/` (MLflow 3 no longer
takes its old folder store). `mlflow ui --backend-store-uri sqlite:///<runs folder>/mlflow.db`
shows them.

Everything MLflow does happens in a logging process of its own (`Session`, `cnnlab.track_child`),
one per command, started before TensorFlow imports: importing mlflow (~1.5 s of CPU), opening
the store, every request. Training waits for none of it and never shares its interpreter lock;
the run's `finish` waits for what is still queued at the end. The first failure (a server that
is down, or goes away mid-run) costs one warning line, and the rest of the session's logging is
dropped: tracking never stops a training. A run that does not track never imports mlflow.
A resumed run continues its MLflow run (run.json's `mlflow.run_id`) when it is in the same store.

Example:
    session = begin(cfg, "runs")                           # None when cfg.track is None
    ... import TensorFlow, load the data, make the run directory ...
    tracker = start(cfg, run_dir, session)                 # run.json names the config file
    callbacks = [RunRecorder(...), *callbacks_for(tracker, rows)]
    ...
    finish(tracker)                                        # reads run.json's status and metrics.json
(`session(...)` is `begin` as a with-block that closes it, for a run that fails before it starts.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

from cnnlab import rundir

Echo = Callable[[str], None]

DEFAULT_STORE = "mlflow.db"  # in the runs folder, when neither the config nor MLFLOW_TRACKING_URI names a store
ARTIFACT_FOLDER = "mlartifacts"  # beside a SQLite store: the artifacts of the runs in it
URI_ENV = "MLFLOW_TRACKING_URI"
STUDY_RUN_ENV = "CNNLAB_MLFLOW_STUDY_RUN"  # a `tune --workers N` helper's study run: the first process's
# what run.json's status becomes in MLflow
STATUS = {"completed": "FINISHED", "timeout": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED",
          "failed": "FAILED"}
# the run directory's files that go to the run's artifacts (the PNGs too)
ARTIFACTS = (rundir.CONFIG, "report.html", rundir.METRICS, rundir.HISTORY_CSV, rundir.DATA, rundir.ENVIRONMENT,
             rundir.BEST)
# A server that does not answer fails in seconds, not after MLflow's ~4 minutes of retries (7, doubling),
# and the client prints no "View run ... at" lines of its own into cnnlab's output; a user's own settings win.
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
FINISH_TIMEOUT = 120.0  # seconds `finish` waits for the queue; a store slower than that loses the rest
MAX_BATCH = 100  # params or metrics in one log_batch request (MLflow's limit for params)
THREAD = "cnnlab-mlflow"  # the thread that reads the logging process's answers
_NAME_CHARS = re.compile(r"[^\w.\- /:]")  # what MLflow refuses in a param or metric name


def store_uri(uri: str | None, runs_dir: str | Path) -> str:
    """The tracking URI a run logs to: the config's, else MLFLOW_TRACKING_URI, else runs_dir/mlflow.db."""
    return uri or os.environ.get(URI_ENV) or f"sqlite:///{(Path(runs_dir) / DEFAULT_STORE).resolve()}"


def shown(uri: str) -> str:
    """A tracking URI as it may be printed or recorded (run.json): without its password.

    (urllib, not SQLAlchemy's URL parser: importing that costs the training process 0.1 s.)
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


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

    def give(self, uri: str, why: str) -> None:
        if self.given:
            return
        self.given = True
        self.say(f"warning: MLflow tracking to {shown(uri)} stopped ({why}); training goes on without it")


class Session:
    """The logging process (`cnnlab.track_child`) of one cnnlab command, and its answers.

    Started before TensorFlow imports (`begin`); its runs are `Tracker`s. Writing to it never waits
    for the store: the process reads its input as it arrives. The first failure it reports (or its
    death) is the one warning line; after that nothing more is sent.

    Args:
        uri: the tracking URI (`store_uri`).
        experiment: the experiment's name (made when the first run opens, if missing).
        say: prints the warning line (from the thread that reads the answers).
    """

    def __init__(self, uri: str, experiment: str, say: Echo):
        self.uri, self.experiment = uri, experiment
        self.warning = OneWarning(say)
        self.failed = False
        self._run_ids: dict[str, str] = {}
        self._answered = threading.Condition()
        self._ended = self._closed = False
        self._runs = 0  # runs opened in it: each one's key is its number
        package = str(Path(__file__).resolve().parent.parent)  # the child imports this very cnnlab
        env = {**MLFLOW_DEFAULTS, **os.environ,
               "PYTHONPATH": os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p)}
        # its own process group: a Ctrl-C meant for the training reaches it only as the end of its input
        self.process = subprocess.Popen([sys.executable, "-m", "cnnlab.track_child", uri, experiment],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        env=env, text=True, encoding="utf-8", process_group=0)
        self._reader = threading.Thread(target=self._read, name=THREAD, daemon=True)
        self._reader.start()

    def key(self) -> str:
        """A new run's name in the messages to the logging process."""
        self._runs += 1
        return str(self._runs - 1)

    def send(self, **message) -> None:
        if self.failed:
            return
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):  # the process died: `close` says so
            self.failed = True

    def run_id(self, key: str, timeout: float) -> str | None:
        """The MLflow run id of run `key` once it exists; None when it failed or took longer than `timeout`."""
        with self._answered:
            self._answered.wait_for(lambda: key in self._run_ids or self._ended or self.failed, timeout)
            return self._run_ids.get(key)

    def close(self, timeout: float = FINISH_TIMEOUT) -> None:
        """End the input, wait at most `timeout` for what is still queued to reach the store.

        A session that never opened a run (its data failed to load) is stopped at once.
        """
        if self._closed:
            return
        self._closed = True
        if not self._runs:
            self.process.kill()
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
            self.warning.give(self.uri, f"the store took over {timeout:.0f} s; the rest was not logged")
        self._reader.join(10)
        if code != 0 and self._runs:
            self.warning.give(self.uri, f"the logging process ended with exit code {code}")

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if "warning" in answer:
                with self._answered:  # nothing more will open: a wait for a run id ends
                    self.failed = True
                    self._answered.notify_all()
                self.warning.give(self.uri, answer["warning"])
            elif "opened" in answer:
                with self._answered:
                    self._run_ids[answer["opened"]] = answer["run_id"]
                    self._answered.notify_all()
        with self._answered:
            self._ended = True
            self._answered.notify_all()


class Tracker:
    """One MLflow run, logged by a `Session`'s process; see the module's docstring.

    Args:
        session: the logging process.
        run_name: the MLflow run's name (the run directory's name, or the study's).
        params: the flattened config (`flatten`).
        tags: the run's tags.
        folder: the run (or study) directory whose files `finish` logs.
        parent: the study's Tracker: this run becomes its child.
        resume: the MLflow run of the cnnlab run being resumed and its epochs so far: it continues
            there with the epochs after those (when that run is gone, a new run gets them all).
        owner: the run ends the session when it finishes (a study's trials leave it to the study).
        attach: an MLflow run another process opened and ends (a study's, for a helper process):
            this process's child runs go under it, and it is neither made nor ended here.

    Example:
        session = Session("sqlite:///runs/mlflow.db", "cnn", print)
        tracker = Tracker(session, "cnn-20260101-120000", {"seed": "42"}, {}, Path("runs/cnn-20260101-120000"))
        tracker.epochs([{"epoch": 1, "loss": 0.3}])
        tracker.finish("FINISHED", {"test_accuracy": 0.98}, [Path("runs/cnn-20260101-120000/config.yaml")])
    """

    def __init__(self, session: Session, run_name: str, params: dict[str, str], tags: dict[str, str],
                 folder: Path, parent: Tracker | None = None, resume: tuple[str, int] | None = None,
                 owner: bool = True, attach: str | None = None):
        self.session, self.folder, self.owner, self.attached = session, folder, owner, attach is not None
        self.key = session.key()
        self._last_step = 0
        session.send(op="open", run=self.key, name=run_name, params=params, tags=tags,
                     parent=parent.key if parent is not None else None, resume=resume,  # JSON: [id, epochs]
                     attach=attach)

    def epochs(self, rows: list[dict]) -> None:
        """Log finished epochs' history rows, each at its epoch as the step."""
        stamp = int(time.time() * 1000)
        batch = [(name, value, stamp, int(row["epoch"])) for row in rows for name, value in epoch_metrics(row).items()]
        if rows:
            self._last_step = max(self._last_step, *(int(row["epoch"]) for row in rows))
        self.session.send(op="metrics", run=self.key, batch=batch)

    def finish(self, status: str, metrics: dict[str, float], files: list[Path],
               timeout: float = FINISH_TIMEOUT) -> str | None:
        """Log the final metrics and files, end the run with `status` (FINISHED, KILLED, FAILED).

        The run that owns the session waits (at most `timeout`) for everything to reach the store.
        Returns the MLflow run id (None if the run never opened).
        """
        stamp = int(time.time() * 1000)
        if not self.attached:  # an attached run is ended by the process that made it
            self.session.send(op="close", run=self.key, status=status,
                              batch=[(name, value, stamp, self._last_step) for name, value in metrics.items()],
                              files=[str(path) for path in files])
        if self.owner:
            self.session.close(timeout)
        return self.session.run_id(self.key, timeout=5)


def begin(cfg, runs_dir: str | Path, parent: Tracker | None = None, chief: bool = True,
          say: Echo = print) -> Session | None:
    """The logging process of a run about to train under `runs_dir`; start it before TensorFlow imports.

    None when `cfg.track` is None, on a multi_worker run's other workers (only the chief logs),
    and for a study's trial (`parent`), which its study's session logs.
    """
    if cfg.track is None or not chief or parent is not None:
        return None
    settings = cfg.track.mlflow
    return Session(store_uri(settings.uri, runs_dir), settings.experiment or cfg.name, say)


def start(cfg, run_dir: Path, session: Session | None = None, parent: Tracker | None = None) -> Tracker | None:
    """The Tracker of a run about to train in `run_dir` (None without a session or a parent).

    Args:
        cfg: the run's `cnnlab.config.Config`.
        run_dir: its run directory: run.json names the config file (its git commit is tagged) and,
            for a resumed run, the MLflow run it continues.
        session: the logging process `begin` started for this run.
        parent: a study's Tracker (`cnnlab tune`): the run is its child, in its store and experiment.
    """
    if parent is not None:
        session = parent.session
    if session is None:
        return None
    folder = Path(run_dir)
    params = params_of(cfg.model_dump(mode="json", exclude={"track", "tune"}))
    info = _read(folder / rundir.RUN)
    earlier = info.get("mlflow") or {}
    resume = ((earlier["run_id"], int(info.get("epochs_completed") or 0))
              if earlier.get("store") == shown(session.uri) and earlier.get("run_id") else None)
    return Tracker(session, folder.name, params, tags_of(cfg, folder, info.get("config_source", "")), folder,
                   parent, resume, owner=parent is None)


@contextlib.contextmanager
def session(cfg, runs_dir: str | Path, parent: Tracker | None = None, chief: bool = True,
            say: Echo = print) -> Iterator[Session | None]:
    """`begin`'s session, closed at the end of the block (at once if no run started in it: its data failed)."""
    started = begin(cfg, runs_dir, parent, chief, say)
    try:
        yield started
    finally:
        if started is not None:
            started.close()


def start_study(cfg, folder: Path, source: str | Path, name: str, say: Echo = print) -> Tracker | None:
    """The MLflow run of the tuning study in `folder` (its trials' runs are its children); None without cfg.track.

    Its params are the config with its `tune:` section (the search space as `tune.space.<key>...`).
    A `tune --workers N` helper process (STUDY_RUN_ENV set by `study_env`) opens no run of its own:
    its trials are children of the first process's study run.
    """
    session = begin(cfg, Path(folder).parent, say=say)
    if session is None:
        return None
    params = params_of(cfg.model_dump(mode="json", exclude={"track"}))
    return Tracker(session, name, params, {"cnnlab.study": name, **tags_of(cfg, Path(folder), source)},
                   Path(folder), attach=os.environ.get(STUDY_RUN_ENV) or None)


def study_env(tracker: Tracker | None) -> dict[str, str]:
    """The environment that makes helper processes' trials children of this study's run (waits for it to open)."""
    if tracker is None:
        return {}
    run_id = tracker.session.run_id(tracker.key, timeout=60)
    return {STUDY_RUN_ENV: run_id} if run_id else {}


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
    """End a run's MLflow run as its run.json says it ended, with metrics.json's numbers and its files;
    run.json then names the MLflow run (`mlflow: {store, run_id}`), which `--resume` continues."""
    if tracker is None:
        return
    folder = tracker.folder
    info = _read(folder / rundir.RUN)
    metrics = test_metrics(_read(folder / rundir.METRICS)) if (folder / rundir.METRICS).exists() else {}
    files = [folder / name for name in ARTIFACTS] + sorted(folder.glob("*.png"))
    run_id = tracker.finish(STATUS.get(info.get("status"), "FAILED"), metrics, files)
    if run_id is not None and info:
        try:
            rundir.update_json(folder / rundir.RUN, mlflow={"store": shown(tracker.session.uri), "run_id": run_id})
        except Exception:  # noqa: BLE001 - a run.json that cannot be written lost more than this
            pass


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
