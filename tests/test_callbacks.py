"""cnnlab's Keras callbacks on their own, each with a tiny model and a real `model.fit`."""

from __future__ import annotations

import json
import signal

import keras
import numpy as np
import pytest

from cnnlab import rundir
from cnnlab.backend import StopRequest
from cnnlab.callbacks import (
    EXPLODED,
    DivergenceGuard,
    Pruning,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    RunRecorder,
)


def _tiny(learning_rate: float = 0.1):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _data(n: int = 64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64")


def _run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.write_json(run_dir / rundir.RUN, {"status": "running", "epochs_completed": 0})
    return run_dir


def test_the_recorder_writes_every_epoch_history_best_checkpoint_and_resume_state(tmp_path):
    run_dir = _run_dir(tmp_path)
    x, y = _data()
    rows: list[dict] = []
    recorder = RunRecorder(run_dir, rows, StopRequest(), monitor="val_loss", mode="min",
                           filename="epoch{epoch:02d}.keras", save_best_only=False, say=lambda line: None)
    _tiny().fit(x, y, validation_split=0.25, epochs=3, batch_size=16, verbose=0, callbacks=[recorder])

    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"} <= set(rows[0])
    assert json.loads((run_dir / rundir.HISTORY_JSON).read_text())["epochs"] == rows
    csv_lines = (run_dir / rundir.HISTORY_CSV).read_text().splitlines()
    assert csv_lines[0].split(",")[0] == "epoch" and len(csv_lines) == 4
    assert json.loads((run_dir / rundir.RUN).read_text())["epochs_completed"] == 3
    for name in (rundir.BEST, rundir.RESUME_STATE, "epoch01.keras", "epoch02.keras", "epoch03.keras"):
        assert (run_dir / name).is_file(), name
    best = min(row["val_loss"] for row in rows)
    assert recorder.best == pytest.approx(best)
    assert not list(run_dir.rglob("*.tmp*")), "an atomic write left a temporary behind"


def test_a_resumed_recorder_only_calls_an_epoch_best_when_it_beats_the_finished_ones(tmp_path):
    run_dir = _run_dir(tmp_path)
    x, y = _data()
    finished = [{"epoch": 1, "val_loss": 1e-9}]  # no epoch can beat this
    recorder = RunRecorder(run_dir, list(finished), StopRequest(), monitor="val_loss", mode="min")
    assert recorder.best == 1e-9
    _tiny().fit(x, y, validation_split=0.25, initial_epoch=1, epochs=2, verbose=0, callbacks=[recorder])
    assert not (run_dir / rundir.BEST).exists()
    assert (run_dir / rundir.RESUME_STATE).is_file()
    assert [row["epoch"] for row in recorder.rows] == [1, 2]


def test_a_stop_request_ends_the_fit_at_the_next_batch(tmp_path):
    run_dir = _run_dir(tmp_path)
    x, y = _data()
    stop = StopRequest()
    recorder = RunRecorder(run_dir, [], stop, monitor="loss", mode="min")

    class SignalAtBatch3(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 3:
                signal.raise_signal(signal.SIGINT)

    with stop, pytest.raises(KeyboardInterrupt):
        _tiny().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[SignalAtBatch3(), recorder])
    assert stop.requested
    assert recorder.rows == [] and not (run_dir / rundir.RESUME_STATE).exists()


def test_the_guard_stops_an_exploding_loss_and_says_where():
    x, _ = _data(256)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")  # far too large a step: the loss grows
    guard = DivergenceGuard()
    fit = model.fit(x * 10, x[:, :1], epochs=3, batch_size=8, verbose=0, callbacks=[guard])
    assert guard.diverged is not None
    assert guard.diverged["epoch"] == 1 and guard.diverged["batch"] > 1
    loss = float(guard.diverged["loss"])
    assert not loss <= EXPLODED * max(guard.first, 1.0)  # above the limit, or NaN/inf
    assert len(fit.history["loss"]) == 1  # stopped in its first epoch


def test_the_guard_lets_a_learning_model_train():
    x, y = _data()
    guard = DivergenceGuard()
    _tiny().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[guard])
    assert guard.diverged is None and guard.first is not None


def test_resumed_early_stopping_counts_the_finished_epochs_patience():
    x, y = _data()
    # the best val_loss so far was epoch 1's, two epochs ago: patience 3 leaves one more epoch
    history = [{"epoch": 1, "val_loss": 1e-9}, {"epoch": 2, "val_loss": 1.0}, {"epoch": 3, "val_loss": 1.0}]
    stopping = ResumableEarlyStopping(history, monitor="val_loss", mode="min", patience=3)
    fit = _tiny().fit(x, y, validation_split=0.25, initial_epoch=3, epochs=10, verbose=0, callbacks=[stopping])
    assert len(fit.history["loss"]) == 1 and stopping.stopped_epoch == 3
    fresh = ResumableEarlyStopping([], monitor="val_loss", mode="min", patience=3)
    fit = _tiny().fit(x, y, validation_split=0.25, epochs=4, verbose=0, callbacks=[fresh])
    assert len(fit.history["loss"]) == 4  # a new run is Keras' own EarlyStopping


def test_resumed_reduce_on_plateau_replays_the_history_to_the_learning_rate_it_had():
    x, y = _data()
    # epoch 1 was the best; epochs 2 and 3 did not improve: patience 2 halved the rate after epoch 3
    history = [{"epoch": 1, "val_loss": 0.1, "learning_rate": 0.1}, {"epoch": 2, "val_loss": 0.5, "learning_rate": 0.1},
               {"epoch": 3, "val_loss": 0.5, "learning_rate": 0.1}]
    model = _tiny(learning_rate=0.1)
    plateau = ResumableReduceLROnPlateau(history, monitor="val_loss", factor=0.5, patience=2, verbose=0)
    model.fit(x, y, validation_split=0.25, initial_epoch=3, epochs=3, verbose=0, callbacks=[plateau])  # begin only
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.05)


def _trial(prune: bool):
    """A real Optuna trial whose pruner prunes every reported step (or never)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.ThresholdPruner(lower=2.0) if prune else optuna.pruners.NopPruner()  # accuracy < 2
    return optuna.create_study(direction="maximize", pruner=pruner).ask()


def test_pruning_reports_each_epoch_and_stops_a_pruned_trial():
    x, y = _data()
    trial = _trial(prune=True)
    pruning = Pruning(trial, "val_accuracy", epochs=5)
    fit = _tiny().fit(x, y, validation_split=0.25, epochs=5, verbose=0, callbacks=[pruning])
    assert pruning.pruned_at == 1 and len(fit.history["loss"]) == 1
    assert list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [1]


def test_pruning_reports_every_epoch_of_a_trial_it_keeps_and_never_prunes_after_the_last():
    x, y = _data()
    kept = _trial(prune=False)
    pruning = Pruning(kept, "val_accuracy", epochs=3)
    _tiny().fit(x, y, validation_split=0.25, epochs=3, verbose=0, callbacks=[pruning])
    assert pruning.pruned_at is None
    assert list(kept.storage.get_trial(kept._trial_id).intermediate_values) == [1, 2, 3]
    last = _trial(prune=True)
    pruning = Pruning(last, "val_accuracy", epochs=1)
    _tiny().fit(x, y, validation_split=0.25, epochs=1, verbose=0, callbacks=[pruning])
    assert pruning.pruned_at is None  # the last epoch: the trial is complete, whatever the pruner says
