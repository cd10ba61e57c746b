"""Load a data set as the config says, and split it into training, validation and test samples.

`load` gives every image of a data set (in memory for the built-in sets, in the decoded-image
cache file for a user's folder or CSV) with its labels and which rows are training and test
rows. `prepare` takes the validation rows out of the training rows and wraps each part as
`Samples`: the rows stay where they are, and a batch is read, scaled (x / scale) and shaped
only when it is asked for.

A built-in set keeps its official test split. A user's data set uses its fixed test set
(`test/` folder, `split` column) or else a stratified test split of its own size and seed
(`data.test_split`), taken before the validation split and apart from it.

Example:
    info = describe(cfg.data, "configs/cnn.yaml")
    splits = prepare(cfg, (28, 28, 1), one_hot=False, data=load(cfg.data, info))
    splits.x_train[:32].shape  # (32, 28, 28, 1), float32 in 0..1
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cnnlab.data.builtin import DATASETS, NATIVE_SPEC, load_raw
from cnnlab.data.cache import Progress, RowFile, cache_root, decoded_images
from cnnlab.data.files import Manifest, scan
from cnnlab.data.spec import DatasetInfo, ImageSpec
from cnnlab.errors import CnnlabError

MAX_INFERRED_SIDE = 256  # an image size taken from the first image is shrunk to fit this


@dataclass
class ImageData:
    """Every sample of a data set, its class ids, and which rows train and which test.

    Args:
        info: what the data set is.
        images: (N, *info.sample_shape), uint8 for images (float32 for xor); in memory or a `RowFile`.
        labels: (N,) int64 class ids.
        train: the rows of the training part (validation rows are taken from it later).
        test: the rows of the test part, in a fixed order.
        files: a user's data set: each row's file, relative to data.path.
        skipped: files that could not be read and were left out (data.skip_bad_images).
        unreadable: those files, each with why it cannot be read ("is an empty file").
        fixed_test: a user's data set came with its test set (test/ folder, split column).
    """

    info: DatasetInfo
    images: np.ndarray | RowFile
    labels: np.ndarray
    train: np.ndarray
    test: np.ndarray
    files: tuple[str, ...] | None = None
    skipped: tuple[str, ...] = ()
    fixed_test: bool = False
    unreadable: dict[str, str] = field(default_factory=dict)

    def test_files(self) -> list[str] | None:
        return None if self.files is None else [self.files[i] for i in self.test]


class Samples:
    """Rows of a data set as the model takes them: float32, x / scale, shaped to the model's input.

    Args:
        images: all samples (an array or a `RowFile`), uint8 images or float32 points.
        rows: which rows of `images` these samples are, in order.
        scale: pixels are divided by this (None: used as they are).
        shape: one sample's shape for the model, e.g. (28, 28, 1) or (784,).

    `samples[i:j]`, `samples[index_array]` and `np.asarray(samples)` give prepared float32
    arrays; `raw(...)` gives the stored values.
    """

    def __init__(self, images, rows: np.ndarray, scale: float | None, shape: tuple[int, ...]):
        self.images, self.rows, self.scale, self.sample_shape = images, np.asarray(rows, np.int64), scale, tuple(shape)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.sample_shape)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)

    def raw(self, which=slice(None)) -> np.ndarray:
        """The stored values of the selected samples (uint8 pixels for images)."""
        return self.images[self.rows[which]]

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        x = raw.astype(np.float32)
        if self.scale is not None:
            x /= np.float32(self.scale)
        return x.reshape((len(x), *self.sample_shape))

    def __getitem__(self, which) -> np.ndarray:
        return self.prepare(self.raw(which))

    def __array__(self, dtype=None, copy=None):
        x = self[:]
        return x if dtype is None else x.astype(dtype)


@dataclass
class Splits:
    """Training, validation and test samples; y encoded as the loss needs.

    `labels_test` are the test set's integer class ids, whatever the encoding; `test_files`
    name the test images of a user's data set (recorded in the run, so evaluate scores the same).
    """

    x_train: Samples
    y_train: np.ndarray
    x_val: Samples | None
    y_val: np.ndarray | None
    x_test: Samples
    y_test: np.ndarray
    labels_test: np.ndarray
    test_files: list[str] | None = None


def describe(data, where: str = "the config", strict: bool = True) -> DatasetInfo:
    """What `data` (a config's data section) is: classes, image shape, sizes; without decoding images.

    A user's folder or CSV is listed (not decoded) to find its classes and sizes; `strict=False`
    keeps what training refuses (an empty class folder) for `cnnlab data` to report.
    """
    if data.dataset in DATASETS:
        if data.path is not None:
            raise CnnlabError(
                f"{where}: data.path: {data.dataset} is built in (its files come from data.dir); data.path is for "
                "dataset: folder or csv, your own images."
            )
        info = DATASETS[data.dataset]
        if info.spec is None:
            for key in ("image_size", "color"):
                if getattr(data, key) is not None:
                    raise CnnlabError(f"{where}: data.{key}: {data.dataset} is not an image data set; leave it out.")
            return info
        spec = ImageSpec(*(data.image_size or (info.spec.height, info.spec.width)),
                         data.color or info.spec.color, data.interpolation)
        return _with_spec(info, spec, data)
    manifest = scan(data.dataset, data.path, where, strict)
    size, color = data.image_size, data.color
    if size is None or color is None:
        first_size, first_color = _first_image_format(manifest)
        size, color = size or first_size, color or first_color
    spec = ImageSpec(*size, color, data.interpolation)
    if manifest.is_test is not None:
        test = int(manifest.is_test.sum())
    else:
        test = int(np.ceil(len(manifest.files) * data.test_split.size))  # as scikit-learn rounds
    info = DatasetInfo(
        name=data.dataset, num_classes=len(manifest.classes), class_names=manifest.classes, spec=spec,
        sample_shape=spec.shape, preprocess="none", train_size=len(manifest.files) - test, test_size=test,
        source=str(manifest.source), manifest=manifest,
    )
    return _with_spec(info, spec, data)


def _with_spec(info: DatasetInfo, spec: ImageSpec, data) -> DatasetInfo:
    preprocess = info.preprocess if data.predict_preprocess == "auto" else data.predict_preprocess
    return replace(info, spec=spec, sample_shape=spec.shape, preprocess=preprocess)


def _first_image_format(manifest: Manifest) -> tuple[tuple[int, int], str]:
    """The defaults of image_size and color: the first readable image's size (shrunk to fit
    MAX_INFERRED_SIDE) and whether it is grey or colour, read from its header."""
    from PIL import Image

    from cnnlab.preprocess import too_large_to_open

    for index in range(min(len(manifest.files), 20)):
        try:
            with Image.open(manifest.path(index)) as image:
                (width, height), mode = image.size, image.mode
        except Image.DecompressionBombError:  # not an OSError: it would end in a traceback
            raise too_large_to_open(manifest.path(index)) from None
        except (OSError, SyntaxError, ValueError):
            continue
        shrink = min(1.0, MAX_INFERRED_SIDE / max(width, height))
        size = (max(1, round(height * shrink)), max(1, round(width * shrink)))
        return size, "grayscale" if mode in ("1", "L", "LA", "I", "I;16", "F") else "rgb"
    raise CnnlabError(
        f"{manifest.source}: none of the first images can be read, so their size is unknown; "
        "set data.image_size and data.color."
    )


def load(data, info: DatasetInfo, progress: Progress | None = None, test_only: bool = False,
         where: str = "the config") -> ImageData:
    """Every sample of the data set `data` describes, with its training and test rows.

    Args:
        data: a config's data section.
        info: `describe(data)`.
        progress: shows the decoding of a user's images (see `cnnlab.data.cache.Progress`).
        test_only: a built-in set reads only its test files (evaluation needs no more).
        where: the config's name, for messages.
    """
    if info.own_data:
        return _load_own(data, info, progress, where)
    raw = load_raw(info.name, data.dir, data.download, test_only=test_only)
    if info.spec is None:  # points (xor): float32, used as they are
        images = np.concatenate([raw.x_train, raw.x_test])
    else:
        images = np.concatenate([_transform(raw.x_train, info.spec), _transform(raw.x_test, info.spec)])
    count = len(raw.x_train)
    return ImageData(
        info, images, np.concatenate([raw.y_train, raw.y_test]),
        train=np.arange(count)[: data.train_samples],
        test=np.arange(count, len(images))[: data.test_samples],
    )


def _transform(images: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """28x28 grey images as `spec` says (another size, RGB); a no-op for MNIST's own format."""
    if (spec.height, spec.width) == (NATIVE_SPEC.height, NATIVE_SPEC.width):
        out = images[..., None]
    else:
        from PIL import Image

        grey = ImageSpec(spec.height, spec.width, "grayscale", spec.interpolation)
        out = np.empty((len(images), *grey.shape), np.uint8)
        for i, image in enumerate(images):
            out[i] = grey.apply(Image.fromarray(image, "L"))
    return np.repeat(out, 3, axis=-1) if spec.color == "rgb" else out


