"""MLflow tracking (cnnlab/track.py) against a real `mlflow server` on a PostgreSQL backend store, and the
SQLite file a run logs to by default; everything read back with MlflowClient.

One PostgreSQL cluster (`postgres_cluster`, tests/conftest.py) and one `mlflow server` on it serve the
module; the test of a server that dies mid-run starts a second server on the same database and kills it.
"""

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
from test_tune import CNNLAB, tiny_study, write

from cnnlab import rundir, track
from cnnlab.config import validate_config
from cnnlab.errors import CnnlabError

from conftest import DATA_DIR, REPO, free_port, healthy_after, needs_data, postgres_cluster, small_dnn

pytestmark = needs_data


class MlflowServer:
    """An `mlflow server` process on 127.0.0.1 and a free port, its artifacts in `artifacts`."""

    def __init__(self, backend: str, artifacts: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend,
                 "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if healthy_after(self.process, self.url, timeout=120, interval=0.2) is None:
            self.kill()
            raise RuntimeError(f"mlflow server did not start: {log.read_text()[-3000:]}")

    def kill(self) -> None:
        """Gone at once, as a crashed server is: the process and its workers (its own process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def postgres():
    with postgres_cluster() as url:
        yield url


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    running = MlflowServer(postgres, folder / "artifacts", folder / "server.log")
    yield running
    running.kill()


@pytest.fixture
def no_tracking_env(monkeypatch):
    monkeypatch.delenv(track.URI_ENV, raising=False)


def _tracked(experiment: str, uri: str | None = None, **train) -> dict:
    data = small_dnn(epochs=3, **train)
    data["data"].update(train_samples=1500, test_samples=300, dir=str(DATA_DIR), download=False)
    data["track"] = {"mlflow": {"experiment": experiment, **({"uri": uri} if uri else {})}}
    return data


def _train(data: dict, source: Path, runs: Path, hooks=None):
    from cnnlab.train import train

    lines: list[str] = []
    result = train(validate_config(data, source), source, runs_dir=runs, echo=lines.append, quiet=True,
                   hooks=hooks)
    return result, lines


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(client, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def test_a_run_logs_its_config_epochs_test_metrics_tags_and_files_to_a_server(server, tmp_path, no_tracking_env):
    data = _tracked("server-run", server.url)
    source = write(tmp_path / "small.yaml", data)
    result, lines = _train(data, source, tmp_path / "runs")
    assert result.status == "completed"
    assert not [line for line in lines if line.startswith("warning")], lines
    client = _client(server.url)
    [run] = _runs(client, "server-run")
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    params = run.data.params
    assert params["train.epochs"] == "3" and params["model.layers.1.units"] == "64"
    assert params["train.optimizer.name"] == "adam" and params["data.dataset"] == "mnist"
    history = rundir.read_json(result.run_dir / rundir.HISTORY_JSON)["epochs"]
    losses = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in losses] == [1, 2, 3]
    assert [m.value for m in losses] == pytest.approx([row["val_loss"] for row in history])
    metrics = rundir.read_json(result.run_dir / rundir.METRICS)
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["test_accuracy_per_class/7"] == pytest.approx(metrics["test_accuracy_per_class"]["7"])
    tags = run.data.tags
    assert tags["cnnlab.run_dir"] == str(result.run_dir.resolve()) and tags["cnnlab.data"] == "mnist"
    assert tags["mlflow.source.name"] == str(source) and "mlflow.source.git.commit" not in tags  # tmp: no repository
    files = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "report.html", "loss.png", "accuracy.png", "metrics.json", "history.csv"} <= files
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert Path(config).read_text() == (result.run_dir / rundir.CONFIG).read_text()


def test_mlflow_tracking_uri_names_the_store_and_a_repository_config_tags_its_commit(server, tmp_path, monkeypatch):
    monkeypatch.setenv(track.URI_ENV, server.url)
    source = REPO / "configs" / "xor_mlp.yaml"
    data = yaml.safe_load(source.read_text())
    data["train"]["epochs"] = 2
    data["track"] = {"mlflow": {"experiment": "from-env"}}
    result, lines = _train(data, source, tmp_path / "runs")
    assert result.status == "completed", lines
    [run] = _runs(_client(server.url), "from-env")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert run.data.tags["mlflow.source.git.commit"] == commit.strip()
    assert not (tmp_path / "runs" / track.DEFAULT_STORE).exists()  # nothing went to the default file


def test_a_study_is_the_parent_run_of_its_trials(server, tmp_path, no_tracking_env):
    from cnnlab.tune import tune

    data = tiny_study(trials=2)
    data["data"].update(dir=str(DATA_DIR), download=False)
    data["track"] = {"mlflow": {"uri": server.url, "experiment": "study"}}
    config = write(tmp_path / "study.yaml", data)
    result = tune(config, runs_dir=tmp_path / "runs", device="cpu", echo=lambda line: None)
    assert result.status == "completed"
    runs = _runs(_client(server.url), "study")
    [parent] = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert parent.info.run_name == "tiny" and parent.data.tags["cnnlab.study"] == "tiny"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(result.best.value)
    assert parent.data.params["tune.space.model.layers_1_.units.int_range.0"] == "8"  # the search space
    assert {child.info.run_name[:9] for child in children} == {"trial-000", "trial-001"}
    trial_units = {child.data.params["model.layers.1.units"] for child in children}
    assert trial_units <= {"8", "16", "24", "32"}
    files = {item.path for item in _client(server.url).list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "report.html", "history.png"} <= files


def test_the_trials_of_tune_workers_are_children_of_one_study_run(server, tmp_path, no_tracking_env):
    data = tiny_study(trials=4)
    data["data"].update(dir=str(DATA_DIR), download=False)
    data["track"] = {"mlflow": {"uri": server.url, "experiment": "workers"}}
    config = write(tmp_path / "study.yaml", data)
    done = subprocess.run([*CNNLAB, "tune", str(config), "--runs-dir", str(tmp_path / "runs"), "--workers", "2"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MLflow" not in done.stdout + done.stderr
    runs = _runs(_client(server.url), "workers")
    [parent] = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]  # one study run, not one a process
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 >= 4
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] >= 4
    assert all(child.info.status == "FINISHED" for child in children)


def test_a_study_whose_server_is_down_costs_one_warning_and_no_wait_per_trial(tmp_path, no_tracking_env):
    from cnnlab.tune import tune

    data = tiny_study(trials=3)
    data["data"].update(dir=str(DATA_DIR), download=False)
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    data["track"] = {"mlflow": {"uri": nobody, "experiment": "down"}}
    config = write(tmp_path / "study.yaml", data)
    lines: list[str] = []
    started = time.monotonic()
    result = tune(config, runs_dir=tmp_path / "runs", device="cpu", echo=lines.append)
    assert result.status == "completed" and result.finished == 3
    warnings = [line for line in lines if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: MLflow tracking to {nobody} stopped"), lines
    assert time.monotonic() - started < 120  # given up in seconds, not MLflow's minutes of retries


def test_a_wait_for_a_run_id_ends_when_the_store_fails(no_tracking_env):
    lines: list[str] = []
    nobody = f"http://127.0.0.1:{free_port()}"
    session = track.Session(nobody, "down", lines.append)
    key = session.key()
    session.send(op="open", run=key, name="r", params={}, tags={}, parent=None, resume=None, attach=None)
    started = time.monotonic()
    assert session.run_id(key, timeout=60) is None
    assert time.monotonic() - started < 30  # at the failure, not at the timeout
    session.close()
    assert len(lines) == 1 and lines[0].startswith(f"warning: MLflow tracking to {nobody} stopped"), lines


class KillAfterEpoch(keras.callbacks.Callback):
    """Kills `server` at the end of epoch `epoch` (1-based), once that epoch's loss is in experiment `experiment`."""

    def __init__(self, server: MlflowServer, experiment: str, epoch: int):
        super().__init__()
        self.server, self.experiment, self.epoch = server, experiment, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 != self.epoch:
            return
        client, waited = _client(self.server.url), time.monotonic()
        while time.monotonic() - waited < 20:  # the tracker's thread imports mlflow and opens the run first
            found = client.get_experiment_by_name(self.experiment)
            runs = client.search_runs([found.experiment_id]) if found is not None else []
            if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
                break
            time.sleep(0.1)
        self.server.kill()


def test_a_server_killed_mid_run_costs_one_warning_and_the_run_completes(postgres, server, tmp_path,
                                                                        no_tracking_env):
    from cnnlab.train import Hooks

    doomed = MlflowServer(postgres, tmp_path / "artifacts", tmp_path / "doomed.log")
    data = _tracked("killed", doomed.url)
    data["train"]["epochs"] = 4
    source = write(tmp_path / "small.yaml", data)
    started = time.monotonic()
    result, lines = _train(data, source, tmp_path / "runs", Hooks(callbacks=[KillAfterEpoch(doomed, "killed", 1)]))
    assert time.monotonic() - started < 60  # a dead server is given up in seconds, not MLflow's minutes of retries
    assert result.status == "completed"
    assert rundir.read_json(result.run_dir / rundir.RUN)["status"] == "completed"
    warnings = [line for line in lines if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: MLflow tracking to {doomed.url} stopped"), lines
    # what reached the store before the kill is there (read through the module's server, same database)
    client = _client(server.url)
    [run] = _runs(client, "killed")
    assert run.info.status == "RUNNING"  # never ended: the server was gone
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]


def test_the_default_store_is_sqlite_in_the_runs_folder(tmp_path, no_tracking_env):
    data = _tracked("local")
    source = write(tmp_path / "small.yaml", data)
    runs = tmp_path / "runs"
    result, lines = _train(data, source, runs)
    assert result.status == "completed" and not [line for line in lines if line.startswith("warning")], lines
    uri = f"sqlite:///{(runs / track.DEFAULT_STORE).resolve()}"
    client = _client(uri)
    [run] = _runs(client, "local")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [1, 2, 3]
    files = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "report.html", "loss.png", "best.keras"} <= files
    assert list((runs / track.ARTIFACT_FOLDER).rglob("report.html"))  # the artifacts beside the database
    model = client.download_artifacts(run.info.run_id, "best.keras", str(tmp_path))
    assert Path(model).read_bytes() == (result.run_dir / rundir.BEST).read_bytes()
    assert client.get_experiment_by_name("local").tags["mlflow.experimentKind"] == "custom_model_development"
    assert not (Path.cwd() / "mlruns").exists()


