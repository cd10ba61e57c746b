"""How a run ends: what run.json's status says, and the lines the user reads then.

`cnnlab.train` calls these once its fit is over (see its docstring for the statuses):
- `interrupted`: Ctrl-C or SIGTERM; what finished is kept and the resume command is printed;
- `disk_full`: the CnnlabError of a full disk, which names the file and how to resume;
- `divergence_message` and `Diverged`: the loss became NaN, infinite or exploded;
- `mark` and `error_line`: the status, and the error of a failed run, in run.json.

Example:
    mark(run_dir, status="failed", stopped=now(), error=error_line(exc))
"""

from __future__ import annotations

import shlex
from datetime import datetime
from pathlib import Path
from typing import Callable

from cnnlab import rundir
from cnnlab.config import Config
from cnnlab.errors import CnnlabError
from cnnlab.plots import plot_history

Echo = Callable[[str], None]


class Diverged(CnnlabError):
    """The loss became NaN, infinite or exploded: training stopped, run.json says `"status": "diverged"`.

    Args:
        message: the sentence the user sees (where it diverged, what to try).
        run_dir: the run directory.
        epoch, batch: where the loss diverged (1-based).
    """

    def __init__(self, message: str, run_dir: Path, epoch: int, batch: int):
        super().__init__(message)
        self.run_dir, self.epoch, self.batch = run_dir, epoch, batch


def now() -> str:
    """A timestamp for run.json: local time to the second."""
    return datetime.now().isoformat(timespec="seconds")


def mark(run_dir: Path, **changes) -> bool:
    """Record how a run ended in run.json; False when even that could not be written."""
    try:
        rundir.update_json(run_dir / rundir.RUN, **changes)
        return True
    except (OSError, CnnlabError):
        return False


def error_line(exc: BaseException) -> str:
    """The error for run.json: a user mistake's own sentence, or a bug's type and first line."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, CnnlabError):
        return lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def interrupted(cfg: Config, run_dir: Path, rows: list[dict], echo: Echo, phase_change: int | None = None,
                marked: Callable[[], None] = lambda: None) -> None:
    """Ctrl-C or SIGTERM: keep what finished and say what is true about it.

    `phase_change`: the epoch a backbone's fine-tuning starts after, marked on the curves.
    `marked` runs once run.json says interrupted, before the lines for the user (train's report.html).
    """
    if rows:
        try:
            plot_history(rows, run_dir, cfg.name, phase_change=phase_change)
        except rundir.DiskFull:
            pass  # the curves are a convenience; the run's own files matter more
    mark(run_dir, status="interrupted", stopped=now(), epochs_completed=len(rows))
    marked()
    if (run_dir / rundir.RESUME_STATE).exists():
        kept = f"; {rundir.BEST} is kept" if (run_dir / rundir.BEST).exists() else ""
        echo(f"\ninterrupted after {len(rows)} finished epoch(s){kept}.")
        echo(f"resume with: cnnlab train --resume {shlex.quote(str(run_dir))}")
    else:
        echo("\ninterrupted before the first epoch finished: nothing was saved (no checkpoint, nothing to resume).")
        echo(f"delete {run_dir}, or train its config again: cnnlab train {shlex.quote(str(run_dir / rundir.CONFIG))}")


def disk_full(exc: Exception, run_dir: Path, rows: list[dict]) -> CnnlabError:
    """A full disk: the run is interrupted (its atomic files are whole) and resumable once space is freed."""
    path = exc.path if isinstance(exc, rundir.DiskFull) else Path(getattr(exc, "filename", None) or run_dir)
    needed = exc.needed if isinstance(exc, rundir.DiskFull) else None
    checkpoints = [run_dir / rundir.RESUME_STATE, run_dir / rundir.BEST]
    if path in checkpoints:  # an epoch writes both beside their previous versions before the renames
        needed = sum(file.stat().st_size for file in checkpoints if file.is_file()) or None
    what = str(rundir.DiskFull(path, rundir.free_bytes(run_dir), needed))  # measured now, the temporaries gone
    marked = mark(run_dir, status="interrupted", stopped=now(), epochs_completed=len(rows), error=what)
    note = "" if marked else f" ({rundir.RUN} could not be updated either)"
    if (run_dir / rundir.RESUME_STATE).exists():
        return CnnlabError(
            f"{what}; the run is interrupted after {len(rows)} finished epoch(s){note}, its {rundir.BEST} intact: "
            f"free some space, then continue it with `cnnlab train --resume {shlex.quote(str(run_dir))}`."
        )
    return CnnlabError(
        f"{what}; no epoch had finished, so there is nothing to resume{note}: free some space, then train again "
        f"with `cnnlab train {shlex.quote(str(run_dir / rundir.CONFIG))}`."
    )


def divergence_message(cfg: Config, run_dir: Path, at: dict, rows: list[dict]) -> str:
    where = (f"{run_dir}: training diverged: the loss reached {at['loss']} at epoch {at['epoch']}, "
             f"batch {at['batch']} of {at['batches']}")
    if (run_dir / rundir.BEST).exists():
        kept = f"It stopped; {rundir.BEST}, from the {len(rows)} epoch(s) before, is scored above"
    else:
        kept = "It stopped with no checkpoint saved"
    optimizer = cfg.train.optimizer
    if cfg.train.lr_schedule is not None:
        key, rate, default = "train.lr_schedule.max_learning_rate", cfg.train.lr_schedule.max_learning_rate, None
    else:
        key, rate = "train.optimizer.learning_rate", optimizer.learning_rate
        default = type(optimizer).model_fields["learning_rate"].default
    if default is not None and rate > 10 * default:
        smaller = f"{default:g}, {optimizer.name}'s default"
    else:
        smaller = f"{rate / 10:g}"
    tips = [f"a smaller learning rate ({key} is {rate:g}; e.g. --set {key}={smaller})"]
    if cfg.data.scale < 10:
        tips.append(f"inputs scaled to 0..1 (data.scale is {cfg.data.scale:g}; 255 for 8-bit images)")
    tips.append("batch_normalization layers")
    return f"{where}. {kept} (run.json: status diverged). Try {', or '.join(tips)}."
