"""Nothing is lost: a killed or interrupted run keeps its best checkpoint and resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest
import yaml

from cnnlab import rundir
from cnnlab.config import validate_config
from cnnlab.train import train

from conftest import DATA_DIR, needs_data, small_dnn

CNNLAB = [sys.executable, "-m", "cnnlab"]


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
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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


class _SignalInDel:
    """An object whose __del__ receives SIGINT, as TensorFlow's do when Ctrl-C lands during garbage collection."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside __del__


@needs_data
def test_ctrl_c_that_lands_inside_a_destructor_still_stops_the_run(tmp_path, monkeypatch):
    """Python's own KeyboardInterrupt raised in a __del__ is printed and dropped: training went on."""
    import cnnlab.train as training

    class CtrlCDuringEpoch2(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 20:
                _SignalInDel()  # made and collected at once

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
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is Python's again


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
