"""`cnnlab data`: every kind of finding on a small synthetic folder, and none on a clean one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cnnlab.cli import app
from cnnlab.data.audit import NEAR_BITS, audit_data

from conftest import REPO, needs_data

CLASSES = ("ant", "bee", "wasp")


def _picture(seed: int, size: int = 48) -> Image.Image:
    """A distinct RGB picture: 8x8 random colour blocks, so every copy's perceptual hash is its own."""
    blocks = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.Resampling.NEAREST)


def clean_folder(root: Path, train: int = 10, test: int = 3) -> Path:
    """train/<class>/ and test/<class>/ of distinct 48x48 RGB PNGs: nothing to report."""
    seed = 0
    for part, count in (("train", train), ("test", test)):
        for name in CLASSES:
            (root / part / name).mkdir(parents=True)
            for i in range(count):
                seed += 1
                _picture(seed).save(root / part / name / f"{i:02d}.png")
    return root


def _copy(root: Path, source: str, target: str) -> str:
    shutil.copy(root / source, root / target)
    return target


def _resized(root: Path, source: str, target: str) -> str:
    with Image.open(root / source) as image:
        image.resize((96, 96), Image.Resampling.BICUBIC).save(root / target)
    return target


def _write(root: Path, target: str, data: bytes) -> str:
    (root / target).write_bytes(data)
    return target


def _gif(root: Path, target: str) -> str:
    _picture(999).convert("P").save(root / target)
    return target


def _image(root: Path, target: str, size: tuple[int, int]) -> str:
    _picture(1000, 48).resize(size).save(root / target)
    return target


def _empty_test_class(root: Path) -> str:
    for file in (root / "test" / "wasp").iterdir():
        file.unlink()
    return "test/wasp"


def _uneven(root: Path) -> str:
    for i in range(30):  # ant: 40 training images, bee and wasp 10
        _picture(5000 + i).save(root / "train" / "ant" / f"extra{i:02d}.png")
    return ""


# (kind, blocking, what to do to the clean folder -> the file the finding must name)
FINDINGS = [
    ("empty_class", True, lambda root: (root / "train" / "hornet").mkdir() or "train/hornet"),
    ("empty_class", False, _empty_test_class),
    ("unreadable", True, lambda root: _write(root, "train/ant/zero.png", b"")),
    ("unreadable", True, lambda root: _write(root, "train/bee/notes.jpg", b"not an image, a text file")),
    ("imbalance", False, _uneven),
    ("odd_format", False, lambda root: _gif(root, "train/ant/placeholder.gif")),
    ("odd_size", False, lambda root: _image(root, "train/bee/thin.png", (200, 40))),
    ("odd_size", False, lambda root: _image(root, "train/bee/tiny.png", (12, 12))),
    ("duplicate", False, lambda root: _copy(root, "train/ant/00.png", "train/ant/again.png")),
    ("label_conflict", True, lambda root: _copy(root, "train/ant/00.png", "train/bee/00_too.png")),
    ("leakage", True, lambda root: _copy(root, "train/ant/01.png", "test/ant/copy.png")),
    ("near_duplicate", False, lambda root: _resized(root, "train/wasp/03.png", "train/wasp/03_large.png")),
    ("near_leakage", False, lambda root: _resized(root, "train/wasp/04.png", "test/wasp/04_large.png")),
]


def test_a_clean_folder_reports_no_findings(tmp_path, runner):
    folder = clean_folder(tmp_path / "photos")
    result = audit_data(folder)
    assert result.findings == [] and result.usable
    assert result.counts == {"train": dict.fromkeys(CLASSES, 10), "test": dict.fromkeys(CLASSES, 3)}
    assert result.formats == [("PNG RGB", 39)] and result.sizes == [("48x48", 39)]
    cli = runner.invoke(app, ["data", str(folder)])
    assert cli.exit_code == 0, cli.output
    assert "no problems found" in cli.stdout and f"at most {NEAR_BITS} of 64 bits" in cli.stdout


