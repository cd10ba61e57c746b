"""Training: one config in, one run directory out.

`train` checks the config (no TensorFlow needed for that), loads the data, starts
TensorFlow on the device (a missing GPU fails here, before any folder exists), loads the
starting weights of `train.init_from` if any, creates the run directory, builds and
compiles the model, fits it with cnnlab's recorder (atomic best checkpoint, history,
resume state after every epoch), a NaN/inf guard, early stopping and optional
TensorBoard, then scores the best checkpoint on the test split and draws the curves.
`resume` continues a run from its last finished epoch, or extends a run by more epochs.

How a run ends, in run.json's status (see rundir.py):
- completed: metrics.json written; `TrainResult.status == "completed"`.
- interrupted: Ctrl-C or SIGTERM (`TrainResult.status == "interrupted"`); a full disk
  raises a CnnlabError that names the file and says how to resume.
- diverged: the loss became NaN, infinite or exploded (`EXPLODED`); raises `Diverged`
  (after scoring the best checkpoint of the epochs before, if there is one).
- failed: any other error, recorded in run.json and raised.

`step(label)` shows a status line on stderr around a slow step (a spinner on a terminal).

Example:
    cfg = load_config("configs/cnn.yaml", ["train.epochs=1"])
    result = train(cfg, "configs/cnn.yaml", runs_dir="runs")
    result.metrics["test_accuracy"]
"""

from __future__ import annotations

import errno
import gc
import itertools
import os
import platform
import re
import shlex
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cnnlab import distribute, rundir
from cnnlab.compile import compile_model, make_loss, monitor_mode, schedule_callbacks
from cnnlab.config import Config, apply_override, read_run_config, validate_config
from cnnlab.data import ImageData, Splits, data_record, idx_files_present, load, prepare
from cnnlab.data.audit import training_findings
from cnnlab.data.balance import class_weights, is_uneven
from cnnlab.data.balance import named as named_weights
from cnnlab.data.cache import Progress
from cnnlab.data.pipeline import augmentation, epoch_batches, ordered_batches
from cnnlab.errors import CnnlabError
from cnnlab.model import ModelPlan, build_model, build_network, check_model, class_predictions, summary_text
from cnnlab.transfer import fine_tuning, fit_with_backbone, phase_change, total_epochs
from cnnlab.plots import plot_history

Echo = Callable[[str], None]
VERBOSE_ENV = "CNNLAB_VERBOSE"  # 1: TensorFlow's own start-up and log lines are shown (`cnnlab --verbose`)


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | interrupted
    metrics: dict


@dataclass
class Hooks:
    """What a caller that trains many configs in one process (`cnnlab tune`) changes about a run.

    Args:
        callbacks: more Keras callbacks for the fit, after cnnlab's own (an epoch's files are
            written when they see it); tune's pruning is one.
        data: a dict the caller keeps between runs: the data loaded for one `data:` section is
            reused by the next run with the same section, instead of being read again.
        export_tflite: False leaves model.tflite out (predict then runs the checkpoint with Keras).
        report: False leaves report.html out (a tuning study writes one page for all its trials).
        stop: the caller's own `StopRequest`, entered around all its runs: a Ctrl-C that lands
            between two fits (scoring, the caller's bookkeeping) is kept for it to see, and one
            that lands before a fit stops that fit at its first batch.
    """

    callbacks: list = field(default_factory=list)
    data: dict | None = None
    export_tflite: bool = True
    report: bool = True
    stop: StopRequest | None = None


class Diverged(CnnlabError):
    """The loss became NaN, infinite or exploded: training stopped, run.json says `"status": "diverged"`.

    Args:
        message: the sentence the user sees (where it diverged, what to try).
        run_dir: the run directory.
        epoch, batch: where the loss diverged (1-based).
    """

    def __init__(self, message: str, run_dir: Path, epoch: int, batch: int):
        super().__init__(message)
        self.run_dir, self.epoch, self.batch = run_dir, epoch, batch


@contextmanager
def step(label: str, quiet: bool = False, spinner: bool = True) -> Iterator[None]:
    """Say on stderr that a slow step is running: `with step("scoring 10,000 test images"): ...`.

    Args:
        label: what is being done, for people ("loading mnist").
        quiet: say nothing (`--quiet`).
        spinner: False for a step that draws its own progress bar (a spinner would fight it
            for the terminal): the plain line then.

    On a terminal a spinner, then the label with how long it took; in a log one line
    "label ..." when the step starts.
    """
    if quiet:
        yield
        return
    if not spinner or not sys.stderr.isatty():
        print(f"{label} ...", file=sys.stderr, flush=True)
        yield
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()
    with console.status(Text(f"{label} ...")):
        yield
    console.print(Text(f"{label} ({time.perf_counter() - started:.1f} s)"))


