"""cnnlab evaluate: the numbers a user checks a model by, for cnnlab runs and other people's files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnlab.cli import app
from cnnlab.config import validate_config
from cnnlab.evaluate import evaluate
from cnnlab.train import train

from conftest import DATA_DIR, REPO, needs_data, needs_shared
from test_checkpoint import KERAS2_H5, KERAS3_H5, save_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small CNN trained for two epochs on 4,800 real MNIST images (seconds)."""
    if DATA_DIR is None:
        pytest.skip("real MNIST files not found (set CNNLAB_DATA_DIR)")
    config = {
        "name": "tiny-cnn", "seed": 3,
        "data": {"dataset": "mnist", "dir": str(DATA_DIR), "download": False,  # before the autouse env fixture
                 "train_samples": 6000, "test_samples": 1000,
                 "validation": {"method": "stratified", "size": 0.2}},
        "model": {"layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
            {"type": "max_pooling2d", "pool_size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ]},
        "train": {"epochs": 2, "batch_size": 32},
    }
    cfg = validate_config(config, "tiny-cnn.yaml")
    return train(cfg, "tiny-cnn.yaml", runs_dir=tmp_path_factory.mktemp("runs"), echo=lambda _: None).run_dir


def test_a_run_scores_what_its_training_reported(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    result = evaluate(trained_run)
    assert result.samples == metrics["test_samples"] == 1000
    assert result.accuracy == metrics["test_accuracy"]
    assert result.accuracy > 0.8  # two epochs on 4,800 images: about 0.9
    assert result.loss == pytest.approx(metrics["test_loss"], abs=1e-4)
    assert result.loss_name == "sparse_categorical_crossentropy" and result.loss_as_trained
    # the results sit next to the checkpoint
    out = trained_run / "evaluation"
    assert result.out_dir == out
    for name in ("evaluation.json", "report.txt", "confusion_matrix.png", "mistakes.png"):
        assert (out / name).is_file(), name
    for name in ("confusion_matrix.png", "mistakes.png"):
        assert (out / name).read_bytes()[:8] == PNG
    saved = json.loads((out / "evaluation.json").read_text())
    matrix = np.array(saved["confusion_matrix"])
    assert matrix.sum() == 1000 and np.trace(matrix) == saved["correct"] == round(result.accuracy * 1000)
    assert [row["support"] for row in saved["per_class"]] == matrix.sum(axis=1).tolist()
    assert sum(row["support"] for row in saved["per_class"]) == 1000
    mistakes = saved["worst_mistakes"]
    assert len(mistakes) == min(24, 1000 - saved["correct"]) and saved["mistakes"] == 1000 - saved["correct"]
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    assert all(m["true"] != m["predicted"] for m in mistakes)


def test_the_printed_report_and_json(trained_run, runner):
    result = runner.invoke(app, ["evaluate", str(trained_run)])
    assert result.exit_code == 0, result.output
    text = result.stdout
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert f"accuracy  {metrics['test_accuracy']:.4f}" in text
    assert "precision  recall      f1  support" in text and "macro avg" in text
    assert "confusion matrix (rows: true class, columns: predicted class)" in text
    assert f"wrote {trained_run / 'evaluation'}/" in text
    result = runner.invoke(app, ["evaluate", str(trained_run), "--json"])
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["accuracy"] == metrics["test_accuracy"] and len(document["per_class"]) == 10


@needs_data
@needs_shared
@pytest.mark.parametrize("path", [KERAS2_H5, KERAS3_H5], ids=["keras2", "keras3"])
def test_other_peoples_h5_files_score_about_099(path, runner, tmp_path):
    result = runner.invoke(app, ["evaluate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["samples"] == 10000 and document["accuracy"] > 0.985  # 0.9908 and 0.9900
    assert document["loss_name"] == "categorical_crossentropy" and document["loss"] < 0.05
    assert document["files"] == [] and not (path.parent / "evaluation").exists()


@needs_data
def test_a_bare_file_writes_only_where_told(tmp_path, runner):
    folder = tmp_path / "downloads"
    folder.mkdir()
    model = save_model(folder / "model.keras")
    result = runner.invoke(app, ["evaluate", str(model)])
    assert result.exit_code == 0, result.output
    assert "nothing written; add --out DIR" in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["model.keras"]
    out = tmp_path / "results"
    result = runner.invoke(app, ["evaluate", str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png", "evaluation.json", "mistakes.png", "report.txt"]


@needs_data
def test_a_file_without_a_training_loss_gets_cross_entropy(tmp_path):
    result = evaluate(save_model(tmp_path / "model.keras"))
    assert result.loss_name == "sparse_categorical_crossentropy" and not result.loss_as_trained
    # an untrained 10-class model is close to uniform: cross-entropy near ln(10)
    assert result.loss == pytest.approx(np.log(10), rel=0.3)
    assert "the file does not say how it was trained" in result.report()


@needs_data
def test_fashion_mnist_gets_class_names(tmp_path, runner):
    model = save_model(tmp_path / "fashion.keras")
    result = runner.invoke(app, ["evaluate", str(model), "--dataset", "fashion_mnist", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["dataset"] == "fashion_mnist"
    assert [row["name"] for row in document["per_class"]][:2] == ["T-shirt/top", "Trouser"]
    result = runner.invoke(app, ["evaluate", str(model), "--dataset", "fashion_mnist"])
    assert "9 Ankle boot" in result.stdout


def test_user_mistakes_are_one_line_errors(tmp_path, runner):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing.h5")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.h5'}: no such run directory or model file."]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    model = save_model(tmp_path / "model.keras")
    result = runner.invoke(app, ["evaluate", str(model), "--out", str(locked / "results")])
    assert result.exit_code == 2 and "is read-only" in result.stderr
    assert not (locked / "results").exists()
    locked.chmod(0o755)


def test_xor_evaluate_reports_the_loss_and_scaling_training_did(runner, tmp_path):
    """binary_crossentropy on a 2-unit softmax: Keras computes it from the softmax's logits in fit and
    evaluate; evaluate used to apply it to the probabilities (0.0380 against train's 0.1298)."""
    result = runner.invoke(app, ["train", str(REPO / "configs" / "xor_mlp.yaml"), "--runs-dir", str(tmp_path),
                                 "--set", "train.epochs=10", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    report = runner.invoke(app, ["evaluate", str(run)])
    assert report.exit_code == 0, report.output
    assert f"loss      {metrics['test_loss']:.4f} (binary_crossentropy, as trained)" in report.stdout
    assert "xor test split, 4 samples, input (2,), not scaled" in report.stdout and "x / 255" not in report.stdout
    document = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).stdout)
    assert document["loss"] == pytest.approx(metrics["test_loss"], abs=1e-6) and document["scale"] is None
