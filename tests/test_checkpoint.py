"""Loading models: run directories, .keras, Keras 3 and Keras 2 .h5 files, and files that must be refused."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from cnnlab.checkpoint import check_archive, load_checkpoint
from cnnlab.config import validate_config
from cnnlab.errors import CnnlabError

from conftest import SHARED, needs_shared, small_dnn

REALMODELS = SHARED / "realmodels"
KERAS2_H5 = REALMODELS / "ikukang__DeepLearningWithPythonKeras__mnist_cnn.h5"
KERAS3_H5 = REALMODELS / "JanithaB__cnn_mnist_cv2__mnist_cnn.h5"


def save_model(path, input_shape=(28, 28, 1), outputs=10, activation="softmax", layers=()):
    """Save a small (untrained) Keras model: input -> *layers -> flatten -> dense(outputs)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(input_shape), *layers, keras.layers.Flatten(), keras.layers.Dense(outputs, activation=activation),
    ])
    model.save(path)
    return path


def make_run(root, **data):
    """A run directory as `cnnlab train` leaves it (config.yaml, run.json, best.keras), untrained."""
    config = small_dnn()
    config["data"].update(data)
    cfg = validate_config(config, "small.yaml")
    run = root / "small-20260101-000000"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "run.json").write_text(json.dumps({"name": "small", "status": "completed"}))
    save_model(run / "best.keras", input_shape=(28, 28))
    return run


