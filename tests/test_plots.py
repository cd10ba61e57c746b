"""The PNGs of a run: best epoch on the curves, readable counts on the confusion matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnlab.config import load_config
from cnnlab.plots import best_row, confusion_matrix_figure, history_figure, text_color
from cnnlab.train import train

from conftest import REPO


def _rows(val_accuracy):
    return [{"epoch": i + 1, "loss": 1.0 / (i + 1), "accuracy": 0.8 + 0.05 * i, "val_loss": 1.0 - a,
             "val_accuracy": a} for i, a in enumerate(val_accuracy)]


def test_the_best_epoch_is_a_line_on_every_curve_plot_and_a_star_on_the_monitored_curve():
    rows = _rows([0.90, 0.95, 0.94])
    accuracy = history_figure(rows, "accuracy", "run", monitor="val_accuracy", mode="max").axes[0]
    loss = history_figure(rows, "loss", "run", monitor="val_accuracy", mode="max").axes[0]
    for ax in (accuracy, loss):
        line = next(line for line in ax.get_lines() if line.get_label().startswith("best epoch"))
        assert line.get_label() == "best epoch 2 (val_accuracy 0.9500)" and list(line.get_xdata()) == [2, 2]
        assert "best epoch 2 (val_accuracy 0.9500)" in [text.get_text() for text in ax.get_legend().get_texts()]
    stars = [line for line in accuracy.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [2] and list(stars[0].get_ydata()) == [0.95]
    assert not [line for line in loss.get_lines() if line.get_marker() == "*"]  # val_accuracy is not on it
    by_loss = history_figure(rows, "loss", "run", monitor="val_loss", mode="min").axes[0]
    assert "best epoch 2 (val_loss 0.0500)" in [line.get_label() for line in by_loss.get_lines()]


def test_without_the_monitored_value_nothing_is_marked():
    rows = _rows([0.9, 0.95])
    assert best_row(rows, "val_auc", "max") is None
    labels = [line.get_label() for line in history_figure(rows, "loss", "run", "val_auc").axes[0].get_lines()]
    assert not [label for label in labels if label.startswith("best")]


def test_the_marked_epoch_is_the_best_epoch_of_metrics_json(tmp_path):
    cfg = load_config(REPO / "configs" / "xor_mlp.yaml", ["train.epochs=6"])  # monitor: loss (min)
    run = train(cfg, "xor_mlp.yaml", runs_dir=tmp_path, echo=lambda _: None).run_dir
    rows = json.loads((run / "history.json").read_text())["epochs"]
    assert best_row(rows, "loss", "min")["epoch"] == json.loads((run / "metrics.json").read_text())["best_epoch"]


@pytest.mark.parametrize("color, text", [
    ((1.0, 1.0, 1.0), "black"), ((0.0, 0.0, 0.0), "white"),
    ((0.45, 0.77, 0.46), "black"),   # a mid green: white on it was hard to read
    ((0.40, 0.0, 0.05), "white"),    # dark red
])
def test_text_colour_follows_the_cells_luminance(color, text):
    assert text_color(color) == text


def test_every_count_on_the_confusion_matrix_contrasts_with_its_cell():
    matrix = np.array([[65, 35, 0], [3, 97, 0], [0, 40, 60]])  # a 0.65 hit share: a mid green
    ax = confusion_matrix_figure(matrix, ("0", "1", "2"), "run").axes[0]
    hits, misses = ax.get_images()
    share = matrix / matrix.sum(axis=1, keepdims=True)
    errors = np.where(np.eye(3, dtype=bool), 0, matrix)
    colors = {}
    for text in ax.texts:
        col, row = (round(v) for v in text.get_position())
        cell = hits.to_rgba(share[row, col]) if row == col else misses.to_rgba(errors[row, col])
        assert text.get_color() == text_color(cell), (row, col)
        colors[int(text.get_text())] = text.get_color()
    assert colors[65] == "black" and colors[40] == "white"  # the old rule gave the 0.65 hit white text
