"""One self-contained HTML page per run: `cnnlab report RUN`, and `<run>/report.html` after training.

The page holds what a colleague needs to judge a run without cnnlab: the headline numbers,
the test metrics and per-class table, the confusion matrix, the curves with the best epoch
marked, the mistakes the model was surest of (the pictures as the model saw them), the data
(classes with their counts, image size and colour, a strip of samples per class), the model's
layer table, the config as trained, the environment it ran in, and the exports with their
measured differences from Keras. Every picture is inline (a `data:` URI), there is no
script and no reference outside the file, so it reads the same mailed or offline; pictures
are shrunk (at most THUMB pixels a side) so that it stays small (about 0.2 MB for MNIST).

A tuning study gets one page for the study (`write_study_report`): its trials table, the
best trial's config and the study's figures.

The test results come from the best checkpoint's outputs on the test split (`TestOutputs`):
`train` hands over the ones it just computed; `cnnlab report` predicts them again, through the
run's model.tflite where there is one (no TensorFlow then).

Example:
    write_report("runs/cnn-20261123-012542")        # -> runs/cnn-20261123-012542/report.html
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from cnnlab import rundir
from cnnlab.errors import CnnlabError

REPORT = "report.html"
SAMPLES_PER_CLASS = 8  # pictures in each class's strip
MISTAKES = 16  # the most confident mistakes shown
STRIP_CLASSES = 30  # classes with a strip of samples (the table lists them all)
THUMB = 96  # largest side, in pixels, of a picture stored in the page
CURVES = ("loss.png", "accuracy.png", "learning_rate.png", "iterations.png")  # the run's curves, in this order


@dataclass
class TestOutputs:
    """The best checkpoint's outputs on the test split: what the page's test sections are drawn from.

    Args:
        images: the images as stored (uint8, (N, H, W) or (N, H, W, C)); None for data that is
            not images (xor). An array or a `RowFile`: only the few pictures shown are read.
        labels: (N,) the true class ids of the test samples.
        probs: (N, classes) the model's outputs on them.
        rows: where each test sample is in `images` (default: `images` is the test split, in order).
    """

    images: object
    labels: np.ndarray
    probs: np.ndarray
    rows: np.ndarray | None = None

    def picture(self, index: int) -> np.ndarray:
        """Test sample `index` as stored: what the model saw, before scaling."""
        row = int(index if self.rows is None else self.rows[index])
        return np.asarray(self.images[[row]])[0]  # a list of one row: an array and a RowFile answer alike


def test_outputs(run_dir: Path) -> TestOutputs | None:
    """Predict the run's test split again with its best checkpoint (model.tflite where there is one); None without one."""
    from cnnlab.checkpoint import load_checkpoint
    from cnnlab.evaluate import test_set

    if not (run_dir / rundir.BEST).exists():
        return None
    loaded = load_checkpoint(run_dir, fast=True)
    images, labels = test_set(loaded)
    probs = loaded.predict(loaded.prepare(images))
    return TestOutputs(images if loaded.info.is_image else None, labels, probs)


def write_report(run: str | Path, outputs: TestOutputs | None = None, out: str | Path | None = None,
                 predict: bool = True) -> Path:
    """Write the run's page to `out` (default `<run>/report.html`); returns its path.

    Args:
        run: the run directory (or a tuning study's folder: its study page).
        outputs: the test outputs, when the caller has them; otherwise predicted again (`predict`).
        out: where to write the page.
        predict: False leaves the test sections to what metrics.json holds (no model is loaded).
    """
    run_dir = Path(run)
    if run_dir.is_dir() and _is_study(run_dir):
        return write_study_report(run_dir, out)
    rundir.open_run(run_dir)  # a clear error for a folder that is not a run
    if out is not None and Path(out).is_dir():
        raise CnnlabError(f"-o {out}: is a folder; give the HTML file to write, e.g. -o {Path(out) / REPORT}.")
    if outputs is None and predict:
        outputs = test_outputs(run_dir)
    path = Path(out) if out is not None else run_dir / REPORT
    rundir.write_text(path, render_report(run_dir, outputs))
    return path


