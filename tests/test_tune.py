"""`cnnlab tune`: a study of tiny-DNN trials on an MNIST subset, as a user runs and reruns it."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cnnlab.cli import app
from cnnlab.tune import MAX_FAILED_IN_A_ROW

from conftest import DATA_DIR, REPO, SignalInDel, free_port, needs_data

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_study(trials: int = 3, **tune) -> dict:
    """A config whose trials train in about two seconds: a 16-unit DNN on 600 MNIST images, 2 epochs."""
    return {
        "name": "tiny",
        "seed": 1,
        "data": {"dataset": "mnist", "train_samples": 600, "test_samples": 200},
        "model": {"layers": [
            {"type": "flatten"},
            {"type": "dense", "units": 16, "activation": "relu"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ]},
        "train": {"epochs": 2, "batch_size": 64},
        "tune": {"trials": trials, "space": {
            "model.layers[1].units": {"int": [8, 32], "step": 8},
            "train.optimizer.learning_rate": {"float": [1.0e-4, 1.0e-1], "log": True},
        }, **tune},
    }


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def trials_csv(folder: Path) -> list[dict]:
    with open(folder / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three trials of the tiny study in a fresh runs folder (SQLite, the default storage)."""
    if DATA_DIR is None:
        pytest.skip("no data folder (set CNNLAB_DATA_DIR)")
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("tune")
    config = write(root / "tiny.yaml", tiny_study())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_DATA_DIR", str(DATA_DIR))
        patch.setenv("CNNLAB_OFFLINE", "1")
        result = CliRunner().invoke(app, ["tune", str(config), "--runs-dir", str(root / "runs")])
    assert result.exit_code == 0, result.output
    return config, root / "runs" / "tiny", result.output


@needs_data
def test_a_study_is_trial_run_directories_a_table_a_best_config_and_figures(study):
    config, folder, output = study
    assert (folder / "study.db").is_file()  # SQLite in the study folder unless --storage says otherwise
    rows = trials_csv(folder)
    assert [row["number"] for row in rows] == ["0", "1", "2"]
    assert all(row["state"] in ("complete", "pruned") for row in rows)
    for row in rows:
        run = Path(row["run_dir"])
        assert run.parent == folder and run.name.startswith(f"trial-{int(row['number']):03d}-")
        info = yaml.safe_load((run / "run.json").read_text())
        assert info["status"] == "completed" and info["tune"]["trial"] == int(row["number"])
        assert (run / "best.keras").is_file() and (run / "metrics.json").is_file()
        epochs = yaml.safe_load((run / "history.json").read_text())["epochs"]
        assert float(row["value"]) == pytest.approx(max(e["val_accuracy"] for e in epochs), abs=1e-5)
        assert float(row["wall_seconds"]) > float(row["fit_seconds"]) > 0
    # one progress line per trial: its number, values, result and the best so far
    for number in range(3):
        line = next(line for line in output.splitlines() if line.startswith(f"trial {number}: "))
        assert "units=" in line and "learning_rate=" in line and "val_accuracy 0." in line and "best 0." in line
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert "tune" not in best and best["name"] == "tiny"
    winner = max((row for row in rows if row["state"] == "complete"), key=lambda row: float(row["value"]))
    assert best["model"]["layers"][1]["units"] == int(winner["model.layers[1].units"])
    for figure in ("history.png", "intermediate.png", "importances.png", "slice.png", "parallel.png"):
        assert (folder / figure).read_bytes()[:8] == PNG, figure


