"""Training: one config in, one run directory out.

`train` checks the config (no TensorFlow needed for that), creates the run directory,
prepares the data, builds and compiles the model, fits it with cnnlab's recorder
(atomic best checkpoint, history, resume state after every epoch), early stopping and
optional TensorBoard, then scores the best checkpoint on the test split and draws the
curves. `resume` continues an interrupted run from its last finished epoch.

Example:
    cfg = load_config("configs/cnn.yaml", ["train.epochs=1"])
    result = train(cfg, "configs/cnn.yaml", runs_dir="runs")
    result.metrics["test_accuracy"]
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from cnnlab import rundir
from cnnlab.config import Config, read_yaml_mapping, validate_config
from cnnlab.data import RawData, Splits, epoch_batches, load_raw, prepare
from cnnlab.errors import CnnlabError
from cnnlab.model import ModelPlan, build_model, check_model, class_predictions, summary_text
from cnnlab.plots import plot_history

Echo = Callable[[str], None]


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | interrupted
    metrics: dict


def train(cfg: Config, source: str | Path, runs_dir: str | Path = "runs", device: str = "auto",
          echo: Echo = print) -> TrainResult:
    """Train `cfg` into a new run directory under `runs_dir`."""
    plan = check_model(cfg, str(source))
    raw = load_raw(cfg.data.dataset, cfg.data.dir, cfg.data.download)  # bad data fails before any output
    run_dir = rundir.create_run_dir(runs_dir, cfg.name)
    rundir.write_text(run_dir / rundir.CONFIG, cfg.to_yaml())
    rundir.write_json(run_dir / rundir.RUN, {
        "name": cfg.name, "status": "running", "config_source": str(source),
        "started": _now(), "epochs_planned": cfg.train.epochs, "epochs_completed": 0,
    })
    echo(f"run directory: {run_dir}")
    return _fit(cfg, plan, raw, run_dir, device, echo, history=[])


def resume(run_path: str | Path, device: str = "auto", echo: Echo = print) -> TrainResult:
    """Continue an interrupted run from its last finished epoch, in the same directory."""
    run = rundir.open_run(run_path)
    info = run.info()
    if info.get("status") == "completed":
        raise CnnlabError(f"{run.path}: this run already completed; start a new one with `cnnlab train`.")
    state = run.path / rundir.RESUME_STATE
    if not state.exists():
        raise CnnlabError(
            f"{run.path}: nothing to resume from ({rundir.RESUME_STATE} is missing: the run stopped "
            "before its first epoch finished); start it again with `cnnlab train`."
        )
    config_path = run.path / rundir.CONFIG
    cfg = validate_config(read_yaml_mapping(config_path), config_path)
    plan = check_model(cfg, str(config_path))
    raw = load_raw(cfg.data.dataset, cfg.data.dir, cfg.data.download)
    history_path = run.path / rundir.HISTORY_JSON
    history = rundir.read_json(history_path)["epochs"] if history_path.exists() else []
    rundir.remove_temporaries(run.path)
    rundir.update_json(run.path / rundir.RUN, status="running", resumed=_now())
    echo(f"resuming {run.path} after epoch {len(history)}")
    return _fit(cfg, plan, raw, run.path, device, echo, history=history)


def _fit(cfg: Config, plan: ModelPlan, raw: RawData, run_dir: Path, device: str, echo: Echo,
         history: list[dict]) -> TrainResult:
    keras, device_name = init_backend(device)
    rundir.write_json(run_dir / rundir.ENVIRONMENT, environment(keras, device_name))
    keras.utils.set_random_seed(cfg.seed + len(history))  # weights come from the state file when resuming
    splits = prepare(cfg, plan.input_shape, cfg.one_hot_labels(), raw)
    steps_per_epoch = -(-len(splits.x_train) // cfg.train.batch_size)
    if history:
        model = keras.saving.load_model(run_dir / rundir.RESUME_STATE, compile=True)
        done = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // steps_per_epoch
        if done < len(history):  # killed between the history write and the state's rename
            echo(f"the saved state is from epoch {done}: epoch {done + 1} is trained again")
            history = history[:done]
            keras.utils.set_random_seed(cfg.seed + done)
    else:
        model = build_model(cfg, plan.input_shape)
        model.compile(optimizer=make_optimizer(keras, cfg), loss=cfg.train.loss, metrics=list(cfg.train.metrics))
    summary = summary_text(model)
    rundir.write_text(run_dir / rundir.SUMMARY, summary)
    echo(summary)

    stop = StopRequest()
    recorder = _recorder_class(keras)(cfg, run_dir, history, stop)
    callbacks = [recorder]
    if cfg.train.early_stopping is not None:
        callbacks.append(_early_stopping(keras, cfg, history))
    if cfg.train.lr_schedule is not None:
        callbacks.append(_one_cycle(keras, cfg.train.lr_schedule, steps_per_epoch, cfg.train.epochs))
    if cfg.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    validation = (splits.x_val, splits.y_val) if splits.x_val is not None else None
    started = time.perf_counter()
    status = "completed"
    try:
        with stop:
            if cfg.train.loop == "gradient_tape":  # the hand-written loop drives the same callbacks
                from cnnlab.tape import fit_with_gradient_tape

                fit_with_gradient_tape(model, cfg, splits, callbacks, initial_epoch=len(history), run_dir=run_dir,
                                       verbose=1 if sys.stdout.isatty() else 2)
            else:
                _run_fit(keras, model, cfg, splits, validation, callbacks, first_epoch=len(history))
            stop.check()  # a Ctrl-C after the last batch still counts
    except KeyboardInterrupt:
        status = "interrupted"
    seconds = time.perf_counter() - started
    rows = recorder.rows
    if rows:
        ck = cfg.train.checkpoint
        plot_history(rows, run_dir, cfg.name, monitor=ck.monitor, mode=monitor_mode(ck.monitor, ck.mode))
    if status == "interrupted":
        rundir.update_json(run_dir / rundir.RUN, status="interrupted", stopped=_now(), epochs_completed=len(rows))
        echo(f"\ninterrupted after {len(rows)} finished epoch(s); the best checkpoint is kept.")
        echo(f"resume with: cnnlab train --resume {run_dir}")
        return TrainResult(run_dir, status, {})

    metrics, best_model = score_best(keras, run_dir, splits, cfg)
    metrics.update(_training_summary(cfg, rows, seconds, len(splits.x_train)))
    echo(
        f"test accuracy {metrics['test_accuracy']:.4f}, test loss {metrics['test_loss']:.4f} "
        f"(best epoch {metrics['best_epoch']}, {run_dir / rundir.BEST})"
    )
    metrics.update(_export_for_predict(best_model, run_dir, splits, echo))
    rundir.write_json(run_dir / rundir.METRICS, metrics)
    rundir.update_json(run_dir / rundir.RUN, status="completed", finished=_now(), epochs_completed=len(rows))
    return TrainResult(run_dir, status, metrics)


def _run_fit(keras, model, cfg: Config, splits: Splits, validation, callbacks, first_epoch: int) -> None:
    verbose = 1 if sys.stdout.isatty() else 2  # a live bar on a terminal, a line per epoch in logs
    common = dict(validation_data=validation, epochs=cfg.train.epochs, initial_epoch=first_epoch,
                  callbacks=callbacks, verbose=verbose)
    if keras.backend.backend() != "tensorflow":
        model.fit(splits.x_train, splits.y_train, batch_size=cfg.train.batch_size, **common)
        return
    batches, steps = epoch_batches(
        splits.x_train, splits.y_train, cfg.train.batch_size, cfg.seed, first_epoch, cfg.train.epochs
    )
    model.fit(batches, steps_per_epoch=steps, shuffle=False, **common)


def init_backend(device: str):
    """Import Keras on the requested device; returns (keras, a name for that device)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # takes effect only before TensorFlow starts
    import keras

    if keras.backend.backend() != "tensorflow":
        return keras, f"{keras.backend.backend()} backend (default device)"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise CnnlabError(
            "--device gpu: TensorFlow sees no GPU on this machine (is the `gpu` extra with CUDA "
            "installed?); use --device cpu or --device auto."
        )
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    return keras, (f"GPU ({', '.join(gpu.name for gpu in gpus)})" if gpus else f"CPU ({os.cpu_count()} cores)")