def train(cfg: Config, source: str | Path, runs_dir: str | Path = "runs", device: str = "auto",
          echo: Echo = print, quiet: bool = False, progress: Progress | None = None,
          hooks: Hooks | None = None) -> TrainResult:
    """Train `cfg` into a new run directory under `runs_dir`.

    Args:
        cfg: the validated config.
        source: where it came from (the YAML file), for messages and run.json.
        runs_dir: the folder the run directory is created in.
        device: auto, cpu or gpu (gpu fails when TensorFlow sees none).
        echo: prints a line for the user (the final result lines always, the rest unless `quiet`).
        quiet: only the result lines and errors: no status lines, layer table or progress bars.
        progress: shows the decoding of a user's images (`cnnlab.data.cache.Progress`).
        hooks: what a caller that trains many runs in one process changes (see `Hooks`).
    """
    hooks = hooks or Hooks()
    plan = check_model(cfg, str(source))
    distribute.check(cfg, str(source))  # the cluster (TF_CONFIG), this worker's port
    # a missing GPU or data file, or a class weight for no class, fails here, before a run folder exists
    data, backend = _load_and_start(cfg, plan, device, str(source), progress, quiet, hooks.data)
    class_weights(cfg.train.class_weight, data.labels[data.train], plan.data.class_names, str(source))
    dist = distribute.start(cfg, str(source), device, _info(echo, quiet))  # waits for the other workers
    if dist is not None and not dist.chief:  # only the chief writes the run directory
        runs_dir, quiet = dist.private_dir(), True
    start = _starting_weights(backend[0], cfg, plan, source, quiet) if cfg.train.init_from else None
    run_dir = rundir.create_run_dir(runs_dir, cfg.name)
    rundir.write_text(run_dir / rundir.CONFIG, cfg.to_yaml())
    rundir.write_json(run_dir / rundir.RUN, {
        "name": cfg.name, "status": "running", "config_source": str(source),
        "started": _now(), "epochs_planned": total_epochs(cfg), "epochs_completed": 0,
        **({"init_from": str(start.path)} if start else {}), **rundir.this_process(),
    })
    _info(echo, quiet)(f"run directory: {run_dir}")
    return _fit(cfg, plan, data, run_dir, backend, echo, history=[], quiet=quiet, start=start, dist=dist,
                hooks=hooks)


def resume(run_path: str | Path, device: str = "auto", echo: Echo = print, overrides: list[str] | tuple = (),
           quiet: bool = False, progress: Progress | None = None) -> TrainResult:
    """Continue a run from its last finished epoch, in the same directory.

    Args:
        run_path: the run directory.
        overrides: only `train.epochs=N` (N more than the epochs done): train an interrupted
            or a completed run further; config.yaml and run.json record the new epochs and a
            completed run is scored again. Any other key would make one run mix two configs.
        device, echo, quiet, progress: as for `train`.
    """
    run = rundir.open_run(run_path)
    info = run.info()
    status = info.get("status")
    config_path = run.path / rundir.CONFIG
    mapping = read_run_config(config_path, rundir.data_source(run.path))
    changed = [apply_override(mapping, override, config_path) for override in overrides]
    refused = [path for path in changed if path != "train.epochs"]
    if refused:
        raise CnnlabError(
            f"--set {refused[0]}: with --resume only train.epochs can change (to train the run further); other keys "
            f"would make one run's checkpoints and history come from two configs. Start a new run instead: "
            f"`cnnlab train {config_path} --set {refused[0]}=...`, with --set train.init_from={run.path} "
            "to start from its weights."
        )
    history_path = run.path / rundir.HISTORY_JSON
    history = rundir.read_history(history_path)
    if status == "running" and rundir.process_alive(info):
        raise CnnlabError(f"{run.path}: process {info['pid']} is still training this run; stop it first "
                          "(Ctrl-C keeps every finished epoch), then resume.")
    if status == "diverged":
        at = info.get("diverged_at") or {}
        raise CnnlabError(
            f"{run.path}: its loss diverged at epoch {at.get('epoch', '?')}; resuming would diverge again. "
            f"Start a new run with a smaller learning rate: `cnnlab train {config_path} "
            "--set train.optimizer.learning_rate=...`" + (
                f", with --set train.init_from={run.path} to start from its best checkpoint."
                if run.checkpoint.exists() else ".")
        )
    if status == "completed" and not changed:
        raise CnnlabError(
            f"{run.path}: this run already completed ({len(history)} epochs); train it further with "
            f"`cnnlab train --resume {run.path} --set train.epochs={len(history) + 5}`, or start a new one "
            "with `cnnlab train`."
        )
    cfg = validate_config(mapping, config_path, changed)
    extend = bool(changed) and cfg.train.epochs != info.get("epochs_planned")
    if changed and cfg.train.epochs <= len(history):
        raise CnnlabError(
            f"--set train.epochs={cfg.train.epochs}: {run.path} has already finished {len(history)} epochs; "
            f"give more than {len(history)} to train it further."
        )
    if not (run.path / rundir.RESUME_STATE).exists():
        raise CnnlabError(
            f"{run.path}: nothing to resume from ({rundir.RESUME_STATE} is missing: the run stopped before its "
            f"first epoch finished); train its config again with `cnnlab train {config_path}`."
        )
    plan = check_model(cfg, str(config_path))
    data, backend = _load_and_start(cfg, plan, device, str(config_path), progress, quiet)
    dist = distribute.start(cfg, str(config_path), device, _info(echo, quiet))
    if dist is not None and not dist.chief:  # it resumes a private copy: only the chief writes the run
        run, quiet = rundir.open_run(dist.private_copy(run.path)), True
        config_path = run.path / rundir.CONFIG
    rundir.remove_temporaries(run.path)
    say = _info(echo, quiet)
    if extend:
        rundir.write_text(config_path, cfg.to_yaml())
        info["extensions"] = [*info.get("extensions", []),
                              {"epochs": [info.get("epochs_planned"), cfg.train.epochs], "at": _now()}]
        es = cfg.train.early_stopping
        if status == "completed" and es is not None and len(history) < (info.get("epochs_planned") or 0):
            say(f"note: early stopping ended this run after epoch {len(history)} ({es.monitor} did not improve for "
                f"{es.patience} epochs); it stops again after the next epoch unless {es.monitor} improves.")
    info.pop("error", None)
    info.update(status="running", resumed=_now(), epochs_planned=cfg.train.epochs, **rundir.this_process())
    rundir.write_json(run.path / rundir.RUN, info)
    say(f"resuming {run.path} after epoch {len(history)}" + (f", now for {cfg.train.epochs} epochs" if extend else ""))
    return _fit(cfg, plan, data, run.path, backend, echo, history=history, quiet=quiet, dist=dist)


