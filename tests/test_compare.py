"""`cnnlab compare`: several runs' curves in one figure, legend from the run names."""

from __future__ import annotations

import re

from cnnlab import rundir
from cnnlab.cli import app
from cnnlab.plots import comparison_curves, comparison_figure, plot_comparison, read_run_curves

PNG = b"\x89PNG\r\n\x1a\n"


def _run(parent, name: str, accuracies: list[float], folder: str | None = None, history: bool = True):
    """A run directory as `cnnlab train` leaves it (only the files compare reads)."""
    path = parent / (folder or f"{name}-20260101-000000")
    rundir.write_text(path / rundir.CONFIG, f"name: {name}\n")
    rundir.write_json(path / rundir.RUN, {"name": name, "status": "completed"})
    if history:
        rows = [{"epoch": i + 1, "loss": 1 - a, "accuracy": a, "val_loss": 1.1 - a, "val_accuracy": a - 0.05}
                for i, a in enumerate(accuracies)]
        rundir.write_json(path / rundir.HISTORY_JSON, {"epochs": rows})
    return path


def test_compare_overlays_train_and_validation_of_each_run(tmp_path):
    runs = [_run(tmp_path, "sigmoid_sgd", [0.11, 0.12, 0.2]), _run(tmp_path, "relu_adam", [0.9, 0.95, 0.97, 0.98])]
    fig = comparison_figure([read_run_curves(run) for run in runs])
    panels = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in panels] == ["loss", "accuracy"]
    for ax in panels:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["sigmoid_sgd (train)", "sigmoid_sgd (validation)", "relu_adam (train)", "relu_adam (validation)"]
    accuracy_lines = panels[1].get_lines()
    assert list(accuracy_lines[2].get_ydata()) == [0.9, 0.95, 0.97, 0.98]  # each run keeps its own length
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["sigmoid_sgd", "relu_adam", "train", "validation"]


