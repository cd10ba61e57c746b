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