def environment(keras, device_name: str) -> dict:
    import importlib.metadata as md

    def version(package: str) -> str | None:
        try:
            return md.version(package)
        except md.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cnnlab": version("cnnlab"), "keras": keras.__version__, "backend": keras.backend.backend(),
        "tensorflow": version("tensorflow") or version("tensorflow-cpu"), "numpy": np.__version__,
        "device": device_name,
    }


def make_optimizer(keras, cfg: Config):
    opt = cfg.train.optimizer
    if opt.name == "sgd":
        return keras.optimizers.SGD(learning_rate=opt.learning_rate, momentum=opt.momentum, nesterov=opt.nesterov)
    if opt.name == "adam":
        return keras.optimizers.Adam(
            learning_rate=opt.learning_rate, beta_1=opt.beta_1, beta_2=opt.beta_2, epsilon=opt.epsilon
        )
    if opt.name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=opt.learning_rate)
    if opt.name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=opt.learning_rate, rho=opt.rho, momentum=opt.momentum)
    raise AssertionError(f"no optimizer for {opt.name!r}")


def monitor_mode(monitor: str, mode: str) -> str:
    """'max' or 'min', as Keras decides for mode='auto': accuracies go up, the rest down."""
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor or monitor.endswith("auc") else "min"


def _early_stopping(keras, cfg: Config, history: list[dict]):
    es = cfg.train.early_stopping
    mode = monitor_mode(es.monitor, es.mode)
    resumed = None
    values = [row[es.monitor] for row in history if es.monitor in row]
    if values:  # a resumed run keeps counting patience where it left off
        best_index = int(np.argmax(values) if mode == "max" else np.argmin(values))
        resumed = (values[best_index], len(values) - 1 - best_index)

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if resumed is not None:
                self.best, self.wait = resumed

    return ResumableEarlyStopping(
        monitor=es.monitor, mode=mode, patience=es.patience,
        min_delta=es.min_delta, restore_best_weights=es.restore_best_weights,
    )


