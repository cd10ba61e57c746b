"""Data sets: read (or fetch once) the raw arrays, then prepare them as the config says.

MNIST and Fashion-MNIST are read from the original IDX files
(`<data dir>/mnist/train-images-idx3-ubyte.gz`, ...), checked against their published
md5 sums. A missing file is downloaded into the data directory when allowed; a corrupt
one is an error and is never deleted (the directory may not be ours). XOR is built in.

Example:
    raw = load_raw("mnist", data_dir=resolve_data_dir(None))
    raw.x_train.shape  # (60000, 28, 28), uint8
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

DATA_DIR_ENV = "CNNLAB_DATA_DIR"
OFFLINE_ENV = "CNNLAB_OFFLINE"  # set to 1: never download, a missing file is an error

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of cnnlab needs to know about a data set without loading it."""

    name: str
    num_classes: int
    sample_shape: tuple[int, ...]  # one raw sample, before any channel axis
    class_names: tuple[str, ...]
    folder: str = ""  # sub-folder of the data directory with the IDX files
    urls: tuple[str, ...] = ()  # mirrors to fetch a missing file from
    md5: tuple[tuple[str, str], ...] = ()  # (file name, md5) of the four IDX files
    train_size: int = 60_000  # samples in the official training split
    test_size: int = 10_000  # samples in the official test split

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 2


_IDX_FILES = (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
)

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", 10, (28, 28), tuple(str(d) for d in range(10)), "mnist",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        tuple(zip(_IDX_FILES, (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c",
        ))),
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", 10, (28, 28), FASHION_CLASSES, "fashion-mnist",
        ("https://storage.googleapis.com/tensorflow/tf-keras-datasets/",),
        tuple(zip(_IDX_FILES, (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310",
        ))),
    ),
    "xor": DatasetInfo("xor", 2, (2,), ("0", "1"), train_size=4, test_size=4),
}