def _load_and_start(cfg: Config, plan: ModelPlan, device: str, where: str, progress: Progress | None,
                    quiet: bool, reuse: dict | None = None) -> tuple[ImageData, tuple]:
    """Load the data and start TensorFlow: (data, backend); a mistake in either raises here.

    `reuse` (`Hooks.data`): the data of the last run in this process, by its `data:` section;
    the same section is not read again, and a new one replaces it there.

    A built-in set whose files are there is read in a thread while TensorFlow imports: its
    ~0.5 s go to gzip and md5, which release the GIL, so they use the second core instead of
    adding to the wall time. A user's folder (which draws its own progress bar) or a set that
    has to be downloaded first loads before, as a step of its own: a bad one fails at once.
    """
    if device == "cpu":  # known before TensorFlow starts
        _check_precision(cfg, "CPU", where)
    key = cfg.data.model_dump_json()
    if reuse is not None and key in reuse:
        data, backend = reuse[key], _start_backend(device, quiet)
    elif plan.data.own_data or not idx_files_present(plan.data, cfg.data.dir):
        own = plan.data.own_data
        with step(f"loading {plan.data.source if own else plan.data.name}", quiet, spinner=not own):
            data = load(cfg.data, plan.data, progress, where=where)
        backend = _start_backend(device, quiet)
    else:
        loaded: dict = {}

        def read() -> None:
            try:
                loaded["data"] = load(cfg.data, plan.data, progress, where=where)
            except BaseException as exc:  # raised in the main thread, below
                loaded["error"] = exc

        with step(f"loading {plan.data.name}", quiet, spinner=False):
            reader = threading.Thread(target=read, name="cnnlab-load", daemon=True)
            reader.start()
        try:
            backend = _start_backend(device, quiet)
        finally:
            reader.join()
        if "error" in loaded:
            raise loaded["error"]
        data = loaded["data"]
    if reuse is not None:
        reuse.clear()
        reuse[key] = data
    _check_precision(cfg, backend[1], where)
    return data, backend


def _check_precision(cfg: Config, device_name: str, where: str) -> None:
    """train.precision on this device: mixed_float16 on a CPU is refused (it is slower there than float32)."""
    if cfg.train.precision == "mixed_float16" and not device_name.startswith("GPU"):
        raise CnnlabError(
            f"{where}: train.precision: mixed_float16 on a CPU is slower than float32 (CPUs have no fast "
            "float16 arithmetic; it is for GPUs); use mixed_bfloat16 (fast on CPUs with AVX512_BF16 or AMX) "
            "or float32."
        )


def _info(echo: Echo, quiet: bool) -> Echo:
    """The echo for lines that are not results: nothing with --quiet."""
    return (lambda line: None) if quiet else echo


def _start_backend(device: str, quiet: bool):
    with step("starting TensorFlow", quiet):
        return init_backend(device)


def _fit(cfg: Config, plan: ModelPlan, data: ImageData, run_dir: Path, backend, echo: Echo,
         history: list[dict], quiet: bool = False, start: StartingWeights | None = None,
         dist: distribute.Distributed | None = None, hooks: Hooks | None = None) -> TrainResult:
    """Train and score in `run_dir`; every way this can end is written to run.json's status."""
    keras, _ = backend
    rows = list(history)  # the finished epochs; the recorder appends to this very list
    interactive = keras.config.is_interactive_logging_enabled()
    if quiet:  # Keras' progress bars and messages go to absl logging, which shows only warnings
        keras.config.disable_interactive_logging()
    try:
        return _train_and_score(cfg, plan, data, run_dir, backend, echo, rows, quiet, start, dist, hooks or Hooks())
    except KeyboardInterrupt:
        return _interrupted(cfg, run_dir, rows, echo)
    except Diverged:
        raise
    except Exception as exc:
        if isinstance(exc, rundir.DiskFull) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            raise _disk_full(exc, run_dir, rows) from None
        _mark(run_dir, status="failed", stopped=_now(), epochs_completed=len(rows), error=_first_line(exc))
        raise
    finally:
        if interactive:
            keras.config.enable_interactive_logging()
        if dist is not None:
            dist.close()  # a non-chief worker's private folder


