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
- diverged: the loss became NaN, infinite or exploded (`cnnlab.callbacks.EXPLODED`); raises `Diverged`
  (after scoring the best checkpoint of the epochs before, if there is one).
- failed: any other error, recorded in run.json and raised.

How a run ends is `cnnlab.outcome`; starting weights are `cnnlab.init_from`; the callbacks
`cnnlab.callbacks`; TensorFlow's start-up `cnnlab.backend`.

Example:
    cfg = load_config("configs/cnn.yaml", ["train.epochs=1"])
    result = train(cfg, "configs/cnn.yaml", runs_dir="runs")
    result.metrics["test_accuracy"]
"""

from __future__ import annotations

import errno
import gc
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cnnlab import distribute, rundir, track
from cnnlab.backend import StopRequest, environment, init_backend, step
from cnnlab.compile import compile_model, make_loss, monitor_mode, schedule_callbacks
from cnnlab.config import Config, apply_override, read_run_config, validate_config
from cnnlab.data import ImageData, Splits, data_record, describe_data, idx_files_present, load, prepare
from cnnlab.data.audit import training_findings
from cnnlab.data.balance import class_weights, is_uneven
from cnnlab.data.balance import named as named_weights
from cnnlab.data.cache import Progress
from cnnlab.data.pipeline import augmentation, epoch_batches, ordered_batches
from cnnlab.errors import CnnlabError
from cnnlab.init_from import StartingWeights, starting_weights
from cnnlab.litert import TFLITE
from cnnlab.model import ModelPlan, build_network, check_model, class_predictions, summary_text
from cnnlab.outcome import Diverged, disk_full, divergence_message, error_line, interrupted, mark, now
from cnnlab.plots import plot_history
from cnnlab.transfer import fine_tuning, fit_with_backbone, phase_change, total_epochs

Echo = Callable[[str], None]


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
        track: a study's MLflow run (`cnnlab.track.Tracker`): the run, if tracked, is its child.
    """

    callbacks: list = field(default_factory=list)
    data: dict | None = None
    export_tflite: bool = True
    report: bool = True
    stop: StopRequest | None = None
    track: track.Tracker | None = None


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
    with track.session(cfg, runs_dir, hooks.track, distribute.chief(cfg), echo) as session:  # mlflow imports now
        # a missing GPU or data file, or a class weight for no class, fails here, before a run folder exists
        data, backend = _load_and_start(cfg, plan, device, str(source), progress, quiet, hooks.data)
        class_weights(cfg.train.class_weight, data.labels[data.train], plan.data.class_names, str(source))
        dist = distribute.start(cfg, str(source), device, _info(echo, quiet))  # waits for the other workers
        if dist is not None and not dist.chief:  # only the chief writes the run directory
            runs_dir, quiet = dist.private_dir(), True
        start = starting_weights(backend[0], cfg, plan, source, quiet) if cfg.train.init_from else None
        run_dir = rundir.create_run_dir(runs_dir, cfg.name)
        rundir.write_text(run_dir / rundir.CONFIG, cfg.to_yaml())
        rundir.write_json(run_dir / rundir.RUN, {
            "name": cfg.name, "status": "running", "config_source": str(source),
            "started": now(), "epochs_planned": total_epochs(cfg), "epochs_completed": 0,
            **({"init_from": str(start.path)} if start else {}), **rundir.this_process(),
        })
        _info(echo, quiet)(f"run directory: {run_dir}")
        return _fit(cfg, plan, data, run_dir, backend, echo, history=[], quiet=quiet, start=start, dist=dist,
                    hooks=hooks, session=session)


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
    with track.session(cfg, run.path.parent, chief=distribute.chief(cfg), say=echo) as session:
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
                                  {"epochs": [info.get("epochs_planned"), cfg.train.epochs], "at": now()}]
            es = cfg.train.early_stopping
            if status == "completed" and es is not None and len(history) < (info.get("epochs_planned") or 0):
                say(f"note: early stopping ended this run after epoch {len(history)} ({es.monitor} did not improve "
                    f"for {es.patience} epochs); it stops again after the next epoch unless {es.monitor} improves.")
        info.pop("error", None)
        info.update(status="running", resumed=now(), epochs_planned=cfg.train.epochs, **rundir.this_process())
        rundir.write_json(run.path / rundir.RUN, info)
        say(f"resuming {run.path} after epoch {len(history)}"
            + (f", now for {cfg.train.epochs} epochs" if extend else ""))
        return _fit(cfg, plan, data, run.path, backend, echo, history=history, quiet=quiet, dist=dist,
                    session=session)


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
         dist: distribute.Distributed | None = None, hooks: Hooks | None = None,
         session: track.Session | None = None) -> TrainResult:
    """Train and score in `run_dir`; every way this can end is written to run.json's status."""
    keras, _ = backend
    rows = list(history)  # the finished epochs; the recorder appends to this very list
    interactive = keras.config.is_interactive_logging_enabled()
    if quiet:  # Keras' progress bars and messages go to absl logging, which shows only warnings
        keras.config.disable_interactive_logging()
    hooks = hooks or Hooks()
    tracker = track.start(cfg, run_dir, session, hooks.track)
    try:
        return _train_and_score(cfg, plan, data, run_dir, backend, echo, rows, quiet, start, dist, hooks, tracker)
    except KeyboardInterrupt:
        interrupted(cfg, run_dir, rows, echo, phase_change=phase_change(cfg),
                    marked=lambda: _report(run_dir, None, echo))
        return TrainResult(run_dir, "interrupted", {})
    except Diverged:
        raise
    except Exception as exc:
        if isinstance(exc, rundir.DiskFull) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            raise disk_full(exc, run_dir, rows) from None
        mark(run_dir, status="failed", stopped=now(), epochs_completed=len(rows), error=error_line(exc))
        raise
    finally:
        if interactive:
            keras.config.enable_interactive_logging()
        if dist is not None:
            dist.close()  # a non-chief worker's private folder
        track.finish(tracker)  # as run.json says the run ended


