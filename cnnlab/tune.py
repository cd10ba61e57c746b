"""Hyperparameter search: a config's `tune:` section searched with Optuna, one run directory per trial.

    runs/<study>/
      study.db                      the Optuna study (SQLite, unless --storage names another database)
      trial-000-<timestamp>/ ...    each trial an ordinary run directory (evaluate, predict, compare take it)
      trials.csv                    one row per trial: number, state, value, parameters, epochs, seconds, run
      best.yaml                     the best trial's config, without the tune section: `cnnlab train` takes it
      history.png, importances.png, slice.png, parallel.png, intermediate.png   the study's figures
      report.html                   one page: the trials table, the best trial's config, the figures

Trials run one after another in this process (TensorFlow is imported once; Keras' state is
cleared between trials). Several processes, here (`workers`) or on other machines (one
`--storage` database URL), share one study: each asks Optuna for the next trial until the study
has `tune.trials` finished (completed or pruned) trials. A trial is pruned when Optuna's pruner,
told the objective after every epoch, finds it weak: it stops at that epoch's end and is scored
like any run. Ctrl-C or SIGTERM marks the running trial failed; a trial whose process was
killed is marked failed by the next process on the same machine that opens the study, so
running the same command again continues the study.

Example:
    result = tune("configs/tune_cnn.yaml", trials=5)
    result.best.value, result.folder / "best.yaml"
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import shlex
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cnnlab import rundir, track
from cnnlab.compile import monitor_mode
from cnnlab.config import (
    Config,
    RunName,
    SearchRange,
    TuneSection,
    apply_override,
    did_you_mean,
    parse_key_path,
    read_config,
    validate_config,
    value_at,
)
from cnnlab.errors import CnnlabError
from cnnlab.study_figures import write_figures
from cnnlab.study_storage import (
    BEST_CONFIG,
    STUDY_DB,
    TRIALS_CSV,
    default_storage,
    open_storage,
    shown,
    storage_errors,
)

Echo = Callable[[str], None]
STORAGE_ENV = "CNNLAB_TUNE_STORAGE"  # --storage's default, so a password stays out of argv and shell history
SPACE_ATTR = "cnnlab_space"  # the study's search space, so a changed config cannot mix into it


@dataclass
class TuneResult:
    folder: Path
    study_name: str
    storage: str  # shown without a password
    finished: int  # completed or pruned trials in the study
    best: Any  # optuna FrozenTrial, or None
    status: str  # completed | interrupted | timeout


MAX_FAILED_IN_A_ROW = 5  # trials failing one after another: the config, not the values, is at fault


@dataclass
class Search:
    """The checked inputs of a study: the config without its tune section, and what to search."""

    source: Path
    base: dict  # the config mapping (overrides applied), tune section removed
    cfg: Config
    tune: TuneSection
    direction: str  # maximize | minimize


def load_search(config: str | Path, overrides: list[str] | tuple = (), trials: int | None = None,
                timeout: str | None = None) -> Search:
    """Read CONFIG, check its tune section against the config itself; no TensorFlow, no Optuna."""
    from cnnlab.model import check_model, logged_values

    source = Path(config)
    mapping, changed = read_config(source, overrides)
    for key, value in (("trials", trials), ("timeout", timeout)):  # --trials, --timeout
        if value is not None and isinstance(mapping.get("tune"), dict):
            mapping["tune"][key] = value
    cfg = validate_config(mapping, source, changed)
    if cfg.tune is None:
        raise CnnlabError(f"{source}: has no `tune:` section; add one with the keys to search "
                          "(see configs/tune_cnn.yaml), e.g. tune: {space: {train.batch_size: {int: [32, 256], step: 32}}}.")
    base = copy.deepcopy(mapping)
    del base["tune"]
    check_model(cfg, str(source))
    resolved = cfg.model_dump(mode="json", exclude={"tune"})
    for key in cfg.tune.space:
        _fill_defaults(base, resolved, parse_key_path(key, f"{source}: tune.space: {key}"))
    names = logged_values(cfg)
    objective = cfg.tune.objective
    if objective not in names:
        hint = (" (data.validation.method is none, so no val_* values exist)"
                if objective.startswith("val_") and cfg.data.validation.method == "none" else "")
        raise CnnlabError(f"{source}: tune.objective: {objective!r} is not logged by this config{hint}"
                          f"{did_you_mean(objective, names)}; available: {', '.join(names)}.")
    if cfg.tune.trials is None and cfg.tune.timeout is None:
        raise CnnlabError(f"{source}: tune.trials is null and there is no tune.timeout: the search would never end; "
                          "give one of them (or --trials / --timeout).")
    for key, search in cfg.tune.space.items():
        _check_key(source, base, resolved, key, search)
    direction = cfg.tune.direction
    if direction == "auto":
        direction = "maximize" if monitor_mode(objective, "auto") == "max" else "minimize"
    return Search(source, base, cfg, cfg.tune, direction)


def _fill_defaults(base: dict, resolved: dict, parts: list) -> None:
    """Copy in the resolved section a searched key lies in where the file leaves it to the defaults:
    a search of train.optimizer.learning_rate in a config without `optimizer:` needs its `name: adam`."""
    node, full = base, resolved
    for part in parts[:-1]:
        try:
            full = full[part]
        except (KeyError, IndexError, TypeError):
            return  # not in the config at all: _check_key says so
        present = isinstance(node, dict) and node.get(part) is not None if isinstance(part, str) else (
            isinstance(node, list) and part < len(node))
        if not present:
            if isinstance(node, dict):
                node[part] = copy.deepcopy(full)
            return
        node = node[part]


def _check_key(source: Path, base: dict, resolved: dict, key: str, search: SearchRange) -> None:
    """The key exists in the config (or --set takes it), holds a number where a range is given, and
    every value tried (each choice, a range's ends) makes a config that can train."""
    from cnnlab.model import check_model

    where = f"{source}: tune.space: {key}"
    current = value_at(resolved, key, where, null_ok=True)  # null by default (train.lr_schedule): as --set
    if search.choice is None:
        if current is not None and (isinstance(current, bool) or not isinstance(current, (int, float))):
            kind = "int" if search.int_range is not None else "float"
            raise CnnlabError(f"{where}: is {current!r} in this config, not a number, so it takes no {kind} range; "
                              "give a choice list instead, e.g. {choice: [...]}.")
        values = list(search.int_range or search.float_range)
    else:
        values = search.choice
    for value in values:  # the ends of a range, every choice: each must make a valid config
        try:
            cfg = trial_config(base, {key: value}, source, "check")
        except CnnlabError as exc:
            raise CnnlabError(f"{where}: the value {value!r} does not make a valid config: "
                              f"{str(exc).removeprefix(f'{source}: ')}") from None
        try:  # and one that can train: its data, shapes and memory, as train checks them (no TensorFlow)
            check_model(cfg, str(source))
        except CnnlabError as exc:
            raise CnnlabError(f"{where}: the value {value!r} can never train, so no trial of it would: "
                              f"{str(exc).removeprefix(f'{source}: ')}") from None


def trial_config(base: dict, params: dict, source: Path, name: str) -> Config:
    """The config of one trial: the base config with the trial's values at their key paths."""
    mapping = copy.deepcopy(base)
    mapping["name"] = name
    changed = [apply_override(mapping, f"{key}={json.dumps(value)}", source) for key, value in params.items()]
    try:
        return validate_config(mapping, source, changed)
    except CnnlabError as exc:
        raise CnnlabError(str(exc).replace("(from --set)", "(from tune.space)")) from None


# --- storage and study --------------------------------------------------------------


def _space_record(search: Search) -> dict:
    return {"objective": search.tune.objective, "direction": search.direction,
            "space": {key: value.model_dump(mode="json", by_alias=True, exclude_defaults=True)
                      for key, value in search.tune.space.items()}}


def open_study(search: Search, name: str, storage, url: str, force_new: bool = False):
    """Create the study, or continue it when it exists with the same space."""
    import optuna

    record = _space_record(search)
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        stored = study.user_attrs.get(SPACE_ATTR)
        if stored is not None and stored != record:
            if not force_new:
                raise CnnlabError(
                    f"--study {name}: the study in {shown(url)} was made with another search space or objective "
                    f"({_difference(stored, record)}); continue it with its own config, pass --force-new to delete "
                    "it and start again (its trials' run directories stay), or give another --study name.")
            optuna.delete_study(study_name=name, storage=storage)
        elif stored is not None or study.trials:
            return study
    study = optuna.create_study(study_name=name, storage=storage, direction=search.direction, load_if_exists=True)
    study.set_user_attr(SPACE_ATTR, record)
    return study


def _difference(stored: dict, record: dict) -> str:
    for key in ("objective", "direction"):
        if stored.get(key) != record[key]:
            return f"{key} {stored.get(key)} there, {record[key]} here"
    theirs, ours = stored.get("space", {}), record["space"]
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            return f"{key}: {theirs.get(key) or 'not searched'} there, {ours.get(key) or 'not searched'} here"
    return "differs"


def _sampler(tune: TuneSection, seed: int):
    import optuna

    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, (tune.trials or 20) // 4)))


def _pruner(tune: TuneSection, epochs: int):
    import optuna

    pruner = tune.pruner
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_epochs)
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _fail_dead_trials(study, echo: Echo) -> None:
    """Trials left running by a process of this machine that is gone (killed): failed, never complete."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == socket.gethostname() and worker.get("pid") != os.getpid() \
                and not rundir.process_alive(worker):
            study.tell(trial.number, state=TrialState.FAIL)
            echo(f"trial {trial.number}: its process ({worker.get('pid')}) is gone; marked failed")


def _finished_or_running(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


# --- the search ---------------------------------------------------------------------


def tune(config: str | Path, overrides: list[str] | tuple = (), trials: int | None = None,
         timeout: str | None = None, storage: str | None = None, study: str | None = None,
         workers: int = 1, runs_dir: str | Path = "runs", force_new: bool = False, device: str = "auto",
         echo: Echo = print) -> TuneResult:
    """Search CONFIG's `tune.space` with Optuna until the study has `tune.trials` finished trials.

    Args:
        config: the YAML config with a `tune:` section; overrides: `--set` overrides of it.
        trials, timeout: replace tune.trials (finished trials in the whole study) and tune.timeout.
        storage: an Optuna storage URL (default: SQLite in runs_dir/<study>/study.db).
        study: the study's name (default: the config's name); its folder is runs_dir/<study>.
        workers: processes on this machine working on the study together (this one and workers - 1 more).
        force_new: delete a stored study of this name made with another search space.
        device, echo: as for `cnnlab.train.train`.
    """
    if trials is not None and trials < 1:
        raise CnnlabError(f"--trials {trials}: give 1 or more (the finished trials the study should have).")
    search = load_search(config, overrides, trials, timeout)
    name = study or search.cfg.name
    _check_study_name(name)
    if workers < 1:
        raise CnnlabError(f"--workers {workers}: give 1 or more processes.")
    data = _read_data(search)
    folder = Path(runs_dir) / name
    url = storage or default_storage(folder / STUDY_DB)
    _quiet_optuna()
    store = open_storage(url) if storage else None  # a database that cannot be reached: no folder made
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnlabError(f"{folder}: cannot create the study folder ({exc.strerror}).") from None
    store = store or open_storage(url)
    with storage_errors(url):  # a database damaged, read-only or locked: one line naming it
        optuna_study = open_study(search, name, store, url, force_new)
        _fail_dead_trials(optuna_study, echo)
        echo(f"study {name} in {shown(url)}: {search.direction} {search.tune.objective}, "
             f"{_finished(optuna_study)} of {search.tune.trials or 'unlimited'} trials finished; trials in {folder}/")
        tracker = track.start_study(search.cfg, folder, search.source, name, echo)  # None without `track:`
        helpers = _start_workers(workers - 1, config, overrides, trials, timeout, url, name, runs_dir, device,
                                 track.study_env(tracker) if workers > 1 else {})
        status, best = "failed", None
        try:
            try:
                status = _search(search, optuna_study, folder, device, data, echo, tracker)
            finally:
                for helper in helpers:
                    helper.wait()
            write_study_files(optuna_study, folder, search, echo)
            best = _best(optuna_study)
        finally:
            track.finish_study(tracker, status, search.tune.objective, best, _finished(optuna_study))
        return TuneResult(folder, name, shown(url), _finished(optuna_study), best, status)


def _read_data(search: Search) -> dict:
    """The data, read once before the study opens: a missing or bad data set is the config's mistake
    (one line, exit 2, no folder), not a trial failing after trial. Trials reuse it (`Hooks.data`)."""
    from cnnlab.data import load
    from cnnlab.model import check_model

    plan = check_model(search.cfg, str(search.source))
    return {search.cfg.data.model_dump_json(): load(search.cfg.data, plan.data, None, where=str(search.source))}


def _check_study_name(name: str) -> None:
    import pydantic

    try:
        pydantic.TypeAdapter(RunName).validate_python(name)
    except pydantic.ValidationError:
        raise CnnlabError(f"--study {name!r}: not a valid study name; use letters, digits and _ - . + "
                          "(it becomes a folder under the runs directory).") from None


def _start_workers(count: int, config, overrides, trials, timeout, url: str, name: str, runs_dir, device: str,
                   tracking: dict[str, str]):
    argv = [sys.executable, "-m", "cnnlab", "tune", str(config), "--study", name,
            "--runs-dir", str(runs_dir), "--device", device, "--workers", "1"]
    for override in overrides:
        argv += ["--set", override]
    if trials is not None:
        argv += ["--trials", str(trials)]
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    env = {**os.environ, STORAGE_ENV: url, **tracking}  # not in argv, where `ps` would show a password
    return [subprocess.Popen(argv, env=env) for _ in range(count)]


def _search(search: Search, study, folder: Path, device: str, data: dict, echo: Echo,
            tracker: track.Tracker | None = None) -> str:
    """Ask, train, tell, until the study has its trials; one progress line per trial."""
    from cnnlab.backend import StopRequest, init_backend

    keras, _ = init_backend(device)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tf.function retracing: each trial is a new model
    tune = search.tune
    study.pruner = _pruner(tune, search.cfg.train.epochs)
    seed = search.cfg.seed if tune.seed is None else tune.seed
    # One request for the whole study: a Ctrl-C inside a trial's fit stops that trial (marked
    # failed, its run resumable); one between fits (scoring, Optuna's writes) lets the trial
    # in hand finish and starts no other. Left to Python, the latter could be lost.
    with StopRequest() as stop:
        return _trials(search, study, folder, device, keras, data, echo, seed, stop, tracker)


def _trials(search: Search, study, folder: Path, device: str, keras, data: dict, echo: Echo, seed: int,
            stop, tracker: track.Tracker | None = None) -> str:
    """The loop of `_search`: its status is completed, timeout or interrupted."""
    from optuna.trial import TrialState

    tune = search.tune
    started = time.monotonic()
    failed_in_a_row: list[str] = []
    while True:
        if stop.requested:
            echo("interrupted between trials: no new trial started")
            return "interrupted"
        if tune.timeout is not None and time.monotonic() - started >= tune.timeout:
            echo(f"timeout ({_seconds(tune.timeout)}) reached: no new trial started")
            return "timeout"
        if tune.trials is not None and _finished_or_running(study) >= tune.trials:
            return "completed"
        trial = study.ask()
        # The values are drawn when the trial suggests them, by a sampler seeded with the trial's number:
        # the same study asks the same values again, and workers that ask at the same instant (the same
        # study state) still draw different ones (TPE's own state is the study in the storage).
        study.sampler = _sampler(tune, seed + trial.number)
        try:
            state = _run_trial(search, study, trial, folder, device, keras, data, echo, stop, tracker)
        except BaseException:  # a second Ctrl-C, or a bug: a trial not yet told never counts as complete
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        write_trials_csv(study, folder)
        if state == "interrupted":
            return state
        failed_in_a_row = failed_in_a_row + [trial.number] if state == "failed" else []
        if len(failed_in_a_row) >= MAX_FAILED_IN_A_ROW:  # failed trials do not count: this would never end
            error = trial.user_attrs.get("error", "see the lines above")
            raise CnnlabError(
                f"{search.source}: the last {MAX_FAILED_IN_A_ROW} trials ({', '.join(map(str, failed_in_a_row))}) "
                f"all failed, so the search stops; the last one: {error}"
            )


def _run_trial(search: Search, study, trial, folder: Path, device: str, keras, data: dict, echo: Echo,
               stop, tracker: track.Tracker | None = None) -> str:
    """Train one trial into its run directory and tell Optuna how it ended (complete, pruned, failed)."""
    from optuna.trial import TrialState

    from cnnlab.callbacks import Pruning  # Keras is imported now
    from cnnlab.train import Hooks, train

    tune = search.tune
    trial.set_user_attr("worker", rundir.this_process())  # a later process fails it if this one is killed
    trial_started = time.perf_counter()
    params = {key: _suggest(trial, key, space) for key, space in tune.space.items()}
    # each trial starts from Keras' clean state; Python's collector frees the old model in its own time
    # (a full collection here costs ~0.3 s a trial)
    keras.backend.clear_session(free_memory=False)
    try:
        cfg = trial_config(search.base, params, search.source, f"trial-{trial.number:03d}")
        pruning = Pruning(trial, tune.objective, cfg.train.epochs)
        # the data is read once for all trials; no model.tflite (predict runs a trial's best.keras with Keras)
        result = train(cfg, search.source, runs_dir=folder, device=device, echo=lambda line: None, quiet=True,
                       hooks=Hooks(callbacks=[pruning], data=data, export_tflite=False, report=False,
                                   stop=stop, track=tracker))
    except CnnlabError as exc:  # these values cannot train (diverged, too large for memory): the search goes on
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        echo(f"trial {trial.number}: {_params_text(params)}: failed: {exc}")
        return "failed"
    if result.status == "interrupted":
        trial.set_user_attr("run", {"run_dir": str(result.run_dir)})
        study.tell(trial, state=TrialState.FAIL)
        echo(f"trial {trial.number}: interrupted, marked failed; its run: {result.run_dir}")
        return "interrupted"
    history = rundir.read_json(result.run_dir / rundir.HISTORY_JSON)["epochs"]
    values = [row[tune.objective] for row in history if math.isfinite(row.get(tune.objective, math.nan))]
    value = (max if search.direction == "maximize" else min)(values) if values else None
    seconds = round(time.perf_counter() - trial_started, 3)
    # one attribute, one database write: the run, its epochs, fit and trial seconds, test accuracy
    trial.set_user_attr("run", {"run_dir": str(result.run_dir), "epochs": len(history),
                                "fit_seconds": result.metrics.get("train_seconds"), "wall_seconds": seconds,
                                "test_accuracy": result.metrics.get("test_accuracy")})
    record = {"study": study.study_name, "trial": trial.number}
    if value is None:
        study.tell(trial, state=TrialState.FAIL)
        echo(f"trial {trial.number}: {_params_text(params)}: failed: no finite {tune.objective} logged")
        return "failed"
    if pruning.pruned_at is not None:
        rundir.update_json(result.run_dir / rundir.RUN, tune={**record, "pruned_at_epoch": pruning.pruned_at})
        study.tell(trial, state=TrialState.PRUNED)
    else:
        rundir.update_json(result.run_dir / rundir.RUN, tune=record)
        study.tell(trial, value)
    echo(_progress_line(study, trial.number, params, value, pruning.pruned_at, cfg.train.epochs,
                        seconds, tune))
    return "pruned" if pruning.pruned_at is not None else "completed"


def _suggest(trial, key: str, space: SearchRange):
    if space.choice is not None:
        if _unhashable(space.choice):
            return space.choice[trial.suggest_categorical(key, list(range(len(space.choice))))]
        return trial.suggest_categorical(key, space.choice)
    if space.int_range is not None:
        return trial.suggest_int(key, *space.int_range, step=int(space.step or 1))
    return trial.suggest_float(key, *space.float_range, step=space.step, log=space.log)


def _unhashable(choices: list) -> bool:
    """Optuna's categorical values are None, bool, int, float or str: mappings and lists go by index."""
    return any(not isinstance(choice, (type(None), bool, int, float, str)) for choice in choices)