def _train_and_score(cfg: Config, plan: ModelPlan, data: ImageData, run_dir: Path, backend, echo: Echo,
                     rows: list[dict], quiet: bool, start: StartingWeights | None,
                     dist: distribute.Distributed | None, hooks: Hooks) -> TrainResult:
    keras, device_name = backend
    say = _info(echo, quiet)
    history = list(rows)
    env = {**environment(keras, device_name), "precision": cfg.train.precision,
           "distribute": dist.record() if dist is not None else distribute.no_distribute_record(cfg)}
    if history and (run_dir / rundir.ENVIRONMENT).exists():  # the weights file the run started from
        env.update({k: v for k, v in rundir.read_json(run_dir / rundir.ENVIRONMENT).items() if k == "backbone"})
    rundir.write_json(run_dir / rundir.ENVIRONMENT, env)
    keras.utils.set_random_seed(cfg.seed + len(history))  # weights come from the state file when resuming
    splits = prepare(cfg, plan.input_shape, cfg.one_hot_labels(), data)
    warnings = [finding.message for finding in training_findings(data)]  # uneven classes, label conflicts, leaks
    weights = class_weights(cfg.train.class_weight, data.labels[splits.x_train.rows], plan.data.class_names,
                            str(run_dir / rundir.CONFIG))
    record = {**data_record(data, splits, cfg.data), "warnings": warnings,
              "class_weight": named_weights(weights, plan.data.class_names)}
    rundir.write_json(run_dir / rundir.DATA, record)
    say(describe_data(record))
    for warning in warnings:
        echo(f"warning: {warning}")
    batch_size = dist.global_batch if dist is not None else cfg.train.batch_size
    steps_per_epoch = -(-len(splits.x_train) // batch_size)
    mirrored = distribute.scope_of(dist)  # models and optimizers made in it have a copy on every replica
    if history:
        with mirrored:
            model = keras.saving.load_model(run_dir / rundir.RESUME_STATE, compile=True)
        done = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // steps_per_epoch
        if cfg.model.backbone is not None and fine_tuning(keras, model):  # fine-tuning's optimizer starts at 0
            done += cfg.train.epochs
        if done < len(history):  # killed between the history write and the state's rename
            say(f"the saved state is from epoch {done}: epoch {done + 1} is trained again")
            history = history[:done]
            rows[:] = history
            keras.utils.set_random_seed(cfg.seed + done)
    else:
        with mirrored:
            network = build_network(cfg, plan.input_shape, str(run_dir / rundir.CONFIG))
            model = network.model
            if network.backbone is not None:
                env["backbone"] = network.backbone.weights
                rundir.write_json(run_dir / rundir.ENVIRONMENT, env)
            if start is not None:
                start.apply(model)
                say(f"starting from the weights of {start.path}")
            compile_model(keras, model, cfg, steps_per_epoch)
    summary = summary_text(model)
    rundir.write_text(run_dir / rundir.SUMMARY, summary)
    say(summary)

    stop = hooks.stop or StopRequest()
    guard = _divergence_guard(keras)
    recorder = _recorder_class(keras)(cfg, run_dir, rows, stop, say, guard)
    callbacks = [recorder, guard]
    if cfg.train.early_stopping is not None:
        callbacks.append(_early_stopping(keras, cfg, history))
    callbacks += schedule_callbacks(keras, cfg, steps_per_epoch, history)
    if cfg.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    callbacks += hooks.callbacks
    validation = ordered_batches(splits.x_val, splits.y_val, eval_batch(cfg)) if splits.x_val is not None else None
    augment = augmentation(keras, cfg.data.augment, plan.data, cfg.data.scale, plan.input_shape, cfg.seed)
    started = time.perf_counter()
    with stop:
        if cfg.train.loop == "gradient_tape":  # the hand-written loop drives the same callbacks
            from cnnlab.tape import fit_with_gradient_tape

            fit_with_gradient_tape(model, cfg, splits, callbacks, initial_epoch=len(history), run_dir=run_dir,
                                   verbose=_verbose(cfg))
        elif dist is not None and dist.kind == "multi_worker":  # Keras' fit fails there: cnnlab's own step
            distribute.fit_distributed(keras, model, cfg, splits, callbacks, len(history), dist, augment,
                                       _verbose(cfg), run_dir)
        elif cfg.model.backbone is not None:  # the frozen phase (on features computed once), then fine-tuning
            fit_with_backbone(keras, model, cfg, splits, validation, callbacks, len(history), augment, batch_size,
                              recorder, (lambda: _early_stopping(keras, cfg, rows, fresh_patience=True))
                              if cfg.train.early_stopping is not None else None, say, _verbose(cfg), steps_per_epoch,
                              class_weight=weights)
        else:
            _run_fit(keras, model, cfg, splits, validation, callbacks, first_epoch=len(history), augment=augment,
                     batch_size=batch_size, class_weight=weights)
        stop.check()  # a Ctrl-C after the last batch still counts
    seconds = time.perf_counter() - started
    if dist is not None and not dist.chief:  # the chief scores, plots and exports; this copy is deleted
        echo(f"{dist.cluster.name()}: trained {len(rows)} epoch(s) with the chief; its run directory has the results")
        return TrainResult(run_dir, "completed", {})
    ck = cfg.train.checkpoint
    diverged = guard.diverged
    if diverged is not None:
        diverged["batches"] = steps_per_epoch
    if diverged is not None and not (run_dir / rundir.BEST).exists():
        if rows:
            plot_history(rows, run_dir, cfg.name, monitor=ck.monitor, mode=monitor_mode(ck.monitor, ck.mode),
                         phase_change=phase_change(cfg))
        _mark(run_dir, status="diverged", stopped=_now(), epochs_completed=len(rows), diverged_at=diverged)
        raise Diverged(_divergence_message(cfg, run_dir, diverged, rows), run_dir, diverged["epoch"], diverged["batch"])

    # The result line comes first, the curves and the TFLite copy (~1 s together) after it.
    # the model that trained is scored with the best weights (its evaluate step is traced by the
    # validation); multi_worker's model, outside Keras' fit, is scored as a fresh copy from disk
    # (and a fine-tuned backbone model, whose optimizer is not the one a frozen-phase best.keras holds)
    scored = None if (dist is not None and dist.kind == "multi_worker") or cfg.train.fine_tune else model
    with step(f"scoring the best checkpoint on {_count(splits.x_test)} test samples", quiet):
        metrics, probs = score_best(keras, run_dir, splits, cfg, plan.data.class_names, scored,
                                    eager=not hooks.export_tflite)
    metrics.update(_training_summary(cfg, rows, seconds, len(splits.x_train)))
    echo(
        f"test accuracy {metrics['test_accuracy']:.4f}, test loss {metrics['test_loss']:.4f} "
        f"(best epoch {metrics['best_epoch']}, {run_dir / rundir.BEST})"
    )
    per_class = metrics["test_accuracy_per_class"]
    if weights is not None or is_uneven(record["class_counts"]["train"]) or is_uneven(record["class_counts"]["test"]):
        echo(f"balanced accuracy {metrics['test_balanced_accuracy']:.4f} (the mean of the per-class accuracies: "
             "the classes are uneven" + (", weighted in training)" if weights is not None else ")"))
    if len(per_class) <= 20:
        say("per class: " + ", ".join(f"{name} {value:.3f}" for name, value in per_class.items()))
    if rows:
        plot_history(rows, run_dir, cfg.name, monitor=ck.monitor, mode=monitor_mode(ck.monitor, ck.mode),
                         phase_change=phase_change(cfg))
    # The trained model and its optimizer state (3x the weights) are done with: freed now, their
    # memory is reused by the converter instead of adding to the run's peak.
    del model, scored, recorder, guard, callbacks
    gc.collect()
    if hooks.export_tflite:
        with step("exporting model.tflite for predict", quiet):
            best_model = keras.saving.load_model(run_dir / rundir.BEST, compile=False)
            metrics.update(_export_for_predict(best_model, run_dir, splits, probs, say))
    if diverged is not None:
        metrics["diverged_at"] = diverged
    rundir.write_json(run_dir / rundir.METRICS, metrics)
    from cnnlab.report import TestOutputs

    outputs = TestOutputs(data.images if data.info.is_image else None, splits.labels_test, probs, splits.x_test.rows)
    if diverged is not None:
        _mark(run_dir, status="diverged", stopped=_now(), epochs_completed=len(rows), diverged_at=diverged)
        if hooks.report:
            _report(run_dir, outputs, say)
        raise Diverged(_divergence_message(cfg, run_dir, diverged, rows), run_dir, diverged["epoch"], diverged["batch"])
    rundir.update_json(run_dir / rundir.RUN, status="completed", finished=_now(), epochs_completed=len(rows))
    if hooks.report:
        _report(run_dir, outputs, say)
    _written(cfg, run_dir, say)
    return TrainResult(run_dir, "completed", metrics)


def _count(x) -> str:
    return f"{len(x):,}"


def _mark(run_dir: Path, **changes) -> bool:
    """Record how a run ended in run.json; False when even that could not be written."""
    try:
        rundir.update_json(run_dir / rundir.RUN, **changes)
        return True
    except (OSError, CnnlabError):
        return False


def _first_line(exc: BaseException) -> str:
    """The error for run.json: a user mistake's own sentence, or a bug's type and first line."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, CnnlabError):
        return lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _interrupted(cfg: Config, run_dir: Path, rows: list[dict], echo: Echo) -> TrainResult:
    """Ctrl-C or SIGTERM: keep what finished and say what is true about it."""
    if rows:
        try:
            plot_history(rows, run_dir, cfg.name, phase_change=phase_change(cfg))
        except rundir.DiskFull:
            pass  # the curves are a convenience; the run's own files matter more
    _mark(run_dir, status="interrupted", stopped=_now(), epochs_completed=len(rows))
    _report(run_dir, None, echo)
    if (run_dir / rundir.RESUME_STATE).exists():
        kept = f"; {rundir.BEST} is kept" if (run_dir / rundir.BEST).exists() else ""
        echo(f"\ninterrupted after {len(rows)} finished epoch(s){kept}.")
        echo(f"resume with: cnnlab train --resume {shlex.quote(str(run_dir))}")
    else:
        echo("\ninterrupted before the first epoch finished: nothing was saved (no checkpoint, nothing to resume).")
        echo(f"delete {run_dir}, or train its config again: cnnlab train {shlex.quote(str(run_dir / rundir.CONFIG))}")
    return TrainResult(run_dir, "interrupted", {})


def _report(run_dir: Path, outputs, say: Echo) -> None:
    """report.html from the test outputs just computed (None: from the run's files only).

    The page is for people: failing to draw it costs the run only the page, as model.tflite's export does.
    """
    from cnnlab.report import REPORT, write_report

    try:
        write_report(run_dir, outputs, predict=False)
    except Exception as exc:  # noqa: BLE001 - the run's own files are all written by now
        say(f"note: no {REPORT} written ({_first_line(exc)})")


def _disk_full(exc: Exception, run_dir: Path, rows: list[dict]) -> CnnlabError:
    """A full disk: the run is interrupted (its atomic files are whole) and resumable once space is freed."""
    path = exc.path if isinstance(exc, rundir.DiskFull) else Path(getattr(exc, "filename", None) or run_dir)
    needed = exc.needed if isinstance(exc, rundir.DiskFull) else None
    checkpoints = [run_dir / rundir.RESUME_STATE, run_dir / rundir.BEST]
    if path in checkpoints:  # an epoch writes both beside their previous versions before the renames
        needed = sum(file.stat().st_size for file in checkpoints if file.is_file()) or None
    what = str(rundir.DiskFull(path, rundir.free_bytes(run_dir), needed))  # measured now, the temporaries gone
    marked = _mark(run_dir, status="interrupted", stopped=_now(), epochs_completed=len(rows), error=what)
    note = "" if marked else f" ({rundir.RUN} could not be updated either)"
    if (run_dir / rundir.RESUME_STATE).exists():
        return CnnlabError(
            f"{what}; the run is interrupted after {len(rows)} finished epoch(s){note}, its {rundir.BEST} intact: "
            f"free some space, then continue it with `cnnlab train --resume {shlex.quote(str(run_dir))}`."
        )
    return CnnlabError(
        f"{what}; no epoch had finished, so there is nothing to resume{note}: free some space, then train again "
        f"with `cnnlab train {shlex.quote(str(run_dir / rundir.CONFIG))}`."
    )


def _divergence_message(cfg: Config, run_dir: Path, at: dict, rows: list[dict]) -> str:
    where = (f"{run_dir}: training diverged: the loss reached {at['loss']} at epoch {at['epoch']}, "
             f"batch {at['batch']} of {at['batches']}")
    if (run_dir / rundir.BEST).exists():
        kept = f"It stopped; {rundir.BEST}, from the {len(rows)} epoch(s) before, is scored above"
    else:
        kept = "It stopped with no checkpoint saved"
    optimizer = cfg.train.optimizer
    if cfg.train.lr_schedule is not None:
        key, rate, default = "train.lr_schedule.max_learning_rate", cfg.train.lr_schedule.max_learning_rate, None
    else:
        key, rate = "train.optimizer.learning_rate", optimizer.learning_rate
        default = type(optimizer).model_fields["learning_rate"].default
    if default is not None and rate > 10 * default:
        smaller = f"{default:g}, {optimizer.name}'s default"
    else:
        smaller = f"{rate / 10:g}"
    tips = [f"a smaller learning rate ({key} is {rate:g}; e.g. --set {key}={smaller})"]
    if cfg.data.scale < 10:
        tips.append(f"inputs scaled to 0..1 (data.scale is {cfg.data.scale:g}; 255 for 8-bit images)")
    tips.append("batch_normalization layers")
    return f"{where}. {kept} (run.json: status diverged). Try {', or '.join(tips)}."


def _written(cfg: Config, run_dir: Path, say: Echo) -> None:
    """The final lines: what the run directory now holds, and what to do next."""
    from cnnlab.export import TFLITE

    from cnnlab.report import REPORT

    names = [rundir.BEST, TFLITE, REPORT, *sorted(p.name for p in run_dir.glob("*.png")), rundir.METRICS,
             rundir.HISTORY_CSV]
    say(f"written to {run_dir}/: {', '.join(name for name in names if (run_dir / name).exists())}")
    if cfg.train.tensorboard:
        say(f"TensorBoard logs: tensorboard --logdir {shlex.quote(str(run_dir / 'tensorboard'))}")
    quoted = shlex.quote(str(run_dir))
    say(f"next: cnnlab evaluate {quoted}")
    say(f"      cnnlab predict {quoted} IMAGE...")


@dataclass
class StartingWeights:
    """Where a run starts from (`train.init_from`): the model file, and the weights of each layer that has some."""

    path: Path
    weights: list[list[np.ndarray]]

    def apply(self, model) -> None:
        for layer, weights in zip([layer for layer in model.layers if layer.weights], self.weights):
            layer.set_weights(weights)


def _starting_weights(keras, cfg: Config, plan: ModelPlan, source, quiet: bool) -> StartingWeights:
    """The weights of `train.init_from`, checked layer by layer against the config's model."""
    # checkpoint.py is a later stage; it is the one that loads a model file safely (config read
    # first, Lambda layers refused, Keras' safe mode), so it is imported here, when needed.
    from cnnlab.checkpoint import MODEL_SUFFIXES, load_model_file, why_no_checkpoint

    given = Path(cfg.train.init_from)
    where = f"{source}: train.init_from: {given}"
    if given.is_dir():
        if not (given / rundir.CONFIG).is_file() or not (given / rundir.RUN).is_file():
            raise CnnlabError(f"{where}: is a folder but not a cnnlab run directory; give a run or a "
                              f"{', '.join(MODEL_SUFFIXES)} file.")
        run = rundir.open_run(given)
        path = run.checkpoint
        if not path.exists():
            raise CnnlabError(f"{where}: the run has no {rundir.BEST}: {why_no_checkpoint(run)}")
    elif not given.exists():
        raise CnnlabError(f"{where}: no such run directory or model file.")
    elif given.suffix.lower() not in MODEL_SUFFIXES:
        raise CnnlabError(f"{where}: is not a run directory or a {', '.join(MODEL_SUFFIXES)} file.")
    else:
        path = given
    with step(f"loading the starting weights from {path}", quiet):
        try:
            theirs = load_model_file(path, unsafe_hint=" A starting point has to load without running code.")
        except CnnlabError as exc:
            raise CnnlabError(f"{source}: train.init_from: {exc}") from None
    ours = build_model(cfg, plan.input_shape)
    config_index = [index for index, layer in enumerate(cfg.model.layers) if layer.type != "input"]
    their_layers = [(i, layer) for i, layer in enumerate(theirs.layers) if layer.weights]
    our_layers = [(config_index[i], layer) for i, layer in enumerate(ours.layers) if layer.weights]
    for pair, mine in itertools.zip_longest(their_layers, our_layers):
        if pair is None:
            j = mine[0]
            raise CnnlabError(
                f"{where}: has {len(their_layers)} layers with weights, this config's model {len(our_layers)}: "
                f"model.layers[{j}] ({cfg.model.layers[j].type}) has none to start from."
            )
        if mine is None:
            raise CnnlabError(
                f"{where}: has {len(their_layers)} layers with weights, this config's model only {len(our_layers)}: "
                f"its layer {pair[0]} ({_kind(pair[1])}) has no counterpart."
            )
        (i, layer), (j, target) = pair, mine
        have = [tuple(w.shape) for w in layer.weights]
        need = [tuple(w.shape) for w in target.weights]
        if have != need:
            if len(have) == len(need):
                have, need = next((h, n) for h, n in zip(have, need) if h != n)
            raise CnnlabError(
                f"{where}: layer {i} ({_kind(layer)}) has weights of shape {_shapes(have)}, this config's "
                f"model.layers[{j}] ({cfg.model.layers[j].type}) needs {_shapes(need)}."
            )
    return StartingWeights(path, [layer.get_weights() for _, layer in their_layers])


def _kind(layer) -> str:
    """A Keras layer's kind as a config names it: Dense -> dense, Conv2D -> conv2d."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])", "_", type(layer).__name__).lower()


def _shapes(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _run_fit(keras, model, cfg: Config, splits: Splits, validation, callbacks, first_epoch: int,
             augment=None, batch_size: int | None = None, class_weight: dict[int, float] | None = None) -> None:
    common = dict(validation_data=validation, epochs=cfg.train.epochs, initial_epoch=first_epoch,
                  callbacks=callbacks, verbose=_verbose(cfg), class_weight=class_weight)
    batches, steps = epoch_batches(
        splits.x_train, splits.y_train, batch_size or cfg.train.batch_size, cfg.seed, first_epoch, cfg.train.epochs,
        augment
    )
    model.fit(batches, steps_per_epoch=steps, shuffle=False, **common)


def _verbose(cfg: Config) -> int:
    if cfg.train.verbose != "auto":
        return cfg.train.verbose
    return 1 if sys.stdout.isatty() else 2  # a live bar on a terminal, a line per epoch in logs


def init_backend(device: str):
    """Import Keras on the requested device; returns (keras, a name for that device).

    TensorFlow's own chatter is hidden unless $CNNLAB_VERBOSE is 1 (`cnnlab --verbose`):
    TF_CPP_MIN_LOG_LEVEL=2 (unless set) silences its C++ INFO/WARNING logs after start-up,
    and the lines it prints while its shared libraries load are filtered out (see
    `_start_up_lines_hidden`); Keras' absl warnings are raised to errors.
    """
    verbose = os.environ.get(VERBOSE_ENV) == "1"
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # takes effect only before TensorFlow starts
    first = "tensorflow" not in sys.modules
    with _start_up_lines_hidden(not verbose and first):
        if first:  # Python's collector would walk the import's objects hundreds of times: ~0.5 s
            gc.disable()
        try:
            import keras
        finally:
            if first:
                gc.enable()
                # TensorFlow's modules live as long as the process: kept out of every later
                # collection (and of the ones at exit, which took ~1 s after training).
                gc.freeze()
    if not verbose:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)

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


# A line of TensorFlow's C++ logging: "I0000 00:00:1795584511.108566    5723 port.cc:153] ..." (absl before
# its InitializeLog: month-day 0000, the seconds since 1970)
# or "2026-01-30 22:44:42.456316: I tensorflow/core/util/port.cc:153] ..." (older TSL format).
_TF_LOG_LINE = re.compile(
    r"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] )\S+:\d+\] "
)
_START_UP_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",  # the second line of cpu_feature_guard's notice
)


@contextmanager
def _start_up_lines_hidden(hide: bool) -> Iterator[None]:
    """Filter TensorFlow's C++ start-up lines out of stderr while it is imported.

    They come from static initialisers of TensorFlow's shared libraries, which log through
    their own copies of absl before anything has set a log level, so TF_CPP_MIN_LOG_LEVEL does
    not reach them: libtensorflow_framework.so.2 and _pywrap_profiler_plugin.so each print
    absl's "WARNING: All log messages before absl::InitializeLog() ..." and port.cc's "oneDNN
    custom operations are on ..." (oneDNN stays on: TF_ENABLE_ONEDNN_OPTS=0 would silence it
    by making training slower). So stderr's file descriptor is pointed at a temporary file for
    the import; lines in TensorFlow's log format are dropped, anything else is passed on, and
    all of it when the import fails.
    """
    if not hide:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            try:
                sys.stderr.flush()
            except ValueError:
                pass
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = lines if failed else [
                line for line in lines if not _TF_LOG_LINE.match(line) and not line.startswith(_START_UP_NOISE)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def environment(keras, device_name: str) -> dict:
    version = rundir.installed_version
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cnnlab": version("cnnlab"), "keras": keras.__version__, "backend": keras.backend.backend(),
        "tensorflow": version("tensorflow") or version("tensorflow-cpu"), "numpy": np.__version__,
        "device": device_name,
    }


def _early_stopping(keras, cfg: Config, history: list[dict], fresh_patience: bool = False):
    """Early stopping that starts from the best value in `history`, and its patience (or afresh)."""
    es = cfg.train.early_stopping
    mode = monitor_mode(es.monitor, es.mode)
    resumed = None
    values = [row[es.monitor] for row in history if es.monitor in row]
    if values:  # a resumed run keeps counting patience where it left off
        best_index = int(np.argmax(values) if mode == "max" else np.argmin(values))
        resumed = (values[best_index], 0 if fresh_patience else len(values) - 1 - best_index)

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if resumed is not None:
                self.best, self.wait = resumed

    return ResumableEarlyStopping(
        monitor=es.monitor, mode=mode, patience=es.patience,
        min_delta=es.min_delta, restore_best_weights=es.restore_best_weights,
    )


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM while training: stop at the next batch, as an interruption.

    Python raises KeyboardInterrupt wherever the main thread is when the signal lands; inside
    one of TensorFlow's `__del__` methods it is printed as "Exception ignored" and lost, and
    training went on to the end (seen once in CI). Here the signal only sets a flag, which the
    recorder turns into KeyboardInterrupt at a batch boundary, in cnnlab's own code. A second
    signal raises at once, for a batch that never ends. A signal that was ignored when
    training started (SIG_IGN, as for a background job) stays ignored; on leaving, the
    handlers found on entering are put back. It may be entered again inside itself (tune's
    request around the study, then each trial's fit): only the outermost entry and exit touch
    the handlers, and a request stays requested.
    """

    def __init__(self):
        self.requested = False
        self._previous: dict = {}
        self._depth = 0

    def __enter__(self):
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():  # only it gets signals
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) == signal.SIG_IGN:
                    # Started with it ignored (`cnnlab train ... &` in a script, nohup): a Unix program
                    # keeps an ignored signal ignored. SIGTERM still stops such a run cleanly.
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info):
        self._depth -= 1
        if self._depth:
            return
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

        # Its batch hooks only read a flag: Keras may call them from its worker thread, so
        # that `fit` need not wait for every step's logs (a stop request raised there reaches
        # the training loop at the next batch, as Keras re-raises it from the future).
        async_safe = True

        def __init__(self, cfg: Config, run_dir: Path, rows: list[dict], stop: StopRequest, say: Echo = print,
                     guard=None):
            super().__init__()
            # rows: the finished epochs, appended to in place (the caller reads them after an interruption)
            self.cfg, self.run_dir, self.rows, self.stop, self.say = cfg, run_dir, rows, stop, say
            self.guard = guard  # the divergence guard: an epoch it stopped is not recorded
            self.saved_model = None  # what is saved, when not the model that trains (a backbone's head)
            self.deferred: list[dict] | None = None  # epochs not yet written (see `defer`)
            self._best_weights = None
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
            # The resume state is renamed into place last: a kill before that leaves the previous
            # epoch's state, and `resume` replays this epoch (it trusts the state, not the history).
            with rundir.atomic_path(self.run_dir / rundir.RESUME_STATE, suffix=".keras") as state:
                (self.saved_model or self.model).save(state)
                if improved:  # the same model and optimizer: a copy, not a second serialisation
                    rundir.copy_file(state, self.run_dir / rundir.BEST)
                pattern = self.cfg.train.checkpoint.filename
                if pattern and (improved or not self.cfg.train.checkpoint.save_best_only):
                    named = self.run_dir / pattern.format(epoch=epoch + 1, **logs)
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

    return RunRecorder