@dataclass
class RawData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Splits:
    """Arrays ready for Keras: x scaled and shaped, y encoded as the loss needs."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    labels_test: np.ndarray  # integer class ids of the test set, whatever the encoding


def resolve_data_dir(configured: str | None) -> tuple[Path, str]:
    """The data directory and where that choice came from (for error messages)."""
    if configured:
        return Path(configured).expanduser(), "data.dir"
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser(), f"${DATA_DIR_ENV}"
    return Path.home() / ".cache" / "cnnlab" / "datasets", "the default cache"


def load_raw(name: str, data_dir: str | None = None, download: bool = True, test_only: bool = False) -> RawData:
    """The raw arrays of a data set: uint8 images (N, 28, 28) and int labels (N,).

    `test_only` skips the training files (evaluation needs only the test split); the
    training arrays are then empty.
    """
    info = DATASETS[name]
    if name == "xor":
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype="float32")
        y = np.array([0, 1, 1, 0], dtype="int64")
        return RawData(x, y, x.copy(), y.copy())
    folder, origin = resolve_data_dir(data_dir)
    folder = folder / info.folder
    arrays = []
    for file_name, md5 in info.md5:
        if test_only and file_name.startswith("train-"):
            arrays.append(np.zeros((0, *info.sample_shape), np.uint8) if "images" in file_name else np.zeros(0, np.uint8))
            continue
        path = folder / file_name
        if not path.exists():
            _fetch(info, file_name, md5, path, origin, download)
        arrays.append(read_idx(path, md5))
    x_train, y_train, x_test, y_test = arrays
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if len(images) != len(labels):
            raise CnnlabError(
                f"{folder}: {split} images ({len(images)}) and labels ({len(labels)}) differ in count."
            )
    return RawData(x_train, y_train.astype("int64"), x_test, y_test.astype("int64"))


def read_idx(path: Path, md5: str | None = None) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format), checking its md5 when given."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CnnlabError(f"{path}: cannot read the data file ({exc.strerror}).") from None
    if md5 is not None and hashlib.md5(blob).hexdigest() != md5:
        raise CnnlabError(
            f"{path}: md5 is {hashlib.md5(blob).hexdigest()}, expected {md5}; the file is "
            "corrupt or not the original. Replace it with the original file (or delete it to "
            "download it again)."
        )
    try:
        raw = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error):
        raise CnnlabError(f"{path}: is not a complete gzip file (truncated or corrupt).") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CnnlabError(f"{path}: is not an IDX file of unsigned bytes (bad magic number).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise CnnlabError(f"{path}: IDX header says shape {dims}, but the data has another size.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _fetch(info: DatasetInfo, file_name: str, md5: str, path: Path, origin: str, download: bool) -> None:
    where = f"{path} (data directory from {origin})"
    if not download or os.environ.get(OFFLINE_ENV) == "1":
        raise CnnlabError(
            f"{info.name} file not found: {where}. Put the original IDX files there or set "
            f"${DATA_DIR_ENV} to the folder that holds {info.folder}/."
        )
    errors = []
    for base in info.urls:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as tmp:
                with urllib.request.urlopen(base + file_name, timeout=60) as response:
                    shutil.copyfileobj(response, tmp)
            if hashlib.md5(Path(tmp.name).read_bytes()).hexdigest() != md5:
                os.unlink(tmp.name)
                errors.append(f"{base}: md5 mismatch")
                continue
            os.replace(tmp.name, path)
            return
        except OSError as exc:
            errors.append(f"{base}: {getattr(exc, 'reason', exc)}")
    raise CnnlabError(
        f"{info.name} file not found: {where}, and downloading it failed ({'; '.join(errors)}). "
        f"Put the original IDX files there or set ${DATA_DIR_ENV}."
    )


def prepare(cfg, input_shape: tuple[int, ...], one_hot: bool, raw: RawData | None = None) -> Splits:
    """Scale, reshape, subset, split and encode the data as the config says.

    Args:
        cfg: a validated `cnnlab.config.Config`.
        input_shape: the shape of one sample the model takes, e.g. (28, 28, 1) or (784,).
        one_hot: encode labels as one-hot vectors (else integer class ids).
        raw: the raw arrays, when already loaded (else read from the data directory).
    """
    data = cfg.data
    info = DATASETS[data.dataset]
    raw = raw or load_raw(data.dataset, data.dir, data.download)
    x_train, y_train = raw.x_train[: data.train_samples], raw.y_train[: data.train_samples]
    x_test, y_test = raw.x_test[: data.test_samples], raw.y_test[: data.test_samples]

    def shape(x: np.ndarray) -> np.ndarray:
        x = x.astype("float32")
        if info.is_image:
            x /= np.float32(data.scale)
        return x.reshape((len(x), *input_shape))

    x_train, x_test = shape(x_train), shape(x_test)
    x_val = y_val = None
    method = data.validation.method
    if method == "stratified":
        from sklearn.model_selection import train_test_split

        x_train, x_val, y_train, y_val = train_test_split(
            x_train, y_train, test_size=data.validation.size,
            random_state=data.validation.random_state, stratify=y_train,
        )
    elif method == "split":  # as Keras' validation_split: the last fraction, unshuffled
        cut = len(x_train) - int(round(len(x_train) * data.validation.size))
        x_train, x_val, y_train, y_val = x_train[:cut], x_train[cut:], y_train[:cut], y_train[cut:]
    if data.repeat > 1:
        x_train, y_train = np.concatenate([x_train] * data.repeat), np.concatenate([y_train] * data.repeat)

    def encode(y):
        return None if y is None else encode_labels(y, info.num_classes, one_hot)

    return Splits(x_train, encode(y_train), x_val, encode(y_val), x_test, encode(y_test), y_test)


def encode_labels(labels: np.ndarray, num_classes: int, one_hot: bool) -> np.ndarray:
    """Integer class ids, or one-hot float32 rows as `keras.utils.to_categorical` gives."""
    labels = np.asarray(labels, dtype="int64")
    if not one_hot:
        return labels
    return np.eye(num_classes, dtype="float32")[labels]


def epoch_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int):
    """A tf.data pipeline of shuffled training batches for epochs `first_epoch`..`epochs - 1`.

    Epoch e's order depends only on (seed, e), so a run resumed after epoch k sees the
    very batches an uninterrupted run would have: same seed, same model, same result.
    (Keras' own shuffle draws each epoch's order from one random stream that a new
    process cannot fast-forward.) Batches are gathered from the arrays by index, as
    Keras does for NumPy input, so it is as fast as `fit(x, y, shuffle=True)`.

    Returns the dataset and the number of batches per epoch.
    """
    import tensorflow as tf

    count = len(x)
    features, targets = tf.constant(x), tf.constant(y)

    full = count // batch_size * batch_size

    def order(epoch):
        return tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )

    def batches(indices):  # whole batches in one reshape, then the remainder
        dataset = tf.data.Dataset.from_tensor_slices(tf.reshape(indices[:full], (-1, batch_size)))
        return dataset.concatenate(tf.data.Dataset.from_tensors(indices[full:])) if full < count else dataset

    dataset = (
        tf.data.Dataset.range(first_epoch, epochs)
        .map(order)
        .flat_map(batches)
        .map(lambda indices: (tf.gather(features, indices), tf.gather(targets, indices)),
             num_parallel_calls=2)
        .prefetch(2)
    )
    # No autotuning: its background thread sleeps in growing periods, and destroying the
    # iterator at the end of `fit` waited for that sleep to end, 2 to 20 s measured here
    # after the last epoch. Two parallel gathers and two batches ahead keep 2 cores busy.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options), -(-count // batch_size)
