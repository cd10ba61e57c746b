"""Pretrained backbones: tiny MobileNet runs on small photo folders, end to end, with the shared ImageNet weights.

The pictures are 32x32 (MobileNet's minimum), a dozen per class: seconds per run on a CPU.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import yaml
from PIL import Image

from cnnlab.backbone import FAMILIES, check_backbone, file_sha256, preprocess_layer
from cnnlab.cli import app
from cnnlab.errors import CnnlabError

from conftest import SHARED, needs_shared

WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
WEIGHTS_SHA256 = "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"  # ../shared/weights/README.txt


def write_photo_folder(folder: Path, train: int = 10, test: int = 4, size: int = 40) -> Path:
    """JPEG 'photos' of two classes (warm and cool colours, noisy) in folder/{train,test}/<class>/."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for label, base in (("warm", (200, 90, 40)), ("cool", (40, 90, 200))):
            target = folder / split / label
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(rng.normal(base, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(target / f"{i:02d}.jpg", quality=90)
    return folder


def backbone_config(folder: Path, weights: str | None = str(WEIGHTS), **train) -> dict:
    return {
        "name": "tiny_transfer",
        "data": {"dataset": "folder", "path": str(folder), "image_size": [32, 32], "color": "rgb",
                 "validation": {"method": "stratified", "size": 0.25, "random_state": 1}},
        "model": {"backbone": {"name": "mobilenet", "alpha": 0.25, "weights": weights, "pooling": "avg"},
                  "layers": [{"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 2, "activation": "softmax"}]},
        "train": {"epochs": 2, "batch_size": 8, "verbose": 0, **train},
    }


@pytest.fixture
def photos(tmp_path) -> Path:
    return write_photo_folder(tmp_path / "photos")


def _train(runner, tmp_path, data: dict, *args: str):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", str(config), "--runs-dir", str(runs), *args])
    assert result.exit_code == 0, result.output
    run = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    return run, result.output


def _file_weights(path: Path) -> list[np.ndarray]:
    """Every array of a Keras HDF5 weights file, in its layers' order."""
    with h5py.File(path, "r") as f:
        out = []
        for name in f.attrs["layer_names"]:
            group = f[name]
            out += [np.asarray(group[n]) for n in group.attrs["weight_names"]]
        return out


def _backbone_weights(model) -> list[np.ndarray]:
    network = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    return [np.asarray(w) for layer in network.layers for w in layer.weights]


@needs_shared
def test_a_frozen_backbone_keeps_the_files_weights_and_the_run_is_recorded(runner, tmp_path, photos):
    run, output = _train(runner, tmp_path, backbone_config(photos))
    model = keras.saving.load_model(run / "best.keras")
    stored, file = _backbone_weights(model), _file_weights(WEIGHTS)
    assert len(stored) == len(file)
    assert all(np.array_equal(a, b) for a, b in zip(stored, file))  # loaded exactly, and did not move
    environment = json.loads((run / "environment.json").read_text())
    assert environment["backbone"]["sha256"] == WEIGHTS_SHA256
    assert environment["backbone"]["file"] == str(WEIGHTS.resolve())
    assert "test accuracy" in output
    assert (run / "model.tflite").is_file()
    summary = (run / "summary.txt").read_text()
    assert "Backbone mobilenet_0.25_32: 218,544 params, 0 trainable, 218,544 frozen" in summary


@needs_shared
def test_fine_tuning_moves_the_backbone_but_not_batch_norm_and_keeps_one_history(runner, tmp_path, photos):
    data = backbone_config(photos, fine_tune={"unfreeze": 10, "epochs": 2, "learning_rate": 1e-3},
                           checkpoint={"filename": "epoch{epoch:02d}.keras", "save_best_only": False})
    run, output = _train(runner, tmp_path, data)
    assert "fine-tuning from epoch 3" in output
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[2]["learning_rate"] == pytest.approx(1e-3)
    state = keras.saving.load_model(run / "epoch04.keras")  # the last epoch's model
    network = next(layer for layer in state.layers if isinstance(layer, keras.Model))
    moved = {layer.name for layer in network.layers if layer.weights and not all(
        np.array_equal(a, b) for a, b in zip(layer.get_weights(), _layer_in_file(layer.name)))}
    top = [layer.name for layer in network.layers[-10:] if layer.weights]
    assert moved  # the unfrozen top trained
    assert moved <= set(top)  # nothing below it moved
    assert not any(isinstance(network.get_layer(name), keras.layers.BatchNormalization) for name in moved)
    json.loads((run / "metrics.json").read_text())  # scored


def _layer_in_file(name: str) -> list[np.ndarray]:
    with h5py.File(WEIGHTS, "r") as f:
        group = f[name]
        return [np.asarray(group[n]) for n in group.attrs["weight_names"]]


def _reused(output: str) -> tuple[int, int]:
    found = re.search(r"backbone features of (\d+) pictures: (\d+) from the cache, (\d+) computed", output)
    assert found, output
    return int(found.group(2)), int(found.group(3))


@needs_shared
def test_the_feature_cache_is_hit_on_a_second_run_and_missed_with_other_weights(runner, tmp_path, photos):
    data = backbone_config(photos)
    _, first = _train(runner, tmp_path, data)
    assert _reused(first) == (0, 20)
    _, second = _train(runner, tmp_path, data)
    assert _reused(second) == (20, 0)
    other = tmp_path / "other_weights.h5"
    shutil.copy(WEIGHTS, other)
    with h5py.File(other, "r+") as f:  # the same architecture, one kernel changed: other features
        group = f["conv1"]
        kernel = group[group.attrs["weight_names"][0]]
        kernel[...] = np.asarray(kernel) * 1.5
    data["model"]["backbone"]["weights"] = str(other)
    _, third = _train(runner, tmp_path, data)
    assert _reused(third) == (0, 20)


@needs_shared
def test_augmentation_computes_features_per_batch_and_stays_out_of_the_saved_model(runner, tmp_path, photos):
    data = backbone_config(photos)
    data["data"]["augment"] = {"flip": "horizontal", "rotation": 0.1}
    run, output = _train(runner, tmp_path, data)
    assert "backbone features are computed per batch" in output
    model = keras.saving.load_model(run / "best.keras")
    names = [type(layer).__name__ for layer in model.layers]
    assert not any(name.startswith("Random") for name in names), names


@needs_shared
def test_tflite_and_onnx_exports_of_a_backbone_run_agree_with_keras(runner, tmp_path, photos):
    run, _ = _train(runner, tmp_path, backbone_config(photos, epochs=1))
    for fmt in ("tflite", "onnx"):
        result = runner.invoke(app, ["export", str(run), "--format", fmt, "--output", str(tmp_path / f"m.{fmt}")])
        assert result.exit_code == 0, result.output
        found = re.search(r"differ from Keras' by at most ([0-9.e+-]+) \(tolerance 0.0001\)", result.output)
        assert found and float(found.group(1)) <= 1e-4, result.output


@needs_shared
def test_predict_names_the_class_of_a_photo(runner, tmp_path, photos):
    run, _ = _train(runner, tmp_path, backbone_config(photos, epochs=1))
    result = runner.invoke(app, ["predict", str(run), str(photos / "test" / "warm" / "00.jpg"), "--json"])
    assert result.exit_code == 0, result.output
    assert "warm" in result.output or "cool" in result.output


def test_preprocessing_matches_each_familys_own_preprocess_input():
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    for name, module in (("mobilenet", keras.applications.mobilenet), ("resnet50", keras.applications.resnet50)):
        layer = preprocess_layer(keras, FAMILIES[name].scaling, 3, 255.0)
        ours = np.asarray(layer(pixels / 255.0))
        theirs = module.preprocess_input(pixels.copy())
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    grey = preprocess_layer(keras, "tf", 1, 255.0)
    out = np.asarray(grey(pixels[..., :1] / 255.0))
    np.testing.assert_allclose(out, np.repeat(pixels[..., :1] / 127.5 - 1, 3, axis=-1), atol=1e-5)


def test_every_family_builds_at_its_minimum_size_with_the_feature_width_the_table_says():
    from cnnlab.backbone import build_backbone, connect

    for name in ("mobilenet_v3_small", "efficientnet_b0", "mobilenet_v2"):
        plan = check_backbone({"name": name, "weights": None, "pooling": "avg"}, (32, 32), "c.yaml")
        parts = build_backbone(keras, plan, (32, 32, 1), 255.0, "c.yaml")
        inputs, features = connect(keras, parts, (32, 32, 1))
        assert tuple(features.shape[1:]) == plan.output_shape
        assert len(parts.network.layers) == FAMILIES[name].layers + 1  # + the pooling layer


def test_the_weights_sha256_is_the_files():
    assert file_sha256(WEIGHTS) == WEIGHTS_SHA256


def test_an_image_size_below_the_minimum_is_refused():
    with pytest.raises(CnnlabError, match="below mobilenet's minimum of 32x32"):
        check_backbone({"name": "mobilenet", "alpha": 0.25, "weights": None}, (28, 28), "c.yaml", what="mnist")


@needs_shared
def test_imagenet_weights_come_from_keras_own_cache(runner, tmp_path, monkeypatch):
    import keras.src.backend.config as keras_config

    home = tmp_path / "keras-home"
    (home / "models").mkdir(parents=True)
    # the 224 file under the 128 name: the same layers (MobileNet's weights do not depend on the size)
    shutil.copy(WEIGHTS, home / "models" / "mobilenet_2_5_128_tf_no_top.h5")
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))  # where Keras looks before it downloads
    data = backbone_config(write_photo_folder(tmp_path / "few", train=4, test=2), weights="imagenet", epochs=1)
    data["data"]["image_size"] = [128, 128]
    run, _ = _train(runner, tmp_path, data)
    environment = json.loads((run / "environment.json").read_text())["backbone"]
    assert environment == {"weights": "imagenet", "file": str(home / "models" / "mobilenet_2_5_128_tf_no_top.h5"),
                           "sha256": WEIGHTS_SHA256}


@needs_shared
def test_a_run_stopped_while_fine_tuning_resumes_in_that_phase(tmp_path, photos, ctrl_c_works):
    from test_resume import _CtrlCAt

    from cnnlab.config import validate_config
    from cnnlab.train import Hooks, resume, train

    data = backbone_config(photos, fine_tune={"unfreeze": 10, "epochs": 2, "learning_rate": 5e-4})
    cfg = validate_config(data, "c.yaml")
    stopped = train(cfg, "c.yaml", runs_dir=tmp_path, echo=lambda _: None, hooks=Hooks(callbacks=[_CtrlCAt(3, 0)]))
    assert stopped.status == "interrupted"
    assert json.loads((stopped.run_dir / "run.json").read_text())["epochs_completed"] == 3
    said: list[str] = []
    result = resume(stopped.run_dir, echo=said.append)
    assert result.status == "completed" and result.metrics["epochs_completed"] == 4
    assert not any("fine-tuning from epoch" in line for line in said)  # it was fine-tuning already
    history = json.loads((stopped.run_dir / "history.json").read_text())["epochs"]
    assert [row["learning_rate"] for row in history] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])
