"""PNG figures: training curves, run comparisons, confusion matrices.

matplotlib is imported inside each function with the Agg backend, so no display is
needed and `cnnlab --help` never pays for it. Files are written atomically.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cnnlab.rundir import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SHORT_TITLE = 50  # characters of a title that fit a 6.4-inch figure at matplotlib's default size


def _save(fig, path: Path, crop: bool = True) -> Path:
    """Write `fig` as a PNG; `crop` trims (or widens) it to what is drawn, which costs a second draw."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight" if crop else None)
    _pyplot().close(fig)
    return path


def _picture(image):
    """An image array as matplotlib draws it: (h, w) for one channel, (h, w, 3) uint8 for colour."""
    import numpy as np

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        return image[..., 0]
    return np.clip(image, 0, 255).astype(np.uint8) if image.ndim == 3 else image


def history_metrics(rows: list[dict]) -> list[str]:
    """Base names of the curves in a history (`loss`, `accuracy`, ...), loss first."""
    names = [key for key in rows[0] if not key.startswith("val_") and key not in ("epoch", "seconds", "learning_rate")]
    return sorted(names, key=lambda name: (name != "loss", name))


def best_row(rows: list[dict], monitor: str, mode: str) -> dict | None:
    """The history row whose `monitor` is best (`mode` 'max' or 'min'; the first of ties), as the
    checkpoint keeps it and metrics.json's best_epoch names it; None if no row has the value."""
    import numpy as np

    values = [row.get(monitor, np.nan) for row in rows]
    if all(np.isnan(value) for value in values):
        return None
    return rows[int(np.nanargmax(values) if mode == "max" else np.nanargmin(values))]


def plot_history(rows: list[dict], out_dir: Path, title: str, monitor: str | None = None,
                 mode: str = "max", phase_change: int | None = None) -> list[Path]:
    """One PNG per metric (`loss.png`, `accuracy.png`): train vs validation per epoch; and
    `learning_rate.png` when the learning rate changed between epochs.

    With `monitor` (the checkpoint's, e.g. val_accuracy) and its `mode` ('max' or 'min'),
    the best epoch, the one best.keras holds, is a vertical line on every plot and a star
    on the monitored curve. `phase_change` (the last frozen epoch of a backbone run that
    fine-tunes after it) is a grey line where fine-tuning starts.
    """
    # with a title that fits the canvas (a tune trial's always does) each figure is drawn once, not twice
    written = [_save(history_figure(rows, name, title, monitor, mode, phase_change), out_dir / f"{name}.png",
                     crop=len(f"{title}: {name}") > SHORT_TITLE) for name in history_metrics(rows)]
    epochs = [row["epoch"] for row in rows]
    rates = [row.get("learning_rate") for row in rows]
    if None not in rates and len(set(rates)) > 1:  # a schedule ran: `learning_rate.png`
        fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
        ax.plot(epochs, rates, "o-", color="tab:green")
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate at the end of the epoch")
        ax.set_title(f"{title}: learning rate")
        ax.grid(alpha=0.3)
        _mark_phase(ax, phase_change, epochs)
        if len(epochs) < 25:
            ax.set_xticks(epochs)
        written.append(_save(fig, out_dir / "learning_rate.png"))
    return written


