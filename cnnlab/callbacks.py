"""cnnlab's Keras callbacks: what a fit does after every batch and epoch besides learning.

- `RunRecorder`: after every epoch the history row, the best checkpoint and the resume
  state, all written atomically; a stop request ends the fit at the next batch.
- `DivergenceGuard`: Keras' TerminateOnNaN that also stops an exploding loss, and says where.
- `ResumableEarlyStopping`, `ResumableReduceLROnPlateau`: Keras' own, which a resumed run
  starts with the counters the interrupted run had.
- `Pruning`: tells an Optuna trial the objective after every epoch; stops a pruned trial.
- `TrackEpochs`: hands each recorded epoch to MLflow tracking (`cnnlab.track`).

This module imports Keras at its top: import it only once `cnnlab.backend.init_backend`
has started TensorFlow (inside the functions that train).

Example:
    keras, _ = init_backend("cpu")
    from cnnlab.callbacks import DivergenceGuard, RunRecorder
    guard = DivergenceGuard()
    model.fit(x, y, callbacks=[RunRecorder(run_dir, [], StopRequest(), "val_loss", "min", guard=guard), guard])
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from cnnlab import rundir

EXPLODED = 1000.0  # a running loss this many times above max(its first value, 1) has diverged


def _best_so_far(history, monitor: str, mode: str) -> tuple[float, int] | None:
    """(best value, epochs since it) of `monitor` in the finished epochs' rows; None if never logged."""
    values = [row[monitor] for row in history if monitor in row]
    if not values:
        return None
    best_index = int(np.argmax(values) if mode == "max" else np.argmin(values))
    return values[best_index], len(values) - 1 - best_index


