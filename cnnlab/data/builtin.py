"""The built-in data sets: MNIST and Fashion-MNIST from their IDX files, and XOR.

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

from cnnlab.data.spec import DatasetInfo, ImageSpec
from cnnlab.errors import CnnlabError

DATA_DIR_ENV = "CNNLAB_DATA_DIR"
OFFLINE_ENV = "CNNLAB_OFFLINE"  # set to 1: never download, a missing file is an error

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


_IDX_FILES = (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
)


def _idx_set(name: str, classes: tuple[str, ...], preprocess: str, folder: str, url: str,
             md5s: tuple[str, ...]) -> DatasetInfo:
    return DatasetInfo(
        name=name, num_classes=10, class_names=classes, spec=NATIVE_SPEC, sample_shape=NATIVE_SPEC.shape,
        preprocess=preprocess, train_size=60_000, test_size=10_000, folder=folder, urls=(url,),
        md5=tuple(zip(_IDX_FILES, md5s)),
    )


NATIVE_SPEC = ImageSpec(28, 28, "grayscale")  # MNIST's and Fashion-MNIST's own images

DATASETS: dict[str, DatasetInfo] = {
    "mnist": _idx_set(
        "mnist", tuple(str(d) for d in range(10)), "mnist", "mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    "fashion_mnist": _idx_set(
        "fashion_mnist", FASHION_CLASSES, "fashion", "fashion-mnist",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "xor": DatasetInfo(name="xor", num_classes=2, class_names=("0", "1"), spec=None, sample_shape=(2,),
                       train_size=4, test_size=4),
}


@dataclass
class RawData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


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
            arrays.append(np.zeros((0, info.spec.height, info.spec.width), np.uint8) if "images" in file_name else np.zeros(0, np.uint8))
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


def idx_files_present(info: DatasetInfo, data_dir: str | None = None) -> bool:
    """Whether every file of built-in set `info` is in the data directory (nothing to download)."""
    folder = resolve_data_dir(data_dir)[0] / (info.folder or "")
    return all((folder / file_name).is_file() for file_name, _ in info.md5 or ())


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
