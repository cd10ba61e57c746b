"""Exports: the TensorFlow-free model copy, `cnnlab export` (SavedModel, TFLite, ONNX), and the one-cycle schedule."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest

from cnnlab import rundir
from cnnlab.compile import one_cycle_rate
from cnnlab.config import validate_config
from cnnlab.data import load_raw
from cnnlab.export import TOLERANCE, export_tflite
from cnnlab.litert import LiteModel
from cnnlab.train import train

from conftest import DATA_DIR, SHARED, needs_data, needs_shared, small_dnn


def _tiny_cnn():
    return keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax"),
    ])


def test_tflite_copy_matches_keras_within_tolerance(tmp_path):
    model = _tiny_cnn()
    sample = np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32)
    diff = export_tflite(model, tmp_path / "m.tflite", sample)
    assert diff <= TOLERANCE
    lite = LiteModel(tmp_path / "m.tflite")
    assert lite.input_shape == (None, 28, 28, 1) and lite.output_shape == (None, 10)
    other = np.random.default_rng(1).random((5, 28, 28, 1), dtype=np.float32)  # another batch size
    np.testing.assert_allclose(lite.predict(other), model.predict(other, verbose=0), atol=TOLERANCE)


def test_lite_model_loads_without_tensorflow(tmp_path):
    export_tflite(_tiny_cnn(), tmp_path / "m.tflite", np.zeros((2, 28, 28, 1), np.float32))
    code = ("import sys, numpy as np; from cnnlab.litert import LiteModel; "
            f"p = LiteModel({str(tmp_path / 'm.tflite')!r}).predict(np.zeros((1, 28, 28, 1))); "
            "print(p.shape, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1, 10) False False"
    assert "XNNPACK" not in out.stderr  # LiteRT's start-up chatter is not shown to users


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    if DATA_DIR is None:
        pytest.skip("real MNIST files not found")
    data = small_dnn(epochs=1)
    data["data"].update(dir=str(DATA_DIR), download=False)  # module scope: no per-test environment
    cfg = validate_config(data, "s")
    return train(cfg, "s", runs_dir=tmp_path_factory.mktemp("runs"), echo=lambda _: None).run_dir


@needs_data
def test_training_writes_a_checked_tflite_copy(small_run):
    metrics = json.loads((small_run / "metrics.json").read_text())
    assert metrics["tflite"] == "model.tflite" and metrics["tflite_max_abs_diff"] <= TOLERANCE
    raw = load_raw("mnist", str(DATA_DIR))
    x = (raw.x_test[-100:] / 255.0).astype("float32").reshape(-1, 28, 28, 1)
    best = keras.saving.load_model(small_run / "best.keras")
    np.testing.assert_allclose(LiteModel(small_run / "model.tflite").predict(x),
                               best.predict(x, verbose=0), atol=TOLERANCE)


@needs_data
@needs_shared
def test_predict_on_a_run_uses_the_tflite_copy_without_tensorflow(small_run):
    digits = sorted((SHARED / "digits").glob("*/*.png"))[:12]
    assert digits, "the shared digit images are missing"
    code = ("import sys, json; from typer.testing import CliRunner; from cnnlab.cli import app; "
            f"r = CliRunner().invoke(app, ['predict', {str(small_run)!r}, *{[str(d) for d in digits]!r}, '--json']); "
            "assert r.exit_code == 0, r.output; "
            "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'out': json.loads(r.stdout)}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["tf"] is False
    assert result["out"]["model"].endswith("model.tflite")
    # the same images through Keras give the same probabilities
    from cnnlab.checkpoint import load_checkpoint
    from cnnlab.predict import predict_files

    lite = {p["file"]: p for p in result["out"]["predictions"]}
    for slow in predict_files(load_checkpoint(small_run), digits, top_k=3):
        fast, slow = lite[str(slow.path)], slow.to_dict()
        assert fast["class"] == slow["class"]
        for a, b in zip(fast["top_k"], slow["top_k"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=TOLERANCE)


@needs_data
@needs_shared
def test_a_run_without_its_tflite_copy_predicts_through_keras(small_run, tmp_path, runner):
    import shutil

    from cnnlab.cli import app

    digits = [str(path) for path in sorted((SHARED / "digits").glob("*/*.png"))[:4]]
    fast = runner.invoke(app, ["predict", str(small_run), *digits, "--json"])
    bare = shutil.copytree(small_run, tmp_path / small_run.name)
    (bare / "model.tflite").unlink()  # e.g. a run from before the export, or a failed conversion
    slow = runner.invoke(app, ["predict", str(bare), *digits, "--json"])
    assert fast.exit_code == 0 and slow.exit_code == 0, slow.output
    fast, slow = json.loads(fast.stdout), json.loads(slow.stdout)
    assert fast["model"].endswith("model.tflite") and slow["model"] == str(bare / "best.keras")
    for a, b in zip(fast["predictions"], slow["predictions"]):
        assert a["class"] == b["class"]
        assert a["top_k"][0]["probability"] == pytest.approx(b["top_k"][0]["probability"], abs=TOLERANCE)


def test_one_cycle_warms_up_then_anneals():
    rates = [one_cycle_rate(step, 100, 0.01, 0.3) for step in range(100)]
    assert rates[0] == pytest.approx(0.01 / 25)
    assert max(rates) == pytest.approx(0.01) and int(np.argmax(rates)) == 30
    assert rates[-1] == pytest.approx(0.01 / 1e4)
    assert all(a <= b for a, b in zip(rates[:30], rates[1:31]))  # rises
    assert all(a >= b for a, b in zip(rates[30:], rates[31:]))  # then falls


@needs_data
def test_one_cycle_schedule_drives_the_optimizer(tmp_path):
    data = small_dnn(epochs=2, lr_schedule={"name": "one_cycle", "max_learning_rate": 0.005})
    result = train(validate_config(data, "s"), "s", runs_dir=tmp_path, echo=lambda _: None)
    history = json.loads((result.run_dir / "history.json").read_text())["epochs"]
    # the learning rate recorded at each epoch's end (the next step's) follows the schedule, not the optimizer's 0.001
    steps = -(-8000 // 32)
    expected = [one_cycle_rate(steps * (e + 1), steps * 2, 0.005, 0.3) for e in range(2)]
    assert [row["learning_rate"] for row in history] == pytest.approx(expected, rel=1e-5)
    assert result.metrics["test_accuracy"] > 0.85


# --- cnnlab export ------------------------------------------------------------------------

def _test_images(run, count=200):
    raw = load_raw("mnist", str(DATA_DIR), test_only=True)
    return (raw.x_test[:count] / 255.0).astype("float32").reshape(-1, 28, 28, 1)


def _outputs_in_runtime(path, format, x):
    """The exported model's outputs, loaded as its users load it (not through cnnlab)."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    if format == "saved_model":
        import tensorflow as tf

        restored = tf.saved_model.load(str(path))
        return restored.signatures["serving_default"](tf.constant(x))["output_0"].numpy()
    return LiteModel(path).predict(x)


