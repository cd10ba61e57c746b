"""Classical baselines (linear SVM, k-means) on a config's data and split."""

from __future__ import annotations

import json

import pytest

from cnnlab.baselines import run_baseline
from cnnlab.cli import app
from cnnlab.config import validate_config
from cnnlab.errors import CnnlabError

from conftest import needs_data, small_dnn


def _subset(train: int = 2000) -> dict:
    data = small_dnn()
    data["data"].update(train_samples=train, test_samples=500)
    return data


@needs_data
@pytest.mark.parametrize("method, floor", [("svm", 0.8), ("kmeans", 0.35)])  # chance is 0.1
def test_baselines_beat_chance_on_a_small_subset(tmp_path, method, floor):
    result = run_baseline(validate_config(_subset(), "s"), method, runs_dir=tmp_path, echo=lambda _: None)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] > floor and metrics["val_accuracy"] > floor
    assert metrics["train_samples"] == 1600 and metrics["test_samples"] == 500  # the config's split
    assert json.loads((result.run_dir / "run.json").read_text())["status"] == "completed"
    assert result.run_dir.name.startswith(f"small-{method}-")


@needs_data
def test_kmeans_maps_each_cluster_to_a_label(tmp_path):
    result = run_baseline(validate_config(_subset(1000), "s"), "kmeans", runs_dir=tmp_path, clusters=20,
                          echo=lambda _: None)
    labels = result.metrics["cluster_labels"]
    assert len(labels) == 20 and set(labels) <= set(range(10)) and len(set(labels)) >= 6


@needs_data
def test_baseline_command(runner, write_config, tmp_path):
    path = write_config(_subset())
    result = runner.invoke(app, ["baseline", str(path), "--method", "kmeans", "--runs-dir", str(tmp_path / "runs"),
                                 "--set", "data.train_samples=1000"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "run directory" in result.output


def test_clusters_are_only_for_kmeans():
    with pytest.raises(CnnlabError, match="--clusters 5: only for --method kmeans"):
        run_baseline(validate_config(_subset(), "s"), "svm", clusters=5)


@needs_data
def test_evaluate_and_predict_on_a_baseline_run_say_what_it_is(runner, tmp_path):
    result = run_baseline(validate_config(_subset(1000), "s"), "kmeans", runs_dir=tmp_path, echo=lambda _: None)
    run = result.run_dir
    assert json.loads((run / "run.json").read_text())["kind"] == "baseline"  # how every command tells
    accuracy = f"test accuracy {result.metrics['test_accuracy']:.4f}"
    for args in (["evaluate", str(run)], ["predict", str(run), str(run / "config.yaml")]):
        out = runner.invoke(app, args)
        assert out.exit_code == 2, out.output
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith(f"error: {run}: is a baseline run, k-means clustering (`cnnlab baseline --method kmeans`)")
        assert accuracy in line and f"(in {run / 'metrics.json'})" in line and f"cnnlab compare RUN... {run}" in line
        assert "epoch" not in line  # not "stopped before its first epoch finished"