def _load_own(data, info: DatasetInfo, progress: Progress | None, where: str) -> ImageData:
    manifest = info.manifest or scan(data.dataset, data.path, where)  # a run's info (evaluate) lists anew
    images, bad = decoded_images(manifest, info.spec, cache_root(data.cache_dir), progress, use_cache=data.cache)
    if bad and not data.skip_bad_images:
        listed = ", ".join(f"{manifest.files[i]} ({why})" for i, why in list(bad.items())[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CnnlabError(
            f"{manifest.source}: {len(bad)} of {len(manifest.files):,} images cannot be read: {listed}{more}; "
            "fix or remove them, or set data.skip_bad_images: true to train without them."
        )
    good = np.ones(len(manifest.files), bool)
    good[list(bad)] = False
    train, test = _own_split(manifest, good, data.test_split, where)
    return ImageData(
        info, images, manifest.labels, train=train[: data.train_samples], test=test[: data.test_samples],
        files=tuple(manifest.files), skipped=tuple(manifest.files[i] for i in sorted(bad)),
        fixed_test=manifest.is_test is not None, unreadable={manifest.files[i]: bad[i] for i in sorted(bad)},
    )


def _own_split(manifest: Manifest, good: np.ndarray, test_split, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Training rows (shuffled, so `train_samples` takes a mix) and test rows (in file order)."""
    rows = np.flatnonzero(good)
    rng = np.random.default_rng(test_split.random_state)
    if manifest.is_test is not None:
        return rng.permutation(rows[~manifest.is_test[rows]]), rows[manifest.is_test[rows]]
    from sklearn.model_selection import train_test_split

    counts = np.bincount(manifest.labels[rows], minlength=len(manifest.classes))
    listed = [i for i, name in enumerate(manifest.classes) if name not in manifest.empty_folders]  # lenient scan
    if counts[listed].min() < 2:
        name = manifest.classes[listed[int(np.argmin(counts[listed]))]]
        raise CnnlabError(
            f"{manifest.source}: class {name!r} has {int(counts[listed].min())} readable image(s); a stratified test "
            "split needs at least 2 per class (add images, or give a fixed test set: a test/ folder or a split column)."
        )
    try:
        train, test = train_test_split(rows, test_size=test_split.size, random_state=test_split.random_state,
                                       stratify=manifest.labels[rows])
    except ValueError as exc:
        raise CnnlabError(f"{where}: data.test_split: {exc}") from None
    return rng.permutation(train), np.sort(test)


def select_test_files(data: ImageData, files: list[str], where: str) -> ImageData:
    """`data` with its test rows set to `files` (a run's recorded test images), in that order."""
    row_of = {name: i for i, name in enumerate(data.files or ())}
    missing = [name for name in files if name not in row_of]
    if missing:
        raise CnnlabError(
            f"{where}: the run's test image {missing[0]} is no longer in {data.info.source}"
            + (f" ({len(missing) - 1} more are gone too)" if len(missing) > 1 else "")
            + "; evaluate scores the images the run was tested on."
        )
    return replace(data, test=np.array([row_of[name] for name in files], dtype=np.int64))


def prepare(cfg, input_shape: tuple[int, ...], one_hot: bool, data: ImageData | None = None) -> Splits:
    """Split off validation samples and encode the labels as the config says.

    Args:
        cfg: a validated `cnnlab.config.Config`.
        input_shape: the shape of one sample the model takes, e.g. (28, 28, 1) or (784,).
        one_hot: encode labels as one-hot vectors (else integer class ids).
        data: the loaded data set (else loaded now, without a progress bar).
    """
    settings = cfg.data
    data = data or load(settings, describe(settings))
    info = data.info
    scale = settings.scale if info.is_image else None
    train = data.train
    val = None
    method = settings.validation.method
    if method == "stratified":
        from sklearn.model_selection import train_test_split

        train, val = train_test_split(train, test_size=settings.validation.size,
                                      random_state=settings.validation.random_state, stratify=data.labels[train])
    elif method == "split":  # as Keras' validation_split: the last fraction, unshuffled
        cut = len(train) - int(round(len(train) * settings.validation.size))
        train, val = train[:cut], train[cut:]
    if settings.repeat > 1:
        train = np.tile(train, settings.repeat)

    def samples(rows):
        return None if rows is None else Samples(data.images, rows, scale, input_shape)

    def encode(rows):
        return None if rows is None else encode_labels(data.labels[rows], info.num_classes, one_hot)

    return Splits(samples(train), encode(train), samples(val), encode(val), samples(data.test), encode(data.test),
                  data.labels[data.test], data.test_files())


def encode_labels(labels: np.ndarray, num_classes: int, one_hot: bool) -> np.ndarray:
    """Integer class ids, or one-hot float32 rows as `keras.utils.to_categorical` gives."""
    labels = np.asarray(labels, dtype="int64")
    if not one_hot:
        return labels
    return np.eye(num_classes, dtype="float32")[labels]


def data_record(data: ImageData, splits: Splits, settings) -> dict:
    """What a run's `data.json` says about its data: enough to read, evaluate and predict like training.

    Args:
        data: the loaded data set.
        splits: the samples the run trained, validated and tested on.
        settings: the config's data section.
    """
    info = data.info
    if not info.own_data:
        test_split = "official"
    elif data.fixed_test:
        test_split = "fixed"
    else:
        test_split = settings.test_split.model_dump()
    return {
        "dataset": info.name,
        "source": str(Path(info.source).resolve()) if info.source else None,
        "classes": list(info.class_names),
        "sample_shape": list(info.sample_shape),
        **(info.spec.to_dict() if info.spec else {}),
        "scale": settings.scale if info.is_image else None,
        "predict_preprocess": info.preprocess,
        "samples": {"train": len(set(splits.x_train.rows.tolist())),
                    "validation": len(splits.x_val) if splits.x_val is not None else 0,
                    "test": len(splits.x_test)},
        "class_counts": _class_counts(data, splits),
        "test_split": test_split,
        "skipped_files": list(data.skipped),
        "test_files": splits.test_files,
    }


def _class_counts(data: ImageData, splits: Splits) -> dict:
    """Samples of each class in each split (a list in class order), for the run's report."""
    parts = {"train": np.unique(splits.x_train.rows), "test": splits.x_test.rows}
    if splits.x_val is not None:
        parts["validation"] = splits.x_val.rows
    classes = len(data.info.class_names)
    return {name: np.bincount(data.labels[rows], minlength=classes).tolist() for name, rows in parts.items()}


def info_from_record(record: dict) -> DatasetInfo:
    """The `DatasetInfo` of a run, from its `data.json`."""
    spec = None
    if record.get("image_size"):
        spec = ImageSpec(*record["image_size"], record["color"], record.get("interpolation", "bilinear"))
    base = DATASETS.get(record["dataset"])
    return DatasetInfo(
        name=record["dataset"], num_classes=len(record["classes"]), class_names=tuple(record["classes"]),
        spec=spec, sample_shape=tuple(record["sample_shape"]), preprocess=record.get("predict_preprocess", "none"),
        train_size=record["samples"]["train"], test_size=record["samples"]["test"], source=record.get("source"),
        folder=base.folder if base else "", urls=base.urls if base else (), md5=base.md5 if base else (),
    )


def describe_data(record: dict) -> str:
    """The data line of train's report: data set, classes with their names, image format, sample counts."""
    classes = record["classes"]
    names = ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")
    where = f" {record['source']}" if record.get("source") else ""
    image = (f", {record['image_size'][0]}x{record['image_size'][1]} {record['color']}"
             if record.get("image_size") else "")
    counts = record["samples"]
    skipped = f"; {len(record['skipped_files'])} unreadable files skipped" if record.get("skipped_files") else ""
    return (f"data: {record['dataset']}{where}{image}; {len(classes)} classes: {names}; "
            f"{counts['train']:,} training, {counts['validation']:,} validation, {counts['test']:,} test samples{skipped}")