@needs_data
@pytest.mark.parametrize("format", ["onnx", "saved_model", "tflite"])
def test_export_writes_a_model_that_matches_keras_in_its_own_runtime(served_run, tmp_path, runner, format):
    from cnnlab.cli import app

    output = tmp_path / {"onnx": "cnn.onnx", "saved_model": "cnn_saved", "tflite": "cnn.tflite"}[format]
    result = runner.invoke(app, ["export", str(served_run), "--format", format, "-o", str(output)])
    assert result.exit_code == 0, result.output
    said_input = "" if format == "saved_model" else r"; input '[^']+' float32 \[batch, 28, 28, 1\]"
    assert re.fullmatch(rf"wrote {re.escape(str(output))} \({format}{said_input}\); on 256 test images its outputs differ from "
                        r"Keras' by at most \S+ \(tolerance 0.0001\)\n", result.stdout)
    assert output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    assert not (served_run / "export").exists()  # written elsewhere (-o): the run directory is left as it was
    x = _test_images(served_run)
    expected = keras.saving.load_model(served_run / "best.keras").predict(x, verbose=0)
    np.testing.assert_allclose(_outputs_in_runtime(output, format, x), expected, atol=TOLERANCE)


@needs_data
def test_export_defaults_into_the_run_and_refuses_to_overwrite(small_run, tmp_path, runner):
    import shutil

    from cnnlab.cli import app

    run = shutil.copytree(small_run, tmp_path / small_run.name)
    first = runner.invoke(app, ["export", str(run), "--format", "onnx"])
    assert first.exit_code == 0, first.output
    written = run / "export" / "model.onnx"
    assert str(written) in first.stdout and written.is_file()
    before = written.stat().st_mtime_ns
    again = runner.invoke(app, ["export", str(run), "--format", "onnx"])
    assert again.exit_code == 2 and again.stderr.count("\n") == 1
    assert f"{written} (the default export path): already exists; pass --force" in again.stderr
    assert written.stat().st_mtime_ns == before
    forced = runner.invoke(app, ["export", str(run), "--format", "onnx", "--force"])
    assert forced.exit_code == 0 and written.stat().st_mtime_ns != before
    x = _test_images(run)
    np.testing.assert_allclose(_outputs_in_runtime(written, "onnx", x),
                               keras.saving.load_model(run / "best.keras").predict(x, verbose=0), atol=TOLERANCE)
    # the run's own model.tflite (what predict and serve use) is not touched by exports
    assert (run / "model.tflite").read_bytes() == (small_run / "model.tflite").read_bytes()
    # the run records it with its measured difference, and its report lists it
    record = json.loads((run / "export" / "exports.json").read_text())["onnx"]
    assert record["path"] == str(written) and record["samples"] == 256 and 0 <= record["max_abs_diff"] <= TOLERANCE
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    assert f"<td>{written}</td><td>onnx</td>" in (run / "report.html").read_text()