@pytest.mark.parametrize("kind, blocking, change", FINDINGS,
                         ids=[f"{kind}-{i}" for i, (kind, _, _) in enumerate(FINDINGS)])
def test_each_problem_is_one_finding_that_names_its_file(tmp_path, runner, kind, blocking, change):
    folder = clean_folder(tmp_path / "photos")
    named = change(folder)
    result = audit_data(folder)
    assert [(finding.kind, finding.blocking) for finding in result.findings] == [(kind, blocking)], result.report()
    (finding,) = result.findings
    assert named in finding.message and (not named or named in finding.files)
    cli = runner.invoke(app, ["data", str(folder)])
    errors = [line for line in cli.stderr.splitlines() if line.startswith("error: ")]
    if blocking:  # one line per blocking problem, exit code 2, no traceback
        assert cli.exit_code == 2 and errors == [f"error: {finding.message}"]
    else:
        assert cli.exit_code == 0 and errors == [] and f"warning: {finding.message}" in cli.stdout


def test_skip_bad_images_makes_an_unreadable_file_a_warning(tmp_path, write_config):
    folder = clean_folder(tmp_path / "photos")
    (folder / "train" / "ant" / "zero.png").write_bytes(b"")
    config = write_config({"name": "x", "data": {"dataset": "folder", "path": str(folder), "skip_bad_images": True},
                           "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 3}]}})
    (finding,) = audit_data(config).findings
    assert finding.kind == "unreadable" and not finding.blocking and "left out" in finding.message


def test_the_test_split_train_takes_is_the_one_checked(tmp_path):
    """A folder without test/ is split as train splits it; copies that land on both sides leak."""
    folder = clean_folder(tmp_path / "photos")
    flat = tmp_path / "flat"
    for name in CLASSES:
        shutil.copytree(folder / "train" / name, flat / name)
    for i in range(6):
        shutil.copy(flat / "ant" / "00.png", flat / "ant" / f"copy{i}.png")
    result = audit_data(flat)
    (finding,) = result.findings
    assert finding.kind == "leakage" and set(finding.files) == {"ant/00.png", *(f"ant/copy{i}.png" for i in range(6))}
    assert sum(result.counts["test"].values()) == 8  # data.test_split's 0.2 of 36, rounded up as scikit-learn does


def test_a_run_directory_is_checked_against_its_recorded_test_images(tmp_path):
    """The run's data.json names its test images; the figures go into the run directory."""
    folder = clean_folder(tmp_path / "photos")
    flat = tmp_path / "flat"
    for name in CLASSES:
        shutil.copytree(folder / "train" / name, flat / name)
    shutil.copy(flat / "bee" / "05.png", flat / "bee" / "05_again.png")
    run = tmp_path / "runs" / "x-20260101-000000"
    run.mkdir(parents=True)
    config = {"name": "x", "data": {"dataset": "folder", "path": str(flat)},
              "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 3}]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "run.json").write_text(json.dumps({"name": "x", "status": "completed"}))
    tested = ["ant/00.png", "bee/05_again.png", "wasp/00.png"]
    (run / "data.json").write_text(json.dumps({"test_files": tested}))
    result = audit_data(run)
    assert result.counts["test"] == dict.fromkeys(CLASSES, 1)
    (finding,) = result.findings
    assert finding.kind == "leakage" and set(finding.files) == {"bee/05.png", "bee/05_again.png"}
    assert (run / "data_audit" / "audit.json").is_file() and (run / "data_audit" / "contact_bee.png").is_file()


def test_figures_and_json(tmp_path, runner):
    folder = clean_folder(tmp_path / "photos")
    (folder / "train" / "ant" / "zero.png").write_bytes(b"")
    out = tmp_path / "audit"
    cli = runner.invoke(app, ["data", str(folder), "-o", str(out), "--json"])
    assert cli.exit_code == 2
    document = json.loads(cli.stdout)
    assert document["usable"] is False and document["counts"]["train"]["ant"] == 10
    assert [f["kind"] for f in document["findings"]] == ["unreadable"]
    assert json.loads((out / "audit.json").read_text())["findings"] == document["findings"]
    assert sorted(p.name for p in out.iterdir()) == [
        "audit.json", "class_counts.png", "contact_ant.png", "contact_bee.png", "contact_wasp.png"]
    with Image.open(out / "contact_ant.png") as sheet:  # 14 tiles (the unreadable one too): 2 rows of 12
        assert sheet.size == (12 * 80, 22 + 2 * 80)
        assert sheet.getpixel((2, 24)) == (255, 0, 0)  # the unreadable file comes first, framed in red
    with Image.open(out / "class_counts.png") as chart:
        assert chart.format == "PNG" and chart.width > 200


@needs_data
def test_near_copies_are_not_guessed_where_every_image_hashes_alike(tmp_path):
    """Small digits: every 1 hashes like every other 1, so the report says near-copies were not checked."""
    from test_own_data import write_digit_folder

    result = audit_data(write_digit_folder(tmp_path / "digits", per_class=12))
    assert result.findings == [] and result.near_bits is None and "hash alike" in result.near_skipped
    assert "near-duplicates: not checked" in result.report()


def test_train_warns_about_leakage_and_uneven_classes_and_records_them(tmp_path, runner, write_config):
    folder = clean_folder(tmp_path / "photos")
    _uneven(folder)
    _copy(folder, "train/bee/01.png", "test/bee/copy.png")
    config = write_config({"name": "w", "data": {"dataset": "folder", "path": str(folder)},
                           "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 3,
                                                                      "activation": "softmax"}]},
                           "train": {"epochs": 1}})
    cli = runner.invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    assert cli.exit_code == 0, cli.output
    warnings = [line for line in cli.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and "uneven classes: 'ant' has 40" in warnings[0]
    assert "train/bee/01.png, test/bee/copy.png" in warnings[1] and "training and the test part" in warnings[1]
    (run,) = (tmp_path / "runs").iterdir()
    record = json.loads((run / "data.json").read_text())
    assert record["warnings"] == [line.removeprefix("warning: ") for line in warnings]
    assert record["class_counts"]["test"] == [3, 4, 3]
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"balanced accuracy {metrics['test_balanced_accuracy']:.4f}" in cli.stdout  # the classes are uneven
    scored = runner.invoke(app, ["evaluate", str(run)])
    assert scored.exit_code == 0 and f"balanced  {metrics['test_balanced_accuracy']:.4f}" in scored.stdout


@needs_data
def test_a_built_in_set_is_checked_for_counts_and_exact_copies(tmp_path, write_config):
    config = write_config({"name": "m", "data": {"dataset": "mnist", "train_samples": 2000, "test_samples": 500},
                           "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]}})
    result = audit_data(config)
    assert sum(result.counts["train"].values()) == 60_000 and sum(result.counts["test"].values()) == 10_000
    assert result.near_bits is None and all(f.kind == "duplicate" for f in result.findings)


def test_cnnlab_data_never_imports_tensorflow(tmp_path):
    folder = clean_folder(tmp_path / "photos")
    code = ("import sys; from pathlib import Path; from cnnlab.data.audit import audit_data; "
            f"audit_data(Path({str(folder)!r}), out=Path({str(tmp_path / 'out')!r})); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("preprocess, warned", [("mnist", "as MNIST did"), ("fashion", "as Fashion-MNIST did"),
                                                ("auto", None), ("none", None)])
def test_train_warns_when_predict_would_prepare_pictures_as_training_never_did(tmp_path, preprocess, warned):
    from cnnlab.config import load_config
    from cnnlab.data import describe, load
    from cnnlab.data.audit import training_findings

    folder = clean_folder(tmp_path / "photos")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "name": "p", "data": {"dataset": "folder", "path": str(folder), "predict_preprocess": preprocess},
        "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 3, "activation": "softmax"}]}}))
    cfg = load_config(tmp_path / "c.yaml")
    lines = [f.message for f in training_findings(load(cfg.data, describe(cfg.data))) if f.kind == "preprocess"]
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and warned in lines[0] and "only resized" in lines[0] and "use auto" in lines[0]
