"""report.html: one self-contained page per run, written by train and by `cnnlab report`, read in chromium.

The pages of a real MNIST run and of a folder-data run are opened in Debian's chromium
(Selenium, as the serve page's tests do); a screenshot of each is saved in the test's tmp
dir, and in $CNNLAB_SCREENSHOTS when that is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnnlab.cli import app
from cnnlab.evaluate import class_scores

from conftest import REPO, needs_data, start_chromium

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?!data:)[a-z]+:""", re.IGNORECASE)  # any URL scheme but data:


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> Path:
    """configs/folder_example.yaml on a freshly drawn folder of shapes, trained through the CLI."""
    import sys

    from typer.testing import CliRunner

    sys.path.insert(0, str(REPO / "examples"))
    from make_shapes import write_shapes_folder

    tmp = tmp_path_factory.mktemp("shapes")
    write_shapes_folder(tmp / "shapes", per_class=40, seed=5)
    config = yaml.safe_load((REPO / "configs" / "folder_example.yaml").read_text())
    config["data"]["path"] = str(tmp / "shapes")
    config["train"]["epochs"] = 4
    path = tmp / "shapes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = CliRunner().invoke(app, ["train", str(path), "--runs-dir", str(tmp / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp / "runs").iterdir()
    return run


def _assert_self_contained(page: Path) -> str:
    text = page.read_text(encoding="utf-8")
    assert page.stat().st_size < 2_000_000
    assert EXTERNAL.search(text) is None and "http://" not in text and "https://" not in text
    assert "<script" not in text.lower()  # nothing runs: it reads the same in a mail client
    return text


@needs_data
def test_train_writes_a_self_contained_report_with_every_section(served_run):
    page = served_run / "report.html"
    text = _assert_self_contained(page)
    metrics = json.loads((served_run / "metrics.json").read_text())
    data = json.loads((served_run / "data.json").read_text())
    for heading in ("Test results", "Confusion matrix", "Curves", "Most confident mistakes", "Data", "Model",
                    "Config as trained", "Environment", "Exports"):
        assert heading in text
    assert f"{metrics['test_accuracy']:.4f}" in text
    assert f"{metrics['tflite_max_abs_diff']:.1e}" in text  # the export's measured difference
    assert sum(data["class_counts"]["test"]) == data["samples"]["test"] == 1000
    assert sum(data["class_counts"]["train"]) == data["samples"]["train"]
    # every picture is inline: the 2 curves, 8 samples of each of the 10 digits, the 16 surest mistakes
    assert text.count("src='data:image/") >= 2 + 80 + 16


def test_class_scores_match_scikit_learn():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 500)
    predicted = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 5, 500))
    predicted[predicted == 4] = 3  # a class never predicted: precision 0, as zero_division=0
    per_class, confusion = class_scores(labels, predicted, ["a", "b", "c", "d", "e"])
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=range(5),
                                                                     zero_division=0)
    assert np.array_equal(confusion, confusion_matrix(labels, predicted, labels=range(5)))
    np.testing.assert_allclose([row["precision"] for row in per_class], precision)
    np.testing.assert_allclose([row["recall"] for row in per_class], recall)
    np.testing.assert_allclose([row["f1"] for row in per_class], f1)
    assert [row["support"] for row in per_class] == support.tolist()


@needs_data
def test_report_command_draws_the_page_again_from_the_run(served_run, runner, tmp_path):
    out = tmp_path / "mailed.html"
    result = runner.invoke(app, ["report", str(served_run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}\n"
    text = _assert_self_contained(out)
    metrics = json.loads((served_run / "metrics.json").read_text())
    right = int(re.search(r"([\d,]+) of 1,000 test samples right", text).group(1).replace(",", ""))
    assert abs(right - round(metrics["test_accuracy"] * 1000)) <= 1  # model.tflite within 1e-4 of Keras


def test_report_of_a_run_stopped_before_its_first_epoch(tmp_path, runner):
    run = tmp_path / "cnn-20261101-100000"
    run.mkdir()
    (run / "config.yaml").write_text("name: cnn\n")
    (run / "run.json").write_text(json.dumps({"name": "cnn", "status": "interrupted", "started": "2026-11-01T10:00:00",
                                              "epochs_completed": 0}))
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    text = _assert_self_contained(run / "report.html")
    assert "interrupted" in text and "No test results" in text and "No curves" in text and "No data.json" in text


def test_report_of_a_folder_that_is_no_run_is_one_line(tmp_path, runner):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {tmp_path}: is not a cnnlab run directory") and result.output.count("\n") == 1


def test_a_tuning_study_gets_one_page(tmp_path, runner):
    from PIL import Image

    study = tmp_path / "tune_cnn"
    study.mkdir()
    (study / "trials.csv").write_text("number,state,value,train.optimizer.learning_rate\n0,COMPLETE,0.9712,0.001\n"
                                      "1,PRUNED,0.8811,0.1\n")
    (study / "best.yaml").write_text("name: tune_cnn\nseed: 42\n")
    Image.new("RGB", (40, 30), "white").save(study / "history.png")
    result = runner.invoke(app, ["report", str(study)])
    assert result.exit_code == 0, result.output
    text = _assert_self_contained(study / "report.html")
    assert "2 trials" in text and "<td>PRUNED</td>" in text and "name: tune_cnn" in text
    assert text.count("src='data:image/png;base64,") == 1


# --- in chromium ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"), window="1200,900")
    yield driver
    driver.quit()


def _open_and_screenshot(driver, page: Path, shot: Path) -> dict:
    """Open the page; every picture must have loaded, nothing outside the file requested. Returns what it shows."""
    driver.get(page.as_uri())
    state = driver.execute_script("""
        const images = [...document.images];
        return {images: images.length,
                broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
                fetched: performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:')),
                headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
                classes: [...document.querySelectorAll('table.classes tr')].slice(1).map(r => r.cells[1].textContent),
                height: document.body.scrollHeight, width: document.body.scrollWidth};""")
    driver.set_window_size(1200, min(state["height"] + 120, 8000))
    driver.save_screenshot(str(shot))
    if os.environ.get("CNNLAB_SCREENSHOTS"):
        folder = Path(os.environ["CNNLAB_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, folder / shot.name)
    assert state["broken"] == [] and state["fetched"] == []
    assert state["width"] <= 1200  # nothing wider than the window: no sideways scrolling
    return state


SECTIONS = ["Test results", "Curves", "Most confident mistakes", "Data", "Model", "Config as trained", "Environment",
            "Exports"]


@needs_data
def test_mnist_report_in_chromium(browser, served_run, tmp_path):
    state = _open_and_screenshot(browser, served_run / "report.html", tmp_path / "report-mnist.png")
    assert state["headings"] == SECTIONS
    assert state["classes"] == [str(digit) for digit in range(10)]
    assert state["images"] >= 2 + 80 + 16


def test_folder_data_report_in_chromium(browser, shapes_run, tmp_path):
    _assert_self_contained(shapes_run / "report.html")
    state = _open_and_screenshot(browser, shapes_run / "report.html", tmp_path / "report-shapes.png")
    assert state["headings"] == SECTIONS
    assert state["classes"] == ["circle", "square", "triangle"]
    assert state["images"] >= 2 + 3 * 8
