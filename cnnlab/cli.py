"""The `cnnlab` command line: parse, call one library function, print.

Heavy libraries (TensorFlow, Keras, matplotlib, scikit-learn) are imported by the
commands that need them, never here, so `cnnlab --help` stays instant.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cnnlab.backend import sigterm_interrupts
from cnnlab.errors import CnnlabError, printable
from cnnlab.runs import SORT_KEYS as RUNS_SORT_KEYS

app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_enable=False,  # with --install-completion / --show-completion
    help="Train, evaluate and use Keras image classifiers from one YAML file.",
)
_state = {"debug": False}


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


def user_errors(command):
    """Turn a CnnlabError into one line on stderr and exit code 2 (a traceback with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CnnlabError as exc:
            if _state["debug"]:
                raise
            say("error", exc)
            raise typer.Exit(2) from None

    return wrapper


def say(kind: str, message) -> None:
    """One `error: ...` or `warning: ...` line on stderr, control characters of file names escaped."""
    typer.echo(f"{kind}: {printable(str(message))}", err=True)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # the installed package's, without importing TensorFlow

        typer.echo(f"cnnlab {version('cnnlab')}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the Python traceback of an error.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Show TensorFlow's own start-up and log messages (hidden by default; or CNNLAB_VERBOSE=1).")
    ] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print cnnlab's version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    if verbose:
        os.environ["CNNLAB_VERBOSE"] = "1"  # read by cnnlab.backend.init_backend, before TensorFlow starts


Overrides = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a config value, e.g. --set train.epochs=3 --set model.layers[0].filters=16. "
                      "The value is YAML. One past a list's end appends: --set 'model.layers[8]={type: dropout, "
                      "rate: 0.1}' on 8 layers."),
]


@app.command()
@user_errors
def train(
    config: Annotated[Optional[Path], typer.Argument(help="The YAML config to train.", show_default=False)] = None,
    overrides: Overrides = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run directories are created.")] = Path("runs"),
    device: Annotated[Device, typer.Option(help="Where to train; gpu fails if there is none.")] = Device.auto,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue an interrupted run directory instead of starting a new run; with "
                         "--set train.epochs=N, train an interrupted or completed run up to N epochs.")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only the result line(s) and errors: no progress bars, layer table or status.")
    ] = False,
    workers: Annotated[Optional[str], typer.Option(
        "--workers", metavar="HOST:PORT,...", help="Train as one of several processes (train.distribute "
        "multi_worker): every worker's address, the chief first; writes $TF_CONFIG. See docs/SCALING.md.",
        show_default=False)] = None,
    worker_index: Annotated[Optional[int], typer.Option(
        "--worker-index", help="With --workers: this process's place in that list (0: the chief, which writes the "
        "run directory).", show_default=False)] = None,
) -> None:
    """Train a model from CONFIG into runs/<name>-<timestamp>/ and score it on the test split."""
    from cnnlab import train as training
    from cnnlab.config import load_config
    from cnnlab.distribute import use_workers

    use_workers(workers, worker_index)

    with sigterm_interrupts():
        if resume is not None:
            if config is not None:
                raise CnnlabError("--resume takes no CONFIG: the run keeps the config it started with "
                                  "(--set train.epochs=N may extend it).")
            result = training.resume(resume, device=device.value, echo=typer.echo, overrides=overrides or [],
                                     quiet=quiet, progress=None if quiet else _progress)
        else:
            if config is None:
                raise CnnlabError("missing CONFIG: give a YAML file, e.g. `cnnlab train configs/cnn.yaml`.")
            multi = ["train.distribute=multi_worker"] if workers is not None else []  # --set may still say it
            cfg = load_config(config, multi + (overrides or []))
            result = training.train(cfg, config, runs_dir=runs_dir, device=device.value, echo=typer.echo, quiet=quiet,
                                    progress=None if quiet else _progress)
    if result.status == "interrupted":
        raise typer.Exit(130)