def _params_text(params: dict) -> str:
    """`filters=32 ...`: each key by its shortest ending that no other key shares (and not a bare `name`)."""
    parts = {key: key.split(".") for key in params}

    def short(key: str) -> str:
        for n in range(1, len(parts[key]) + 1):
            end = parts[key][-n:]
            if end != ["name"] and sum(other[-n:] == end for other in parts.values()) == 1:
                return ".".join(end)
        return key

    return " ".join(f"{short(key)}={_fmt(value)}" for key, value in params.items())


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else json.dumps(value) if not isinstance(value, str) else value


def _progress_line(study, number: int, params: dict, value: float, pruned_at: int | None, epochs: int,
                   seconds: float, tune: TuneSection) -> str:
    best = _best(study)
    status = f"pruned at epoch {pruned_at}/{epochs}" if pruned_at else f"{epochs} epochs"
    best_text = f"best {best.value:.4f} (trial {best.number})" if best is not None else "no completed trial yet"
    total = f"/{tune.trials}" if tune.trials else ""
    return (f"trial {number}: {_params_text(params)} -> {tune.objective} {value:.4f}, {status}, "
            f"{seconds:.1f} s; {best_text}; {_finished(study)}{total} finished")


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _seconds(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# --- the study's files --------------------------------------------------------------


def trials_table(study) -> tuple[list[str], list[list[str]]]:
    """The trials as a header and rows of text: number, state, value, parameters, epochs, seconds, run."""
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(key for trial in trials for key in trial.params))
    header = ["number", "state", "value", *keys, "epochs", "fit_seconds", "wall_seconds", "test_accuracy", "run_dir"]
    rows = []
    for trial in trials:
        attrs = trial.user_attrs.get("run", {})
        value = trial.value if trial.value is not None else (
            trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
        rows.append([str(trial.number), trial.state.name.lower(), "" if value is None else f"{value:.6g}",
                     *["" if key not in trial.params else _fmt(trial.params[key]) for key in keys],
                     *[_text(attrs.get(key)) for key in ("epochs", "fit_seconds", "wall_seconds", "test_accuracy",
                                                           "run_dir")]])
    return header, rows


def _text(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def write_trials_csv(study, folder: Path) -> None:
    header, rows = trials_table(study)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    rundir.write_text(folder / TRIALS_CSV, out.getvalue())


def write_study_files(study, folder: Path, search: Search, echo: Echo) -> None:
    """trials.csv, best.yaml and the figures, from what the study holds now (all workers' trials)."""
    write_trials_csv(study, folder)
    best = _best(study)
    if best is not None:
        params = {key: _choice_value(search, key, value) for key, value in best.params.items()}
        cfg = trial_config(search.base, params, search.source, search.cfg.name)
        header = (f"# the best trial ({best.number}) of study {study.study_name}: {search.tune.objective} "
                  f"{best.value:.4f}; train it with: cnnlab train {folder / BEST_CONFIG}\n")
        rundir.write_text(folder / BEST_CONFIG, header + cfg.to_yaml())
    from cnnlab.report import REPORT, write_study_report

    written = write_figures(study, folder, search.tune.objective)
    write_study_report(folder)  # after the figures: they are in the page
    echo(f"written to {folder}/: {', '.join([TRIALS_CSV, *([BEST_CONFIG] if best else []), *written, REPORT])}")


def _choice_value(search: Search, key: str, value):
    space = search.tune.space[key]
    return space.choice[value] if space.choice is not None and _unhashable(space.choice) else value


# --- show ---------------------------------------------------------------------------


def show(study: str, storage: str | None = None, runs_dir: str | Path = "runs") -> str:
    """The trials table and the best trial of a stored study, as text; nothing is trained."""
    _quiet_optuna()
    given = Path(study)
    if storage is None:
        # a path (runs/tiny, ./tiny) is the folder itself; a bare name is a folder under runs_dir
        path_given = (given / STUDY_DB).exists() or "/" in study or os.sep in study
        folder = given if path_given else Path(runs_dir) / study
        if not (folder / STUDY_DB).exists():
            raise CnnlabError(f"--show {study}: no study there ({folder / STUDY_DB} does not exist); give the study's "
                              "folder (runs/<study>) or its name with --storage URL.")
        url, name = default_storage(folder / STUDY_DB), folder.name
    else:
        url, name, folder = storage, given.name, Path(runs_dir) / given.name
    store = open_storage(url)
    with storage_errors(url):
        return _show_text(store, url, name, study, folder)


def _show_text(store, url: str, name: str, study: str, folder: Path) -> str:
    import optuna

    names = [summary.study_name for summary in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if name not in names:
        raise CnnlabError(f"--show {study}: {shown(url)} has no study named {name!r}"
                          f"{did_you_mean(name, names)}; it has: {', '.join(names) or 'none'}.")
    loaded = optuna.load_study(study_name=name, storage=store)
    header, rows = trials_table(loaded)
    header, rows = header[:-1], [row[:-1] for row in rows]  # the run folder goes on the best trial's line
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = [f"study {name} in {shown(url)}: {loaded.direction.name.lower()}, {_finished(loaded)} finished "
             f"of {len(rows)} trials"]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    best = _best(loaded)
    if best is None:
        lines.append("no completed trial yet")
    else:
        lines.append(f"best: trial {best.number}, value {best.value:.4f}, "
                     + ", ".join(f"{key}={_fmt(value)}" for key, value in best.params.items()))
        if best.user_attrs.get("run", {}).get("run_dir"):
            lines.append(f"      run {best.user_attrs['run']['run_dir']}")
        if (folder / BEST_CONFIG).exists():
            lines.append(f"      config {folder / BEST_CONFIG}: cnnlab train {shlex.quote(str(folder / BEST_CONFIG))}")
    return "\n".join(lines)