def history_figure(rows: list[dict], name: str, title: str, monitor: str | None = None, mode: str = "max",
                   phase_change: int | None = None):
    """The figure of `plot_history` for one metric `name` (loss, accuracy)."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in rows]
    best = best_row(rows, monitor, mode) if monitor else None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(epochs, [row[name] for row in rows], "o-", label=f"train {name}")
    if f"val_{name}" in rows[0]:
        ax.plot(epochs, [row[f"val_{name}"] for row in rows], "s--", label=f"validation {name}")
    if best is not None:
        ax.axvline(best["epoch"], color="tab:green", ls=":", lw=1.5,
                   label=f"best epoch {best['epoch']} ({monitor} {best[monitor]:.4f})")
        if monitor in (name, f"val_{name}"):
            ax.plot([best["epoch"]], [best[monitor]], "*", color="tab:green", ms=14, zorder=5)
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.set_title(f"{title}: {name}")
    ax.grid(alpha=0.3)
    _mark_phase(ax, phase_change, epochs)
    ax.legend()
    if len(epochs) < 25:
        ax.set_xticks(epochs)
    return fig


def _mark_phase(ax, phase_change: int | None, epochs: list[int]) -> None:
    if phase_change is not None and epochs and epochs[-1] > phase_change:
        ax.axvline(phase_change + 0.5, color="tab:gray", ls="-", lw=1.2, label=f"fine-tuning from epoch {phase_change + 1}")


def plot_iterations(iterations: list[tuple[int, int, float]], epochs: list[dict], path: Path,
                    title: str) -> Path:
    """The training loss of every iteration, with the validation loss after each epoch.

    Args:
        iterations: (iteration, epoch, loss) rows, as in a run's iterations.csv.
        epochs: the run's history rows; their `val_loss` is drawn at the epoch's last iteration.
        path: the PNG to write.
        title: the figure title (the run name).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.4))
    ax.plot([row[0] for row in iterations], [row[2] for row in iterations], lw=0.6, alpha=0.7,
            label="train loss (per iteration)")
    last_iteration = {epoch: iteration for iteration, epoch, _ in iterations}
    points = [(last_iteration[row["epoch"]], row["val_loss"]) for row in epochs
              if "val_loss" in row and row["epoch"] in last_iteration]
    if points:
        ax.plot(*zip(*points), "s--", color="tab:red", label="validation loss (per epoch)")
    ax.set_xlabel(f"iteration ({len(iterations) // max(len(last_iteration), 1)} per epoch)")
    ax.set_ylabel("loss")
    ax.set_title(f"{title}: loss per iteration")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


@dataclass
class RunCurves:
    """One run as `compare` draws it.

    Args:
        name: its legend entry (the config name; the folder name where names repeat).
        folder: the run directory.
        rows: per-epoch history rows (empty for a baseline run, or a run that finished no epoch).
        baseline: for a `cnnlab baseline` run: its accuracy (validation, else test), drawn as a level line.
        baseline_label: what that accuracy is, e.g. "linear SVM, validation 0.9180".
        data: the data set and its classes, e.g. "folder shapes: circle, square, triangle".
    """

    name: str
    folder: Path
    rows: list[dict]
    baseline: float | None = None
    baseline_label: str = ""
    data: str = ""


def read_run_curves(run_path: str | Path) -> RunCurves:
    """A run's name (config `name`) and its per-epoch history rows (or baseline score), for `compare`."""
    from cnnlab.rundir import HISTORY_JSON, METRICS, open_run, read_json

    run = open_run(run_path)
    name = str(run.info().get("name") or run.path.name)
    data = _run_data(run.path)
    if run.is_baseline:
        metrics = read_json(run.path / METRICS) if (run.path / METRICS).exists() else {}
        split = "validation" if "val_accuracy" in metrics else "test"
        value = metrics.get("val_accuracy", metrics.get("test_accuracy"))
        method = {"svm": "linear SVM", "kmeans": "k-means"}.get(run.info().get("method"), "baseline")
        label = f"{method}, {split} {value:.4f}" if value is not None else method
        return RunCurves(name, run.path, [], value, label, data)
    history = run.path / HISTORY_JSON
    rows = read_json(history).get("epochs", []) if history.exists() else []
    return RunCurves(name, run.path, rows, data=data)


def _run_data(folder: Path) -> str:
    """What a run trained on, with its class names, from data.json ("" for a run written before it)."""
    from cnnlab.rundir import DATA, read_json

    if not (folder / DATA).exists():
        return ""
    record = read_json(folder / DATA)
    classes = record.get("classes") or []
    source = f" {Path(record['source']).name}" if record.get("source") else ""
    names = ", ".join(classes[:6]) + (f", ... ({len(classes)})" if len(classes) > 6 else "")
    return f"{record.get('dataset')}{source}: {names}"


