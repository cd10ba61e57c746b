"""Score a model on its data set's test split: loss, accuracy, per-class scores, errors.

`evaluate` loads TARGET (a run directory or a model file, see `cnnlab.checkpoint`),
predicts the whole test split, and reports the loss, the accuracy, precision / recall
/ F1 per class (scikit-learn), the confusion matrix, and the mistakes the model was
most sure of.

Where results are written:
- a run directory: `<run>/evaluation/` (next to its checkpoint), or `out` if given;
- a bare model file: only under `out`. Without it nothing is written and the report
  is printed only: a model file from elsewhere often sits in a folder that is not the
  user's to write in (a download, a read-only share like `../shared/realmodels/`), and
  dropping files into the current directory unasked would surprise. The report says
  how to save the PNGs.

The files: `evaluation.json` (the same document `--json` prints), `report.txt` (the
printed report), `confusion_matrix.png` and `mistakes.png`.

Example:
    result = evaluate("runs/cnn-20261123-012542")
    result.accuracy  # 0.991, as the training reported
    print(result.report())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab import rundir
from cnnlab.checkpoint import LoadedModel, load_checkpoint, make_output_dir
from cnnlab.config import Loss
from cnnlab.data import encode_labels, load, select_test_files
from cnnlab.data.balance import is_uneven
from cnnlab.model import class_predictions

OUTPUT_DIR = "evaluation"  # inside a run directory
GALLERY_SIZE = 24  # mistakes shown in mistakes.png
FALLBACK_LOSS = Loss(name="sparse_categorical_crossentropy")  # when the file does not say how it was trained


@dataclass
class Evaluation:
    """What `evaluate` measured. `to_dict` is the JSON document; `report` the printed text."""

    loaded: LoadedModel
    samples: int
    loss: float
    loss_name: str
    loss_as_trained: bool
    loss_options: str  # e.g. "label_smoothing 0.1, + weight penalty 0.0123"; "" for none
    accuracy: float
    correct: int
    per_class: list[dict]
    balanced_accuracy: float  # the mean recall of the classes in the test set
    confusion: np.ndarray
    mistakes: list[dict]  # the most confident first: index, true, predicted, confidence
    total_wrong: int
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    uneven: bool = False  # the test or training classes are uneven, or training weighed them: the report says balanced

    def to_dict(self) -> dict:
        loaded = self.loaded
        macro = {key: float(np.mean([row[key] for row in self.per_class])) for key in ("precision", "recall", "f1")}
        return {
            "model": str(loaded.path), "kind": loaded.kind, "dataset": loaded.dataset,
            "scale": loaded.scale if loaded.info.is_image else None,  # xor is not scaled
            "input_shape": list(loaded.input_shape), "samples": self.samples,
            "loss": self.loss, "loss_name": self.loss_name, "loss_options": self.loss_options,
            "loss_as_trained": self.loss_as_trained,
            "accuracy": self.accuracy, "correct": self.correct, "balanced_accuracy": self.balanced_accuracy,
            "per_class": self.per_class, "macro_avg": macro,
            "confusion_matrix": self.confusion.tolist(),
            "worst_mistakes": self.mistakes, "mistakes": self.total_wrong,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "files": [str(path) for path in self.files],
        }

    def report(self) -> str:
        """The human-readable report: summary, per-class table, confusion matrix."""
        loaded = self.loaded
        names = loaded.class_names
        named = any(name != str(i) for i, name in enumerate(names))
        labels = [f"{i} {name}" if named else name for i, name in enumerate(names)]
        how = "as trained" if self.loss_as_trained else "the file does not say how it was trained"
        scaling = f"x / {loaded.scale:g}" if loaded.info.is_image else "not scaled"
        lines = [
            f"model     {loaded.path} ({loaded.kind})",
            f"data      {loaded.dataset} test split, {self.samples} samples, input {loaded.input_shape}, "
            f"{scaling}",
            f"loss      {self.loss:.4f} ({', '.join(filter(None, (self.loss_name, self.loss_options, how)))})",
            f"accuracy  {self.accuracy:.4f} ({self.correct} of {self.samples} right)",
        ]
        if self.uneven:
            lines.append(f"balanced  {self.balanced_accuracy:.4f} (the mean recall of the classes: they are uneven)")
        lines.append("")
        width = max(len("macro avg"), *(len(label) for label in labels))
        lines.append(f"{'class':<{width}}  precision  recall      f1  support")
        for label, row in zip(labels, self.per_class):
            lines.append(f"{label:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
                         f"{row['f1']:6.4f}  {row['support']:7d}")
        macro = self.to_dict()["macro_avg"]
        lines.append(f"{'macro avg':<{width}}  {macro['precision']:9.4f}  {macro['recall']:6.4f}  "
                     f"{macro['f1']:6.4f}  {self.samples:7d}")
        lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
        cell = max(5, len(str(int(self.confusion.max(initial=0)))) + 1)
        lines.append(" " * width + "".join(f"{i:>{cell}}" for i in range(len(names))))
        for label, row in zip(labels, self.confusion):
            lines.append(f"{label:<{width}}" + "".join(f"{int(count) or '.':>{cell}}" for count in row))
        lines.append("")
        if self.out_dir is not None:
            lines.append(f"wrote {self.out_dir}/: {', '.join(path.name for path in self.files)}")
        else:
            lines.append("(nothing written; add --out DIR to save the confusion matrix and mistakes PNGs)")
        return "\n".join(lines) + "\n"


def evaluate(target: str | Path, dataset: str | None = None, scale: float | None = None,
             out: str | Path | None = None, unsafe: bool = False, progress=None) -> Evaluation:
    """Evaluate TARGET on its test split and write the results (see the module docstring).

    Args:
        target: a run directory or a `.keras` / `.h5` / `.hdf5` model file.
        dataset: for a bare model file: the data set it reads (default mnist).
        scale: for a bare model file: pixels are divided by this (default 255).
        out: where to write the results (default: `<run>/evaluation/`; nowhere for a bare file).
        unsafe: allow Lambda layers (their code runs on loading).
        progress: shows the decoding of a user's images, when they are not cached
            (see `cnnlab.data.cache.Progress`).
    """
    if out is not None:  # before the slow part: a folder we cannot write is found at once
        make_output_dir(out, "--out")
    loaded = load_checkpoint(target, dataset=dataset, scale=scale, unsafe=unsafe)
    info = loaded.info
    images, labels = test_set(loaded, progress)
    x = loaded.prepare(images)
    probs = loaded.predict(x)
    predicted = class_predictions(probs)
    loss = loaded.loss or FALLBACK_LOSS
    result = _score(loaded, labels, probs, predicted, loss, _loss(loaded, loss, x, probs, labels, info.num_classes))
    result.uneven = is_uneven([row["support"] for row in result.per_class]) or _trained_uneven(loaded.run_dir)

    out_dir = Path(out) if out is not None else (loaded.run_dir / OUTPUT_DIR if loaded.run_dir else None)
    if out_dir is not None:
        result.out_dir = out_dir
        result.files = _write(result, images if info.is_image else None, out_dir)
    return result


def test_set(loaded: LoadedModel, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """The test images (as stored: uint8 pixels) and labels a model is scored on.

    A run's own test split: for a user's folder or CSV, the very files the run was tested on.
    """
    where = str(loaded.run_dir or loaded.path)
    data = load(loaded.data_settings, loaded.info, progress, test_only=True, where=where)
    if loaded.test_files is not None:
        data = select_test_files(data, loaded.test_files, where)
    return data.images[data.test], data.labels[data.test]


def _score(loaded: LoadedModel, labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray,
           loss: Loss, value: float) -> Evaluation:
    per_class, confusion = class_scores(labels, predicted, loaded.class_names)
    mistakes, total_wrong = confident_mistakes(labels, probs, predicted, GALLERY_SIZE)
    correct = int(np.sum(predicted == labels))
    penalty = _weight_penalty(loaded.model)
    options = [f"label_smoothing {loss.label_smoothing:g}"] if loss.label_smoothing else []
    options += [f"+ weight penalty {penalty:.4g}"] if penalty else []
    return Evaluation(
        loaded=loaded, samples=len(labels), loss=value,
        loss_name=loss.name, loss_as_trained=loaded.loss is not None, loss_options=", ".join(options),
        accuracy=correct / max(len(labels), 1), correct=correct, per_class=per_class,
        balanced_accuracy=_balanced(per_class), confusion=confusion, mistakes=mistakes, total_wrong=total_wrong,
    )


def _balanced(per_class: list[dict]) -> float:
    """The mean recall of the classes in the test set (scikit-learn's balanced_accuracy_score)."""
    recalls = [row["recall"] for row in per_class if row["support"] > 0]
    return float(np.mean(recalls)) if recalls else 0.0


def class_scores(labels: np.ndarray, predicted: np.ndarray, class_names) -> tuple[list[dict], np.ndarray]:
    """Precision, recall, F1 and support of each class (0 where undefined, as scikit-learn's
    zero_division=0), and the confusion matrix (rows: the true class).

    Counted with NumPy: importing scikit-learn's metrics takes about a second, which `train`
    would pay at the end of every run for its report.
    """
    count = len(class_names)
    confusion = np.bincount(np.asarray(labels, np.int64) * count + np.asarray(predicted, np.int64),
                            minlength=count * count).reshape(count, count)
    right, support, answered = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(right, answered, out=np.zeros(count), where=answered > 0)
    recall = np.divide(right, support, out=np.zeros(count), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(count), where=total > 0)
    per_class = [
        {"class": i, "name": class_names[i], "precision": float(precision[i]), "recall": float(recall[i]),
         "f1": float(f1[i]), "support": int(support[i])}
        for i in range(count)
    ]
    return per_class, confusion


def confident_mistakes(labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray,
                       count: int) -> tuple[list[dict], int]:
    """The `count` wrong answers the model was surest of (index, true, predicted, confidence), and how many were wrong."""
    wrong = np.nonzero(predicted != labels)[0]
    confidence = probs[wrong, predicted[wrong]] if probs.shape[-1] > 1 else np.abs(probs[wrong, 0] - 0.5) + 0.5
    order = wrong[np.argsort(-confidence, kind="stable")]
    sure = dict(zip(wrong.tolist(), confidence.tolist()))
    mistakes = [
        {"index": int(i), "true": int(labels[i]), "predicted": int(predicted[i]), "confidence": float(sure[int(i)])}
        for i in order[:count]
    ]
    return mistakes, len(wrong)


def _trained_uneven(run_dir: Path | None) -> bool:
    """Whether a run trained on uneven classes or weighed them (its data.json says)."""
    if run_dir is None or not (run_dir / rundir.DATA).exists():
        return False
    record = rundir.read_json(run_dir / rundir.DATA)
    return record.get("class_weight") is not None or is_uneven(record.get("class_counts", {}).get("train", []))


def _loss(loaded: LoadedModel, loss: Loss, x: np.ndarray, probs: np.ndarray, labels: np.ndarray,
          num_classes: int) -> float:
    """The loss as Keras computes it in training: `model.evaluate` with the trained loss (label
    smoothing included) and the weight penalties the model's kernel_regularizers add.

    Not the loss function applied to `probs`: a softmax or sigmoid output tensor carries its
    logits (`_keras_logits`), and Keras' losses compute from those, which numpy probabilities
    cannot. The numbers differ where it matters: categorical cross-entropy from logits is not
    clipped at 1e-7, and binary_crossentropy on a 2-unit softmax (the XOR MLP) is taken on
    sigmoid(logits), not on the softmax probabilities (0.1298 vs 0.0380 for xor_mlp.yaml).
    `fit` reports, the checkpoint monitors and `train` scores the former; so does evaluate.
    A TFLite model has no logits to reach and no penalty: its probabilities are scored.
    """
    import keras

    from cnnlab.compile import make_loss

    one_hot = not (loss.name.startswith("sparse_") and not loss.label_smoothing)
    if not one_hot:
        targets = labels
    elif probs.shape[-1] == 1:
        targets = labels.reshape(-1, 1).astype("float32")
    else:
        targets = encode_labels(labels, num_classes, one_hot=True)
    if isinstance(loaded.model, keras.Model):
        loaded.model.compile(loss=make_loss(keras, loss, one_hot))
        return float(loaded.model.evaluate(x, targets, batch_size=256, verbose=0))
    keras_loss = make_loss(keras, loss.model_copy(update={"from_logits": False}), one_hot)
    return float(keras.ops.convert_to_numpy(keras_loss(targets, probs.astype("float32"))))


def _weight_penalty(model) -> float:
    """The kernel_regularizer penalties Keras adds to the loss (0 for a TFLite model or none)."""
    losses = getattr(model, "losses", None)
    if not losses:
        return 0.0
    import keras

    return float(sum(keras.ops.convert_to_numpy(value) for value in losses))


def _write(result: Evaluation, images: np.ndarray | None, out_dir: Path) -> list[Path]:
    from cnnlab.plots import plot_confusion_matrix, plot_mistakes

    make_output_dir(out_dir, "--out")
    loaded = result.loaded
    title = loaded.run_dir.name if loaded.run_dir else loaded.path.name
    files = [out_dir / "evaluation.json", out_dir / "report.txt"]
    files.append(plot_confusion_matrix(result.confusion, loaded.class_names, out_dir / "confusion_matrix.png", title))
    if images is not None:
        files.append(plot_mistakes(images, result.mistakes, loaded.class_names, out_dir / "mistakes.png", title,
                                   result.total_wrong))
    result.files = files
    rundir.write_json(out_dir / "evaluation.json", result.to_dict())
    rundir.write_text(out_dir / "report.txt", result.report())
    return files
