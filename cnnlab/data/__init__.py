"""Data sets: the built-in ones (MNIST, Fashion-MNIST, XOR) and a user's own folder or CSV of images.

- `spec`: what a data set is without loading it (`DatasetInfo`) and how its images are made
  alike (`ImageSpec`: size, colour, resampling).
- `builtin`: MNIST and Fashion-MNIST from their md5-checked IDX files (fetched once), and XOR.
- `files`: a user's folder of class folders or CSV manifest, listed and checked.
- `cache`: a user's images decoded once into an array file, read back a batch at a time.
- `splits`: `describe`, `load` and `prepare`: training, validation and test samples.
- `pipeline`: tf.data batches for Keras, with augmentation on training batches only.

Example:
    info = describe(cfg.data)
    splits = prepare(cfg, (28, 28, 1), one_hot=False, data=load(cfg.data, info))
"""

from cnnlab.data.builtin import (
    DATA_DIR_ENV,
    DATASETS,
    FASHION_CLASSES,
    OFFLINE_ENV,
    RawData,
    idx_files_present,
    load_raw,
    read_idx,
    resolve_data_dir,
)
from cnnlab.data.spec import IMAGE_SUFFIXES, DatasetInfo, ImageSpec
from cnnlab.data.splits import (
    ImageData,
    Samples,
    Splits,
    data_record,
    describe,
    describe_data,
    encode_labels,
    info_from_record,
    load,
    prepare,
    select_test_files,
)

__all__ = [
    "DATA_DIR_ENV", "DATASETS", "FASHION_CLASSES", "IMAGE_SUFFIXES", "OFFLINE_ENV", "DatasetInfo", "ImageData",
    "ImageSpec", "RawData", "Samples", "Splits", "data_record", "describe", "describe_data", "encode_labels", "idx_files_present",
    "info_from_record", "load",
    "load_raw", "prepare",
    "read_idx", "resolve_data_dir", "select_test_files",
]
