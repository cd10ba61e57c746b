"""The run directory as a file format (cnnlab/rundir.py's docstring, README "The run directory").

One real (tiny) training writes a run directory; the tests read it as a user's own script would:
which files are there, the JSON keys each has, that the copies agree (history.csv and
history.json, config.yaml and the config that trained), and that a Python with only the standard
library and PyYAML reads it without cnnlab. The writes are atomic: a failing write leaves the
previous version whole and no temporary file behind.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile

import pytest
import yaml

from cnnlab import rundir
from cnnlab.config import load_config
from cnnlab.train import train

from conftest import REPO

# every file of a completed run; the docstring of rundir.py names each
RUN_FILES = [rundir.CONFIG, rundir.RUN, rundir.ENVIRONMENT, rundir.DATA, rundir.SUMMARY, rundir.BEST,
             rundir.HISTORY_CSV, rundir.HISTORY_JSON, "loss.png", "accuracy.png", rundir.METRICS,
             "model.tflite", "report.html", rundir.RESUME_STATE]
EPOCHS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    source = REPO / "configs" / "xor_mlp.yaml"
    cfg = load_config(source, [f"train.epochs={EPOCHS}"])
    return train(cfg, source, runs_dir=tmp_path_factory.mktemp("runs"), echo=lambda line: None, quiet=True)


def _json(run, name: str) -> dict:
    return json.loads((run.run_dir / name).read_text(encoding="utf-8"))


def test_a_completed_run_has_every_documented_file_and_nothing_half_written(run):
    folder = run.run_dir
    documented = rundir.__doc__.replace("history.csv/.json", "history.csv history.json")
    for name in RUN_FILES:
        assert (folder / name).is_file(), name
        assert name in documented, f"{name} is not in rundir.py's description of the format"
    leftovers = [path.name for path in folder.rglob(".*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    name, stamp = folder.name.rsplit("-", 2)[0], folder.name.split("-", 1)[1]
    assert name == "xor_mlp" and len(stamp) == len("YYYYmmdd-HHMMSS")


def test_run_json_says_how_it_ended_and_who_trained_it(run):
    info = _json(run, rundir.RUN)
    assert info["status"] == "completed"
    assert info["name"] == "xor_mlp" and info["epochs_planned"] == EPOCHS and info["epochs_completed"] == EPOCHS
    for key in ("config_source", "started", "finished", "pid", "host"):
        assert key in info, key
    assert info["started"] <= info["finished"]  # ISO timestamps order as text


def test_environment_data_and_metrics_hold_their_documented_keys(run):
    environment = _json(run, rundir.ENVIRONMENT)
    for key in ("python", "tensorflow", "keras", "numpy", "device", "precision", "distribute"):
        assert key in environment, key
    assert environment["distribute"]["replicas"] == 1
    data = _json(run, rundir.DATA)
    assert data["classes"] and set(data["samples"]) >= {"train", "validation", "test"}
    metrics = _json(run, rundir.METRICS)
    for key in ("test_loss", "test_accuracy", "best_epoch", "epochs_completed", "train_seconds"):
        assert key in metrics, key
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and 1 <= metrics["best_epoch"] <= EPOCHS


def test_history_csv_and_json_are_the_same_epochs(run):
    rows = _json(run, rundir.HISTORY_JSON)["epochs"]
    with (run.run_dir / rundir.HISTORY_CSV).open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
    assert [int(row["epoch"]) for row in table] == [row["epoch"] for row in rows]
    for row, line in zip(rows, table):
        assert set(line) == set(rows[-1])  # one column per key
        assert float(line["loss"]) == pytest.approx(row["loss"], rel=1e-5)  # csv keeps 6 significant digits
        assert {"loss", "learning_rate", "seconds"} <= set(row)


def test_config_yaml_is_the_config_that_trained_and_trains_again(run):
    again = load_config(run.run_dir / rundir.CONFIG)
    assert again.train.epochs == EPOCHS and again.name == "xor_mlp"
    assert yaml.safe_load((run.run_dir / rundir.CONFIG).read_text()) == again.model_dump(
        mode="json", exclude={"tune", "track"})  # the sections a config without them leaves out


def test_a_reader_without_cnnlab_reads_every_file(run):
    """What the format promises: JSON, CSV, YAML, PNG and Keras' zip, read by the standard library and PyYAML."""
    script = r"""
import csv, json, sys, zipfile
from pathlib import Path
import yaml
run = Path(sys.argv[1])
info = json.loads((run / "run.json").read_text())
config = yaml.safe_load((run / "config.yaml").read_text())
epochs = json.loads((run / "history.json").read_text())["epochs"]
rows = list(csv.DictReader((run / "history.csv").open(newline="")))
metrics = json.loads((run / "metrics.json").read_text())
for name in ("loss.png", "accuracy.png"):
    assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
with zipfile.ZipFile(run / "best.keras") as archive:  # a .keras file is a zip with the model's config.json
    model = json.loads(archive.read("config.json"))
assert "cnnlab" not in sys.modules
print(json.dumps({"status": info["status"], "layers": len(config["model"]["layers"]), "epochs": len(epochs),
                  "rows": len(rows), "accuracy": metrics["test_accuracy"], "class": model["class_name"]}))
"""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-c", script, str(run.run_dir)], capture_output=True, text=True,
                         env=env, cwd=run.run_dir, timeout=120)
    assert out.returncode == 0, out.stderr
    read = json.loads(out.stdout)
    assert read == {"status": "completed", "layers": len(load_config(run.run_dir / rundir.CONFIG).model.layers),
                    "epochs": EPOCHS, "rows": EPOCHS, "accuracy": _json(run, rundir.METRICS)["test_accuracy"],
                    "class": "Sequential"}


def test_a_failing_write_leaves_the_previous_version_whole_and_no_temporary(tmp_path):
    path = tmp_path / "run.json"
    rundir.write_json(path, {"status": "running"})
    with pytest.raises(RuntimeError), rundir.atomic_path(path) as tmp:
        tmp.write_text('{"status": "compl')  # killed half-way through the new version
        raise RuntimeError("killed")
    assert rundir.read_json(path) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_update_json_changes_only_the_keys_it_is_given(tmp_path):
    path = tmp_path / "run.json"
    rundir.write_json(path, {"status": "running", "epochs_completed": 1, "pid": 7})
    rundir.update_json(path, status="interrupted", epochs_completed=2)
    assert rundir.read_json(path) == {"status": "interrupted", "epochs_completed": 2, "pid": 7}


def test_a_run_directory_is_never_overwritten(tmp_path):
    from datetime import datetime

    moment = datetime(2026, 11, 23, 1, 25, 42)
    first = rundir.create_run_dir(tmp_path, "cnn", now=moment)
    second = rundir.create_run_dir(tmp_path, "cnn", now=moment)  # the same second: another folder
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name == "cnn-20261123-012542"


def test_best_keras_is_a_plain_keras_file(run):
    with zipfile.ZipFile(run.run_dir / rundir.BEST) as archive:
        assert {"config.json", "metadata.json"} <= set(archive.namelist())