def test_compare_command_writes_the_png(runner, tmp_path):
    runs = [_run(tmp_path, "a", [0.5, 0.6]), _run(tmp_path, "b", [0.7, 0.8])]
    out = tmp_path / "figs" / "ab.png"
    result = runner.invoke(app, ["compare", *map(str, runs), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG and str(out) in result.output


def test_the_same_config_twice_is_told_apart_by_folder(tmp_path):
    runs = [_run(tmp_path, "dnn", [0.5], "dnn-1"), _run(tmp_path, "dnn", [0.6], "dnn-2"), _run(tmp_path, "cnn", [0.7])]
    assert [run.name for run in comparison_curves(runs)] == ["dnn-1", "dnn-2", "cnn"]
    assert [run.name for run in comparison_curves(runs[:1])] == ["dnn"]
    elsewhere = _run(tmp_path / "other", "dnn", [0.8], "dnn-1")  # even the folder name repeats
    assert [run.name for run in comparison_curves([runs[0], elsewhere])] == [str(runs[0]), str(elsewhere)]
    plot_comparison(runs, tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes()[:8] == PNG


def test_the_help_says_how_the_legend_names_runs(runner):
    result = runner.invoke(app, ["compare", "--help"])
    text = re.sub(r"[│\s]+", " ", result.output)  # the help as read, without rich's box and wrapping
    assert "config name, or by its folder name where several runs share a config name" in text


def test_a_folder_that_is_not_a_run_is_a_clear_error(runner, tmp_path):
    good = _run(tmp_path, "a", [0.5])
    (tmp_path / "notes").mkdir()
    result = runner.invoke(app, ["compare", str(good), str(tmp_path / "notes"), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert "notes: is not a cnnlab run directory" in result.stderr and not (tmp_path / "x.png").exists()


def test_a_run_without_a_finished_epoch_is_skipped_with_a_warning(runner, tmp_path):
    runs = [_run(tmp_path, "a", [0.5, 0.6]), _run(tmp_path, "fresh", [], history=False), _run(tmp_path, "b", [0.7])]
    out = tmp_path / "ab.png"
    result = runner.invoke(app, ["compare", *map(str, runs), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        f"warning: {runs[1]}: skipped, it has no finished epoch (history.json is missing or empty)."]
    assert out.read_bytes()[:8] == PNG
    assert [run.name for run in comparison_curves(runs)] == ["a", "b"]


def test_no_run_with_a_finished_epoch_is_an_error(runner, tmp_path):
    fresh = _run(tmp_path, "fresh", [], history=False)
    result = runner.invoke(app, ["compare", str(fresh), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and not (tmp_path / "x.png").exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: nothing to compare: {fresh} has no finished epoch (history.json); "
        "compare draws the runs of `cnnlab train` once an epoch has finished.")


def test_a_baseline_run_is_a_level_line_at_its_accuracy(tmp_path):
    trained = _run(tmp_path, "dnn", [0.9, 0.95])
    svm = _run(tmp_path, "dnn-svm", [], history=False)
    rundir.write_json(svm / rundir.RUN, {"name": "dnn-svm", "kind": "baseline", "method": "svm", "status": "completed"})
    rundir.write_json(svm / rundir.METRICS, {"method": "svm", "val_accuracy": 0.918, "test_accuracy": 0.92})
    fig = comparison_figure(comparison_curves([trained, svm]))
    loss, accuracy = [ax for ax in fig.axes if ax.get_lines()]
    assert [line.get_label() for line in loss.get_lines()] == ["dnn (train)", "dnn (validation)"]
    level = accuracy.get_lines()[-1]
    assert level.get_label() == "dnn-svm (linear SVM, validation 0.9180)" and list(level.get_ydata()) == [0.918, 0.918]
    assert [text.get_text() for text in fig.legends[0].get_texts()] == [
        "dnn", "dnn-svm (linear SVM, validation 0.9180)", "train", "validation"]


def test_the_output_must_be_a_png(runner, tmp_path):
    result = runner.invoke(app, ["compare", str(_run(tmp_path, "a", [0.5])), "-o", str(tmp_path / "x.pdf")])
    assert result.exit_code == 2 and "ending in .png" in result.stderr


def test_only_baseline_runs_is_an_error_that_says_so(runner, tmp_path):
    svm = _run(tmp_path, "dnn-svm", [], history=False)
    rundir.write_json(svm / rundir.RUN, {"name": "dnn-svm", "kind": "baseline", "method": "svm"})
    rundir.write_json(svm / rundir.METRICS, {"method": "svm", "test_accuracy": 0.92})
    fresh = _run(tmp_path, "fresh", [], history=False)
    result = runner.invoke(app, ["compare", str(svm), str(fresh), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and not (tmp_path / "x.png").exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: nothing to compare: {fresh} has no finished epoch (history.json); {svm} is a baseline run, "
        "drawn only beside a trained run's curves; compare draws the runs of `cnnlab train` once an epoch has finished.")


def _trained_on(run, dataset: str, classes: list[str], source: str | None = None):
    rundir.write_json(run / rundir.DATA, {"dataset": dataset, "source": source, "classes": classes})
    return run


def test_compare_names_the_data_and_warns_when_the_classes_differ(runner, tmp_path):
    shapes = ["circle", "square", "triangle"]
    a = _trained_on(_run(tmp_path, "a", [0.5, 0.6]), "folder", shapes, "/data/shapes")
    b = _trained_on(_run(tmp_path, "b", [0.7, 0.8]), "folder", shapes, "/data/shapes")
    fig = comparison_figure(comparison_curves([a, b]))
    assert fig._suptitle.get_text() == "a vs b\non folder shapes: circle, square, triangle"
    digits = _trained_on(_run(tmp_path, "d", [0.9, 0.95]), "mnist", [str(d) for d in range(10)])
    result = runner.invoke(app, ["compare", str(a), str(digits), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("warning: the runs were trained on different data")
    assert "folder shapes: circle, square, triangle" in line and "mnist: 0, 1, 2, 3, 4, 5, ... (10)" in line
