"""The logging process of MLflow tracking: `python -m cnnlab.track_child URI EXPERIMENT`.

`cnnlab.track.Session` starts it before TensorFlow imports, so that importing mlflow (~1.5 s of
CPU) and opening the store (a new SQLite file's tables) run on the core TensorFlow's
single-threaded import leaves idle, and every request to the store afterwards runs in another
process: training never shares its interpreter lock or waits for a tracking server.

It reads one JSON message per line on stdin (a thread drains the pipe at once, so the training
process never blocks writing to it), each about one run, named by the key the training process
gave it:
    {"op": "open", "run": "0", "name": ..., "params": {...}, "tags": {...}, "parent": null,
     "resume": null or [MLflow run id, epochs it has], "attach": null or another process's run id}
    {"op": "metrics", "run": "0", "batch": [[name, value, stamp, step], ...]}
    {"op": "close", "run": "0", "status": "FINISHED", "batch": [...], "files": [...]}
and answers one JSON line per event on its own stdout: {"opened": "0", "run_id": ...} once a run
exists, {"warning": "TypeName: first line"} at the first failure, after which it logs nothing more.
At the end of its input (the training process closed it, or died) it ends the runs still open
as KILLED and exits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import sys
import threading
import warnings
from pathlib import Path

from cnnlab.track import MAX_BATCH, artifact_location

# how MLflow 3 tells a model-training experiment from a GenAI one (traces, judges, prompts)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class Channel:
    """The answers to the training process, on a copy of stdout; stdout itself then goes nowhere,
    so nothing MLflow prints can be read as an answer."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w", encoding="utf-8")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)  # (sys.stdout writes to file descriptor 1: now nowhere)

    def say(self, **message) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()


def _quiet() -> None:
    """MLflow's own log lines and warnings (its retries, "Creating initial MLflow database tables"):
    a failing store is the one warning line the training process prints."""
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # mlflow sets up its own handlers and levels when it imports


def _inbox() -> queue.SimpleQueue:
    """The messages on stdin, read as they arrive; None at the end."""
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                inbox.put(json.loads(line))
        inbox.put(None)

    threading.Thread(target=read, name="cnnlab-track-inbox", daemon=True).start()
    return inbox


def why(exc: BaseException) -> str:
    """A failure as the warning line quotes it."""
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] == "mlflow":
        return "mlflow is not installed: pip install 'cnnlab[mlflow]'"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


class Store:
    """The MLflow client and the runs this process has opened, by the training process's keys."""

    def __init__(self, uri: str, experiment: str):
        if uri.startswith("sqlite:///"):  # the runs folder of a first run may not exist yet
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment = uri, experiment
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)  # opens the store: a new file's tables
        self.experiment_id = found.experiment_id if found is not None else None
        self.runs: dict[str, str] = {}
        self.open: set[str] = set()
        self.logged: dict[str, int] = {}  # a continued run's epochs already in MLflow, by key

    def handle(self, message: dict) -> str | None:
        """Carry out one message; the run id when it opened a run."""
        op, key = message["op"], message["run"]
        if op == "open":
            return self._open(key, message)
        if op == "metrics":
            self._metrics(self.runs[key], [row for row in message["batch"] if row[3] > self.logged.get(key, 0)])
        elif op == "close":
            self._close(key, message)
        return None

    def _experiment(self) -> str:
        if self.experiment_id is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=artifact_location(self.uri), tags=EXPERIMENT_TAGS)
            except Exception:  # another process made it in the meantime (a study's workers)
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
                self.experiment_id = found.experiment_id
        return self.experiment_id

    def _open(self, key: str, message: dict) -> str:
        if message.get("attach"):  # another process's run (a study's): its children go here; it ends there
            self.runs[key] = message["attach"]
            return message["attach"]
        run_id, epochs = message.get("resume") or (None, 0)
        run_id = self._resumed(run_id)
        if run_id is not None:
            self.logged[key] = epochs
        else:
            from mlflow.entities import Param

            tags = dict(message["tags"])
            if message.get("parent") is not None:
                tags["mlflow.parentRunId"] = self.runs[message["parent"]]
            run_id = self.client.create_run(self._experiment(), run_name=message["name"], tags=tags).info.run_id
            items = [Param(name, value[:6000]) for name, value in message["params"].items()]
            for start in range(0, len(items), MAX_BATCH):
                self.client.log_batch(run_id, params=items[start:start + MAX_BATCH], synchronous=True)
        self.runs[key] = run_id
        self.open.add(key)
        return run_id

    def _resumed(self, run_id: str | None) -> str | None:
        """A resumed cnnlab run's own MLflow run, running again; None when it is not in this store."""
        if run_id is None:
            return None
        try:
            self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - gone or another store: the resumed run gets a new MLflow run
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _metrics(self, run_id: str, batch: list) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(name, value, stamp, step) for name, value, stamp, step in batch if math.isfinite(value)]
        for start in range(0, len(metrics), MAX_BATCH * 10):
            self.client.log_batch(run_id, metrics=metrics[start:start + MAX_BATCH * 10], synchronous=True)

    def _close(self, key: str, message: dict) -> None:
        run_id = self.runs[key]
        self._metrics(run_id, message["batch"])
        for path in map(Path, message["files"]):
            if path.is_file():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, message["status"])
        self.open.discard(key)

    def abandon(self) -> None:
        """The training process went away with runs still open: they end as KILLED."""
        for key in sorted(self.open):
            self.client.set_terminated(self.runs[key], "KILLED")


def main(uri: str, experiment: str) -> None:
    channel = Channel()
    _quiet()
    inbox = _inbox()
    try:
        store = Store(uri, experiment)
        while (message := inbox.get()) is not None:
            run_id = store.handle(message)
            if run_id is not None:
                channel.say(opened=message["run"], run_id=run_id)
        store.abandon()
    except Exception as exc:  # noqa: BLE001 - any failure of the store costs the runs only their tracking
        channel.say(warning=why(exc))
        while inbox.get() is not None:  # the training process may still write: read to the end, log nothing
            pass


if __name__ == "__main__":
    os.nice(19)  # the training's cores are the training's: this process takes the time they leave idle
    main(*sys.argv[1:3])
    # Everything is in the store and answered; the interpreter's own teardown with mlflow, SQLAlchemy
    # and pandas loaded takes ~1 s, which the training process would wait for.
    os._exit(0)