def one_cycle_rate(step: int, total_steps: int, max_rate: float, warmup_fraction: float) -> float:
    """The one-cycle learning rate at `step` (0-based) of `total_steps`."""
    start, end = max_rate / 25.0, max_rate / 1e4
    warmup = max(1, int(total_steps * warmup_fraction))
    if step < warmup:
        return start + (max_rate - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
    return end + (max_rate - end) * 0.5 * (1.0 + np.cos(np.pi * progress))


def _one_cycle(keras, schedule, steps_per_epoch: int, epochs: int):
    """Sets the learning rate before every batch; the step comes from the epoch, so resuming works."""

    class OneCycle(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            step = self.epoch * steps_per_epoch + batch
            self.model.optimizer.learning_rate = one_cycle_rate(
                step, steps_per_epoch * epochs, schedule.max_learning_rate, schedule.warmup_fraction
            )

    return OneCycle()


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM while training: stop at the next batch, as an interruption.

    Python raises KeyboardInterrupt wherever the main thread is when the signal lands; inside
    one of TensorFlow's `__del__` methods it is printed as "Exception ignored" and lost, and
    training went on to the end (seen once in CI). Here the signal only sets a flag, which the
    recorder turns into KeyboardInterrupt at a batch boundary, in cnnlab's own code. A second
    signal raises at once, for a batch that never ends.
    """

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


def _recorder_class(keras):
    """The recorder subclasses keras.callbacks.Callback, so it is made once Keras is imported."""

    class RunRecorder(keras.callbacks.Callback):
        """After every epoch: history row, best checkpoint, resume state, all atomic."""

        def __init__(self, cfg: Config, run_dir: Path, history: list[dict], stop: StopRequest):
            super().__init__()
            self.cfg, self.run_dir, self.rows, self.stop = cfg, run_dir, list(history), stop
            ck = cfg.train.checkpoint
            self.monitor, self.mode = ck.monitor, monitor_mode(ck.monitor, ck.mode)
            seen = [row[self.monitor] for row in self.rows if self.monitor in row]
            self.best = (max(seen) if self.mode == "max" else min(seen)) if seen else None

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.stop.check()

        def on_test_batch_end(self, batch, logs=None):
            self.stop.check()

        def on_epoch_end(self, epoch, logs=None):
            logs = {key: float(value) for key, value in (logs or {}).items()}
            row = {"epoch": epoch + 1, **logs}
            row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            row["seconds"] = round(time.perf_counter() - self._epoch_started, 3)
            self.rows.append(row)
            value = logs.get(self.monitor)
            improved = value is not None and (
                self.best is None or (value > self.best if self.mode == "max" else value < self.best)
            )
            # The resume state is renamed into place last: a kill before that leaves the previous
            # epoch's state, and `resume` replays this epoch (it trusts the state, not the history).
            with rundir.atomic_path(self.run_dir / rundir.RESUME_STATE, suffix=".keras") as state:
                self.model.save(state)
                if improved:  # the same model and optimizer: a copy, not a second serialisation
                    self.best = value
                    rundir.copy_file(state, self.run_dir / rundir.BEST)
                pattern = self.cfg.train.checkpoint.filename
                if pattern and (improved or not self.cfg.train.checkpoint.save_best_only):
                    named = self.run_dir / pattern.format(epoch=epoch + 1, **logs)
                    rundir.save_model(self.model, named)
                    print(f"\nepoch {epoch + 1}: saved {named}", flush=True)  # Keras' ModelCheckpoint says it too
                self._write_history()
                rundir.update_json(self.run_dir / rundir.RUN, epochs_completed=len(self.rows))

        def _write_history(self):
            keys = list(dict.fromkeys(key for row in self.rows for key in row))
            lines = [",".join(keys)] + [",".join(_csv_value(row.get(key)) for key in keys) for row in self.rows]
            rundir.write_text(self.run_dir / rundir.HISTORY_CSV, "\n".join(lines) + "\n")
            rundir.write_json(self.run_dir / rundir.HISTORY_JSON, {"epochs": self.rows})

    return RunRecorder


def _csv_value(value) -> str:
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


def score_best(keras, run_dir: Path, splits: Splits, cfg: Config):
    """Test loss and accuracy of the best checkpoint as saved on disk, and that model."""
    best = run_dir / rundir.BEST
    model = keras.saving.load_model(best, compile=True)
    batch = max(cfg.train.batch_size, 256)
    results = model.evaluate(splits.x_test, splits.y_test, batch_size=batch, verbose=0, return_dict=True)
    probs = model.predict(splits.x_test, batch_size=batch, verbose=0)
    accuracy = float(np.mean(class_predictions(probs) == splits.labels_test))
    return {"test_loss": float(results["loss"]), "test_accuracy": accuracy, "test_samples": len(splits.x_test)}, model


def _export_for_predict(model, run_dir: Path, splits: Splits, echo: Echo) -> dict:
    """Also write the best model as TFLite, so `cnnlab predict` needs no TensorFlow."""
    from cnnlab.export import TFLITE, export_tflite

    try:
        diff = export_tflite(model, run_dir / TFLITE, splits.x_test[:256])
    except Exception as exc:  # any converter failure only costs predict its fast path
        echo(f"note: no {TFLITE} written ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
             "predict will use Keras")
        return {"tflite": None}
    return {"tflite": TFLITE, "tflite_max_abs_diff": diff}


def _training_summary(cfg: Config, rows: list[dict], seconds: float, train_samples: int) -> dict:
    monitor = cfg.train.checkpoint.monitor
    mode = monitor_mode(monitor, cfg.train.checkpoint.mode)
    values = [row.get(monitor, np.nan) for row in rows]
    best = int(np.nanargmax(values) if mode == "max" else np.nanargmin(values))
    epoch_seconds = [row["seconds"] for row in rows]
    return {
        "best_epoch": rows[best]["epoch"], f"best_{monitor}": values[best],
        "epochs_completed": len(rows), "stopped_early": len(rows) < cfg.train.epochs,
        "train_seconds": round(seconds, 2),
        "train_samples_per_second": round(train_samples / float(np.median(epoch_seconds)), 1),
    }


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