def render_report(run_dir: Path, outputs: TestOutputs | None) -> str:
    """The page of one run, as HTML text."""
    info = _json(run_dir / rundir.RUN)
    metrics = _json(run_dir / rundir.METRICS)
    data = _json(run_dir / rundir.DATA)
    classes = list(data.get("classes") or [])
    title = run_dir.name
    sections = [
        _headline(info, metrics, data),
        _test_section(metrics, outputs, classes),
        _curves_section(run_dir),
        _mistakes_section(outputs, classes),
        _data_section(data, outputs, classes),
        _text_section("Model", run_dir / rundir.SUMMARY, "layers, output shapes and parameters (summary.txt)"),
        _text_section("Config as trained", run_dir / rundir.CONFIG, "every default filled in (config.yaml)"),
        _environment_section(_json(run_dir / rundir.ENVIRONMENT)),
        _exports_section(run_dir, metrics),
    ]
    return _page(title, f"cnnlab run {info.get('name', title)}", sections)


# --- the sections -----------------------------------------------------------------------------------

def _headline(info: dict, metrics: dict, data: dict) -> str:
    best = [(key[5:], value) for key, value in metrics.items()
            if key.startswith("best_") and key != "best_epoch" and isinstance(value, (int, float))]
    facts = [
        ("status", info.get("status", "?")),
        ("data", data.get("dataset", "?") + (f" ({data['source']})" if data.get("source") else "")),
        ("test accuracy", _num(metrics.get("test_accuracy"))),
        ("test loss", _num(metrics.get("test_loss"))),
        ("best epoch", f"{metrics['best_epoch']} of {metrics.get('epochs_completed', '?')}"
                       + (", stopped early" if metrics.get("stopped_early") else "") if "best_epoch" in metrics
         else f"{info.get('epochs_completed', 0)} epochs finished"),
        *((f"best {name}", _num(value)) for name, value in best[:1]),
        ("training", f"{metrics['train_seconds']:.1f} s, {metrics.get('train_samples_per_second', 0):,.0f} samples/s"
         if isinstance(metrics.get("train_seconds"), (int, float)) else None),
        ("started", info.get("started")), ("finished", info.get("finished") or info.get("stopped")),
        ("config", info.get("config_source")), ("started from", info.get("init_from")),
        ("error", info.get("error")),
    ]
    cells = "".join(f"<div class=fact><span>{_e(key)}</span><b>{_e(value)}</b></div>"
                    for key, value in facts if value not in (None, ""))
    return f"<section><div class=facts>{cells}</div></section>"


def _test_section(metrics: dict, outputs: TestOutputs | None, classes: list[str]) -> str:
    if outputs is None:
        per_class = metrics.get("test_accuracy_per_class") or {}
        if not per_class:
            return _section("Test results", "<p class=note>No test results: the run has no scored checkpoint.</p>")
        rows = "".join(f"<tr><td>{_e(name)}</td><td>{value:.4f}</td></tr>" for name, value in per_class.items())
        return _section("Test results", "<p class=note>Accuracy per class, from metrics.json (the model was not "
                                        "loaded, so no confusion matrix).</p>"
                                        f"<table><tr><th>class</th><th>accuracy</th></tr>{rows}</table>")
    from cnnlab.evaluate import class_scores
    from cnnlab.model import class_predictions

    predicted = class_predictions(outputs.probs)
    names = classes or [str(i) for i in range(outputs.probs.shape[-1])]
    per_class, confusion = class_scores(outputs.labels, predicted, names)
    correct = int(np.sum(predicted == outputs.labels))
    rows = "".join(
        f"<tr><td>{_e(row['name'])}</td><td>{row['precision']:.4f}</td><td>{row['recall']:.4f}</td>"
        f"<td>{row['f1']:.4f}</td><td>{row['support']:,}</td></tr>" for row in per_class)
    macro = [np.mean([row[key] for row in per_class]) for key in ("precision", "recall", "f1")]
    rows += (f"<tr class=total><td>macro avg</td><td>{macro[0]:.4f}</td><td>{macro[1]:.4f}</td><td>{macro[2]:.4f}</td>"
             f"<td>{len(outputs.labels):,}</td></tr>")
    table = (f"<p>{correct:,} of {len(outputs.labels):,} test samples right "
             f"(accuracy {correct / max(len(outputs.labels), 1):.4f}).</p>"
             "<table class=scores><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
             f"{rows}</table>")
    return _section("Test results", f"<div class=pair><div>{table}</div><div>{_confusion(confusion, names)}</div></div>")