def comparison_figure(runs: list[RunCurves]):
    """One panel per metric (loss, accuracy): each run's train (solid) and validation (dashed) curve.

    A baseline run is a dotted level line at its accuracy on the accuracy panel.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    trained = [run for run in runs if run.rows]
    metrics = [m for m in ("loss", "accuracy") if all(m in run.rows[0] for run in trained)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics) + 2.4, 4.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {id(run): colors[index % len(colors)] for index, run in enumerate(runs)}
    for ax, metric in zip(axes[0], metrics):
        for run in trained:
            color = color_of[id(run)]
            epochs = [row["epoch"] for row in run.rows]
            ax.plot(epochs, [row[metric] for row in run.rows], "-", color=color, lw=1.8, label=f"{run.name} (train)")
            if f"val_{metric}" in run.rows[0]:
                ax.plot(epochs, [row[f"val_{metric}"] for row in run.rows], "--", color=color, lw=1.8,
                        label=f"{run.name} (validation)")
        if metric == "accuracy":
            for run in runs:
                if run.baseline is not None:
                    ax.axhline(run.baseline, color=color_of[id(run)], ls=":", lw=1.8,
                               label=f"{run.name} ({run.baseline_label})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    shown = [run for run in runs if run.rows or (run.baseline is not None and "accuracy" in metrics)]
    handles = [Line2D([], [], color=color_of[id(run)], lw=2.5, ls="-" if run.rows else ":") for run in shown]
    labels = [run.name if run.rows else f"{run.name} ({run.baseline_label})" for run in shown]
    handles += [Line2D([], [], color="black", ls="-"), Line2D([], [], color="black", ls="--")]
    fig.legend(handles, [*labels, "train", "validation"], loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    names = [run.name for run in shown]
    kinds = {run.data for run in shown}
    on = f"\non {kinds.pop()}" if len(kinds) == 1 and "" not in kinds else ""
    fig.suptitle((" vs ".join(names) if len(names) <= 4 else f"{len(names)} runs") + on)
    fig.tight_layout()
    return fig


def comparison_curves(run_paths: list[str | Path], warn: Callable[[str], None] | None = None) -> list[RunCurves]:
    """The runs `compare` can draw, named for the legend.

    Each is named by its config name; runs that share a config name are named by their
    folder (`dnn-20261123-101500`) instead, so every legend entry is distinct. A run that
    finished no epoch is skipped with a `warn` line; a path that is not a run is an error,
    and so is having nothing left to draw.
    """
    from cnnlab.errors import CnnlabError
    from cnnlab.rundir import HISTORY_JSON

    runs, skipped = [], []
    for run in (read_run_curves(run_path) for run_path in run_paths):
        if run.rows or run.baseline is not None:
            runs.append(run)
            continue
        skipped.append(str(run.folder))
        if warn is not None:
            warn(f"{run.folder}: skipped, it has no finished epoch ({HISTORY_JSON} is missing or empty).")
    if not any(run.rows for run in runs):
        baselines = [str(run.folder) for run in runs]
        why = [f"{', '.join(skipped)} {'has' if len(skipped) == 1 else 'have'} no finished epoch ({HISTORY_JSON})"
               if skipped else "",
               f"{', '.join(baselines)} {'is a baseline run' if len(baselines) == 1 else 'are baseline runs'}, "
               "drawn only beside a trained run's curves" if baselines else ""]
        raise CnnlabError(
            f"nothing to compare: {'; '.join(part for part in why if part)}; compare draws the runs of "
            "`cnnlab train` once an epoch has finished."
        )
    kinds = {run.data for run in runs if run.data}
    if len(kinds) > 1 and warn is not None:  # accuracies over other classes measure other tasks
        warn("the runs were trained on different data (" + "; ".join(
            f"{run.folder.name}: {run.data}" for run in runs if run.data) + "); their accuracies are not comparable.")
    for unique in (lambda run: run.folder.resolve().name, lambda run: str(run.folder)):
        counts = Counter(run.name for run in runs)
        for run in runs:
            if counts[run.name] > 1:  # the same config run twice: tell them apart by folder
                run.name = unique(run)
    return runs


def plot_comparison(run_paths: list[str | Path], path: Path, warn: Callable[[str], None] | None = None) -> Path:
    """Overlay the curves of several run directories in one PNG; see `comparison_curves` for the legend."""
    return _save(comparison_figure(comparison_curves(run_paths, warn)), Path(path))


def plot_confusion_matrix(matrix, class_names: tuple[str, ...], path: Path, title: str) -> Path:
    """The confusion matrix as a grid: counts in every cell, errors in red, hits in green.

    Rows are the true class, columns the predicted one. Hits are shaded by the share
    of their row, errors by their count against the largest error, so the few
    off-diagonal cells that matter stand out even when the diagonal holds thousands.
    Each count is black or white, whichever reads better on its cell.
    """
    return _save(confusion_matrix_figure(matrix, class_names, title), path)


def confusion_matrix_figure(matrix, class_names: tuple[str, ...], title: str):
    """The figure of `plot_confusion_matrix`."""
    import numpy as np

    plt = _pyplot()
    matrix = np.asarray(matrix)
    n = len(matrix)
    named = any(name != str(i) for i, name in enumerate(class_names))
    labels = [f"{i} {name}" if named else name for i, name in enumerate(class_names)]
    diagonal = np.eye(n, dtype=bool)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    errors = np.where(diagonal, 0, matrix)
    worst = max(int(errors.max(initial=0)), 1)
    side = 5.2 + 0.32 * n + (1.6 if named else 0)
    fig, ax = plt.subplots(figsize=(side, side - 0.6))
    hits = ax.imshow(np.ma.masked_where(~diagonal, share), cmap="Greens", vmin=0, vmax=1.15)
    misses = ax.imshow(np.ma.masked_where(diagonal | (matrix == 0), errors), cmap="Reds",
                       vmin=-0.25 * worst, vmax=worst)
    for (row, col), count in np.ndenumerate(matrix):
        if count == 0:
            continue
        cell = hits.to_rgba(share[row, col]) if row == col else misses.to_rgba(errors[row, col])
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8 if count < 1000 else 7,
                color=text_color(cell))
    ax.set_xticks(range(n), labels, rotation=45 if named else 0, ha="right" if named else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xticks(np.arange(-0.5, n), minor=True)
    ax.set_yticks(np.arange(-0.5, n), minor=True)
    ax.grid(which="minor", color="#dddddd", lw=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(matrix.sum())
    ax.set_title(f"{title}\naccuracy {np.trace(matrix) / max(total, 1):.4f} on {total} images "
                 f"({total - int(np.trace(matrix))} errors, in red)")
    return fig


def text_color(background) -> str:
    """Black or white, whichever contrasts more with `background` (RGB(A) in 0..1), by its luminance.

    scikit-learn's ConfusionMatrixDisplay picks one end of its colormap by the cell's value;
    here hits and errors have colormaps and ranges of their own, so the cell's colour decides.
    """
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in background[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]  # WCAG relative luminance
    # the contrast ratios (L1 + 0.05) / (L2 + 0.05) with black and with white are equal at L = 0.179
    return "black" if luminance > 0.179 else "white"


def plot_mistakes(images, mistakes: list[dict], class_names: tuple[str, ...], path: Path, title: str,
                  total_wrong: int) -> Path:
    """A gallery of wrong predictions, the most confident first: each image as the model saw it.

    Args:
        images: the test images as stored, (N, height, width[, channels]), indexed by `mistakes[i]["index"]`.
        mistakes: dicts with `index`, `true`, `predicted` (class ids) and `confidence`.
        class_names: the data set's class names (digits, or Fashion-MNIST's names).
        path: the PNG to write.
        title: what was evaluated (the model's name).
        total_wrong: how many mistakes there are in all (the gallery shows the first ones).
    """
    plt = _pyplot()
    columns = 6
    rows = max(1, -(-len(mistakes) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.75 * columns, 2.05 * rows + 0.7), squeeze=False)
    named = any(name != str(i) for i, name in enumerate(class_names))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), mistakes):
        ax.imshow(_picture(images[item["index"]]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        true, said = class_names[item["true"]], class_names[item["predicted"]]
        if named:
            caption = f"true: {true}\nsaid: {said} {item['confidence']:.0%}"
        else:
            caption = f"true {true}, said {said}\n{item['confidence']:.1%} sure"
        ax.set_title(caption, fontsize=8.5, color="#b00000", pad=3)
        ax.text(0.03, 0.03, f"#{item['index']}", transform=ax.transAxes, fontsize=7, color="white", va="bottom",
                bbox={"facecolor": "black", "alpha": 0.65, "pad": 1.5, "linewidth": 0})
    if not mistakes:
        axes[0][0].text(0, 0.5, "no mistakes", fontsize=12)
    shown = f"the {len(mistakes)} most confident of {total_wrong} mistakes" if mistakes else "no mistakes"
    fig.suptitle(f"{title}: {shown} (#: index in the test set)", fontsize=10.5)
    fig.tight_layout()
    return _save(fig, path)


def plot_explanation(original, seen, probs, class_names: tuple[str, ...], path: Path, title: str) -> Path:
    """Why the model said what it said: the image as given, the image it saw, the probabilities.

    Args:
        original: the image as read (a PIL image, RGB or grey).
        seen: the image the model was fed, (height, width[, channels]), 0..255 before scaling.
        probs: the model's probability for every class.
        class_names: the data set's class names.
        path: the PNG to write.
        title: a heading (the image file's name).
    """
    import numpy as np

    plt = _pyplot()
    probs = np.asarray(probs, dtype=float)
    best = int(np.argmax(probs))
    fig, (left, middle, right) = plt.subplots(
        1, 3, figsize=(11.0, 3.6), gridspec_kw={"width_ratios": [1.15, 1.0, 1.35]})
    shown = original.copy()
    shown.thumbnail((600, 600))
    left.imshow(shown, cmap="gray" if shown.mode == "L" else None, vmin=0, vmax=255,
                interpolation="nearest" if max(shown.size) < 200 else "antialiased")  # small: show its pixels
    left.set_title(f"the image ({original.size[0]}x{original.size[1]})", fontsize=10)
    left.set_xticks([])  # no ticks, but the frame: a white page on a white figure needs its edge
    left.set_yticks([])
    middle.imshow(_picture(seen), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    middle.set_title(f"what the model saw ({seen.shape[1]}x{seen.shape[0]})", fontsize=10)
    middle.set_xticks([])
    middle.set_yticks([])
    order = np.arange(len(probs))[::-1]
    colors = ["#2a7ab9" if i == best else "#b9c7d4" for i in order]
    right.barh(range(len(order)), probs[order], color=colors)
    right.set_yticks(range(len(order)), [class_names[i] for i in order], fontsize=9)
    right.set_xlim(0, 1.18)
    right.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25%", "50%", "75%", "100%"], fontsize=8)
    for y, i in enumerate(order):
        if probs[i] >= 0.005:
            right.text(probs[i] + 0.015, y, f"{probs[i]:.1%}", va="center", fontsize=8)
    right.set_title("probability per class", fontsize=10)
    right.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"{title}: {class_names[best]} ({probs[best]:.1%})", fontsize=12, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)


def plot_class_counts(counts: dict[str, dict[str, int]], path: Path, title: str) -> Path:
    """Images per class as bars, training and test stacked, each bar labelled with its total."""
    plt = _pyplot()
    classes = list(counts["train"])
    train = [counts["train"][name] for name in classes]
    test = [counts["test"].get(name, 0) for name in classes]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(classes) + 2), 3.6))
    ax.bar(classes, train, color="#4c72b0", label="train")
    ax.bar(classes, test, bottom=train, color="#dd8452", label="test")
    for k, total in enumerate(a + b for a, b in zip(train, test)):
        ax.annotate(f"{total:,}", (k, total), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("images")
    ax.set_title(title if len(title) <= SHORT_TITLE else "..." + title[-SHORT_TITLE:], fontsize=10)
    ax.legend(frameon=False)
    if len(classes) > 8:
        ax.tick_params(axis="x", labelrotation=60)
    return _save(fig, path)