@app.command()
@user_errors
def tune(
    config: Annotated[Optional[Path], typer.Argument(help="The YAML config with a `tune:` section.",
                                                     show_default=False)] = None,
    overrides: Overrides = None,
    trials: Annotated[Optional[int], typer.Option(
        help="Finished trials the study should have (default: tune.trials); a rerun continues it.",
        show_default=False)] = None,
    timeout: Annotated[Optional[str], typer.Option(
        help="Start no trial after this long, e.g. 30m, 2h, 600 (default: tune.timeout).", show_default=False)] = None,
    storage: Annotated[Optional[str], typer.Option(
        envvar="CNNLAB_TUNE_STORAGE", show_envvar=True,
        help="An Optuna storage URL shared by several processes or machines, e.g. "
             "postgresql+psycopg2://user:pass@host/db (default: SQLite in runs/<study>/study.db).",
        show_default=False)] = None,
    study: Annotated[Optional[str], typer.Option(
        help="The study's name and folder under --runs-dir (default: the config's name).", show_default=False)] = None,
    workers: Annotated[int, typer.Option(help="Processes on this machine working on the study.")] = 1,
    force_new: Annotated[bool, typer.Option(
        "--force-new", help="Delete a stored study of this name that has another search space, and start again.")
    ] = False,
    show: Annotated[Optional[str], typer.Option(
        help="Print a study's trials and best trial (a study folder, or a name with --storage); no training.",
        show_default=False)] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where study folders are created.")] = Path("runs"),
    device: Annotated[Device, typer.Option(help="Where to train; gpu fails if there is none.")] = Device.auto,
) -> None:
    """Search CONFIG's tune.space with Optuna; each trial a run directory under runs/<study>/."""
    from cnnlab import tune as tuning

    if show is not None:
        typer.echo(tuning.show(show, storage=storage, runs_dir=runs_dir))
        return
    if config is None:
        raise CnnlabError("missing CONFIG: give a YAML file with a tune: section, e.g. "
                          "`cnnlab tune configs/tune_cnn.yaml`, or --show STUDY.")
    with sigterm_interrupts():
        result = tuning.tune(config, overrides or [], trials=trials, timeout=timeout, storage=storage, study=study,
                             workers=workers, runs_dir=runs_dir, force_new=force_new, device=device.value,
                             echo=typer.echo)
    if result.best is not None:
        typer.echo(f"best: trial {result.best.number}, {result.best.value:.4f}; "
                   f"train it: cnnlab train {result.folder / tuning.BEST_CONFIG}")
    if result.status == "interrupted":
        typer.echo(f"interrupted: run the same command again to continue the study ({result.finished} finished)")
        raise typer.Exit(130)


@app.command("config")
@user_errors
def show_config(
    config: Annotated[Path, typer.Argument(help="The YAML config.")],
    overrides: Overrides = None,
) -> None:
    """Print the resolved config: the file, the --set overrides and every default; check it as train would."""
    from cnnlab.config import load_config
    from cnnlab.model import check_model

    cfg = load_config(config, overrides or [])
    check_model(cfg, str(config))  # shapes, loss, monitors: what train checks before it starts
    typer.echo(cfg.to_yaml(), nl=False)


@app.command()
@user_errors
def summary(
    config: Annotated[Path, typer.Argument(help="The YAML config.")],
    overrides: Overrides = None,
) -> None:
    """Print the layer table (output shapes, parameters) of CONFIG's model; no training, no data."""
    from cnnlab.config import load_config
    from cnnlab.model import build_model, check_model, summary_text

    cfg = load_config(config, overrides or [])
    plan = check_model(cfg, str(config))
    from cnnlab.backend import init_backend

    init_backend("cpu")
    typer.echo(summary_text(build_model(cfg, plan.input_shape)), nl=False)


@app.command()
@user_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(help=(
        "Run directories to overlay. The legend names each by its config name, or by its folder name where "
        "several runs share a config name. A baseline run is a level line at its accuracy; a run with no "
        "finished epoch is skipped with a warning."))],
    output: Annotated[Path, typer.Option("--output", "-o", help="The PNG to write.")] = Path("comparison.png"),
) -> None:
    """Overlay the loss and accuracy curves (train and validation) of several runs in one PNG."""
    from cnnlab.plots import plot_comparison

    if output.suffix.lower() != ".png":
        raise CnnlabError(f"--output {output}: the figure is a PNG; give a file name ending in .png.")
    written = plot_comparison(runs, output, warn=lambda message: say("warning", message))
    typer.echo(f"wrote {written}")


class BaselineMethod(str, Enum):
    svm = "svm"
    kmeans = "kmeans"