def _confusion(matrix: np.ndarray, names: list[str]) -> str:
    """The confusion matrix as a table, each cell shaded by its share of the true class's samples."""
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    head = "".join(f"<th title='{_e(name)}'>{_e(_short(name))}</th>" for name in names)
    body = []
    for i, (name, row) in enumerate(zip(names, matrix)):
        cells = []
        for j, count in enumerate(row):
            share = count / totals[i, 0]
            colour = f"rgba(31,119,180,{share:.3f})" if i == j else f"rgba(214,39,40,{min(1.0, 4 * share):.3f})"
            ink = " style='color:#fff'" if i == j and share > 0.5 else ""
            cells.append(f"<td style='background:{colour}'><span{ink}>{int(count) or ''}</span></td>")
        body.append(f"<tr><th title='{_e(name)}'>{_e(_short(name))}</th>{''.join(cells)}</tr>")
    return ("<table class=confusion><caption>Confusion matrix (rows: true class, columns: predicted)</caption>"
            f"<tr><th></th>{head}</tr>{''.join(body)}</table>")


def _curves_section(run_dir: Path) -> str:
    pictures = [name for name in CURVES if (run_dir / name).exists()]
    if not pictures:
        return _section("Curves", "<p class=note>No curves: no epoch finished.</p>")
    body = "".join(f"<img class=curve alt='{_e(name)}' src='{_png_file(run_dir / name)}'>" for name in pictures)
    return _section("Curves", "<p class=note>Train and validation per epoch; the dotted line is the best epoch, "
                              f"the one best.keras holds.</p>{body}")


def _mistakes_section(outputs: TestOutputs | None, classes: list[str]) -> str:
    if outputs is None:
        return ""
    from cnnlab.evaluate import confident_mistakes
    from cnnlab.model import class_predictions

    predicted = class_predictions(outputs.probs)
    mistakes, wrong = confident_mistakes(outputs.labels, outputs.probs, predicted, MISTAKES)
    if not mistakes:
        return _section("Most confident mistakes", "<p>No mistakes on the test split.</p>")
    names = classes or [str(i) for i in range(outputs.probs.shape[-1])]
    cards = []
    for mistake in mistakes:
        probs = outputs.probs[mistake["index"]]
        top = np.argsort(-probs)[:3] if probs.shape[-1] > 1 else []
        bars = "".join(f"<div class=bar><i style='width:{100 * probs[k]:.0f}%'></i>{_e(_short(names[k]))} "
                       f"{probs[k]:.1%}</div>" for k in top)
        picture = ""
        if outputs.images is not None:
            picture = _img(outputs.picture(mistake["index"]), f"test sample {mistake['index']}")
        cards.append(f"<figure>{picture}<figcaption><b>{_e(names[mistake['true']])}</b> read as "
                     f"<b class=wrong>{_e(names[mistake['predicted']])}</b> ({mistake['confidence']:.1%})"
                     f"{bars}<small>test sample {mistake['index']}</small></figcaption></figure>")
    return _section("Most confident mistakes",
                    f"<p class=note>{wrong:,} test samples wrong; the {len(mistakes)} the model was surest of, each "
                    "as the model saw it (resized and converted as in training), with its top answers.</p>"
                    f"<div class=gallery>{''.join(cards)}</div>")


