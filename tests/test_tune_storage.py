"""`cnnlab tune` and `tune --show` on a damaged study database: one line naming the file and what to
do, exit 2, no traceback, and the file left as it was (Optuna would create the tables it misses)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import yaml
from test_tune import tiny_study

from cnnlab.cli import app

from conftest import DATA_DIR, needs_data

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
as_user = pytest.mark.skipif(ROOT, reason="root reads and writes any file whatever its mode")


def make_study(database: Path) -> None:
    """A stored study named tiny with one complete trial, made by Optuna itself (nothing trained)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    database.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{database}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"model.layers[1].units": 16},
        distributions={"model.layers[1].units": optuna.distributions.IntDistribution(8, 32, step=8)}, value=0.5))


def _sql(*statements: str):
    def damage(database: Path) -> None:
        with sqlite3.connect(database) as db:
            for statement in statements:
                db.execute(statement)
    return damage


def _cut(keep):
    def damage(database: Path) -> None:
        data = database.read_bytes()
        database.write_bytes(data[:keep(len(data))])
    return damage


def _replace_with(content: bytes):
    return lambda database: database.write_bytes(content)


def _folder(database: Path) -> None:
    database.unlink()
    database.mkdir()
    (database / "notes.txt").write_text("mine")


def _chmod(mode: int):
    return lambda database: database.chmod(mode)


def _other_database(database: Path) -> None:
    database.unlink()
    with sqlite3.connect(database) as db:
        db.execute("create table photos (name text, label text)")


DAMAGED = "damaged or not an Optuna study"
ASIDE = "move it aside"
# (id, damage, text the line holds); each is tried with `tune` and with `tune --show`
FILES = [
    pytest.param(_replace_with(bytes(range(256)) * 16), [DAMAGED, "file is not a database", ASIDE], id="garbage bytes"),
    pytest.param(_replace_with(b"trial,value\n0,0.5\n"), [DAMAGED, "file is not a database", ASIDE], id="a text file"),
    pytest.param(_cut(lambda n: n // 3), [DAMAGED, ASIDE], id="truncated to a third"),
    pytest.param(_cut(lambda n: 100), [DAMAGED, ASIDE], id="only the header page's first bytes"),
    pytest.param(_sql("drop table trials"), [DAMAGED, "'trials' is missing", ASIDE], id="trials table dropped"),
    pytest.param(_sql("drop table studies"), [DAMAGED, "'studies' is missing", ASIDE], id="studies table dropped"),
    pytest.param(_sql("drop table trial_values"), [DAMAGED, "'trial_values' is missing"], id="trial values table dropped"),
    pytest.param(_sql("alter table trials drop column datetime_start"),
                 [DAMAGED, "'trials' has no column 'datetime_start'"], id="a column dropped"),
    pytest.param(_other_database, [DAMAGED, "is missing", ASIDE], id="another program's database"),
    pytest.param(_sql("update alembic_version set version_num = 'v9.9.9'"),
                 ["another Optuna version", "pip install -U optuna", ASIDE], id="an unknown schema version"),
    pytest.param(_sql("update alembic_version set version_num = 'v3.0.0.d'"),
                 ["another Optuna version", "optuna storage upgrade --storage sqlite:///"], id="an older schema version"),
    pytest.param(_folder, ["is a folder, not a study database", ASIDE], id="a folder in its place"),
    pytest.param(_chmod(0o000), ["cannot be read", "chmod u+r"], marks=as_user, id="unreadable"),
]


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def _snapshot(path: Path):
    if path.is_dir():
        return sorted(p.name for p in path.iterdir())
    return path.read_bytes() if os.access(path, os.R_OK) else path.stat().st_size


def _damaged_study(tmp_path: Path, damage) -> Path:
    database = tmp_path / "runs" / "tiny" / "study.db"
    make_study(database)
    damage(database)
    return database


@pytest.mark.parametrize("damage, expected", FILES)
def test_show_of_a_damaged_database_is_one_line_naming_it(runner, tmp_path, damage, expected):
    database = _damaged_study(tmp_path, damage)
    before = _snapshot(database)
    result = runner.invoke(app, ["tune", "--show", str(database.parent)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    line = _one_error_line(result.output)
    assert line.startswith(f"error: {database}: "), line
    for text in expected:
        assert text in line, line
    assert _snapshot(database) == before  # read, never repaired into a study of no trials


@needs_data
@pytest.mark.parametrize("damage, expected", FILES)
def test_tune_on_a_damaged_database_is_one_line_naming_it(runner, tmp_path, monkeypatch, damage, expected):
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    database = _damaged_study(tmp_path, damage)
    before = _snapshot(database)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_study(trials=2), sort_keys=False))
    result = runner.invoke(app, ["tune", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert line.startswith(f"error: {database}: "), line
    for text in expected:
        assert text in line, line
    assert _snapshot(database) == before
    assert not list(database.parent.glob("trial-*"))  # nothing trained


WRITES = [
    pytest.param(None, ["attempt to write a readonly database", "writable"],
                 id="opened read-only (--storage ...?mode=ro)"),
    pytest.param(_chmod(0o444), ["readonly database", "chmod u+w"], marks=as_user, id="a read-only file"),
]


@needs_data
@pytest.mark.parametrize("damage, expected", WRITES)
def test_tune_on_a_database_it_cannot_write_is_one_line(runner, tmp_path, monkeypatch, damage, expected):
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    database = tmp_path / "runs" / "tiny" / "study.db"
    make_study(database)
    args = []
    if damage is None:
        args = ["--storage", f"sqlite:///file:{database}?mode=ro&uri=true"]
    else:
        damage(database)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_study(trials=2), sort_keys=False))
    result = runner.invoke(app, ["tune", str(config), "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert str(database) in line, line
    for text in expected:
        assert text in line, line



@pytest.mark.parametrize("given, tried", [
    pytest.param("runs/nope", "runs/nope/study.db", id="a folder under runs/"),
    pytest.param("nope", "runs/nope/study.db", id="a bare name"),
    pytest.param("elsewhere/studies/nope", "elsewhere/studies/nope/study.db", id="a folder elsewhere"),
    pytest.param("./nope", "nope/study.db", id="a folder here"),
])
def test_show_of_a_missing_study_names_the_file_it_looked_for(runner, tmp_path, monkeypatch, given, tried):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["tune", "--show", given])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert f"no study there ({tried} does not exist)" in line, line
    assert "runs/runs" not in line
