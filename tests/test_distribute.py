"""train.distribute: the cluster's bad inputs, mirrored on a CPU, and two real workers on 127.0.0.1.

The multi-worker tests start real `cnnlab train` processes (TensorFlow's collectives over gRPC on
loopback, free ports, bounded timeouts): no strategy or collective is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab import distribute, rundir
from cnnlab.cli import app
from cnnlab.errors import CnnlabError

from conftest import REPO, SHARED, free_ports, needs_data

DNN = REPO / "configs" / "dnn.yaml"
SMALL = ["--set", "data.train_samples=1200", "--set", "data.test_samples=300", "--set", "train.epochs=2",
         "--set", "train.batch_size=64"]
TIMEOUT = 240  # seconds for one two-worker training on the shared 2-core machine


@pytest.mark.parametrize("workers, says", [
    ("127.0.0.1", "is not HOST:PORT"),
    ("127.0.0.1:2222,127.0.0.1:99999", "'127.0.0.1:99999' is not HOST:PORT"),
    ("127.0.0.1:2222", "at least two workers"),
    ("127.0.0.1:2222,127.0.0.1:2222", "listed twice"),
])
def test_malformed_workers_are_one_line_errors(runner, workers, says):
    result = runner.invoke(app, ["train", str(DNN), "--workers", workers, "--worker-index", "0"])
    assert result.exit_code == 2
    assert says in result.output and len(result.output.strip().splitlines()) == 1


def test_a_worker_index_outside_the_list_and_workers_without_an_index(runner):
    result = runner.invoke(app, ["train", str(DNN), "--workers", "127.0.0.1:2222,127.0.0.1:2223", "--worker-index", "2"])
    assert result.exit_code == 2 and "is 0 to 1" in result.output
    result = runner.invoke(app, ["train", str(DNN), "--workers", "127.0.0.1:2222,127.0.0.1:2223"])
    assert result.exit_code == 2 and "go together" in result.output


@pytest.mark.parametrize("tf_config, says", [
    ("{not json", "is not valid JSON"),
    ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "names no chief"),
    ('{"cluster": {"ps": ["127.0.0.1:2222"]}, "task": {"type": "ps", "index": 0}}', "job 'ps' is not used"),
    ('{"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 5}}',
     "is not in its cluster; it has worker 0, worker 1"),
    ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}', "list of HOST:PORT"),
])
def test_bad_tf_config_is_refused_before_tensorflow_starts(runner, monkeypatch, tf_config, says):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    result = runner.invoke(app, ["train", str(DNN), "--set", "train.distribute=multi_worker"])
    assert result.exit_code == 2, result.output
    assert says in result.output and len(result.output.strip().splitlines()) == 1


def test_the_chief_is_the_chief_task_or_else_worker_0():
    with_chief = distribute.read_tf_config(json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}))
    assert not with_chief.chief and with_chief.tasks[0] == ("chief", 0, "a:1")
    assert distribute.read_tf_config(json.dumps({
        "cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}})).chief


def test_a_port_in_use_is_said(runner, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("TF_CONFIG", distribute.tf_config([f"127.0.0.1:{port}", "127.0.0.1:1"], 0))
        result = runner.invoke(app, ["train", str(DNN), "--set", "train.distribute=multi_worker"])
    assert result.exit_code == 2 and f"port {port} is in use" in result.output


def test_gradient_tape_and_other_metrics_are_refused_with_distribute(runner):
    result = runner.invoke(app, ["train", str(DNN), "--set", "train.distribute=mirrored",
                                 "--set", "train.loop=gradient_tape"])
    assert result.exit_code == 2 and "train.loop gradient_tape" in result.output
    with pytest.raises(CnnlabError, match="train.metrics: auc"):
        from cnnlab.config import load_config
        distribute.check(load_config(DNN, ["train.distribute=multi_worker", "train.metrics=[accuracy, auc]"]), "x")


@needs_data
def test_mirrored_on_a_cpu_says_one_replica_and_trains_as_before(runner, tmp_path):
    result = runner.invoke(app, ["train", str(DNN), *SMALL, "--set", "train.epochs=1", "--set", "train.distribute=mirrored",
                                 "--device", "cpu", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "1 replica(s) on the CPU (--device cpu), so it trains as without distribute" in result.output
    (run,) = tmp_path.iterdir()
    record = rundir.read_json(run / rundir.ENVIRONMENT)["distribute"]
    assert record["strategy"] == "tf.distribute.MirroredStrategy" and record["replicas"] == 1
    assert record["global_batch"] == 64
    assert rundir.read_json(run / rundir.METRICS)["test_accuracy"] > 0.6


@needs_data
def test_mirrored_on_every_gpu_of_the_machine(runner, tmp_path):
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus < 2:
        pytest.skip(f"needs 2 or more GPUs, this machine has {gpus} (checked on a GPU machine when one is lent)")
    result = runner.invoke(app, ["train", str(DNN), *SMALL, "--set", "train.distribute=mirrored",
                                 "--set", "train.batch_size_scope=per_replica", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.iterdir()
    record = rundir.read_json(run / rundir.ENVIRONMENT)["distribute"]
    assert record["replicas"] == gpus and record["global_batch"] == 64 * gpus


def _worker(args: list[str], index: int, ports: list[int], tmp: Path, env: dict | None = None) -> subprocess.Popen:
    """One `cnnlab train` worker; a non-chief's temporary files go to tmp/tmp<index>."""
    (tmp / f"tmp{index}").mkdir(exist_ok=True)
    environment = {**os.environ, "TMPDIR": str(tmp / f"tmp{index}"), "CNNLAB_PEER_TIMEOUT": "90", **(env or {})}
    workers = ",".join(f"127.0.0.1:{port}" for port in ports)
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "train", *args, "--workers", workers, "--worker-index", str(index)],
        cwd=tmp / f"cwd{index}", env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _job(args_of, tmp: Path, env: dict | None = None) -> list[tuple[int, str]]:
    ports = free_ports(2)
    for index in range(2):
        (tmp / f"cwd{index}").mkdir(exist_ok=True)
    procs = [_worker(args_of(index), index, ports, tmp, env) for index in (1, 0)]
    try:
        return [(p.wait(timeout=TIMEOUT), p.stdout.read()) for p in reversed(procs)]
    finally:
        for p in procs:
            p.kill()