@needs_shared
@pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`")
def test_a_keras2_h5_that_keras3_refuses_loads_and_the_file_is_untouched():
    before = hashlib.sha256(KERAS2_H5.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="Kernel shape must have the same length"):
        keras.saving.load_model(KERAS2_H5, compile=False)  # what a plain load does
    loaded = load_checkpoint(KERAS2_H5)
    assert "Keras 2.3.1" in loaded.kind and loaded.input_shape == (28, 28, 1)
    assert loaded.model.count_params() == 93_322
    assert loaded.loss.name == "categorical_crossentropy" and loaded.dataset == "mnist" and loaded.scale == 255
    assert hashlib.sha256(KERAS2_H5.read_bytes()).hexdigest() == before


@needs_shared
def test_a_keras3_h5_loads():
    loaded = load_checkpoint(KERAS3_H5)
    assert "Keras 3.4.1" in loaded.kind and loaded.input_shape == (28, 28, 1)
    assert loaded.model.count_params() == 34_826


def test_a_run_directory_brings_its_checkpoint_dataset_and_scale(tmp_path):
    run = make_run(tmp_path, dataset="fashion_mnist", scale=1.0, test_samples=500)
    loaded = load_checkpoint(run)
    assert loaded.path == run / "best.keras" and loaded.run_dir == run and loaded.kind.startswith("cnnlab run")
    assert (loaded.dataset, loaded.scale, loaded.data_settings.test_samples) == ("fashion_mnist", 1.0, 500)
    assert loaded.class_names[9] == "Ankle boot"
    # a model file inside a run directory knows its data too
    assert load_checkpoint(run / "best.keras").dataset == "fashion_mnist"
    with pytest.raises(CnnlabError, match=r"trained on fashion_mnist.*--dataset and --scale are for bare model files"):
        load_checkpoint(run, dataset="mnist")


@pytest.mark.parametrize("shape", [(28, 28, 1), (28, 28), (784,), (None, None, 1)])
def test_the_models_own_input_shape_decides_how_samples_are_shaped(tmp_path, shape):
    if shape == (None, None, 1):
        layers = (keras.layers.Conv2D(4, 3), keras.layers.GlobalMaxPooling2D())
        model = keras.Sequential([keras.Input(shape), *layers, keras.layers.Dense(10, activation="softmax")])
        model.save(tmp_path / "m.keras")
    else:
        save_model(tmp_path / "m.keras", input_shape=shape)
    loaded = load_checkpoint(tmp_path / "m.keras", scale=255)
    expected = (28, 28, 1) if shape == (None, None, 1) else shape
    assert loaded.input_shape == expected
    raw = np.full((3, 28, 28), 255, np.uint8)
    x = loaded.prepare(raw)
    assert x.shape == (3, *expected) and x.max() == pytest.approx(1.0)
    probs = loaded.predict(x)
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1)


def test_a_model_that_outputs_logits_gets_a_softmax(tmp_path):
    save_model(tmp_path / "logits.keras", activation=None)
    loaded = load_checkpoint(tmp_path / "logits.keras")
    probs = loaded.predict(loaded.prepare(np.random.default_rng(0).integers(0, 255, (5, 28, 28))))
    assert probs.min() >= 0 and np.allclose(probs.sum(axis=1), 1)


def test_a_model_for_other_data_is_an_error_naming_both_shapes(tmp_path):
    save_model(tmp_path / "cifar.keras", input_shape=(32, 32, 3))
    with pytest.raises(CnnlabError, match=r"cifar\.keras: the model takes inputs of shape \(32, 32, 3\).*mnist samples are 28x28"):
        load_checkpoint(tmp_path / "cifar.keras")
    save_model(tmp_path / "five.keras", outputs=5)
    with pytest.raises(CnnlabError, match=r"five\.keras: the model's output has shape \(None, 5\).*10 classes"):
        load_checkpoint(tmp_path / "five.keras")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_lambda_layer_is_refused_unless_unsafe(tmp_path, suffix):
    path = save_model(tmp_path / f"lambda{suffix}", layers=(keras.layers.Lambda(lambda x: x * 2.0, name="double"),))
    with pytest.raises(CnnlabError, match=r"has a Lambda layer \(double\).*--unsafe"):
        load_checkpoint(path)
    assert load_checkpoint(path, unsafe=True).input_shape == (28, 28, 1)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_crafted_file_cannot_run_code_on_loading(tmp_path, suffix):
    marker = tmp_path / "pwned"
    code = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]"  # the path as a constant
    evil = keras.layers.Lambda(eval(code))
    path = save_model(tmp_path / f"evil{suffix}", layers=(evil,))
    marker.unlink()  # building the model while saving ran it once
    with pytest.raises(CnnlabError, match="Lambda"):
        load_checkpoint(path)
    assert not marker.exists()
    load_checkpoint(path, unsafe=True)  # the file really does run code when allowed to
    assert marker.exists()


def test_a_config_that_names_a_python_function_is_refused(tmp_path):
    # not a Lambda: an activation that points at os.system
    path = save_model(tmp_path / "plain.keras")
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    config["config"]["layers"][-1]["config"]["activation"] = {
        "module": "os", "class_name": "function", "config": "system", "registered_name": "system"}
    files["config.json"] = json.dumps(config).encode()
    crafted = tmp_path / "crafted.keras"
    with zipfile.ZipFile(crafted, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(CnnlabError, match=r"crafted\.keras: Keras cannot load this model"):
        load_checkpoint(crafted)


def test_missing_truncated_and_foreign_files_are_errors_naming_the_file(tmp_path):
    with pytest.raises(CnnlabError, match=r"gone\.keras: no such run directory or model file"):
        load_checkpoint(tmp_path / "gone.keras")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CnnlabError, match=r"notes\.txt: is not a model file.*\.keras"):
        load_checkpoint(tmp_path / "notes.txt")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(CnnlabError, match=r"text\.h5: is not a complete HDF5 file"):
        load_checkpoint(tmp_path / "text.h5")
    whole = save_model(tmp_path / "whole.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CnnlabError, match=r"cut\.keras: is not a complete \.keras file"):
        load_checkpoint(tmp_path / "cut.keras")
    whole = save_model(tmp_path / "whole.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CnnlabError, match=r"cut\.h5"):
        load_checkpoint(tmp_path / "cut.h5")
    keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)]).save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(CnnlabError, match=r"only\.weights\.h5: holds no model architecture"):
        load_checkpoint(tmp_path / "only.weights.h5")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CnnlabError, match=r"folder: is not a cnnlab run directory"):
        load_checkpoint(tmp_path / "folder")



@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_loss_object_in_a_file_gives_its_options(tmp_path, suffix):
    """Scripts often compile with a loss object; evaluate then scores it as trained."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    model.save(tmp_path / f"logits{suffix}")
    loaded = load_checkpoint(tmp_path / f"logits{suffix}")
    assert (loaded.loss.name, loaded.loss.label_smoothing, loaded.loss.from_logits) == (
        "categorical_crossentropy", 0.1, True)
    probs = loaded.predict(np.random.default_rng(0).random((3, 28, 28), dtype=np.float32))
    assert np.allclose(probs.sum(axis=-1), 1.0) and probs.min() >= 0  # its logits become probabilities


def _stopped_run(root, status: str, state: bool = False, **info):
    """A run directory without best.keras, as a run that stopped early leaves it."""
    run = make_run(root)
    (run / "best.keras").unlink()
    (run / "run.json").write_text(json.dumps({"name": "small", "status": status, **info}))
    if state:
        (run / "resume").mkdir()
        (run / "resume" / "state.keras").write_bytes(b"state")
    return run


@pytest.mark.parametrize("status, state, info, words, not_words", [
    ("running", False, {"pid": 2 ** 22 + 12345, "host": socket.gethostname()},
     ["stopped before its first epoch finished (run.json says running, but its process 4206649 is gone: killed?)",
      "nothing to resume", "config.yaml` trains its config again"],
     ["--resume"]),
    ("interrupted", False, {}, ["nothing to resume"], ["--resume"]),
    ("interrupted", True, {}, ["cnnlab train --resume"], []),
    ("failed", False, {"error": "--device gpu: TensorFlow sees no GPU"},
     ["failed before its first epoch finished (--device gpu: TensorFlow sees no GPU)"], ["--resume"]),
    ("diverged", False, {"diverged_at": {"epoch": 1, "batch": 2}},
     ["loss diverged at epoch 1", "smaller learning rate"], ["--resume"]),
], ids=["killed while running", "interrupted in epoch 1", "interrupted with a state", "failed", "diverged"])
def test_a_run_without_a_checkpoint_gets_advice_that_is_true(tmp_path, status, state, info, words, not_words):
    run = _stopped_run(tmp_path, status, state, **info)
    with pytest.raises(CnnlabError) as err:
        load_checkpoint(run)
    message = str(err.value)
    assert message.startswith(f"{run}: the run has no best.keras: ")
    for word in words:
        assert word in message
    for word in not_words:
        assert word not in message