@needs_data
def test_export_mistakes_are_one_line(small_run, tmp_path, runner):
    from cnnlab.cli import app

    unknown = subprocess.run([sys.executable, "-m", "cnnlab", "export", str(small_run), "--format", "torchscript"],
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "'torchscript' is not one of 'saved_model', 'tflite', 'onnx'" in unknown.stderr
    bare = runner.invoke(app, ["export", str(small_run / "best.keras"), "--format", "onnx"])
    assert bare.exit_code == 2 and "give -o PATH" in bare.stderr and bare.stderr.count("\n") == 1
    missing = runner.invoke(app, ["export", str(tmp_path / "nope"), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert missing.exit_code == 2 and "no such run directory" in missing.stderr
    assert not (tmp_path / "m.onnx").exists()


# --- what --force may replace (issue 27: `-o DIR --force` deleted a user's folder) ----------------

def _users_folder(tmp_path):
    folder = tmp_path / "my_photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not really a jpeg, but mine")
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("keep me")
    return folder


def _snapshot(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


@needs_data
@pytest.mark.parametrize("format", ["tflite", "onnx", "saved_model"])
def test_force_never_deletes_a_users_folder(small_run, tmp_path, runner, format):
    from cnnlab.cli import app

    folder = _users_folder(tmp_path)
    before = _snapshot(folder)
    result = runner.invoke(app, ["export", str(small_run), "--format", format, "-o", str(folder), "--force"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert f"-o {folder}: is a folder" in result.stderr
    assert _snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_photos"]  # no temporary left either


@needs_data
def test_force_never_replaces_a_special_or_foreign_file(small_run, tmp_path, runner):
    """A pipe (a special file, as the device /dev/null is: replaced as root, the machine broke), a link, a user's file.

    /dev/null itself is not tried: on a regression the test would break the machine running it."""
    from cnnlab.cli import app

    pipe = tmp_path / "pipe.tflite"
    os.mkfifo(pipe)
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes, not a model")
    link = tmp_path / "link.tflite"
    link.symlink_to(notes)
    cases = [(pipe, "tflite", "is a named pipe, not a file"), (notes, "onnx", "not a onnx model cnnlab exported"),
             (link, "tflite", "is a symbolic link")]
    for path, format, words in cases:
        result = runner.invoke(app, ["export", str(small_run), "--format", format, "-o", str(path), "--force"])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert f"-o {path}: {words}" in result.stderr.replace(": is a file that is", ":")
    assert stat.S_ISFIFO(pipe.lstat().st_mode) and link.is_symlink()
    assert notes.read_text() == "my notes, not a model"


@needs_data
@pytest.mark.parametrize("format", ["tflite", "saved_model"])
def test_force_replaces_an_earlier_export(small_run, tmp_path, runner, format):
    from cnnlab.cli import app

    output = tmp_path / ("m.tflite" if format == "tflite" else "saved")
    first = runner.invoke(app, ["export", str(small_run), "--format", format, "-o", str(output)])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["export", str(small_run), "--format", format, "-o", str(output), "--force"])
    assert again.exit_code == 0, again.output
    if format == "saved_model":
        meta = json.loads((output / "assets.extra" / "cnnlab.json").read_text())
        assert json.loads(meta["class_names"]) == [str(d) for d in range(10)]
        (output / "my_notes.txt").write_text("mine now")  # a folder holding a user's file is theirs
        mine = runner.invoke(app, ["export", str(small_run), "--format", format, "-o", str(output), "--force"])
        assert mine.exit_code == 2 and "holds my_notes.txt" in mine.stderr
        assert (output / "my_notes.txt").read_text() == "mine now"
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]


@needs_data
def test_onnx_export_carries_what_a_program_needs_to_feed_it(small_run, tmp_path, runner):
    import onnxruntime

    from cnnlab.cli import app

    output = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(small_run), "--format", "onnx", "-o", str(output)])
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == [str(d) for d in range(10)]
    assert meta["input_scale"] == "255" and meta["preprocess"] == "mnist" and json.loads(meta["image_size"]) == [28, 28]
    assert "divide pixels by 255" in meta["preprocessing"]
    name = session.get_inputs()[0].name
    assert f"(onnx; input {name!r} float32 [batch, 28, 28, 1])" in result.stdout


@needs_data
def test_export_without_o_names_the_default_path_not_an_option(small_run, tmp_path, runner):
    import shutil

    from cnnlab.cli import app

    run = shutil.copytree(small_run, tmp_path / small_run.name)
    (run / "export").mkdir(exist_ok=True)  # exports with -o elsewhere record themselves there
    (run / "export" / "model.tflite").write_text("a user's file")
    result = runner.invoke(app, ["export", str(run), "--format", "tflite"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {run / 'export' / 'model.tflite'} (the default export path): ")
    assert "-o " not in result.stderr.split(";")[0]


def _predict_in_a_fresh_process(run, images) -> dict:
    code = ("import sys, json; from typer.testing import CliRunner; from cnnlab.cli import app; "
            f"r = CliRunner().invoke(app, ['predict', {str(run)!r}, *{[str(i) for i in images]!r}, '--json']); "
            "assert r.exit_code == 0, r.output; "
            "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'model': json.loads(r.stdout)['model']}))")
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@needs_data
@needs_shared
def test_a_copied_run_keeps_its_fast_path(small_run, tmp_path):
    """Issue 27: `cp -r` keeps no file times, and model.tflite then looked older than best.keras."""
    import shutil

    digits = sorted((SHARED / "digits").glob("*/*.png"))[:3]
    copy = shutil.copytree(small_run, tmp_path / "copied", copy_function=shutil.copy)  # cp -r: new times
    later = (copy / "model.tflite").stat().st_mtime + 3600
    os.utime(copy / "best.keras", (later, later))  # the checkpoint copied last, or touched
    assert _predict_in_a_fresh_process(copy, digits) == {"tf": False, "model": str(copy / "model.tflite")}
    assert json.loads((copy / "metrics.json").read_text())["tflite_from_sha256"] == rundir.sha256(copy / "best.keras")
    # a checkpoint that is not the one converted (here the same weights saved again) is predicted with Keras
    keras.saving.load_model(copy / "best.keras").save(copy / "best.keras")
    assert _predict_in_a_fresh_process(copy, digits) == {"tf": True, "model": str(copy / "best.keras")}