EXPLODED = 1000.0  # a running loss this many times above max(its first value, 1) has diverged


def _divergence_guard(keras):
    """Keras' TerminateOnNaN, which also stops an exploding loss and remembers where it diverged.

    A learning rate far too large does not always give NaN: dnn.yaml with SGD at 1e5 reaches a
    finite loss of 1e30 (Keras computes cross-entropy from the softmax's logits, which are
    unbounded) and ends at chance accuracy. So a running loss above EXPLODED times its first
    value (or 1, if that was smaller) stops training too: cross-entropy at chance is ln(classes),
    about 2.3 for 10, so 1000 is far beyond any model that is still learning.
    """

    class DivergenceGuard(keras.callbacks.TerminateOnNaN):
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

    return DivergenceGuard()


def _csv_value(value) -> str:
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


def score_best(keras, run_dir: Path, splits: Splits, cfg: Config, class_names: tuple[str, ...], trained=None,
               eager: bool = False):
    """Test loss, accuracy (overall and per class) of the best checkpoint as saved on disk.

    Returns the metrics and the model's outputs on the test samples. The loss is `evaluate`'s:
    a softmax's output tensor carries its logits, and Keras' losses compute from those, which
    `predict`'s probabilities cannot (binary_crossentropy on a 2-unit softmax, as the XOR MLP
    has, differs several-fold). `trained`: the model that just trained, compiled with the
    training loss; the checkpoint's weights are loaded into it, and its evaluate step, traced by
    the validation at the same batch size, is reused (a fresh model traces it again: ~0.1 s a
    tune trial). Without it the checkpoint is loaded without compiling, so the optimizer's state
    (twice the weights) stays on disk, and compiled with the loss only. `eager`: the test
    outputs come from eager calls instead of `predict`, whose function is not traced then; those
    calls add ~10 MB to the peak of a run whose TFLite export follows (mnist_fast: 835 -> 845 MB).
    """
    best = run_dir / rundir.BEST
    if trained is not None:
        model = trained
        model.load_weights(best)
    else:
        model = keras.saving.load_model(best, compile=False)
        model.compile(loss=make_loss(keras, cfg.train.loss, cfg.one_hot_labels()))
    batch = eval_batch(cfg)
    loss = model.evaluate(ordered_batches(splits.x_test, splits.y_test, batch), verbose=0, return_dict=True)["loss"]
    if eager:  # no predict function to trace (~0.1 s a tune trial)
        probs = np.concatenate([keras.ops.convert_to_numpy(model(x, training=False))
                                for x in ordered_batches(splits.x_test, None, batch)])
    else:
        probs = model.predict(ordered_batches(splits.x_test, None, batch), verbose=0)
    right = class_predictions(probs, logits=cfg.train.loss.from_logits) == splits.labels_test
    per_class = {name: float(np.mean(right[splits.labels_test == i])) for i, name in enumerate(class_names)
                 if np.any(splits.labels_test == i)}
    return {"test_loss": float(loss), "test_accuracy": float(np.mean(right)),
            "test_balanced_accuracy": float(np.mean(list(per_class.values()))),  # the mean recall of the classes
            "test_samples": len(splits.x_test), "test_accuracy_per_class": per_class}, probs


