"""The command line as a user meets it: help, messages, exit codes."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnlab.cli import app
from cnnlab.errors import CnnlabError

from conftest import REPO, needs_data, small_dnn


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["predict", "--help"], ["--version"]])
def test_help_does_not_import_tensorflow(args):
    code = ("import sys; from typer.testing import CliRunner; from cnnlab.cli import app; "
            f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_is_the_installed_package_version(runner):
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"cnnlab {version('cnnlab')}\n"


CNNLAB = Path(sys.executable).parent / "cnnlab"  # the console script, as a shell runs it


def test_shell_completion_completes_commands_and_options():
    # Typer names the shell by the nearest shell among the 10 processes above cnnlab: here a bash,
    # as for a user who types it, whatever started the suite (`; exit` stops bash replacing itself)
    result = subprocess.run(["bash", "-c", f"{shlex.quote(str(CNNLAB))} --show-completion; exit $?"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "_CNNLAB_COMPLETE=complete_bash" in result.stdout
    for words, cword, expected in (("cnnlab tr", "1", ["train"]), ("cnnlab compare --o", "2", ["--output"])):
        env = {**os.environ, "_CNNLAB_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
        completed = subprocess.run([CNNLAB], capture_output=True, text=True, env=env)
        assert completed.returncode == 0 and completed.stdout.split() == expected, completed


def test_help_lists_the_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "config", "summary", "--version", "--install-completion"):
        assert command in result.output


def test_user_error_is_one_line_and_exit_code_2(runner, write_config):
    data = small_dnn()
    data["model"]["layers"][1]["type"] = "dens"
    path = write_config(data)
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.layers[1].type" in lines[0] and "'dense'" in lines[0]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(runner, write_config):
    data = small_dnn()
    data["model"]["layers"][1]["type"] = "dens"
    result = runner.invoke(app, ["--debug", "train", str(write_config(data))])
    assert result.exit_code != 0 and isinstance(result.exception, CnnlabError)
    assert "model.layers[1].type" in str(result.exception)


def test_an_internal_bug_keeps_its_traceback(runner, write_config, monkeypatch):
    """Only user mistakes become one-line messages; a bug is not dressed up as one."""
    import cnnlab.config

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in cnnlab")

    monkeypatch.setattr(cnnlab.config, "load_config", broken)
    result = runner.invoke(app, ["config", str(write_config(small_dnn()))])
    assert isinstance(result.exception, ZeroDivisionError) and result.exit_code != 2


def test_config_prints_the_resolved_config_with_overrides(runner):
    result = runner.invoke(app, ["config", str(REPO / "configs" / "cnn.yaml"), "--set", "train.epochs=2"])
    assert result.exit_code == 0
    assert "epochs: 2" in result.output and "random_state: 777" in result.output


def test_summary_prints_the_layer_table(runner):
    result = runner.invoke(app, ["summary", str(REPO / "configs" / "dnn.yaml")])
    assert result.exit_code == 0, result.output
    assert "101,770" in result.output and "(None, 784)" in result.output


def test_gpu_on_a_machine_without_one_is_an_error(runner, write_config, monkeypatch):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: nothing to refuse")
    path = write_config(small_dnn(epochs=1))
    result = runner.invoke(app, ["train", str(path), "--device", "gpu", "--runs-dir", str(path.parent / "runs")])
    assert result.exit_code == 2 and "sees no GPU" in result.stderr
    assert not (path.parent / "runs").exists()  # no run folder left saying "running" forever


@needs_data
def test_train_command_end_to_end(runner, write_config, tmp_path):
    path = write_config(small_dnn(epochs=1))
    result = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), "--set", "seed=3",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    (run,) = (tmp_path / "runs").iterdir()
    # what was written, and what to do next
    assert f"written to {run}/: best.keras, model.tflite, report.html, accuracy.png, loss.png, metrics.json, history.csv" in result.stdout
    assert result.stdout.rstrip().endswith(f"next: cnnlab evaluate {run}\n      cnnlab predict {run} IMAGE...")
    # a sign of life while nothing else moves (stderr is not a terminal here: one line per step)
    for status in ("loading mnist ...", "starting TensorFlow ...", "scoring the best checkpoint on 2,000 test samples ...",
                   "exporting model.tflite for predict ..."):
        assert status in result.stderr.splitlines()
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] > 0.8
    assert json.loads((run / "environment.json").read_text())["device"].startswith("CPU")
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 3  # the --set value is what ran


def test_tensorflow_start_up_lines_are_hidden_unless_verbose(tmp_path):
    """TensorFlow prints absl's pre-init WARNING (and, on some CPUs, the oneDNN notice twice) while it loads;
    TF_CPP_MIN_LOG_LEVEL does not reach them."""
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "CNNLAB_VERBOSE")}
    command = [sys.executable, "-m", "cnnlab", "summary", str(REPO / "configs" / "dnn.yaml")]
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0 and "101,770" in quiet.stdout
    assert quiet.stderr == ""
    verbose = subprocess.run([*command[:3], "--verbose", *command[3:]], capture_output=True, text=True, env=env,
                             timeout=300)
    assert verbose.returncode == 0
    # (absl's line comes on every machine; the oneDNN notice only where TensorFlow turns oneDNN on by
    # default, CPUs with AVX-512 VNNI/BF16 or AMX: not on the AMD EPYC of 2026-12-02, so it is not asserted)
    assert "All log messages before absl::InitializeLog()" in verbose.stderr


def test_set_help_says_how_to_append_a_layer(runner):
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    text = " ".join(result.output.replace("│", " ").split())  # rich's box around the options
    assert "--set 'model.layers[8]={type: dropout, rate: 0.1}' on 8 layers" in text