def _train_and_score(cfg: Config, plan: ModelPlan, data: ImageData, run_dir: Path, backend, echo: Echo,
                     rows: list[dict], quiet: bool, start: StartingWeights | None,
                     dist: distribute.Distributed | None, hooks: Hooks, tracker: track.Tracker | None) -> TrainResult:
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

    from cnnlab.callbacks import DivergenceGuard, RunRecorder  # Keras is imported now

    stop = hooks.stop or StopRequest()
    guard = DivergenceGuard()
    ck = cfg.train.checkpoint
    recorder = RunRecorder(run_dir, rows, stop, ck.monitor, monitor_mode(ck.monitor, ck.mode), ck.filename,
                           ck.save_best_only, say, guard)
    callbacks = [recorder, guard]
    if cfg.train.early_stopping is not None:
        callbacks.append(_early_stopping(cfg, history))
    callbacks += schedule_callbacks(keras, cfg, steps_per_epoch, history)
    if cfg.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    callbacks += track.callbacks_for(tracker, rows) + hooks.callbacks  # the epoch is queued for MLflow first
    validation = None
    if splits.x_val is not None:
        validation = ordered_batches(splits.x_val, splits.y_val, eval_batch(cfg, splits.x_val.sample_shape))
    augment = augmentation(keras, cfg.data.augment, plan.data, cfg.data.scale, plan.input_shape, cfg.seed)
    started = time.perf_counter()
    with stop:
        if cfg.train.loop == "gradient_tape":  # the hand-written loop drives the same callbacks
            from cnnlab.tape import fit_with_gradient_tape

            fit_with_gradient_tape(model, cfg, splits, callbacks, initial_epoch=len(history), run_dir=run_dir,
                                   verbose=_verbose(cfg), class_weight=weights)
        elif dist is not None and dist.kind == "multi_worker":  # Keras' fit fails there: cnnlab's own step
            distribute.fit_distributed(keras, model, cfg, splits, callbacks, len(history), dist, augment,
                                       _verbose(cfg), run_dir, class_weight=weights)
        elif cfg.model.backbone is not None:  # the frozen phase (on features computed once), then fine-tuning
            fit_with_backbone(keras, model, cfg, splits, validation, callbacks, len(history), augment, batch_size,
                              recorder, (lambda: _early_stopping(cfg, rows, fresh_patience=True))
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
        mark(run_dir, status="diverged", stopped=now(), epochs_completed=len(rows), diverged_at=diverged)
        raise Diverged(divergence_message(cfg, run_dir, diverged, rows), run_dir, diverged["epoch"], diverged["batch"])

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
        mark(run_dir, status="diverged", stopped=now(), epochs_completed=len(rows), diverged_at=diverged)
        if hooks.report:
            _report(run_dir, outputs, say)
        raise Diverged(divergence_message(cfg, run_dir, diverged, rows), run_dir, diverged["epoch"], diverged["batch"])
    rundir.update_json(run_dir / rundir.RUN, status="completed", finished=now(), epochs_completed=len(rows))
    if hooks.report:
        _report(run_dir, outputs, say)
    _written(cfg, run_dir, say)
    return TrainResult(run_dir, "completed", metrics)


def _count(x) -> str:
    return f"{len(x):,}"


def _report(run_dir: Path, outputs, say: Echo) -> None:
    """report.html from the test outputs just computed (None: from the run's files only).

    The page is for people: failing to draw it costs the run only the page, as model.tflite's export does.
    """
    from cnnlab.report import REPORT, write_report

    try:
        write_report(run_dir, outputs, predict=False)
    except Exception as exc:  # noqa: BLE001 - the run's own files are all written by now
        say(f"note: no {REPORT} written ({error_line(exc)})")


def _written(cfg: Config, run_dir: Path, say: Echo) -> None:
    """The final lines: what the run directory now holds, and what to do next."""
    from cnnlab.report import REPORT

    names = [rundir.BEST, TFLITE, REPORT, *sorted(p.name for p in run_dir.glob("*.png")), rundir.METRICS,
             rundir.HISTORY_CSV]
    say(f"written to {run_dir}/: {', '.join(name for name in names if (run_dir / name).exists())}")
    if cfg.train.tensorboard:
        say(f"TensorBoard logs: tensorboard --logdir {shlex.quote(str(run_dir / 'tensorboard'))}")
    quoted = shlex.quote(str(run_dir))
    say(f"next: cnnlab evaluate {quoted}")
    say(f"      cnnlab predict {quoted} IMAGE...")


def _run_fit(keras, model, cfg: Config, splits: Splits, validation, callbacks, first_epoch: int,
             augment=None, batch_size: int | None = None, class_weight: dict[int, float] | None = None) -> None:
    common = dict(validation_data=validation, epochs=cfg.train.epochs, initial_epoch=first_epoch,
                  callbacks=callbacks, verbose=_verbose(cfg), class_weight=class_weight)
    batches, steps = epoch_batches(
        splits.x_train, splits.y_train, batch_size or cfg.train.batch_size, cfg.seed, first_epoch, cfg.train.epochs,
        augment
    )
    model.fit(batches, steps_per_epoch=steps, shuffle=False, **common)


def _early_stopping(cfg: Config, history: list[dict], fresh_patience: bool = False):
    """train.early_stopping's callback, starting from the best value in `history` and its patience (or afresh)."""
    from cnnlab.callbacks import ResumableEarlyStopping

    es = cfg.train.early_stopping
    return ResumableEarlyStopping(history, fresh_patience=fresh_patience, monitor=es.monitor,
                                  mode=monitor_mode(es.monitor, es.mode), patience=es.patience,
                                  min_delta=es.min_delta, restore_best_weights=es.restore_best_weights)


def _verbose(cfg: Config) -> int:
    if cfg.train.verbose != "auto":
        return cfg.train.verbose
    return 1 if sys.stdout.isatty() else 2  # a live bar on a terminal, a line per epoch in logs


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
    calls add to the peak memory of a run whose TFLite export follows.
    """
    best = run_dir / rundir.BEST
    if trained is not None:
        model = trained
        model.load_weights(best)
    else:
        model = keras.saving.load_model(best, compile=False)
        model.compile(loss=make_loss(keras, cfg.train.loss, cfg.one_hot_labels()))
    batch = eval_batch(cfg, splits.x_test.sample_shape)
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


def eval_batch(cfg: Config, sample_shape: tuple[int, ...]) -> int:
    """The batch size for validation and test scoring: no gradients, so larger batches are faster,
    up to 256 digits' worth of values (a batch of 256 photos at 224x224 took 1 GB more at its peak)."""
    values = int(np.prod(sample_shape))
    return max(cfg.train.batch_size, min(256, _EVAL_VALUES // max(values, 1)))


_EVAL_VALUES = 256 * 28 * 28 * 8  # values in one scoring batch: 256 MNIST digits, 8 times over


def _export_for_predict(model, run_dir: Path, splits: Splits, probs: np.ndarray, echo: Echo) -> dict:
    """Also write the best model as TFLite, so `cnnlab predict` needs no TensorFlow; `probs`: Keras' test outputs."""
    from cnnlab.export import export_tflite

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