class RunRecorder(keras.callbacks.Callback):
    """After every epoch: the history row, the best checkpoint and the resume state, all atomic.

    The resume state (`resume/state.keras`: the model and its optimizer) is renamed into place
    last: a kill before that leaves the previous epoch's state, and `resume` replays this epoch
    (it trusts the state, not the history). An improved epoch's state is also copied to
    `best.keras`. Its batch hooks call `stop.check()`, so Ctrl-C / SIGTERM end the fit at the
    next batch boundary, in cnnlab's code.

    Args:
        run_dir: the run directory (see `cnnlab.rundir`).
        rows: the finished epochs' history rows; appended to in place once every file of an
            epoch is written (the caller reads them after an interruption).
        stop: a `cnnlab.backend.StopRequest`.
        monitor: the logged value that picks the best epoch, e.g. "val_loss".
        mode: "min" or "max" (already resolved, see `cnnlab.compile.monitor_mode`).
        filename: `train.checkpoint.filename`, a pattern like "epoch{epoch:02d}.keras" for
            extra checkpoints (None: none).
        save_best_only: with `filename`, write only the improved epochs' files.
        say: prints a line for the user.
        guard: the `DivergenceGuard` of the same fit: an epoch it stopped is not recorded.

    `saved_model`, when set, is the model written instead of the one that trains (a backbone's
    frozen phase trains its head alone and saves the whole model).

    Example:
        recorder = RunRecorder(run_dir, rows=[], stop=StopRequest(), monitor="val_accuracy", mode="max")
        model.fit(x, y, validation_split=0.1, epochs=3, callbacks=[recorder])
    """

    # Its batch hooks only read a flag: Keras may call them from its worker thread, so
    # that `fit` need not wait for every step's logs (a stop request raised there reaches
    # the training loop at the next batch, as Keras re-raises it from the future).
    async_safe = True

    def __init__(self, run_dir: Path, rows: list[dict], stop, monitor: str, mode: str,
                 filename: str | None = None, save_best_only: bool = True, say: Callable[[str], None] = print,
                 guard: DivergenceGuard | None = None):
        super().__init__()
        self.run_dir, self.rows, self.stop, self.say, self.guard = Path(run_dir), rows, stop, say, guard
        self.saved_model = None  # what is saved, when not the model that trains (a backbone's head)
        self.deferred: list[dict] | None = None  # epochs not yet written (see `defer`)
        self._best_weights = None
        self.monitor, self.mode = monitor, mode
        self.filename, self.save_best_only = filename, save_best_only
        resumed = _best_so_far(rows, monitor, mode)
        self.best = resumed[0] if resumed else None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.stop.check()

    def on_test_batch_end(self, batch, logs=None):
        self.stop.check()

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        if self.guard is not None and self.guard.diverged is not None:
            return  # the epoch the loss diverged in (the guard stopped it): nothing of it is kept
        row = {"epoch": epoch + 1, **logs}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self._epoch_started, 3)
        rows = [*self.rows, row]  # self.rows gets it once every file of the epoch is written
        value = logs.get(self.monitor)
        improved = value is not None and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        )
        if self.deferred is not None:
            self.deferred.append(row)
            if improved:
                self.best, self._best_weights = value, (self.saved_model or self.model).get_weights()
            return
        with rundir.atomic_path(self.run_dir / rundir.RESUME_STATE, suffix=".keras") as state:
            (self.saved_model or self.model).save(state)
            if improved:  # the same model and optimizer: a copy, not a second serialisation
                rundir.copy_file(state, self.run_dir / rundir.BEST)
            if self.filename and (improved or not self.save_best_only):
                named = self.run_dir / self.filename.format(epoch=epoch + 1, **logs)
                rundir.save_model(self.saved_model or self.model, named)
                self.say(f"\nepoch {epoch + 1}: saved {named}")  # Keras' ModelCheckpoint says it too
            self._write_history(rows)
            rundir.update_json(self.run_dir / rundir.RUN, epochs_completed=len(rows))
        self.rows.append(row)
        if improved:
            self.best = value

    def defer(self) -> None:
        """Keep the epochs in memory until `flush`: for epochs of a few milliseconds (a backbone's head
        on cached features), where writing the whole model every epoch took 20x the epoch itself."""
        self.deferred = []

    def flush(self) -> None:
        """Write the deferred epochs as `on_epoch_end` would have: history, resume state, best checkpoint."""
        pending, self.deferred = self.deferred, None
        if not pending:
            return
        model = self.saved_model or self.model
        rows = [*self.rows, *pending]
        with rundir.atomic_path(self.run_dir / rundir.RESUME_STATE, suffix=".keras") as state:
            model.save(state)
            if self._best_weights is not None:
                current = model.get_weights()
                model.set_weights(self._best_weights)
                rundir.save_model(model, self.run_dir / rundir.BEST)
                model.set_weights(current)
            self._write_history(rows)
            rundir.update_json(self.run_dir / rundir.RUN, epochs_completed=len(rows))
        self.rows.extend(pending)
        self._best_weights = None

    def _write_history(self, rows: list[dict]):
        keys = list(dict.fromkeys(key for row in rows for key in row))
        lines = [",".join(keys)] + [",".join(_csv_value(row.get(key)) for key in keys) for row in rows]
        rundir.write_text(self.run_dir / rundir.HISTORY_CSV, "\n".join(lines) + "\n")
        rundir.write_json(self.run_dir / rundir.HISTORY_JSON, {"epochs": rows})


def _csv_value(value) -> str:
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