def test_a_run_still_training_its_first_epoch_says_so(tmp_path):
    alive = subprocess.Popen(["sleep", "60"])
    try:
        run = _stopped_run(tmp_path, "running", pid=alive.pid, host=socket.gethostname())
        with pytest.raises(CnnlabError, match=rf"still training its first epoch \(process {alive.pid}\)"):
            load_checkpoint(run)
    finally:
        alive.kill()
        alive.wait()


def zip_bomb(path, config_mib: int = 0, weights_declared: int = 0, entries: int = 0):
    """A small .keras archive that declares far more than it stores.

    config_mib: config.json is that many MiB of spaces, deflated (about 1000x smaller on disk).
    weights_declared: model.weights.h5 stores 1 KiB, but its directory entry declares this many bytes.
    entries: that many extra empty entries.
    """
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        if config_mib:
            info = zipfile.ZipInfo("config.json")
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as entry:  # streamed: the test never holds it
                for _ in range(config_mib):
                    entry.write(b" " * 2**20)
        else:
            archive.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        for i in range(entries):
            archive.writestr(f"assets/{i}.txt", b"")
        archive.writestr("model.weights.h5", bytes(1024))
    if weights_declared:  # the central directory's uncompressed size of model.weights.h5
        data = bytearray(path.read_bytes())
        at = data.rfind(b"PK\x01\x02", 0, data.rfind(b"model.weights.h5"))
        data[at + 24:at + 28] = weights_declared.to_bytes(4, "little")
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("bomb, words", [
    (dict(config_mib=200), ["its config.json declares 200.0 MiB (stored in 199.1 KiB)", "at most 8.0 MiB"]),
    (dict(weights_declared=2**32 - 2), ["model.weights.h5 declares 4.0 GiB but stores 1.0 KiB", "decompression bomb"]),
    (dict(entries=2000), ["2,003 entries"]),
], ids=["200 MiB config.json", "4 GiB weights", "2000 entries"])
def test_an_archive_that_expands_too_far_is_refused_before_anything_is_read(tmp_path, bomb, words):
    path = zip_bomb(tmp_path / "bomb.keras", **bomb)
    with pytest.raises(CnnlabError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: cnnlab refuses this .keras file")
    for word in words:
        assert word in message


def test_a_zip_bomb_costs_no_memory(tmp_path):
    """evaluate on a 200 KB file whose config.json expands to 200 MiB: refused without reading it."""
    path = zip_bomb(tmp_path / "bomb.keras", config_mib=200)
    code = ("import resource, sys; from typer.testing import CliRunner; from cnnlab.cli import app; "
            "import cnnlab.evaluate; before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            f"r = CliRunner().invoke(app, ['evaluate', {str(path)!r}]); "
            "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before; "
            "print(r.exit_code, grown // 1024, 'tensorflow' in sys.modules); print(r.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    code, grown_mib, tensorflow = out.stdout.split("\n")[0].split()
    assert code == "2" and "config.json declares 200.0 MiB" in out.stdout
    assert int(grown_mib) < 20, f"evaluate grew by {grown_mib} MiB"
    assert tensorflow == "False"  # refused before Keras was even imported


def test_the_archive_check_takes_uploads_and_passes_real_models(tmp_path):
    path = save_model(tmp_path / "model.keras")
    check_archive(path)
    upload = io.BytesIO(path.read_bytes())
    check_archive(upload, name="upload.keras")
    assert upload.tell() == 0  # ready to be read again
    with pytest.raises(CnnlabError, match=r"upload.keras: .*expand to .* more than half of this machine's 64.0 KiB"):
        check_archive(upload, name="upload.keras", available=64 * 1024)
    with pytest.raises(CnnlabError, match=r"upload.keras: is not a complete .keras file"):
        check_archive(io.BytesIO(b"not a zip"), name="upload.keras")
