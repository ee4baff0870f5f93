"""Where a study lives: the Optuna storage (SQLite file or PostgreSQL) and the study lock.

* First use of an empty database: Optuna creates its tables when the storage is opened, which
  races when workers start together. The storage is opened under a lock on the whole database
  (the same kinds of lock as StudyLock, with a database-wide key), so they all join the study.
* SQLite: WAL journal, a 120 s busy timeout, and retries around our own writes (`retry`).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import ImgclfError
from .space import Space


class StorageError(ImgclfError):
    """A storage URL that cannot be used."""


def redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is reported by open_storage
        return url.split("@")[-1] if "@" in url else url


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def _set_wal(db: Path) -> None:
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db, timeout=120)) as con:
        con.execute("PRAGMA journal_mode=WAL")


def open_storage(url: str, space: Space):
    """An Optuna RDBStorage with heartbeat; StorageError (one line) when it cannot be used.

    The first use of an empty database creates Optuna's tables. Workers that start at the same
    moment would race there (PostgreSQL: "duplicate key value violates unique constraint"), so
    the storage is opened under a lock on the whole database (see StudyLock).
    Keep the returned object: heartbeats and trial attributes go through it (a study wraps it in
    Optuna's cache)."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    shown = redact(url)
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise StorageError(f"--storage {shown}: not a database URL (expected sqlite:///FILE or "
                           f"postgresql://USER:PASSWORD@HOST:PORT/DB)") from None
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    db = sqlite_path(url)
    if backend == "sqlite":
        if db is None or not str(db):
            raise StorageError(f"--storage {shown}: expected sqlite:///PATH/TO/FILE.db")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)  # the lock file goes next to the database
        except OSError as e:
            raise StorageError(f"--storage {shown}: cannot open the database file ({first_line(e)})") from None
        engine_kwargs["connect_args"] = {"timeout": 120}
    elif backend == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with StudyLock(url, None):
            if db is not None:
                try:
                    _set_wal(db)
                except Exception as e:  # noqa: BLE001
                    raise StorageError(f"--storage {shown}: cannot open the database file "
                                       f"({first_line(e)})") from None
            storage = _rdb_storage(url, engine_kwargs, space)
    except StorageError:
        raise
    except ImportError:  # SQLAlchemy 2.1's postgresql:// driver is psycopg 3
        hint = " (pip install 'psycopg[binary]')" if backend == "postgresql" else ""
        raise StorageError(f"--storage {shown}: the database driver for {parsed.drivername} is not "
                           f"installed{hint}") from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy/driver errors: one line, no traceback
        problem = "cannot open the database file" if db is not None and isinstance(e, OSError) else "cannot connect"
        raise StorageError(f"--storage {shown}: {problem} ({first_line(e)})") from None
    return storage


def _rdb_storage(url: str, engine_kwargs: dict, space: Space, attempts: int = 5):
    """optuna.storages.RDBStorage, which creates Optuna's tables when they are missing. It runs
    under the database lock; retrying a duplicate-table/duplicate-row error covers a database
    that another program (without the lock) is setting up at the same moment."""
    import optuna
    from sqlalchemy import exc as sa_exc

    for i in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=space.heartbeat_interval,
                                                  grace_period=space.heartbeat_grace)
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
            if i == attempts - 1:
                raise
            time.sleep(0.2 * 2 ** i * (0.5 + random.random()))


def first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


class StudyLock:
    """Serialises enqueue and claim across all workers of one study; with study_name=None, the
    opening of the storage (Optuna creating its tables in an empty database) across all workers.

    PostgreSQL: pg_advisory_lock on a dedicated connection (released if the worker dies).
    SQLite: fcntl.flock on <db>.lock (released by the OS if the worker dies).
    Other backends: no lock (Optuna's own row locking only).
    """

    def __init__(self, url: str, study_name: str | None):
        self.url, self.study_name = url, study_name
        self.kind = "none"
        self._engine = None
        self._conn = None
        self._file = None
        scope = "imgclf-tune open storage" if study_name is None else f"imgclf-tune:{study_name}"
        self._key = int.from_bytes(hashlib.sha256(scope.encode()).digest()[:8], "big", signed=True)
        db = sqlite_path(url)
        if db is not None:
            self.kind, self._path = "file", db.with_name(db.name + ".lock")
        elif url.startswith(("postgresql", "postgres")):
            self.kind = "postgres"

    def __enter__(self):
        if self.kind == "file":
            import fcntl

            self._file = open(self._path, "a+")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        elif self.kind == "postgres":
            import sqlalchemy as sa

            if self._engine is None:
                self._engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool,
                                                connect_args={"connect_timeout": 10})
            self._conn = self._engine.connect()
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            except BaseException:
                self._conn.close()
                self._conn = None
                raise
        return self

    def __exit__(self, *exc):
        if self.kind == "file" and self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        elif self.kind == "postgres" and self._conn is not None:
            import sqlalchemy as sa

            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        return False


def retry(fn, *args, attempts: int = 8, **kwargs):
    """Retry a storage call that hit SQLite's 'database is locked' (or a dropped connection)."""
    from sqlalchemy import exc as sa_exc

    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except sa_exc.OperationalError:
            if i == attempts - 1:
                raise
            time.sleep(min(30.0, 0.5 * 2 ** i) * (0.5 + random.random()))