def eval_batch(cfg: Config) -> int:
    """The batch size for validation and test scoring: no gradients, so larger batches are faster."""
    return max(cfg.train.batch_size, 256)


def describe_data(record: dict) -> str:
    """The data line of train's report: data set, classes with their names, image format, sample counts."""
    classes = record["classes"]
    names = ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")
    where = f" {record['source']}" if record.get("source") else ""
    image = (f", {record['image_size'][0]}x{record['image_size'][1]} {record['color']}"
             if record.get("image_size") else "")
    counts = record["samples"]
    skipped = f"; {len(record['skipped_files'])} unreadable files skipped" if record.get("skipped_files") else ""
    return (f"data: {record['dataset']}{where}{image}; {len(classes)} classes: {names}; "
            f"{counts['train']:,} training, {counts['validation']:,} validation, {counts['test']:,} test samples{skipped}")


def _export_for_predict(model, run_dir: Path, splits: Splits, probs: np.ndarray, echo: Echo) -> dict:
    """Also write the best model as TFLite, so `cnnlab predict` needs no TensorFlow; `probs`: Keras' test outputs."""
    from cnnlab.export import TFLITE, export_tflite

    try:
        diff = export_tflite(model, run_dir / TFLITE, splits.x_test[:256], expected=probs[:256])
    except rundir.DiskFull:
        raise  # not the converter's fault: the run is interrupted, and says so
    except Exception as exc:  # any converter failure only costs predict its fast path
        echo(f"note: no {TFLITE} written ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
             "predict will use Keras")
        return {"tflite": None}
    # what it was made from, by content: a copy of the run (cp -r, a zip) keeps no file times
    return {"tflite": TFLITE, "tflite_max_abs_diff": diff, "tflite_from_sha256": rundir.sha256(run_dir / rundir.BEST)}


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
