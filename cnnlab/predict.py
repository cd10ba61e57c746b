"""Predict the class of images: files or folders in, top-k classes with probabilities out.

Each image is prepared as the model's data set was (`cnnlab.preprocess`: MNIST's own
steps for digit models, Fashion-MNIST's for Fashion models, or only a resize with
`preprocess="none"`), scaled as in training, and fed to the model. `explain_dir`
saves, per image, a PNG with the image as given, the 28x28 the model saw and the
probability of every class: what a user needs to understand a wrong answer.

This module imports neither TensorFlow nor matplotlib: the model is loaded by
`cnnlab.checkpoint.load_checkpoint` (the one place that knows Keras) and figures are
drawn only when asked for.

Example:
    loaded = load_checkpoint("runs/cnn-20261123-012542")
    files = collect_images(["my_digits/"])
    for p in predict_files(loaded, files):
        print(p.path, p.top[0])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from cnnlab.checkpoint import make_output_dir
from cnnlab.data import IMAGE_SUFFIXES, DatasetInfo
from cnnlab.errors import CnnlabError
from cnnlab.preprocess import ImageBytes, prepare_image

PREPROCESS_CHOICES = ("auto", "mnist", "fashion", "none")
_BATCH = 64  # images prepared and predicted together


@dataclass
class Prediction:
    """One image's answer: the class, the top-k (class id, name, probability), the 28x28 seen."""

    path: Path | ImageBytes
    label: int
    name: str
    top: list[tuple[int, str, float]]
    seen: np.ndarray = field(repr=False)
    explanation: Path | None = None

    def to_dict(self) -> dict:
        return {
            "file": str(self.path), "class": self.label, "name": self.name,
            "top_k": [{"class": c, "name": n, "probability": p} for c, n, p in self.top],
            "explanation": str(self.explanation) if self.explanation else None,
        }


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files named, and those in the folders named (recursively, sorted).

    In a folder, files that are not images by their extension (a README, a CSV) are
    skipped; a file named directly is always read, and fails clearly if it is no image.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CnnlabError(f"{path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise CnnlabError(f"{path}: no such image file or folder.")
    if not files:
        raise CnnlabError("no images given: name image files or folders, e.g. `cnnlab predict RUN my_digit.png`.")
    return files


def preprocessing_for(info: DatasetInfo, choice: str) -> str:
    """The preprocessing style for a model's data set: `auto` picks the one the run recorded.

    MNIST's steps for digit models, Fashion-MNIST's for Fashion models, and for a user's own
    data "none": only the conversion and resize the training images had.
    """
    if choice not in PREPROCESS_CHOICES:
        raise CnnlabError(f"--preprocess {choice}: unknown; use one of {', '.join(PREPROCESS_CHOICES)}.")
    return info.preprocess if choice == "auto" else choice


def predict_files(loaded, files: list[Path | ImageBytes], top_k: int = 3, preprocess: str = "auto",
                  explain_dir: str | Path | None = None,
                  on_image: Callable[[int], None] | None = None,
                  on_bad_image: Callable[[CnnlabError], None] | None = None) -> list[Prediction]:
    """Predict every file with a loaded model (`cnnlab.checkpoint.LoadedModel`).

    Args:
        loaded: the model, with its data set and scaling.
        files: image files (see `collect_images`), or images received as bytes (`ImageBytes`, e.g. uploads).
        top_k: how many classes, most probable first, each prediction lists.
        preprocess: "auto" (the data set's own), "mnist", "fashion" or "none" (plain resize).
        explain_dir: if given, a PNG per image is written there (see the module docstring).
        on_image: called with 1 after each image, e.g. a progress bar's `update`.
        on_bad_image: if given, an image that cannot be read (not an image, blank, too small)
            is passed to it as its error and skipped, so one bad file in a folder does not
            cost the others their answers; if None, the first such image raises.
    """
    if not loaded.info.is_image:
        raise CnnlabError(
            f"{loaded.path}: the model was trained on {loaded.dataset}, which is not an image data set; "
            "predict reads images."
        )
    style = preprocessing_for(loaded.info, preprocess)
    if top_k < 1:
        raise CnnlabError(f"--top-k {top_k}: must be at least 1.")
    top_k = min(top_k, len(loaded.class_names))
    explain_dir = Path(explain_dir) if explain_dir is not None else None
    if explain_dir is not None:
        make_output_dir(explain_dir, "--explain")
    used_names: set[str] = set()
    predictions: list[Prediction] = []
    for start in range(0, len(files), _BATCH):
        batch, prepared = [], []
        for path in files[start:start + _BATCH]:
            try:
                prepared.append(prepare_image(path, style, loaded.info.spec, as_read=explain_dir is not None))
                batch.append(path)
            except CnnlabError as error:
                if on_bad_image is None:
                    raise
                on_bad_image(error)
                if on_image is not None:
                    on_image(1)
        if not batch:
            continue
        seen = np.stack([image for _, image in prepared])
        probs = loaded.predict(loaded.prepare(seen))
        for path, (original, image), row in zip(batch, prepared, probs):
            prediction = _prediction(path, image, row, loaded.class_names, top_k)
            if explain_dir is not None:
                prediction.explanation = _explain(prediction, original, row, loaded.class_names,
                                                  explain_dir, used_names)
            predictions.append(prediction)
            if on_image is not None:
                on_image(1)
    return predictions


def _prediction(path: Path, seen: np.ndarray, probs: np.ndarray, names: tuple[str, ...], top_k: int) -> Prediction:
    order = np.argsort(-probs, kind="stable")[:top_k]
    top = [(int(i), names[int(i)], float(probs[i])) for i in order]
    return Prediction(path=path, label=top[0][0], name=top[0][1], top=top, seen=seen)


def _explain(prediction: Prediction, original, probs: np.ndarray, names: tuple[str, ...], folder: Path,
             used: set[str]) -> Path:
    from cnnlab.plots import plot_explanation

    name, n = prediction.path.stem, 1
    while name in used:  # digits/a/0.png and digits/b/0.png
        n += 1
        name = f"{prediction.path.stem}-{n}"
    used.add(name)
    return plot_explanation(original, prediction.seen, probs, names, folder / f"{name}.png", prediction.path.name)


def format_predictions(predictions: list[Prediction]) -> str:
    """One line per image: the file, the answer (its class name, and [class id] where they differ), the top-k."""
    width = max(len(str(p.path)) for p in predictions)
    answers = [p.name if p.name == str(p.label) else f"{p.name} [{p.label}]" for p in predictions]
    name_width = max(len(answer) for answer in answers)
    lines = []
    for p, answer in zip(predictions, answers):
        top = ", ".join(f"{name} {prob:.1%}" for _, name, prob in p.top)
        lines.append(f"{str(p.path):<{width}}  {answer:<{name_width}}  ({top})")
    return "\n".join(lines) + "\n"