def _data_section(data: dict, outputs: TestOutputs | None, classes: list[str]) -> str:
    if not data:
        return _section("Data", "<p class=note>No data.json: the run stopped before its data was loaded.</p>")
    samples = data.get("samples") or {}
    facts = [("data set", data.get("dataset")), ("source", data.get("source")),
             ("image", f"{data['image_size'][0]}x{data['image_size'][1]} {data.get('color', '')}"
              if data.get("image_size") else None),
             ("sample shape", " x ".join(map(str, data.get("sample_shape") or [])) or None),
             ("scale", f"x / {data['scale']:g}" if isinstance(data.get("scale"), (int, float)) else None),
             ("samples", ", ".join(f"{samples[key]:,} {key}" for key in ("train", "validation", "test")
                                   if key in samples) or None),
             ("test split", json.dumps(data["test_split"]) if isinstance(data.get("test_split"), dict)
              else data.get("test_split")),
             ("predict prepares pictures", data.get("predict_preprocess")),
             ("unreadable files skipped", len(data["skipped_files"]) if data.get("skipped_files") else None)]
    listed = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in facts if value is not None)
    counts = data.get("class_counts") or {}
    test_counts = np.bincount(outputs.labels, minlength=len(classes)) if outputs is not None and classes else None
    splits = [key for key in ("train", "validation", "test") if key in counts]
    if test_counts is not None and "test" not in splits:
        splits.append("test")
    rows = []
    for i, name in enumerate(classes):
        cells = [counts[key][i] if key in counts else int(test_counts[i]) for key in splits]
        strip = ""
        if outputs is not None and outputs.images is not None and i < STRIP_CLASSES:
            rows_of_class = np.nonzero(outputs.labels == i)[0][:SAMPLES_PER_CLASS]
            strip = "".join(_img(outputs.picture(k), f"{name}, test sample {k}") for k in rows_of_class)
        rows.append(f"<tr><td>{i}</td><td>{_e(name)}</td>{''.join(f'<td>{c:,}</td>' for c in cells)}"
                    f"<td class=strip>{strip}</td></tr>")
    head = "".join(f"<th>{key}</th>" for key in splits)
    strip_note = "" if len(classes) <= STRIP_CLASSES else f" (pictures for the first {STRIP_CLASSES} classes)"
    classes_table = (f"<table class=classes><tr><th>id</th><th>class</th>{head}<th>test samples{strip_note}</th></tr>"
                     f"{''.join(rows)}</table>")
    return _section("Data", f"<table class=kv>{listed}</table>{classes_table}")


def _text_section(title: str, path: Path, note: str) -> str:
    if not path.exists():
        return ""
    return _section(title, f"<p class=note>{_e(note)}</p><pre>{_e(path.read_text(encoding='utf-8'))}</pre>")


def _environment_section(environment: dict) -> str:
    if not environment:
        return ""
    flat = {key: value for key, value in environment.items() if not isinstance(value, dict)}
    for key, value in environment.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
    rows = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in flat.items())
    return _section("Environment", f"<table class=kv>{rows}</table>")


def _exports_section(run_dir: Path, metrics: dict) -> str:
    from cnnlab.export import EXPORTS_RECORD
    from cnnlab.litert import TFLITE

    rows = []
    if metrics.get("tflite"):
        rows.append((TFLITE, "tflite (for predict and serve)", metrics.get("tflite_max_abs_diff"), 256,
                     run_dir / TFLITE))
    for format, record in _json(run_dir / EXPORTS_RECORD).items():
        rows.append((record.get("path"), format, record.get("max_abs_diff"), record.get("samples"),
                     Path(record.get("path", ""))))
    if not rows:
        return _section("Exports", "<p class=note>None: no model.tflite, nothing exported with "
                                   "<code>cnnlab export</code>.</p>")
    body = "".join(
        f"<tr><td>{_e(name)}</td><td>{_e(format)}</td><td>{_size(path)}</td>"
        f"<td>{diff:.1e}</td><td>{_e(samples)}</td></tr>" if isinstance(diff, (int, float)) else
        f"<tr><td>{_e(name)}</td><td>{_e(format)}</td><td>{_size(path)}</td><td>-</td><td>-</td></tr>"
        for name, format, diff, samples, path in rows)
    return _section("Exports", "<p class=note>Each export's outputs against Keras' on the run's test images (largest "
                               "absolute difference of the probabilities).</p><table><tr><th>file</th><th>format</th>"
                               f"<th>size</th><th>max abs difference</th><th>images</th></tr>{body}</table>")


# --- a tuning study -------------------------------------------------------------------------------

def _is_study(folder: Path) -> bool:
    from cnnlab.study_storage import TRIALS_CSV

    return (folder / TRIALS_CSV).exists() and not (folder / rundir.RUN).exists()


