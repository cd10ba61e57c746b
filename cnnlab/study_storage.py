"""Where an Optuna study lives: its folder's files, and a storage URL opened with clear errors,
printed without its password.

`cnnlab tune --storage URL` takes any SQLAlchemy URL (SQLite by default, PostgreSQL or MySQL
for studies that several machines share) or `journal:PATH`.

Example:
    storage = open_storage(default_storage(Path("runs/tune_cnn/study.db")))
    shown("postgresql+psycopg2://me:secret@db/optuna")   # 'postgresql+psycopg2://me:***@db/optuna'
"""

from __future__ import annotations

import time
from pathlib import Path

from cnnlab.errors import CnnlabError

# a study folder, runs/<study>/ (see cnnlab.tune): what the report and other readers find there
STUDY_DB = "study.db"
TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best.yaml"
FIGURES = ("history.png", "intermediate.png", "importances.png", "slice.png", "parallel.png")
CONNECT_TIMEOUT = 5  # seconds: an unreachable database server is an error, not a hang


def shown(url: str) -> str:
    """A storage URL as it may be printed: without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def default_storage(database: Path) -> str:
    """The URL of a study's own SQLite file (`runs/<study>/study.db`)."""
    return f"sqlite:///{database}"


def open_storage(url: str):
    """An Optuna storage for `url` (any SQLAlchemy URL; `journal:PATH` for a journal file), connected."""
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        if url.startswith("sqlite"):
            engine = {"connect_args": {"timeout": 60}}  # several local workers wait for each other's writes
        elif url.startswith(("postgresql", "mysql")):
            engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}, "pool_pre_ping": True}
        else:
            engine = {}
        return _rdb_storage(url, engine)
    except Exception as exc:  # SQLAlchemy's many errors (no driver, bad URL, refused, timed out)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "password" in first.lower() or "@" in first:
            first = type(exc).__name__
        if isinstance(exc, ModuleNotFoundError) and "psycopg" in str(exc):
            first += "; install the driver: pip install 'cnnlab[postgres]'"
        raise CnnlabError(f"--storage {shown(url)}: cannot open the study database ({first}); check the URL, "
                          "that the server runs and takes connections from this machine.") from None


def _rdb_storage(url: str, engine: dict, attempts: int = 5):
    """Optuna's RDBStorage; several workers starting at once on a new database race to create its
    tables (one gets a duplicate-key error): the loser tries again, and then finds them made."""
    import random

    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random())