@needs_data
def test_the_best_config_trains_as_it_is(study, runner, tmp_path):
    _, folder, _ = study
    result = runner.invoke(app, ["train", str(folder / "best.yaml"), "--runs-dir", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and len(list(tmp_path.glob("tiny-*/best.keras"))) == 1


@needs_data
def test_running_the_command_again_continues_the_study(study, runner, tmp_path):
    config, folder, _ = study
    runs = tmp_path / "runs"
    shutil.copytree(folder, runs / "tiny")
    before = trials_csv(runs / "tiny")
    result = runner.invoke(app, ["tune", str(config), "--runs-dir", str(runs), "--trials", "4"])
    assert result.exit_code == 0, result.output
    assert "3 of 4 trials finished" in result.output
    after = trials_csv(runs / "tiny")
    assert [row["number"] for row in after] == ["0", "1", "2", "3"]
    assert after[:3] == before  # the earlier trials are kept as they were, not run again
    assert Path(after[3]["run_dir"]).parent == runs / "tiny"
    again = runner.invoke(app, ["tune", str(config), "--runs-dir", str(runs), "--trials", "4"])
    assert again.exit_code == 0 and len(trials_csv(runs / "tiny")) == 4  # done: nothing more to train


@needs_data
def test_show_prints_the_trials_and_the_best_without_tensorflow(study):
    _, folder, _ = study
    code = ("import sys; from typer.testing import CliRunner; from cnnlab.cli import app; "
            f"r = CliRunner().invoke(app, ['tune', '--show', {str(folder)!r}]); print(r.output); "
            "print('exit', r.exit_code, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.rstrip().endswith("exit 0 False")
    rows = trials_csv(folder)
    lines = out.splitlines()
    assert lines[0].startswith("study tiny in sqlite:") and "3 finished of 3 trials" in lines[0]
    assert lines[1].split()[:3] == ["number", "state", "value"]
    assert [line.split()[1] for line in lines[2:5]] == [row["state"] for row in rows]
    best = max((row for row in rows if row["state"] == "complete"), key=lambda row: float(row["value"]))
    assert f"best: trial {best['number']}, value {float(best['value']):.4f}" in out
    assert f"cnnlab train {folder / 'best.yaml'}" in out


@needs_data
def test_a_study_with_another_space_is_refused_unless_force_new(study, runner, tmp_path):
    _, folder, _ = study
    runs = tmp_path / "runs"
    shutil.copytree(folder, runs / "tiny")
    data = tiny_study(trials=1)
    data["tune"]["space"]["model.layers[1].units"] = {"choice": [8, 64]}
    config = write(tmp_path / "tiny.yaml", data)
    refused = runner.invoke(app, ["tune", str(config), "--runs-dir", str(runs)])
    assert refused.exit_code == 2
    assert "another search space" in refused.output and "model.layers[1].units" in refused.output
    assert "--force-new" in refused.output
    fresh = runner.invoke(app, ["tune", str(config), "--runs-dir", str(runs), "--force-new"])
    assert fresh.exit_code == 0, fresh.output
    assert [row["number"] for row in trials_csv(runs / "tiny")] == ["0"]


def _space(**space) -> dict:
    data = tiny_study()
    data["tune"]["space"] = space
    return data


def _set(path: str, value):
    def change(data: dict) -> dict:
        node = data
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        return data
    return change


BAD = [
    ("unknown key path", lambda d: _space(**{"model.layers[1].unit": {"int": [8, 16]}}), [],
     ["tune.space: model.layers[1].unit", "does not exist", "units"]),
    ("layer index past the end", lambda d: _space(**{"model.layers[5].units": {"int": [8, 16]}}), [],
     ["model.layers[5]", "does not exist", "3 items"]),
    ("range on a text value", lambda d: _space(**{"model.layers[1].activation": {"int": [1, 3]}}), [],
     ["model.layers[1].activation", "'relu'", "not a number", "choice"]),
    ("low >= high", lambda d: _space(**{"train.batch_size": {"int": [64, 32]}}), [],
     ["tune.space", "train.batch_size", "low (64) must be below high (32)"]),
    ("log with low <= 0", lambda d: _space(**{"train.optimizer.learning_rate": {"float": [0.0, 0.1], "log": True}}), [],
     ["train.optimizer.learning_rate", "log: true needs a low above 0"]),
    ("empty choice", lambda d: _space(**{"train.batch_size": {"choice": []}}), [],
     ["tune.space", "train.batch_size", "choice"]),
    ("choice value the config refuses", lambda d: _space(**{"train.optimizer.name": {"choice": ["adam", "adamx"]}}), [],
     ["train.optimizer.name", "'adamx'", "valid: sgd, adam"]),
    ("trials 0", _set("tune.trials", 0), [], ["tune.trials", "greater than 0"]),
    ("--trials 0", lambda d: d, ["--trials", "0"], ["--trials", "0"]),
    ("objective not logged", lambda d: _set("train.checkpoint", {"monitor": "loss"})(
        _set("data.validation", {"method": "none"})(d)), [],
     ["tune.objective", "'val_accuracy'", "validation.method is none", "available: loss, accuracy"]),
    ("no tune section", lambda d: {k: v for k, v in d.items() if k != "tune"}, [], ["has no `tune:` section"]),
    ("bad timeout", _set("tune.timeout", "soon"), [], ["tune.timeout", "duration", "30m"]),
    ("bad study name", lambda d: d, ["--study", "../up"], ["--study", "'../up'", "not a valid study name"]),
    ("storage unreachable", lambda d: d,
     ["--storage", f"postgresql+psycopg2://cnnlab:hunter2@127.0.0.1:{free_port()}/study"],
     ["--storage postgresql+psycopg2://cnnlab:***@127.0.0.1", "cannot open the study database"]),
    ("storage without a driver", lambda d: d, ["--storage", "nosuchdb://host/db"], ["--storage nosuchdb://", "cannot open"]),
    # every trial would fail alike (and failed trials do not count): the data is read before the study opens
    ("data set missing", _set("data.dir", "/nonexistent/datasets"), [],
     ["mnist file not found: /nonexistent/datasets/mnist/train-images-idx3-ubyte.gz"]),
]


@needs_data
@pytest.mark.parametrize("change, args, expected", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_one_line_naming_the_key(runner, tmp_path, change, args, expected):
    config = write(tmp_path / "bad.yaml", change(tiny_study()))
    started = time.monotonic()
    result = runner.invoke(app, ["tune", str(config), "--runs-dir", str(tmp_path / "runs"), *args])
    assert time.monotonic() - started < 20  # an unreachable server fails within seconds, it does not hang
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in lines[0], lines[0]
    assert "hunter2" not in result.output  # never print a secret
    assert not (tmp_path / "runs").exists()  # nothing trained, no folder made


@needs_data
def test_trials_failing_one_after_another_stop_the_search(runner, tmp_path):
    # learning rates this large pass every check but each trial's loss diverges: without a stop, a
    # study counting finished trials would ask for new trials forever (a model too large for memory
    # is refused before the study: test_tune_space)
    config = write(tmp_path / "huge.yaml", _space(**{"train.optimizer.learning_rate": {"choice": [1.0e8, 1.0e9]}}))
    result = runner.invoke(app, ["tune", str(config), "--runs-dir", str(tmp_path / "runs"), "--trials", "20"])
    assert result.exit_code == 2, result.output
    assert result.output.count(": failed: ") == MAX_FAILED_IN_A_ROW, result.output
    last = result.output.strip().splitlines()[-1]
    assert f"the last {MAX_FAILED_IN_A_ROW} trials (0, 1, 2, 3, 4) all failed, so the search stops" in last, last
    assert "diverged" in last, last


def test_the_cli_module_does_not_import_optuna_or_tensorflow():
    code = ("import sys; from typer.testing import CliRunner; from cnnlab.cli import app; "
            "r = CliRunner().invoke(app, ['tune', '--help']); assert r.exit_code == 0 and '--storage' in r.output; "
            "print(sorted(m for m in ('optuna', 'tensorflow', 'keras', 'sqlalchemy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


CNNLAB = [sys.executable, "-m", "cnnlab"]


@needs_data
def test_a_killed_trial_is_failed_and_the_rerun_finishes_the_study(tmp_path):
    data = tiny_study(trials=3)
    data["train"]["epochs"] = 8  # long enough to be killed inside a trial's fit
    data["tune"]["pruner"] = {"name": "none"}
    config = write(tmp_path / "tiny.yaml", data)
    runs = tmp_path / "runs"
    command = [*CNNLAB, "tune", str(config), "--runs-dir", str(runs)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    try:
        killed = _wait_for_a_running_epoch(runs / "tiny", number=1, timeout=180)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    info = yaml.safe_load((killed / "run.json").read_text())
    assert info["status"] == "running"  # killed without a chance to say so
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "trial 1: its process" in rerun.stdout and "marked failed" in rerun.stdout
    rows = trials_csv(runs / "tiny")
    assert [(row["number"], row["state"]) for row in rows] == [
        ("0", "complete"), ("1", "fail"), ("2", "complete"), ("3", "complete")]


def _wait_for_a_running_epoch(folder: Path, number: int, timeout: float) -> Path:
    """The run directory of trial `number` once it has finished one epoch (so the kill lands inside its fit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in folder.glob(f"trial-{number:03d}-*"):
            history = run / "history.json"
            if history.exists():
                return run
        time.sleep(0.2)
    raise AssertionError(f"trial {number} did not start in {timeout} s")


@needs_data
def test_ctrl_c_marks_the_running_trial_failed(tmp_path):
    data = tiny_study(trials=2)
    data["train"]["epochs"] = 1000  # an epoch takes ~0.1 s: the Ctrl-C lands inside the fit, however late
    config = write(tmp_path / "tiny.yaml", data)
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*CNNLAB, "tune", str(config), "--runs-dir", str(runs)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    try:
        _wait_for_a_running_epoch(runs / "tiny", number=0, timeout=180)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "trial 0: interrupted, marked failed" in output and "run the same command again" in output
    assert [(row["number"], row["state"]) for row in trials_csv(runs / "tiny")] == [("0", "fail")]


@needs_data
def test_ctrl_c_between_two_trials_is_not_lost(tmp_path, monkeypatch, ctrl_c_works):
    """Ctrl-C after a trial's fit (here: as its line is printed, inside a destructor, where Python's own
    KeyboardInterrupt is dropped): that trial is kept complete, and no other starts."""
    from cnnlab.tune import tune

    monkeypatch.setenv("CNNLAB_DATA_DIR", str(DATA_DIR))
    config = write(tmp_path / "tiny.yaml", tiny_study(trials=3))
    said = []

    def echo(line: str) -> None:
        said.append(line)
        if line.startswith("trial 0:"):
            SignalInDel()

    result = tune(config, runs_dir=tmp_path / "runs", echo=echo)
    assert result.status == "interrupted", said
    assert "interrupted between trials: no new trial started" in said, said
    assert [row["state"] for row in trials_csv(tmp_path / "runs" / "tiny")] == ["complete"]
    assert not list((tmp_path / "runs" / "tiny").glob("trial-001-*"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler it found is back


@needs_data
def test_workers_share_the_sqlite_study(tmp_path):
    config = write(tmp_path / "tiny.yaml", tiny_study(trials=6))
    # a fresh process, as a user starts it: it and its helper import TensorFlow at the same time
    result = subprocess.run([*CNNLAB, "tune", str(config), "--runs-dir", str(tmp_path / "runs"), "--workers", "2"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = trials_csv(tmp_path / "runs" / "tiny")
    assert 6 <= len(rows) <= 7 and sorted(int(row["number"]) for row in rows) == list(range(len(rows)))
    assert all(row["state"] in ("complete", "pruned") for row in rows)
    assert len({row["run_dir"] for row in rows}) == len(rows)
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'runs' / 'tiny' / 'study.db'}")
    assert len({trial.user_attrs["worker"]["pid"] for trial in study.trials}) == 2  # this process and one more


def test_a_small_studys_figures_have_whole_trial_numbers_and_no_white_trials():
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    import optuna.visualization.matplotlib as views

    from cnnlab.study_figures import _readable, _whole_numbers

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: trial.suggest_float("train.optimizer.learning_rate", 1e-4, 1e-1, log=True),
                   n_trials=4)
    history = views.plot_optimization_history(study)
    _whole_numbers(history.figure)
    ticks = [tick for tick in history.get_xticks() if history.get_xlim()[0] <= tick <= history.get_xlim()[1]]
    assert ticks and all(float(tick).is_integer() for tick in ticks)
    panel = views.plot_slice(study)  # one key: one panel
    _readable(panel)
    _whole_numbers(panel.figure)
    [colour_bar] = [ax for ax in panel.figure.axes if ax.get_ylabel() == "Trial"]  # the trial numbers' colours
    bar_ticks = [tick for tick in colour_bar.get_yticks() if colour_bar.get_ylim()[0] <= tick <= colour_bar.get_ylim()[1]]
    assert bar_ticks and all(float(tick).is_integer() for tick in bar_ticks)
    assert panel.get_facecolor()[:3] == (1.0, 1.0, 1.0)
    coloured = [artist for artist in panel.collections if artist.get_array() is not None]
    assert coloured and all(artist.get_cmap().name == "viridis" for artist in coloured)  # no white end