@app.command()
@user_errors
def baseline(
    config: Annotated[Path, typer.Argument(help="The YAML config whose data (and split) to use.")],
    method: Annotated[BaselineMethod, typer.Option(help="svm: linear SVM; kmeans: clusters mapped to their majority label.")],
    overrides: Overrides = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run directories are created.")] = Path("runs"),
    clusters: Annotated[Optional[int], typer.Option(help="kmeans: number of clusters (default: one per class).")] = None,
) -> None:
    """Score a classical baseline (linear SVM or k-means) on CONFIG's data, split as for training."""
    from cnnlab.baselines import run_baseline
    from cnnlab.config import load_config

    cfg = load_config(config, overrides or [])
    run_baseline(cfg, method.value, runs_dir=runs_dir, clusters=clusters, echo=typer.echo)


class EvalDataset(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"


class Preprocess(str, Enum):
    auto = "auto"
    mnist = "mnist"
    fashion = "fashion"
    none = "none"


Target = Annotated[Path, typer.Argument(
    help="A run directory (its best.keras and config) or a .keras / .h5 / .hdf5 model file.", show_default=False)]
DatasetOption = Annotated[Optional[EvalDataset], typer.Option(
    help="For a model file: the data set it was trained on (default mnist). A run knows its own.",
    show_default=False)]
def _finite(value: float | None) -> float | None:
    """A float option's check: `inf` and `nan` parse as floats, but no size or scale means them."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


ScaleOption = Annotated[Optional[float], typer.Option(
    callback=_finite, help="For a model file: pixels are divided by this, as in its training (default 255).", show_default=False)]
UnsafeOption = Annotated[bool, typer.Option(
    "--unsafe", help="Allow Lambda layers, whose Python code runs when the model loads. Only for files you trust.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text (for scripts).")]


@app.command("data")
@user_errors
def check_data(
    target: Annotated[Path, typer.Argument(help="A config (its data section), a folder of class folders, a CSV "
                                                "manifest, or a run directory (its recorded test split).")],
    overrides: Overrides = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write a contact sheet per class, class_counts.png and audit.json here "
                            "(default for a run: <run>/data_audit; else nothing written).", show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Check a data set before training: counts, odd and unreadable files, duplicates, leaks between splits.

    Exit code 2, with one line per problem on stderr, when something would make training fail or its test score wrong.
    """
    from cnnlab.data.audit import audit_data

    result = audit_data(target, overrides or [], out=out, progress=_progress)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.report(), nl=as_json)
    for finding in result.blocking:
        say("error", finding.message)
    if result.blocking:
        raise typer.Exit(2)


@app.command()
@user_errors
def evaluate(
    target: Target,
    dataset: DatasetOption = None,
    scale: ScaleOption = None,
    as_json: JsonOption = False,
    out: Annotated[Optional[Path], typer.Option(
        help="Where to write the results (default: <run>/evaluation; a model file: nothing written).",
        show_default=False)] = None,
    unsafe: UnsafeOption = False,
) -> None:
    """Score a model on its test split: loss, accuracy, per-class precision/recall/F1, confusion matrix."""
    from cnnlab.evaluate import evaluate as evaluate_model

    result = evaluate_model(target, dataset=dataset and dataset.value, scale=scale, out=out, unsafe=unsafe,
                            progress=_progress)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.report(), nl=as_json)


@app.command()
@user_errors
def predict(
    target: Target,
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPG, BMP, GIF) or folders of them.",
                                                 show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many classes to list per image.")] = 3,
    as_json: JsonOption = False,
    preprocess: Annotated[Preprocess, typer.Option(
        help="auto: as the run recorded (MNIST: invert, crop to the ink, fit 20x20, centre by mass; "
             "Fashion-MNIST: object on black, fitted; a folder/CSV data set: none); none: only the conversion "
             "and resize the training images had.")] = Preprocess.auto,
    explain: Annotated[Optional[Path], typer.Option(
        help="Write a PNG per image here: the image, what the model saw (its input size), the probabilities.",
        show_default=False)] = None,
    dataset: DatasetOption = None,
    scale: ScaleOption = None,
    unsafe: UnsafeOption = False,
) -> None:
    """Predict the class of each image with its top-k probabilities, named by the run's classes."""
    from cnnlab import predict as predicting
    from cnnlab.checkpoint import load_checkpoint

    files = predicting.collect_images(images)
    loaded = load_checkpoint(target, dataset=dataset and dataset.value, scale=scale, unsafe=unsafe, fast=True)
    bad: list[CnnlabError] = []
    with _progress(len(files), f"predicting {len(files)} images") as step:
        results = predicting.predict_files(loaded, files, top_k=top_k, preprocess=preprocess.value,
                                           explain_dir=explain, on_image=step, on_bad_image=bad.append)
    if as_json:
        document = {"model": str(loaded.path), "dataset": loaded.dataset,
                    "preprocess": predicting.preprocessing_for(loaded.info, preprocess.value),
                    "predictions": [result.to_dict() for result in results],
                    "errors": [str(error) for error in bad]}
        typer.echo(json.dumps(document, indent=2))
    elif results:
        typer.echo(predicting.format_predictions(results), nl=False)
    if explain is not None and not as_json and results:
        typer.echo(f"explanations: {explain}/", err=True)
    for error in bad:  # after the answers: every image that could be read got one
        say("error", error)
    if bad:
        raise typer.Exit(2)