def test_a_run_without_track_never_imports_mlflow():
    code = ("import sys, cnnlab.cli, cnnlab.train, cnnlab.tune, cnnlab.track; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow')))")
    done = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert json.loads(done.stdout) == []


def test_only_the_chief_and_only_a_tracked_config_start_a_logging_process(tmp_path):
    data = _tracked("x")
    cfg = validate_config(data, "x.yaml")
    assert track.begin(cfg, tmp_path / "runs", chief=False) is None
    data.pop("track")
    assert track.begin(validate_config(data, "x.yaml"), tmp_path / "runs") is None
    assert track.start(validate_config(data, "x.yaml"), tmp_path / "run") is None  # no session


def test_the_training_process_never_imports_mlflow_its_logging_process_does(tmp_path, no_tracking_env):
    data = _tracked("apart")
    source = write(tmp_path / "small.yaml", data)
    code = ("import json, sys; from cnnlab.config import load_config; from cnnlab.train import train; "
            f"r = train(load_config({str(source)!r}), {str(source)!r}, runs_dir={str(tmp_path / 'runs')!r}, "
            "quiet=True, echo=lambda line: None); "
            "print(json.dumps([r.status, sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow')]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["completed", []]
    [run] = _runs(_client(f"sqlite:///{(tmp_path / 'runs' / track.DEFAULT_STORE).resolve()}"), "apart")
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] > 0.5


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, no_tracking_env):
    from cnnlab.train import resume

    data = _tracked("resumed")
    data["train"]["epochs"] = 2
    source = write(tmp_path / "small.yaml", data)
    first, _ = _train(data, source, tmp_path / "runs")
    recorded = rundir.read_json(first.run_dir / rundir.RUN)["mlflow"]
    uri = f"sqlite:///{(tmp_path / 'runs' / track.DEFAULT_STORE).resolve()}"
    assert recorded["store"] == uri
    lines: list[str] = []
    again = resume(first.run_dir, overrides=["train.epochs=3"], echo=lines.append, quiet=True)
    assert again.status == "completed" and not [line for line in lines if "MLflow" in line], lines
    client = _client(uri)
    [run] = _runs(client, "resumed")  # one MLflow run over both, not a second one
    assert run.info.run_id == recorded["run_id"] and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert run.data.params["train.epochs"] == "2"  # params are MLflow's record of how the run started


