"""Data: IDX reading and checking, label encoding, splits, shapes."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from cnnlab.config import validate_config
from cnnlab.data import DATASETS, encode_labels, load_raw, prepare, read_idx
from cnnlab.errors import CnnlabError

from conftest import DATA_DIR, needs_data, small_dnn


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_read_idx_round_trip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((50, 28, 28)))
    blob = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CnnlabError, match="truncated or corrupt"):
        read_idx(tmp_path / "x.gz")


def test_not_an_idx_file(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"hello world, not idx"))
    with pytest.raises(CnnlabError, match="bad magic number"):
        read_idx(tmp_path / "x.gz")


def test_wrong_md5_names_file_and_both_sums(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((10, 28, 28)))
    with pytest.raises(CnnlabError) as err:
        load_raw("mnist", str(tmp_path))
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in message
    assert (folder / "train-images-idx3-ubyte.gz").exists()  # never deleted: it may not be ours


def test_missing_files_offline_say_where_they_were_expected(tmp_path):
    with pytest.raises(CnnlabError) as err:
        load_raw("fashion_mnist", str(tmp_path))
    assert str(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz") in str(err.value)


def test_label_encoding():
    labels = np.array([3, 0, 9])
    assert encode_labels(labels, 10, one_hot=False).tolist() == [3, 0, 9]
    one_hot = encode_labels(labels, 10, one_hot=True)
    assert one_hot.shape == (3, 10) and one_hot.dtype == np.float32
    assert one_hot.argmax(axis=1).tolist() == [3, 0, 9] and one_hot.sum() == 3


@needs_data
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_files_load_with_md5_check(name):
    raw = load_raw(name, str(DATA_DIR))
    assert raw.x_train.shape == (60000, 28, 28) and raw.x_test.shape == (10000, 28, 28)
    assert raw.x_train.dtype == np.uint8 and raw.x_train.max() == 255
    assert sorted(set(raw.y_train.tolist())) == list(range(10))
    assert DATASETS[name].num_classes == 10


@needs_data
def test_stratified_split_keeps_class_proportions():
    data = small_dnn()
    data["data"].update(train_samples=None, test_samples=None)
    cfg = validate_config(data, "test")
    splits = prepare(cfg, (28, 28, 1), one_hot=False)
    assert len(splits.x_val) == 12000 and len(splits.x_train) == 48000
    train_share = np.bincount(splits.y_train, minlength=10) / len(splits.y_train)
    val_share = np.bincount(splits.y_val, minlength=10) / len(splits.y_val)
    assert np.abs(train_share - val_share).max() < 0.01
    # the same seed gives the same split
    again = prepare(cfg, (28, 28, 1), one_hot=False)
    np.testing.assert_array_equal(again.y_val, splits.y_val)


@needs_data
def test_prepare_scales_shapes_and_one_hots():
    data = small_dnn(loss="categorical_crossentropy")
    data["data"].update(scale=255, validation={"method": "split", "size": 0.25})
    cfg = validate_config(data, "test")
    splits = prepare(cfg, (784,), one_hot=cfg.one_hot_labels())
    assert splits.x_train.shape == (7500, 784) and splits.x_val.shape == (2500, 784)
    x_train = np.asarray(splits.x_train)  # read and scaled batch by batch; here all at once
    assert x_train.dtype == np.float32 and 0.99 < x_train.max() <= 1.0
    assert splits.y_train.shape == (7500, 10) and splits.labels_test.shape == (2000,)
    assert splits.x_test.shape == (2000, 784)


def test_xor_is_built_in():
    cfg = validate_config({"name": "x", "data": {"dataset": "xor", "validation": {"method": "none"}, "repeat": 3},
                           "model": {"layers": [{"type": "dense", "units": 1, "activation": "sigmoid"}]},
                           "train": {"loss": "mse", "checkpoint": {"monitor": "loss"}}}, "test")
    splits = prepare(cfg, (2,), one_hot=False)
    assert splits.x_train.shape == (12, 2) and splits.x_val is None
    assert splits.labels_test.tolist() == [0, 1, 1, 0]


@needs_data
def test_test_only_reads_just_the_test_files(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(DATA_DIR / "mnist" / name, folder / name)
    raw = load_raw("mnist", str(tmp_path), download=False, test_only=True)
    assert raw.x_test.shape == (10000, 28, 28) and len(raw.x_train) == 0 and len(raw.y_train) == 0