@app.command()
@user_errors
def serve(
    target: Target,
    host: Annotated[str, typer.Option(
        help="The address to listen on; 127.0.0.1 serves only this machine, 0.0.0.0 every network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The TCP port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", min=0.001, callback=_finite, help="Refuse request bodies larger than this (HTTP 413).")] = 10.0,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Server processes sharing the port, each with its own model [default: one per core, at most 4].",
        show_default=False)] = None,
) -> None:
    """Serve TARGET over HTTP: POST /predict, GET /health, /model, /docs, and a page at / (draw a digit, or
    upload or photograph a picture, as the model takes)."""
    from cnnlab.serve import serve as serve_model

    serve_model(target, host=host, port=port, max_upload_bytes=int(max_upload_mb * 2**20), workers=workers,
                echo=typer.echo)


class ExportFormat(str, Enum):
    saved_model = "saved_model"
    tflite = "tflite"
    onnx = "onnx"


@app.command()
@user_errors
def export(
    target: Target,
    format: Annotated[ExportFormat, typer.Option(
        "--format", "-f", help="saved_model (TensorFlow Serving), tflite (LiteRT) or onnx (onnxruntime).")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Where to write (default: <run>/export/saved_model, model.tflite or model.onnx).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an earlier export at the output path (never anything cnnlab did not export).")
    ] = False,
) -> None:
    """Export TARGET's model for another runtime, checked against Keras on its test images (within 1e-4)."""
    from cnnlab.export import export_model

    typer.echo(export_model(target, format.value, output=output, force=force).report())


RunsSort = Enum("RunsSort", {key: key for key in RUNS_SORT_KEYS}, type=str)


@app.command()
@user_errors
def runs(
    folder: Annotated[Path, typer.Argument(help="The folder of run directories (train's --runs-dir).")] = Path("runs"),
    sort: Annotated[RunsSort, typer.Option(
        help="The column to sort by: started (newest first), best, test_accuracy, duration, epochs (largest first), "
             "name, status, data.")] = RunsSort.started,
    as_json: JsonOption = False,
) -> None:
    """List the runs under FOLDER (and its tuning studies): data, status, epochs, best value, test accuracy, time."""
    from cnnlab.runs import format_table, list_runs

    rows = list_runs(folder, sort=sort.value)
    if as_json:
        typer.echo(json.dumps([row.to_dict() for row in rows], indent=2))
    else:
        typer.echo(format_table(rows), nl=False)


@app.command()
@user_errors
def report(
    run: Annotated[Path, typer.Argument(help="A run directory, or a tuning study's folder.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="The HTML file to write (default: <run>/report.html).", show_default=False)] = None,
) -> None:
    """Write RUN's report: one self-contained HTML page (results, curves, mistakes, data, config, environment)."""
    from cnnlab.report import write_report

    typer.echo(f"wrote {write_report(run, out=output)}")


@contextlib.contextmanager
def _progress(count: int, label: str):
    """A progress bar on stderr for many images; a no-op step for a few."""
    if count < 10:
        yield lambda n: None
        return
    with typer.progressbar(length=count, label=label, file=sys.stderr) as bar:
        yield bar.update


def main() -> None:
    """The console script: like `app()`, but a command-line mistake is one line, as every other error."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # a usage error: unknown option, bad value, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain `cnnlab`: the help, as Typer shows it
            exc.show()
        else:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            # Typer checks choices through pydantic, whose "Value error, " prefix says nothing to a user
            message = exc.format_message().replace(": Value error, ", ": ")
            say("error", f"{message}{hint}")
        code = exc.exit_code
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        code = 1
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