@pytest.mark.slow
@needs_data
def test_two_workers_train_and_only_the_chief_writes_a_run_directory(tmp_path, runner):
    runs = tmp_path / "runs"
    (chief_rc, chief_out), (other_rc, other_out) = _job(
        lambda i: [str(DNN), *SMALL, "--runs-dir", str(runs if i == 0 else tmp_path / "other-runs")], tmp_path)
    assert chief_rc == 0, chief_out
    assert other_rc == 0, other_out
    (run,) = runs.iterdir()
    for name in (rundir.CONFIG, rundir.RUN, rundir.ENVIRONMENT, rundir.DATA, rundir.SUMMARY, rundir.BEST,
                 rundir.HISTORY_CSV, rundir.HISTORY_JSON, rundir.METRICS, rundir.RESUME_STATE, "loss.png",
                 "accuracy.png", "model.tflite"):
        assert (run / name).is_file(), name
    record = rundir.read_json(run / rundir.ENVIRONMENT)["distribute"]
    assert record["strategy"] == "tf.distribute.MultiWorkerMirroredStrategy"
    assert (record["replicas"], record["workers"], record["global_batch"]) == (2, 2, 64)
    assert len(rundir.read_json(run / rundir.HISTORY_JSON)["epochs"]) == 2
    assert rundir.read_json(run / rundir.METRICS)["test_accuracy"] > 0.6
    # the other worker: nothing in its runs dir, its working folder or its temporary folder
    assert not (tmp_path / "other-runs").exists()
    assert list((tmp_path / "cwd1").iterdir()) == [] and list((tmp_path / "tmp1").iterdir()) == []
    assert "its run directory has the results" in other_out
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0 and "accuracy" in result.output
    digit = next((SHARED / "digits").rglob("*.png"), None)
    if digit is not None:  # a real handwritten digit, when ../shared is there
        result = runner.invoke(app, ["predict", str(run), str(digit)])
        assert result.exit_code == 0 and "%" in result.output, result.output


@pytest.mark.slow
@needs_data
def test_workers_started_with_different_configs_refuse_to_train(tmp_path):
    (chief_rc, chief_out), (other_rc, other_out) = _job(
        lambda i: [str(DNN), *SMALL, "--set", f"train.epochs={1 + i}", "--runs-dir", str(tmp_path / "runs")], tmp_path)
    for rc, out in ((chief_rc, chief_out), (other_rc, other_out)):
        assert rc == 2 and "was started with a different config than the chief" in out, out
    assert not (tmp_path / "runs").exists()


@needs_data
def test_a_peer_that_never_comes_up_ends_the_worker_within_its_timeout(tmp_path):
    (tmp_path / "cwd0").mkdir()
    started = time.monotonic()
    proc = _worker([str(DNN), *SMALL, "--runs-dir", str(tmp_path / "runs")], 0,
                   free_ports(2), tmp_path, env={"CNNLAB_PEER_TIMEOUT": "5"})
    out, _ = proc.communicate(timeout=120)
    assert "did not all come up within 5 s" in out, out
    assert proc.returncode != 0 and time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@needs_data
def test_a_killed_worker_stops_the_chief_with_a_message_and_resume_completes(tmp_path):
    runs = tmp_path / "runs"
    ports = free_ports(2)
    for index in range(2):
        (tmp_path / f"cwd{index}").mkdir()
    args = [str(DNN), "--set", "data.train_samples=6000", "--set", "data.test_samples=300", "--set", "train.epochs=3",
            "--set", "train.batch_size=32", "--runs-dir", str(runs)]
    other = _worker(args, 1, ports, tmp_path)
    chief = _worker(args, 0, ports, tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list(runs.glob("*/history.json")) and time.monotonic() < deadline and chief.poll() is None:
            time.sleep(0.2)
        assert list(runs.glob("*/history.json")), chief.stdout.read() if chief.poll() is not None else "no epoch"
        other.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        chief.wait(timeout=60)
        assert time.monotonic() - killed < 60
        out = chief.stdout.read()
    finally:
        chief.kill()
        other.kill()
    assert chief.returncode == 2
    assert "worker 1 (127.0.0.1:" in out and "stopped responding" in out and "--resume" in out, out
    (run,) = runs.iterdir()
    assert rundir.read_json(run / rundir.RUN)["status"] == "failed"
    (chief_rc, chief_out), (other_rc, other_out) = _job(lambda i: ["--resume", str(run)], tmp_path)
    assert chief_rc == 0, chief_out
    assert other_rc == 0, other_out
    assert "resuming" in chief_out
    assert rundir.read_json(run / rundir.RUN)["status"] == "completed"
    # the killed worker's private folder is gone too (TensorFlow's own autograph files of a SIGKILLed
    # process stay in $TMPDIR, as for any TensorFlow program)
    assert list((tmp_path / "tmp1").glob("cnnlab-*")) == []
    assert [row["epoch"] for row in rundir.read_json(run / rundir.HISTORY_JSON)["epochs"]] == [1, 2, 3]
