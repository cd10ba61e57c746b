"""`cnnlab runs`: the table of the runs under a folder, read from their JSON files alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cnnlab.cli import app
from cnnlab.runs import list_runs


def make_run(folder: Path, name: str, started: str, status: str = "completed", test_accuracy: float | None = 0.9,
             best: float | None = 0.91, epochs: tuple[int, int] = (5, 5), dataset: str = "mnist",
             finished: str | None = None, **info) -> Path:
    """A run directory as train leaves it, without the model: config.yaml, run.json, data.json, metrics.json."""
    run = folder / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\ndata: {{dataset: {dataset}}}\n")
    record = {"name": name, "status": status, "started": started, "epochs_completed": epochs[0],
              "epochs_planned": epochs[1], **info}
    if finished:
        record["finished" if status == "completed" else "stopped"] = finished
    (run / "run.json").write_text(json.dumps(record))
    (run / "data.json").write_text(json.dumps({"dataset": dataset, "source": None, "classes": ["0", "1"]}))
    if test_accuracy is not None:
        (run / "metrics.json").write_text(json.dumps({"test_accuracy": test_accuracy, "best_epoch": 3,
                                                      "best_val_accuracy": best}))
    return run


def test_runs_are_listed_newest_first_with_their_columns(tmp_path, runner):
    make_run(tmp_path, "old-1", "2026-11-01T10:00:00", finished="2026-11-01T10:01:30", test_accuracy=0.95)
    make_run(tmp_path, "new-1", "2026-11-02T09:00:00", finished="2026-11-02T10:05:00", test_accuracy=0.97,
             best=0.975, epochs=(3, 10), dataset="fashion_mnist")
    result = runner.invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["run", "data", "status", "epochs", "best", "test", "acc", "duration", "started"]
    assert lines[1].split() == ["new-1", "fashion_mnist", "completed", "3/10", "val_accuracy", "0.9750", "0.9700",
                                "1h05m", "2026-11-02", "09:00:00"]
    assert lines[2].split()[:7] == ["old-1", "mnist", "completed", "5/5", "val_accuracy", "0.9100", "0.9500"]
    assert lines[2].split()[7] == "1m30s"


def test_sort_by_test_accuracy_puts_runs_without_one_last(tmp_path):
    make_run(tmp_path, "a", "2026-11-01T10:00:00", test_accuracy=0.90)
    make_run(tmp_path, "b", "2026-11-02T10:00:00", test_accuracy=None, status="interrupted")
    make_run(tmp_path, "c", "2026-11-03T10:00:00", test_accuracy=0.99)
    assert [row.name for row in list_runs(tmp_path, sort="test_accuracy")] == ["c", "a", "b"]
    assert [row.name for row in list_runs(tmp_path, sort="name")] == ["a", "b", "c"]
    assert [row.name for row in list_runs(tmp_path)] == ["c", "b", "a"]


def test_json_lists_every_field_for_scripts(tmp_path, runner):
    make_run(tmp_path, "a", "2026-11-01T10:00:00", finished="2026-11-01T10:00:42")
    result = runner.invoke(app, ["runs", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row == {"name": "a", "data": "mnist", "status": "completed", "epochs_completed": 5, "epochs_planned": 5,
                   "monitor": "val_accuracy", "best": 0.91, "test_accuracy": 0.9, "seconds": 42.0,
                   "started": "2026-11-01T10:00:00", "path": str(tmp_path / "a")}


def test_damaged_and_partial_runs_are_listed_with_what_is_wrong(tmp_path, runner):
    make_run(tmp_path, "good", "2026-11-05T10:00:00")
    no_info = tmp_path / "no-run-json"
    no_info.mkdir()
    (no_info / "config.yaml").write_text("name: x\ndata: {dataset: mnist}\n")
    torn = make_run(tmp_path, "torn", "2026-11-04T10:00:00")
    (torn / "run.json").write_text('{"name": "torn", "stat')  # cut short by a crash of the file system
    bad_metrics = make_run(tmp_path, "bad-metrics", "2026-11-03T10:00:00")
    (bad_metrics / "metrics.json").write_text("[1, 2")
    make_run(tmp_path, "no-metrics", "2026-11-02T10:00:00", test_accuracy=None)
    garbage = make_run(tmp_path, "garbage-values", "2026-11-01T10:00:00")
    (garbage / "run.json").write_text(json.dumps({"status": "completed", "started": "yesterday",
                                                  "epochs_completed": "five"}))
    (garbage / "config.yaml").write_text("{{{ not yaml")
    (garbage / "data.json").unlink()
    (tmp_path / "notes").mkdir()  # a folder of the user's that is no run: not listed
    result = runner.invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    status = {row.name: row.status for row in list_runs(tmp_path)}
    assert status == {
        "good": "completed", "no-run-json": "damaged: run.json missing", "torn": "damaged: run.json unreadable",
        "bad-metrics": "completed (metrics.json unreadable)", "no-metrics": "completed (metrics.json missing)",
        "garbage-values": "completed",
    }
    assert "notes" not in result.output and "Traceback" not in result.output
    assert runner.invoke(app, ["runs", str(tmp_path), "--sort", "duration"]).exit_code == 0


def test_tuning_trials_killed_runs_and_baselines(tmp_path):
    study = tmp_path / "tune_cnn"
    make_run(study, "trial-000-20261101-100000", "2026-11-01T10:00:00", tune={"study": "tune_cnn", "trial": 0})
    make_run(study, "trial-001-20261101-100100", "2026-11-01T10:01:00",
             tune={"study": "tune_cnn", "trial": 1, "pruned_at_epoch": 2})
    (study / "study.db").write_bytes(b"")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    make_run(tmp_path, "killed", "2026-11-02T10:00:00", status="running", test_accuracy=None,
             pid=dead.pid, host=__import__("socket").gethostname())
    baseline = make_run(tmp_path, "dnn-svm-20261103-100000", "2026-11-03T10:00:00", kind="baseline", method="svm")
    (baseline / "metrics.json").write_text(json.dumps({"val_accuracy": 0.92, "test_accuracy": 0.918}))
    (baseline / "data.json").unlink()  # a baseline writes none: its data set comes from its config
    rows = {row.name: row for row in list_runs(tmp_path)}
    assert rows["tune_cnn/trial-000-20261101-100000"].status == "completed"
    assert rows["tune_cnn/trial-001-20261101-100100"].status == "pruned"
    assert rows["killed"].status == "killed"
    assert (rows["dnn-svm-20261103-100000"].data, rows["dnn-svm-20261103-100000"].best) == ("mnist", 0.92)


def test_a_missing_folder_or_sort_key_is_one_line(tmp_path, runner):
    result = runner.invoke(app, ["runs", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {tmp_path / 'nope'}: no such folder of runs (train writes them under --runs-dir, default runs/).")
    assert runner.invoke(app, ["runs", str(tmp_path), "--sort", "colour"]).exit_code == 2


def test_runs_does_not_import_tensorflow(tmp_path):
    make_run(tmp_path, "a", "2026-11-01T10:00:00")
    code = ("import sys; from typer.testing import CliRunner; from cnnlab.cli import app; "
            f"r = CliRunner().invoke(app, ['runs', {str(tmp_path)!r}]); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
