"""Where an Optuna study lives: its folder's files, and a storage URL opened with clear errors,
printed without its password.

`cnnlab tune --storage URL` takes any SQLAlchemy URL (SQLite by default, PostgreSQL or MySQL
for studies that several machines share) or `journal:PATH`.

Example:
    storage = open_storage(default_storage(Path("runs/tune_cnn/study.db")))
    shown("postgresql+psycopg2://me:secret@db/optuna")   # 'postgresql+psycopg2://me:***@db/optuna'
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

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

    database = sqlite_file(url)
    if database is not None:
        check_study_file(database, url)
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
        if database is not None:
            raise storage_error(url, exc) from None
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


# --- a damaged study database ---------------------------------------------------------

MOVE_ASIDE = ("move it aside to start the study again (the trials' run directories stay) "
              "or put back a copy of it")


def sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///PATH` URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    try:
        from sqlalchemy.engine import make_url

        database = make_url(url).database
    except Exception:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def check_study_file(database: Path, url: str) -> None:
    """A study's SQLite file, read before Optuna opens it: Optuna creates the tables a file lacks,
    so a file with its trials table dropped would open as a study of no trials (and be written to).
    A new (absent or empty) file passes; a folder, unreadable bytes, a failed integrity check, or an
    Optuna schema with tables or columns missing is a CnnlabError naming the file."""
    if database.is_dir():
        raise CnnlabError(f"{database}: is a folder, not a study database; move it aside (or give "
                          "another --study name) and run again.")
    if not database.exists() or database.stat().st_size == 0:
        return
    if not os.access(database, os.R_OK):
        raise CnnlabError(f"{database}: the study database cannot be read (permission denied); "
                          f"make it readable (chmod u+r {database}) and run again.")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{quote(str(database.absolute()))}?mode=ro", uri=True)) as db:
            check = db.execute("pragma quick_check").fetchone()[0]
            tables = {name: {row[1] for row in db.execute(f'pragma table_info("{name}")')}
                      for (name,) in db.execute("select name from sqlite_master where type = 'table'").fetchall()}
            version = (db.execute("select version_num from alembic_version").fetchone() or [None])[0] \
                if "alembic_version" in tables else None
    except sqlite3.Error as exc:
        raise _damaged(database, str(exc)) from None
    if check != "ok":
        raise _damaged(database, f"integrity check: {check.splitlines()[0]}")
    if not tables or (version is not None and version != _schema_head()):
        return  # a new file; another Optuna's schema: Optuna's own check says which (storage_error)
    for table, columns in _optuna_tables().items():
        if table not in tables:
            raise _damaged(database, f"its table {table!r} is missing")
        missing = sorted(columns - tables[table])
        if missing:
            raise _damaged(database, f"its table {table!r} has no column {missing[0]!r}")


def _damaged(database: Path, detail: str) -> CnnlabError:
    return CnnlabError(f"{database}: the study database is damaged or not an Optuna study ({detail}); {MOVE_ASIDE}.")


def _optuna_tables() -> dict[str, set[str]]:
    from optuna.storages._rdb import models

    return {table.name: {column.name for column in table.columns} for table in models.BaseModel.metadata.sorted_tables}


def _schema_head() -> str | None:
    """The newest schema revision this Optuna knows (its alembic folder's head)."""
    try:
        from alembic.script import ScriptDirectory
        from optuna.storages import _rdb

        return ScriptDirectory(str(Path(_rdb.__file__).parent / "alembic")).get_current_head()
    except Exception:  # another layout of Optuna's files: leave the schema to Optuna's own check
        return None


def storage_error(url: str, exc: BaseException) -> CnnlabError:
    """The one line for an error of Optuna's storage or SQLAlchemy beneath it: the database
    (the file for SQLite, the URL without its password otherwise), what went wrong, what to do."""
    import optuna

    database = sqlite_file(url)
    where = str(database) if database is not None else f"--storage {shown(url)}"
    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
    detail = (str(getattr(cause, "orig", None) or cause).strip().splitlines() or [type(cause).__name__])[0]
    if "password" in detail.lower() or "@" in detail:
        detail = type(cause).__name__
    lowered = detail.lower()
    if "compatible with the table schema" in lowered:
        if "storage upgrade" in lowered:
            todo = (f"its schema is older than this Optuna's ({optuna.__version__}): upgrade it with "
                    f"`optuna storage upgrade --storage {shown(url)}` (keep a copy first)")
        else:
            todo = (f"its schema is unknown to this Optuna ({optuna.__version__}): use the Optuna that made "
                    f"it (pip install -U optuna), or {MOVE_ASIDE}")
        return CnnlabError(f"{where}: the study database was made by another Optuna version; {todo}.")
    if "readonly" in lowered or "read-only" in lowered:
        todo = ("make it and its folder writable" + (f" (chmod u+w {database})" if database else "")
                + ", or copy the study folder somewhere writable")
    elif "locked" in lowered:
        todo = "another process holds it locked; wait for it to finish, or stop it, and run again"
    elif database is not None:
        todo = MOVE_ASIDE
    else:
        todo = "check the database (its tables may be damaged or made by another program)"
    return CnnlabError(f"{where}: the study database failed ({detail}); {todo}.")


@contextlib.contextmanager
def storage_errors(url: str):
    """Turn the storage's errors raised inside the block into `storage_error`'s one line."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, sqlite3.Error) as exc:
        raise storage_error(url, exc) from None
