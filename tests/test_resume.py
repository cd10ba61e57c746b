"""Nothing is lost: a killed or interrupted run keeps its best checkpoint and resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest
import yaml

from cnnlab import rundir
from cnnlab.backend import StopRequest
from cnnlab.config import validate_config
from cnnlab.errors import CnnlabError
from cnnlab.train import resume, train

from conftest import DATA_DIR, SignalInDel, needs_data, small_dnn

CNNLAB = [sys.executable, "-m", "cnnlab"]


def _as_in_a_terminal():
    """A child that gets Ctrl-C as a terminal gives it, even when the suite runs as a background job.

    A shell starts `make test &` with SIGINT ignored, the children inherit that, and cnnlab
    keeps an ignored SIGINT ignored (as Unix programs do); these tests are about Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _config(tmp_path: Path) -> Path:
    data = small_dnn(epochs=4, early_stopping={"patience": 3})
    data["data"]["train_samples"] = 40000  # epochs of a few seconds, so the kill lands mid-epoch
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start_and_stop_mid_epoch(config: Path, runs: Path, sig: int) -> tuple[Path, subprocess.CompletedProcess]:
    """Start `cnnlab train` in its own process; send `sig` once 2 epochs are done."""
    env = {**os.environ, "CNNLAB_DATA_DIR": str(DATA_DIR)}
    proc = subprocess.Popen([*CNNLAB, "train", str(config), "--runs-dir", str(runs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_as_in_a_terminal)
    deadline = time.monotonic() + 300
    run_dir = None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        found = list(runs.glob("*/run.json"))
        if found:
            run_dir = found[0].parent
            try:
                if json.loads(found[0].read_text())["epochs_completed"] >= 2:
                    break
            except (ValueError, KeyError):
                pass  # never half-written: run.json is replaced atomically, but it may not exist yet
    assert proc.poll() is None, "training finished before it could be stopped"
    time.sleep(0.7)  # into epoch 3
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return run_dir, subprocess.CompletedProcess(proc.args, proc.returncode, out)


def _resume(run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CNNLAB_DATA_DIR": str(DATA_DIR)}
    return subprocess.run([*CNNLAB, "train", "--resume", str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=300)


@needs_data
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    config = _config(tmp_path)
    cfg = validate_config(yaml.safe_load(config.read_text()), config)
    reference = train(cfg, config, runs_dir=tmp_path / "reference", echo=lambda _: None)

    run_dir, killed = _start_and_stop_mid_epoch(config, tmp_path / "runs", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    # the kill landed inside an epoch: some finished, not all
    done = json.loads((run_dir / "run.json").read_text())["epochs_completed"]
    before = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert 2 <= done < 4 and [row["epoch"] for row in before] == list(range(1, done + 1))
    # the best checkpoint of the finished epochs is whole and loads
    assert keras.saving.load_model(run_dir / "best.keras").count_params() == 50_890
    resumed = _resume(run_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"after epoch {done}" in resumed.stdout
    # it trains only the missing epochs (Keras prints "Epoch 3/4" for each it runs) ...
    assert "Epoch 1/4" not in resumed.stdout and f"Epoch {done + 1}/4" in resumed.stdout

    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[:done] == before  # ... appending to the history it had
    # ... with the optimizer it had: Adam's step counter covers all 4 epochs, not only the resumed ones
    steps_per_epoch = -(-32_000 // 32)
    state = keras.saving.load_model(run_dir / "resume" / "state.keras")
    assert int(state.optimizer.iterations) == 4 * steps_per_epoch
    assert not [p for p in run_dir.rglob(".*") if p.is_file()]  # a write the kill cut short is cleaned up
    assert metrics["epochs_completed"] == 4
    assert abs(metrics["test_accuracy"] - reference.metrics["test_accuracy"]) <= 0.005
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


@needs_data
def test_ctrl_c_marks_the_run_interrupted_and_says_how_to_resume(tmp_path):
    run_dir, stopped = _start_and_stop_mid_epoch(_config(tmp_path), tmp_path / "runs", signal.SIGINT)
    assert stopped.returncode == 130
    assert f"cnnlab train --resume {run_dir}" in stopped.stdout
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["epochs_completed"] >= 2
    assert (run_dir / "loss.png").exists() and (run_dir / "best.keras").exists()
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert len(history) == info["epochs_completed"]  # the finished epochs' history is kept
    resumed = _resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


@needs_data
def test_a_kill_after_the_history_write_but_before_the_state_replays_that_epoch(tmp_path, monkeypatch):
    """The last moment of an epoch's writes: history.json says 2 epochs, the state is still epoch 1's."""
    import cnnlab.train as training

    cfg = validate_config(small_dnn(epochs=3), "s")
    reference = train(cfg, "s", runs_dir=tmp_path / "reference", echo=lambda _: None)

    class KillAfterEpoch2(keras.callbacks.Callback):  # runs after cnnlab's recorder wrote the epoch
        def on_epoch_end(self, epoch, logs=None):
            state = self.model_run_dir / "resume" / "state.keras"
            if epoch == 0:
                (tmp_path / "epoch1.keras").write_bytes(state.read_bytes())
            if epoch == 1:
                raise KeyboardInterrupt

    run_fit = training._run_fit

    def fit_then_kill(keras_, model, cfg_, splits, validation, callbacks, first_epoch, **options):
        killer = KillAfterEpoch2()
        killer.model_run_dir = callbacks[0].run_dir
        return run_fit(keras_, model, cfg_, splits, validation, [*callbacks, killer], first_epoch, **options)

    monkeypatch.setattr(training, "_run_fit", fit_then_kill)
    run_dir = train(cfg, "s", runs_dir=tmp_path / "runs", echo=lambda _: None).run_dir
    monkeypatch.setattr(training, "_run_fit", run_fit)
    (run_dir / "resume" / "state.keras").write_bytes((tmp_path / "epoch1.keras").read_bytes())  # not renamed yet
    assert len(json.loads((run_dir / "history.json").read_text())["epochs"]) == 2

    said = []
    result = training.resume(run_dir, echo=said.append)
    assert "the saved state is from epoch 1: epoch 2 is trained again" in said
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert result.metrics["test_accuracy"] == pytest.approx(reference.metrics["test_accuracy"], abs=0.005)


@needs_data
def test_ctrl_c_that_lands_inside_a_destructor_still_stops_the_run(tmp_path, monkeypatch, ctrl_c_works):
    """Python's own KeyboardInterrupt raised in a __del__ is printed and dropped: training went on."""
    import cnnlab.train as training

    class CtrlCDuringEpoch2(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 20:
                SignalInDel()  # made and collected at once

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    run_fit = training._run_fit
    monkeypatch.setattr(training, "_run_fit", lambda keras_, model, cfg_, splits, validation, callbacks, first_epoch, **options:
                        run_fit(keras_, model, cfg_, splits, validation, [CtrlCDuringEpoch2(), *callbacks], first_epoch,
                                **options))
    result = train(validate_config(small_dnn(epochs=3), "s"), "s", runs_dir=tmp_path, echo=lambda _: None)
    assert result.status == "interrupted"
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["epochs_completed"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler it found is back


def _with_callback(monkeypatch, callback):
    """Train with one more Keras callback, first in the list (it runs before cnnlab's recorder)."""
    import cnnlab.train as training

    run_fit = training._run_fit
    monkeypatch.setattr(training, "_run_fit", lambda keras_, model, cfg_, splits, validation, callbacks, first_epoch,
                        **options: run_fit(keras_, model, cfg_, splits, validation, [callback, *callbacks],
                                           first_epoch, **options))
    return run_fit


class _CtrlCAt(keras.callbacks.Callback):
    """Presses Ctrl-C (a real SIGINT to this process) at one batch of one epoch (both 0-based)."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@needs_data
def test_ctrl_c_in_the_first_epoch_says_nothing_was_kept_and_advises_no_resume(tmp_path, monkeypatch, ctrl_c_works):
    from cnnlab.checkpoint import load_checkpoint

    _with_callback(monkeypatch, _CtrlCAt(epoch=0, batch=5))
    said = []
    result = train(validate_config(small_dnn(epochs=2), "s"), "s", runs_dir=tmp_path, echo=said.append)
    assert result.status == "interrupted"
    text = "\n".join(said)
    assert "nothing was saved (no checkpoint, nothing to resume)" in text and "--resume" not in text
    assert f"cnnlab train {result.run_dir / 'config.yaml'}" in text
    assert json.loads((result.run_dir / "run.json").read_text())["status"] == "interrupted"
    assert not (result.run_dir / "best.keras").exists()
    # evaluate and --resume say the same, and neither suggests a resume that cannot work
    with pytest.raises(CnnlabError, match="stopped before its first epoch finished.*nothing to resume") as err:
        load_checkpoint(result.run_dir)
    assert "--resume" not in str(err.value)
    with pytest.raises(CnnlabError, match="nothing to resume from") as err:
        resume(result.run_dir)
    assert f"cnnlab train {result.run_dir / 'config.yaml'}" in str(err.value)


@needs_data
def test_a_run_that_fails_is_marked_failed_with_its_error(tmp_path, monkeypatch):
    import cnnlab.train as training
    from cnnlab.checkpoint import load_checkpoint

    def broken(*args, **kwargs):
        raise RuntimeError("the GPU fell off the bus")

    monkeypatch.setattr(training, "_run_fit", broken)
    with pytest.raises(RuntimeError):  # a bug or a crash keeps its traceback
        train(validate_config(small_dnn(epochs=1), "s"), "s", runs_dir=tmp_path, echo=lambda _: None)
    (run_dir,) = tmp_path.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "RuntimeError: the GPU fell off the bus"
    with pytest.raises(CnnlabError, match=r"failed before its first epoch finished \(RuntimeError: the GPU fell"):
        load_checkpoint(run_dir)


@needs_data
def test_started_with_sigint_ignored_it_stays_ignored_and_sigterm_still_stops(tmp_path):
    """`cnnlab train ... &` in a script, or nohup: Ctrl-C in the terminal must not reach it; a kill does."""
    config = _config(tmp_path)
    runs = tmp_path / "runs"
    env = {**os.environ, "CNNLAB_DATA_DIR": str(DATA_DIR)}
    proc = subprocess.Popen([*CNNLAB, "train", str(config), "--runs-dir", str(runs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))

    def epochs_done() -> int:
        found = list(runs.glob("*/run.json"))
        return json.loads(found[0].read_text())["epochs_completed"] if found else 0

    deadline = time.monotonic() + 300
    while epochs_done() < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # in epoch 2: ignored
    while epochs_done() < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before SIGTERM: " + proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    (run_dir,) = runs.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["epochs_completed"] >= 2  # it went on past the SIGINT
    assert f"cnnlab train --resume {run_dir}" in out


def test_stop_request_keeps_an_ignored_sigint_ignored_and_puts_back_what_it_found():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)  # a kill still stops it
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with StopRequest():
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


@needs_data
def test_more_epochs_for_a_completed_run_continue_it_in_the_same_folder(tmp_path, runner):
    from cnnlab.cli import app

    cfg = validate_config(small_dnn(epochs=2), "s")
    run_dir = train(cfg, "s", runs_dir=tmp_path, echo=lambda _: None).run_dir
    before = json.loads((run_dir / "metrics.json").read_text())
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "train.epochs=3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("test accuracy")
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_planned"] == 3 and info["epochs_completed"] == 3
    assert info["extensions"][0]["epochs"] == [2, 3]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 3
    after = json.loads((run_dir / "metrics.json").read_text())  # scored again
    assert before["epochs_completed"] == 2 and after["epochs_completed"] == 3
    assert list(tmp_path.iterdir()) == [run_dir]  # no second folder


@needs_data
def test_more_epochs_for_an_interrupted_run(tmp_path, monkeypatch, ctrl_c_works):
    run_fit = _with_callback(monkeypatch, _CtrlCAt(epoch=1, batch=5))
    cfg = validate_config(small_dnn(epochs=2), "s")
    run_dir = train(cfg, "s", runs_dir=tmp_path, echo=lambda _: None).run_dir
    assert json.loads((run_dir / "run.json").read_text())["epochs_completed"] == 1
    import cnnlab.train as training

    monkeypatch.setattr(training, "_run_fit", run_fit)
    result = resume(run_dir, echo=lambda _: None, overrides=["train.epochs=3"])
    assert result.status == "completed" and result.metrics["epochs_completed"] == 3


def test_resume_allows_only_more_epochs(tmp_path, runner):
    from cnnlab.cli import app

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(small_dnn(epochs=2)))
    (tmp_path / "run.json").write_text('{"status": "completed", "epochs_planned": 2}')
    (tmp_path / "history.json").write_text(json.dumps({"epochs": [{"epoch": 1}, {"epoch": 2}]}))
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--set", "train.batch_size=64"])
    assert result.exit_code == 2
    assert "--set train.batch_size: with --resume only train.epochs can change" in result.stderr
    assert "two configs" in result.stderr and "train.init_from=" in result.stderr
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--set", "train.epochs=2"])
    assert result.exit_code == 2 and "already finished 2 epochs; give more than 2" in result.stderr
    result = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "--set train.epochs=7" in result.stderr  # how to train it further


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "best.keras"
    target.write_text("previous checkpoint")
    with pytest.raises(RuntimeError):
        with rundir.atomic_path(target, suffix=".keras") as tmp:
            tmp.write_text("half a checkp")
            raise RuntimeError("killed while writing")
    assert target.read_text() == "previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["best.keras"]


def test_resume_refuses_a_completed_run_and_a_non_run(tmp_path, runner):
    from cnnlab.cli import app

    result = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "is not a cnnlab run directory" in result.stderr
    (tmp_path / "config.yaml").write_text("name: x\n")
    (tmp_path / "run.json").write_text('{"status": "completed"}')
    result = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "already completed" in result.stderr


class _StopAfterEpoch(keras.callbacks.Callback):
    """Ctrl-C right after epoch `last` (1-based) was recorded: the run is interrupted there."""

    def __init__(self, last: int):
        super().__init__()
        self.last = last

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.last:
            raise KeyboardInterrupt


def _interrupted_then_resumed(cfg, runs: Path, monkeypatch, after_epoch: int) -> Path:
    import cnnlab.train as training

    run_fit = training._run_fit
    monkeypatch.setattr(training, "_run_fit", lambda keras_, model, cfg_, splits, validation, callbacks, first_epoch,
                        **options: run_fit(keras_, model, cfg_, splits, validation,
                                           [*callbacks, _StopAfterEpoch(after_epoch)], first_epoch, **options))
    stopped = train(cfg, "s", runs_dir=runs, echo=lambda _: None)
    monkeypatch.setattr(training, "_run_fit", run_fit)
    assert stopped.status == "interrupted"
    assert len(json.loads((stopped.run_dir / "history.json").read_text())["epochs"]) == after_epoch
    assert training.resume(stopped.run_dir, echo=lambda _: None).status == "completed"
    return stopped.run_dir


def _rates(run_dir: Path) -> list[float]:
    return [row["learning_rate"] for row in json.loads((run_dir / "history.json").read_text())["epochs"]]


@needs_data
def test_a_resumed_run_continues_its_cosine_schedule(tmp_path, monkeypatch):
    """The schedule counts the optimizer's steps, which resume/state.keras keeps."""
    data = small_dnn(epochs=3, optimizer={"name": "adamw", "learning_rate": 0.002},
                     lr_schedule={"name": "cosine", "warmup_fraction": 0.2, "alpha": 0.1})
    data["data"]["train_samples"] = 2000
    cfg = validate_config(data, "s")
    reference = train(cfg, "s", runs_dir=tmp_path / "reference", echo=lambda _: None).run_dir
    resumed = _interrupted_then_resumed(cfg, tmp_path / "runs", monkeypatch, after_epoch=1)
    assert _rates(resumed) == pytest.approx(_rates(reference), rel=1e-6)
    assert _rates(resumed)[-1] == pytest.approx(0.0002)  # alpha x the peak at the last step
    final = keras.saving.load_model(resumed / "resume" / "state.keras").optimizer
    assert int(final.iterations) == 3 * 50 and float(final.learning_rate) == pytest.approx(0.0002)


@needs_data
def test_a_resumed_run_keeps_reduce_on_plateau_counting(tmp_path, monkeypatch):
    """Patience counted before the interruption still counts: the rate drops at the same epoch."""
    data = small_dnn(epochs=4, lr_schedule={"name": "reduce_on_plateau", "monitor": "val_loss", "patience": 2,
                                            "min_delta": 10.0, "factor": 0.5})  # no epoch improves by 10
    data["data"]["train_samples"] = 2000
    cfg = validate_config(data, "s")
    reference = train(cfg, "s", runs_dir=tmp_path / "reference", echo=lambda _: None).run_dir
    assert _rates(reference) == pytest.approx([0.001, 0.001, 0.001, 0.0005])  # reduced after epoch 3
    resumed = _interrupted_then_resumed(cfg, tmp_path / "runs", monkeypatch, after_epoch=2)
    assert _rates(resumed) == pytest.approx(_rates(reference))


_FULL_DISK_SCRIPT = """
set -u
mkdir -p runs && mount -t tmpfs -o size=3m tmpfs runs || exit 99
"$PYTHON" -m cnnlab train k.yaml --runs-dir runs --quiet > train.out 2> train.err; echo $? > train.rc
cp -r runs/. copy/
# run.json can still be written on a disk with not one byte free: in place
dd if=/dev/zero of=runs/filler bs=64k 2> /dev/null
"$PYTHON" -c "from pathlib import Path; from cnnlab import rundir; \
run = next(Path('runs').glob('*/run.json')); rundir.update_json(run, note='written on a full disk')" > update.out 2>&1
echo $? > update.rc; cp runs/*/run.json full-run.json
rm runs/filler
mount -o remount,size=8m runs  # space freed
"$PYTHON" -m cnnlab train --resume runs/* --quiet > resume.out 2> resume.err; echo $? > resume.rc
cp runs/*/run.json resumed-run.json
"""


@needs_data
def test_a_full_disk_interrupts_the_run_resumably_and_says_so_in_one_line(tmp_path):
    """A real full file system: a 3 MB tmpfs (mounted in a private mount namespace) as --runs-dir."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a small file system here")
    data = small_dnn(epochs=3)  # ~1 MB per checkpoint: epoch 1 fits, epoch 2's writes do not
    data["model"]["layers"][1]["units"] = 100
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "copy").mkdir()
    env = {**os.environ, "CNNLAB_DATA_DIR": str(DATA_DIR), "PYTHON": sys.executable,
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", _FULL_DISK_SCRIPT], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode == 99 or not (tmp_path / "train.rc").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {done.stderr.strip()[-300:]}")
    err = (tmp_path / "train.err").read_text()
    (run_dir,) = (tmp_path / "copy").iterdir()
    name = f"runs/{run_dir.name}"
    assert (tmp_path / "train.rc").read_text().strip() == "2", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"error: no space left on device: {name}/")
    assert "free there" in lines[0] and "MB needed" in lines[0]
    assert f"free some space, then continue it with `cnnlab train --resume {name}`" in lines[0]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["epochs_completed"] == 1
    assert "no space left on device" in info["error"]
    assert keras.saving.load_model(run_dir / "best.keras").count_params() == 79_510  # whole
    assert not [p for p in run_dir.rglob(".*") if p.is_file()]  # no half-written temporaries
    assert (tmp_path / "update.rc").read_text().strip() == "0", (tmp_path / "update.out").read_text()
    assert json.loads((tmp_path / "full-run.json").read_text())["note"] == "written on a full disk"
    assert (tmp_path / "resume.rc").read_text().strip() == "0", (tmp_path / "resume.err").read_text()
    resumed = json.loads((tmp_path / "resumed-run.json").read_text())
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 3