def test_a_run_refused_after_its_data_loaded_leaves_no_logging_process_behind(tmp_path, no_tracking_env):
    from cnnlab.train import train

    # told only once the data's classes are known: the logging process (started before) is stopped
    data = _tracked("refused", class_weight={"eleven": 2.0})
    source = write(tmp_path / "bad.yaml", data)
    started = time.monotonic()
    with pytest.raises(CnnlabError, match="'eleven' is not a class"):
        train(validate_config(data, source), source, runs_dir=tmp_path / "runs", quiet=True, echo=lambda line: None)
    assert time.monotonic() - started < 15  # the error does not wait for mlflow to import
    assert _children_running("cnnlab.track_child") == []
    assert not list((tmp_path / "runs").glob("refused-*"))


def _children_running(module: str) -> list[int]:
    """This process's child processes running `python -m module`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and module.encode() in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_a_tracked_run_without_mlflow_installed_costs_one_warning(tmp_path, no_tracking_env, monkeypatch):
    shadow = tmp_path / "shadow" / "mlflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'mlflow'\", name='mlflow')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))  # the logging process finds this mlflow first
    data = _tracked("absent")
    source = write(tmp_path / "small.yaml", data)
    result, lines = _train(data, source, tmp_path / "runs")
    assert result.status == "completed"
    warnings = [line for line in lines if "MLflow" in line]
    assert warnings == [f"warning: MLflow tracking to sqlite:///{(tmp_path / 'runs' / track.DEFAULT_STORE).resolve()} "
                        "stopped (mlflow is not installed: pip install 'cnnlab[mlflow]'); training goes on without it"]
    assert "mlflow" not in rundir.read_json(result.run_dir / rundir.RUN)


def test_a_mistake_in_the_track_section_names_the_field():
    data = _tracked("x")
    data["track"]["mlflow"]["url"] = "http://127.0.0.1:5000"
    with pytest.raises(CnnlabError, match=r"track\.mlflow\.url"):
        validate_config(data, "x.yaml")


def test_a_config_flattens_to_names_mlflow_takes():
    params = track.params_of({"model": {"layers": [{"type": "dense", "units": 10}]}, "tune": {"space": {
        "model.layers[1].units": {"int": [8, 32]}}}, "data": {"augment": None, "metrics": []}})
    assert params == {"model.layers.0.type": "dense", "model.layers.0.units": "10",
                      "tune.space.model.layers_1_.units.int.0": "8", "tune.space.model.layers_1_.units.int.1": "32",
                      "data.augment": "null", "data.metrics": "[]"}


@pytest.mark.parametrize("uri, printed", [
    ("http://team:s3cret@mlflow.example:5000", "http://team:***@mlflow.example:5000"),
    ("postgresql://mlflow:s3cret@127.0.0.1:5432/runs", "postgresql://mlflow:***@127.0.0.1:5432/runs"),
    ("sqlite:////home/me/runs/mlflow.db", "sqlite:////home/me/runs/mlflow.db"),
])
def test_a_password_in_the_tracking_uri_is_neither_printed_nor_recorded(uri, printed):
    lines: list[str] = []
    track.OneWarning(lines.append).give(uri, "ConnectionError: refused")
    assert lines == [f"warning: MLflow tracking to {printed} stopped (ConnectionError: refused); training goes on "
                     "without it"]
    assert track.shown(uri) == printed  # what run.json's mlflow.store holds