class DivergenceGuard(keras.callbacks.TerminateOnNaN):
    """Keras' TerminateOnNaN, which also stops an exploding loss and remembers where it diverged.

    A learning rate far too large does not always give NaN: dnn.yaml with SGD at 1e5 reaches a
    finite loss of 1e30 (Keras computes cross-entropy from the softmax's logits, which are
    unbounded) and ends at chance accuracy. So a running loss above `EXPLODED` times its first
    value (or 1, if that was smaller) stops training too: cross-entropy at chance is ln(classes),
    about 2.3 for 10, so 1000 is far beyond any model that is still learning.

    After the fit, `diverged` is None, or {"epoch", "batch" (both 1-based), "loss"} where it stopped.

    Example:
        guard = DivergenceGuard()
        model.fit(x, y, callbacks=[guard])
        guard.diverged   # e.g. {"epoch": 2, "batch": 17, "loss": "3.1e+07"}
    """

    diverged: dict | None = None
    first: float | None = None
    async_safe = True  # it reads the loss and sets stop_training: a step or two later is as good

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        super().on_batch_end(batch, logs)  # NaN or inf: Keras sets model.stop_training
        loss = (logs or {}).get("loss")
        if loss is None or self.diverged is not None:
            return
        loss = float(loss)
        if self.first is None and np.isfinite(loss):
            self.first = loss
        if np.isfinite(loss) and loss <= EXPLODED * max(self.first, 1.0):
            return
        self.model.stop_training = True
        self.diverged = {"epoch": self.epoch + 1, "batch": batch + 1, "loss": f"{loss:.4g}"}


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """keras.callbacks.EarlyStopping that, in a resumed run, keeps counting patience where it left off.

    Args:
        history: the finished epochs' history rows (empty for a new run): the best value of
            `monitor` among them and the epochs since it become the callback's `best` and `wait`.
        fresh_patience: keep the best value but start the patience again (a backbone's fine-tuning phase).
        mode: "min" or "max" (resolved; not "auto").
        **kwargs: as for keras.callbacks.EarlyStopping (monitor, patience, min_delta,
            restore_best_weights).

    Example:
        rows = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.6}]
        ResumableEarlyStopping(rows, monitor="val_loss", mode="min", patience=2)  # wait 1 at the start
    """

    def __init__(self, history=(), fresh_patience: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._resumed = _best_so_far(history, kwargs.get("monitor", "val_loss"), kwargs.get("mode", "min"))
        if self._resumed is not None and fresh_patience:
            self._resumed = (self._resumed[0], 0)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resumed is not None:
            self.best, self.wait = self._resumed


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """keras.callbacks.ReduceLROnPlateau that, in a resumed run, first replays the finished epochs.

    Its patience and cooldown counters live in the callback, not in the saved state; replaying
    the history's monitored values from the first epoch's learning rate puts them, and the
    learning rate, where the interrupted run had them, by Keras' own rule.

    Args:
        history: the finished epochs' history rows (each with its `learning_rate`); empty for a new run.
        **kwargs: as for keras.callbacks.ReduceLROnPlateau.

    Example:
        rows = [{"epoch": 1, "val_loss": 0.5, "learning_rate": 0.01}]
        ResumableReduceLROnPlateau(rows, monitor="val_loss", factor=0.5, patience=2)
    """

    def __init__(self, history=(), **kwargs):
        super().__init__(**kwargs)
        self._history = list(history)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        rows = [row for row in self._history if self.monitor in row]
        if not rows:
            return
        self.model.optimizer.learning_rate = rows[0]["learning_rate"]
        loud, self.verbose = self.verbose, 0
        for epoch, row in enumerate(rows):
            super().on_epoch_end(epoch, {self.monitor: row[self.monitor]})
        self.verbose = loud


class Pruning(keras.callbacks.Callback):
    """Tells an Optuna trial the objective after every epoch; stops training (at the epoch's end) when it prunes.

    After the last epoch there is nothing left to save: the trial is complete, whatever the
    pruner says. `pruned_at` is the 1-based epoch it pruned after, or None.

    Args:
        trial: the optuna.Trial.
        objective: the logged value the study optimises, e.g. "val_accuracy".
        epochs: the epochs the trial trains at most.

    Example:
        pruning = Pruning(trial, "val_accuracy", epochs=10)
        model.fit(x, y, validation_split=0.1, epochs=10, callbacks=[pruning])
    """

    def __init__(self, trial, objective: str, epochs: int):
        super().__init__()
        self.trial, self.objective, self.epochs = trial, objective, epochs
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.objective)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), epoch + 1)
        if epoch + 1 < self.epochs and self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.model.stop_training = True


class TrackEpochs(keras.callbacks.Callback):
    """After every epoch, hands the history rows the `RunRecorder` has recorded since to `send`.

    It reads the recorder's own list, so it sends exactly the epochs written to the run directory
    (an epoch the `DivergenceGuard` stopped is not one); put it after the recorder. `send` only
    writes them to the logging process (`cnnlab.track.Tracker.epochs`): the epoch never waits for
    a tracking server.

    Args:
        rows: the `RunRecorder`'s rows (the finished epochs, appended to in place).
        send: called with the list of new rows.

    Example:
        rows = []
        model.fit(x, y, epochs=3, callbacks=[RunRecorder(run_dir, rows, stop, "loss", "min"),
                                             TrackEpochs(rows, print)])
    """

    def __init__(self, rows: list[dict], send: Callable[[list[dict]], None]):
        super().__init__()
        # a resumed run's earlier epochs too: a new MLflow run needs them, a continued one drops those it has
        self.rows, self.send, self.sent = rows, send, 0

    def on_epoch_end(self, epoch, logs=None):
        if len(self.rows) > self.sent:
            self.send(self.rows[self.sent:])
            self.sent = len(self.rows)
