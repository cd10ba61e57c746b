"""PNG figures: training curves, run comparisons, confusion matrices.

matplotlib is imported inside each function with the Agg backend, so no display is
needed and `cnnlab --help` never pays for it. Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.rundir import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def history_metrics(rows: list[dict]) -> list[str]:
    """Base names of the curves in a history (`loss`, `accuracy`, ...), loss first."""
    names = [key for key in rows[0] if not key.startswith("val_") and key not in ("epoch", "seconds", "learning_rate")]
    return sorted(names, key=lambda name: (name != "loss", name))


def plot_history(rows: list[dict], out_dir: Path, title: str) -> list[Path]:
    """One PNG per metric (`loss.png`, `accuracy.png`): train vs validation per epoch."""
    plt = _pyplot()
    written = []
    epochs = [row["epoch"] for row in rows]
    for name in history_metrics(rows):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.plot(epochs, [row[name] for row in rows], "o-", label=f"train {name}")
        if f"val_{name}" in rows[0]:
            ax.plot(epochs, [row[f"val_{name}"] for row in rows], "s--", label=f"validation {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{title}: {name}")
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) < 25:
            ax.set_xticks(epochs)
        written.append(_save(fig, out_dir / f"{name}.png"))
    return written


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


def read_run_curves(run_path: str | Path) -> tuple[str, list[dict]]:
    """A run's name (config `name`) and its per-epoch history rows, for `compare`."""
    from cnnlab.errors import CnnlabError
    from cnnlab.rundir import HISTORY_JSON, open_run, read_json

    run = open_run(run_path)
    history = run.path / HISTORY_JSON
    rows = read_json(history).get("epochs", []) if history.exists() else []
    if not rows:
        raise CnnlabError(
            f"{run.path}: has no training history ({HISTORY_JSON} is missing or empty: the run "
            "finished no epoch, or it is not a training run); nothing to compare."
        )
    return str(run.info().get("name") or run.path.name), rows


def comparison_figure(curves: list[tuple[str, list[dict]]]):
    """One panel per metric (loss, accuracy): each run's train (solid) and validation (dashed) curve."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    names = [name for name, _ in curves]
    metrics = [m for m in ("loss", "accuracy") if all(m in rows[0] for _, rows in curves)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics) + 2.4, 4.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        for index, (name, rows) in enumerate(curves):
            color = colors[index % len(colors)]
            epochs = [row["epoch"] for row in rows]
            ax.plot(epochs, [row[metric] for row in rows], "-", color=color, lw=1.8, label=f"{name} (train)")
            if f"val_{metric}" in rows[0]:
                ax.plot(epochs, [row[f"val_{metric}"] for row in rows], "--", color=color, lw=1.8,
                        label=f"{name} (validation)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[i % len(colors)], lw=2.5) for i in range(len(names))]
    handles += [Line2D([], [], color="black", ls="-"), Line2D([], [], color="black", ls="--")]
    fig.legend(handles, [*names, "train", "validation"], loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    fig.suptitle(" vs ".join(names) if len(names) <= 4 else f"{len(names)} runs")
    fig.tight_layout()
    return fig


def comparison_curves(run_paths: list[str | Path]) -> list[tuple[str, list[dict]]]:
    """(legend name, history rows) per run: config names, or folder names when those repeat."""
    curves = [read_run_curves(run_path) for run_path in run_paths]
    names = [name for name, _ in curves]
    if len(set(names)) < len(names):  # the same config run twice: tell them apart by folder
        curves = [(Path(p).resolve().name, rows) for p, (_, rows) in zip(run_paths, curves)]
    return curves


def plot_comparison(run_paths: list[str | Path], path: Path) -> Path:
    """Overlay the curves of several run directories in one PNG; legend from the run names."""
    return _save(comparison_figure(comparison_curves(run_paths)), Path(path))
