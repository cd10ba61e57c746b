"""A tuning study's figures: Optuna's matplotlib views as PNGs in the study folder (see cnnlab.tune).

Example:
    write_figures(optuna.load_study(study_name="tiny", storage=url), Path("runs/tiny"), "val_accuracy")
"""

from __future__ import annotations

import warnings
from pathlib import Path

from cnnlab import rundir
from cnnlab.study_storage import FIGURES

FEW_TRIALS = 10  # complete trials below which parameter importances are only a rough guide
WHOLE_NUMBER_LABELS = ("Trial", "epoch")  # axes (and colour bars) of trial numbers or epochs


def _readable(ax) -> None:
    """A white background with a light grid, a colour map with no white end (Optuna's Blues drew its
    lightest trials white on ggplot's grey)."""
    ax.set_facecolor("white")
    ax.grid(True, color="#dddddd")
    for artist in ax.collections:
        if artist.get_array() is not None:
            artist.set_cmap("viridis")


def _whole_numbers(figure) -> None:
    """Ticks at whole numbers on every axis of `figure` labelled as trials or epochs (a 4-trial
    study's history once read 0.5, 1.0, 1.5, ...), the colour bar of trial numbers included."""
    from matplotlib.ticker import MaxNLocator

    for ax in figure.axes:
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            if label in WHOLE_NUMBER_LABELS:
                axis.set_major_locator(MaxNLocator(integer=True))


def write_figures(study, folder: Path, objective: str) -> list[str]:
    """Optuna's matplotlib figures as PNGs; a figure the study cannot have yet (too few trials) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as views
    from matplotlib.ticker import NullFormatter
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    figures = {"history.png": lambda: views.plot_optimization_history(study, target_name=objective),
               "intermediate.png": lambda: views.plot_intermediate_values(study),
               "slice.png": lambda: views.plot_slice(study, target_name=objective),
               "parallel.png": lambda: views.plot_parallel_coordinate(study, target_name=objective)}
    if len(complete) >= 2:
        figures["importances.png"] = lambda: views.plot_param_importances(study, target_name=objective)
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in FIGURES:
            if name not in figures:
                continue
            try:
                axes = figures[name]()
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances of a parameter never varied
                continue
            many = list(axes.flat) if hasattr(axes, "flat") else [axes]
            figure = many[0].figure
            if name == "intermediate.png":  # Optuna's steps are cnnlab's epochs
                many[0].set_xlabel("epoch")
                many[0].set_ylabel(objective)
            for ax in many:  # a log axis' minor labels (3x10^-4, 4x10^-4, ...) run into each other
                if ax.get_xscale() == "log":
                    ax.xaxis.set_minor_formatter(NullFormatter())
                _readable(ax)
            _whole_numbers(figure)
            if name == "importances.png" and len(complete) < FEW_TRIALS:
                many[0].set_title(f"{many[0].get_title(loc='left')}: from only {len(complete)} trials, a rough "
                                  f"guide, not a ranking (trust it from ~{FEW_TRIALS})", loc="left")
            if name == "parallel.png":  # Optuna cuts long key names ("model.layers[1].u..."): the whole key
                keys_by_prefix = sorted(study.best_trial.params)
                labels = [text.get_text() for text in many[0].get_xticklabels()]
                whole = [next((key for key in keys_by_prefix if label.endswith("...")
                               and key.startswith(label[:-3])), label) for label in labels]
                many[0].set_xticks(many[0].get_xticks(), whole, rotation=20, ha="right")
            keys = len(study.best_trial.params)
            # a panel (slice) or an axis (parallel coordinates) per key, and room for the colour bar
            width = {"slice.png": 3.5 * keys + 1.5, "parallel.png": 1.6 * keys + 3}.get(name, 8)
            figure.set_size_inches(max(figure.get_size_inches()[0], width, 8), max(figure.get_size_inches()[1], 5))
            with rundir.atomic_path(folder / name, suffix=".png") as tmp:
                figure.savefig(tmp, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(name)
    return written
