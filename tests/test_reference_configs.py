"""The reference configs: each loads and builds, the material's parameter counts, shape errors, checkpoints."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cnnlab.cli import app
from cnnlab.config import load_config, output_units, validate_config
from cnnlab.errors import CnnlabError
from cnnlab.model import check_model
from cnnlab.train import train

from conftest import REPO, needs_data, small_dnn

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_there_is_a_config_per_reference_experiment():
    names = {path.stem for path in CONFIGS}
    assert {
        "xor_one_layer", "xor_mlp", "dnn", "deep_dnn_sigmoid_sgd", "deep_dnn_relu_sgd", "deep_dnn_relu_adam",
        "deep_dnn_callbacks", "lenet_cnn", "cnn", "fashion_cnn", "fashion_cnn_dropout", "fashion_cnn_tape",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_every_config_loads_and_its_summary_builds(runner, path, tmp_path):
    overrides = []
    cfg = load_config(path)
    if cfg.data.dataset == "folder" and not Path(cfg.data.path).is_dir():  # `make example-data`'s: made here
        sys.path.insert(0, str(REPO / "examples"))
        from make_shapes import write_shapes_folder

        shapes = write_shapes_folder(tmp_path / "shapes", per_class=10)
        for extra in sorted(shapes.iterdir())[output_units(cfg):]:  # as many classes as the config's output
            shutil.rmtree(extra)
        overrides = [f"data.path={shapes}"]
    cfg = load_config(path, overrides)
    assert path.read_text().startswith("#"), "each reference config says what the material reports"
    result = runner.invoke(app, ["summary", str(path), *(x for o in overrides for x in ("--set", o))])
    assert result.exit_code == 0, result.output
    # the shape checks count what trains: the head, with a frozen backbone
    counted = "Trainable" if cfg.model.backbone is not None and not cfg.model.backbone.trainable else "Total"
    assert f"{check_model(cfg, str(path)).params:,}" == re.search(rf"{counted} params: ([\d,]+)", result.output).group(1)


@pytest.mark.parametrize("name, params", [
    ("fashion_cnn_dropout", "197,210"), ("fashion_cnn", "197,210"), ("fashion_cnn_tape", "197,210"),
    ("dnn", "101,770"),
])
def test_the_material_parameter_counts(runner, name, params):
    result = runner.invoke(app, ["summary", str(REPO / "configs" / f"{name}.yaml")])
    assert result.exit_code == 0 and f"Total params: {params} " in result.output


def _pooled_config(*layers) -> dict:
    data = small_dnn()
    data["model"]["layers"] = [*layers, {"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]
    return data


def test_a_5x5_kernel_on_a_2x2_map_names_the_layer_and_shapes(runner, write_config):
    path = write_config(_pooled_config(  # 28 -> 14 -> 7 -> 2 (pool 3), then a 5x5 valid convolution
        {"type": "max_pooling2d", "pool_size": 2}, {"type": "max_pooling2d", "pool_size": 2},
        {"type": "max_pooling2d", "pool_size": 3},
        {"type": "conv2d", "filters": 4, "kernel_size": 5, "padding": "valid"},
    ))
    result = runner.invoke(app, ["summary", str(path)])
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "model.layers[3] (conv2d)" in message and "kernel 5x5" in message and "2x2x1" in message


def test_pooling_below_one_pixel_names_the_layer_and_shapes():
    pools = [{"type": "max_pooling2d", "pool_size": 2} for _ in range(5)]  # 28 14 7 3 1, then nothing
    with pytest.raises(CnnlabError) as err:
        check_model(validate_config(_pooled_config(*pools), "p.yaml"), "p.yaml")
    message = str(err.value)
    assert "model.layers[4] (max_pooling2d)" in message and "pool 2x2" in message and "1x1x1" in message


def test_xor_needs_a_hidden_layer(tmp_path):
    one_layer = train(load_config(REPO / "configs" / "xor_one_layer.yaml"), "xor_one_layer.yaml",
                      runs_dir=tmp_path, echo=lambda _: None)
    assert one_layer.metrics["test_accuracy"] <= 0.75  # a line cannot split XOR


@pytest.mark.parametrize("pattern, words", [
    ("runs/dm_{epoch:02d}.hdf5", ["train.checkpoint.filename", "plain file name"]),
    ("dm_{epoch:02d}.pt", ["train.checkpoint.filename", ".keras, .h5 or .hdf5"]),
    ("dm_{epoch:02d}_{val_acc:0.2f}.hdf5", ["placeholder {val_acc}", "val_accuracy"]),
    ("dm_{epoch:02d}_{val_accuracy:02d}.hdf5", ["Unknown format code 'd'", "{val_accuracy:0.2f}"]),
    ("dm_{epoch.h5", ["not a valid pattern"]),
])
def test_a_bad_checkpoint_pattern_is_refused_before_training(write_config, pattern, words):
    path = write_config(small_dnn(checkpoint={"monitor": "val_accuracy", "filename": pattern}))
    with pytest.raises(CnnlabError) as err:
        check_model(load_config(path), str(path))
    for word in words:
        assert word in str(err.value)


@needs_data
def test_the_seed_style_checkpoint_pattern_writes_files_plain_keras_loads(tmp_path, capsys):
    cfg = load_config(REPO / "configs" / "deep_dnn_callbacks.yaml",
                      ["data.train_samples=3000", "data.test_samples=500", "train.epochs=3"])
    result = train(cfg, "deep_dnn_callbacks.yaml", runs_dir=tmp_path, echo=print)
    history = json.loads((result.run_dir / "history.json").read_text())["epochs"]
    written = sorted(path.name for path in result.run_dir.glob("dm_*.hdf5"))
    best_so_far, expected = -1.0, []
    for row in history:  # save_best_only: one file per new best val_accuracy
        if row["val_accuracy"] > best_so_far:
            best_so_far = row["val_accuracy"]
            expected.append(f"dm_{row['epoch']:02d}_{row['val_accuracy']:0.2f}.hdf5")
    assert written == expected
    assert f"saved {result.run_dir / written[-1]}" in capsys.readouterr().out
    newest = keras.saving.load_model(result.run_dir / written[-1])  # plain Keras, legacy HDF5
    best = keras.saving.load_model(result.run_dir / "best.keras")
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype="float32")
    np.testing.assert_allclose(newest.predict(x, verbose=0), best.predict(x, verbose=0), atol=1e-6)
    assert type(best.optimizer).__name__ == "Adam"  # writing the HDF5 copy did not cost best.keras its optimizer
    from cnnlab.evaluate import evaluate  # and cnnlab evaluate scores the .hdf5 as it scores best.keras

    assert evaluate(result.run_dir / written[-1]).accuracy == pytest.approx(result.metrics["test_accuracy"], abs=1e-9)