def write_study_report(folder: Path, out: str | Path | None = None) -> Path:
    """The page of a tuning study: its trials, the best trial's config and the study's figures."""
    from cnnlab.study_storage import BEST_CONFIG, FIGURES, TRIALS_CSV

    with (folder / TRIALS_CSV).open(encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle))
    head = "".join(f"<th>{_e(cell)}</th>" for cell in table[0]) if table else ""
    rows = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in table[1:])
    figures = "".join(f"<img class=curve alt='{name}' src='{_png_file(folder / name)}'>" for name in FIGURES
                      if (folder / name).exists())
    sections = [
        _section("Trials", f"<p>{len(table) - 1} trials (trials.csv).</p><table>{head and f'<tr>{head}</tr>'}{rows}"
                           "</table>"),
        _text_section("Best trial's config", folder / BEST_CONFIG, "train it with: cnnlab train " + str(folder / BEST_CONFIG)),
        _section("Figures", figures or "<p class=note>No figures yet.</p>"),
    ]
    path = Path(out) if out is not None else folder / REPORT
    rundir.write_text(path, _page(folder.name, f"cnnlab tuning study {folder.name}", sections))
    return path


# --- HTML pieces --------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:16px 24px 40px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:0 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
section{background:#fff;border:1px solid #e2e4e8;border-radius:6px;padding:14px 16px;margin:14px 0}
.sub{color:#666;margin:0}.note{color:#555;margin:4px 0 8px}
.facts{display:flex;flex-wrap:wrap;gap:8px}.fact{border:1px solid #e2e4e8;border-radius:5px;padding:6px 10px}
.fact span{display:block;color:#666;font-size:12px}.fact b{font-size:15px}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #e2e4e8;padding:3px 8px;text-align:right}
th{background:#f1f3f5;font-weight:600}table.kv th{text-align:left}table.kv td{text-align:left}
td:first-child{text-align:left}tr.total td{font-weight:600}
.pair{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table.confusion td{min-width:34px;text-align:center;padding:3px 4px}caption{color:#555;text-align:left;padding:2px 0}
img{image-rendering:pixelated;vertical-align:middle}img.curve{image-rendering:auto;max-width:560px;width:48%;margin:4px}
td.strip img,figure img{width:48px;height:auto;margin:1px;border:1px solid #ddd;background:#fff}
figure img{width:84px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;border:1px solid #e2e4e8;border-radius:5px;padding:6px;width:170px;display:flex;gap:6px}
figcaption{font-size:12px}figcaption small{color:#777;display:block}.wrong{color:#c0392b}
.bar{position:relative;font-size:11px;white-space:nowrap}.bar i{position:absolute;left:0;top:2px;bottom:2px;
background:rgba(31,119,180,.18);z-index:0}
pre{background:#f6f8fa;border:1px solid #e2e4e8;padding:8px;overflow:auto;font-size:12px;max-height:520px}
footer{color:#777;font-size:12px;text-align:center}
"""


def _page(title: str, heading: str, sections: list[str]) -> str:
    from cnnlab import __version__

    made = datetime.now().isoformat(timespec="seconds")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body><main>"
            f"<h1>{_e(heading)}</h1><p class=sub>{_e(title)}</p>{''.join(sections)}"
            f"<footer>written by cnnlab {_e(__version__)} on {made}; one file, no external references</footer>"
            "</main></body></html>\n")


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value) -> str | None:
    return f"{value:.4f}" if isinstance(value, (int, float)) else None


def _short(name: str, limit: int = 12) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _size(path: Path) -> str:
    if not path.exists():
        return "(gone)"
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"


def _json(path: Path) -> dict:
    try:
        data = rundir.read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _png_file(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(image: np.ndarray, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='{_picture_uri(image)}'>"


def _picture_uri(image: np.ndarray) -> str:
    """A stored sample as a data: URI: PNG for small or grey pictures, JPEG for larger colour ones."""
    from PIL import Image

    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if max(picture.size) > THUMB:
        picture.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    if picture.mode == "RGB" and max(picture.size) > 48:
        picture.save(buffer, format="JPEG", quality=85)
        kind = "jpeg"
    else:
        picture.save(buffer, format="PNG", optimize=True)
        kind = "png"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
