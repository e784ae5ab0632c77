"""The database itself: its URL, engine, schema and health, under the studies and trials that ``db.store``
keeps in it (as optuna's ``RDBStorage`` sits on its engine and Alembic migrations).

SQLite by default (``<data dir>/gptailor.db``, WAL journal and a busy timeout so a UI can read while
two workers write); any SQLAlchemy URL works through ``GPTAILOR_DB_URL``. The schema is managed by
Alembic (``db/migrations``): opening a database upgrades it to this release's head revision, under a
lock so that several processes opening a fresh file at once create it once. Every database fault
reaches callers as one ``StoreError`` line saying what to do.
"""
from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from .models import SchemaVersion
from .settings import db_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SCHEMA_REVISION = "0006"  # this release's Alembic head (tests check it against db/migrations/versions)
# what the pre-Alembic code's schema_version numbers correspond to
LEGACY_REVISIONS = {1: "0001", 2: "0002"}


class StoreError(RuntimeError):
    """The database cannot be used; the message says which file and what to do."""



def _absolute(url: str) -> str:
    """A relative SQLite path made absolute, so a worker started elsewhere opens the same file."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(url[len("sqlite:///"):]).expanduser().resolve())
    return url


def _hide_password(url: str) -> str:
    """The URL as it may be shown: a password, if any, replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: mask whatever looks like user:password@
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


_DRIVERS = {"psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient (or use mysql+pymysql:// with pymysql)",
            "pymysql": "pymysql", "pg8000": "pg8000", "psycopg": "psycopg[binary]", "asyncpg": "asyncpg",
            "oracledb": "oracledb", "pyodbc": "pyodbc"}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")  # first: the journal switch below may wait for a lock
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()



class Database:
    """An opened, migrated database: ``engine``, ``session()``, ``check_intact()``, ``explain(error)``."""

    def __init__(self, url: str | None = None) -> None:
        self.url = _absolute(url or db_url())
        self.shown_url = _hide_password(self.url)
        self.path = self._sqlite_path()
        self.engine = self._engine()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._migrate()

    # -- opening ----------------------------------------------------------------------
    def _sqlite_path(self) -> Path | None:
        """The database file for a SQLite URL (its folder created), None for other databases."""
        try:
            parsed = make_url(self.url)
        except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
            why = "" if not isinstance(e, ValueError) else " (its port is not a number)" if "int()" in str(e) \
                else f" ({' '.join(str(e).split())[:100]})"
            raise StoreError(f"{self.shown_url!r} is not a database URL{why} (from --db or GPTAILOR_DB_URL); use "
                             f"e.g. sqlite:////absolute/path/gptailor.db or postgresql://user@host:5432/dbname") \
                from None
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            return None
        p = Path(parsed.database)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the database folder {p.parent}: {e.strerror}; "
                             f"set GPTAILOR_DATA_DIR or GPTAILOR_DB_URL to a writable place") from None
        return p

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite database (``sqlite://``): it lives and dies with this process."""
        return self.path is None and self.url.startswith("sqlite")

    def _engine(self) -> Engine:
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        try:
            engine = create_engine(self.url, **kwargs)
        except NoSuchModuleError:
            kind = self.url.split(":", 1)[0]
            raise StoreError(f"{self.shown_url!r}: unknown kind of database {kind!r}; use a sqlite:///, "
                             f"postgresql:// or mysql+pymysql:// URL in --db or GPTAILOR_DB_URL") from None
        except ImportError as e:
            module = (e.name or str(e)).split(".")[0]
            raise StoreError(f"cannot use {self.shown_url}: its driver {module!r} is not installed; "
                             f"pip install {_DRIVERS.get(module, module)}") from None
        except ArgumentError as e:
            raise StoreError(f"{self.shown_url!r} is not a usable database URL ({e}); check --db or "
                             f"GPTAILOR_DB_URL") from None
        if self.url.startswith("sqlite"):
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def explain(self, e: BaseException) -> str:
        """One line saying what is wrong with the database and what to do, for any database error."""
        raw = str(getattr(e, "orig", None) or e).strip()
        reason = raw.splitlines()[0] if raw else type(e).__name__
        low = reason.lower()
        where = str(self.path) if self.path else self.shown_url
        if self.path is None:
            if isinstance(e, SQLAlchemyError) and getattr(e, "connection_invalidated", False) or \
                    any(w in low for w in ("connect", "refused", "resolve", "timeout", "timed out", "host")):
                return (f"cannot connect to the database {self.shown_url}: {reason}; check that the server is "
                        f"running and reachable and that the URL's host, port, user and database are right")
            return f"cannot use the database {self.shown_url}: {reason}"
        if "file is not a database" in low or "not a database" in low:
            return (f"{where} is not a SQLite database (or is encrypted): {reason}. If the file is corrupt, move it "
                    f"aside (nothing was overwritten) or set GPTAILOR_DATA_DIR / GPTAILOR_DB_URL to another place")
        if "malformed" in low or "corrupt" in low:
            return self._damaged(reason)
        if "readonly" in low or "read-only" in low or "read only" in low or \
                ("unable to open" in low and self._read_only()):
            return (f"the database {where} is read-only ({reason}); make the file and its folder writable, or set "
                    f"GPTAILOR_DATA_DIR / GPTAILOR_DB_URL to a writable place")
        if "full" in low or "no space" in low:
            return (f"the disk holding {where} is full ({reason}); free some space and retry: the trials stored "
                    f"so far are intact")
        if "unable to open" in low:
            return (f"cannot open the database {where} ({reason}); check that its folder exists and is writable, "
                    f"or set GPTAILOR_DATA_DIR / GPTAILOR_DB_URL to a writable place")
        if "locked" in low or "busy" in low:
            return (f"the database {where} stayed locked by another process for 30 s ({reason}); retry, or stop "
                    f"the process that holds it")
        return f"cannot use the database {where}: {reason}"

    def _damaged(self, reason: str) -> str:
        where = str(self.path) if self.path else self.shown_url
        return (f"the database {where} is damaged ({reason}); stop its workers, then recover what it holds with "
                f"`sqlite3 {where} .recover | sqlite3 recovered.db` or restore a backup")

    def check_intact(self) -> None:
        """StoreError (the "damaged" line) unless a SQLite file passes ``PRAGMA quick_check``.

        Every writer of a new study (search, baseline, sweep, the app) and every worker launch calls it
        first: a damaged file is only read by the commands that list it, never written to. Reading the
        whole file once is cheap next to a study; other databases check themselves."""
        if self.path is None:
            return
        try:
            with self.engine.connect() as conn:
                rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
        except SQLAlchemyError as e:
            raise StoreError(self.explain(e)) from None
        if rows != ["ok"]:
            first = " ".join(str(rows[0] if rows else "no answer").split())[:120]
            raise StoreError(self._damaged(f"integrity check: {first}"))

    def _read_only(self) -> bool:
        """The database file exists but it, its folder or its file system cannot be written."""
        if self.path is None or not self.path.exists():
            return False
        try:
            if os.statvfs(self.path).f_flag & os.ST_RDONLY:
                return True
        except (OSError, AttributeError):
            pass
        return not os.access(self.path, os.W_OK) or not os.access(self.path.parent, os.W_OK)

    # -- schema -----------------------------------------------------------------------
    def _alembic(self, conn: Connection):
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        return cfg

    @staticmethod
    @lru_cache(maxsize=1)
    def _known_revisions() -> frozenset[str]:
        """The revisions this release ships (read once per process)."""
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        return frozenset(s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions())

    def _state(self, conn: Connection) -> tuple[str | None, int | None, set[str]]:
        """(alembic revision, pre-Alembic schema_version, table names) of the open database."""
        from alembic.runtime.migration import MigrationContext

        tables = set(inspect(conn).get_table_names())
        revision = MigrationContext.configure(conn).get_current_revision() if "alembic_version" in tables else None
        legacy = conn.execute(select(SchemaVersion.version)).scalar() if "schema_version" in tables else None
        return revision, legacy, tables

    def _newer(self, what: str) -> StoreError:
        return StoreError(f"{self.shown_url}: {what}: created by a newer gptailor; upgrade to open it "
                          f"(it was not modified)")

    def _needs_upgrade(self, conn: Connection) -> bool:
        """False if the database is at this release's head; StoreError if it must not be touched."""
        revision, legacy, tables = self._state(conn)
        if revision is not None:
            if revision not in self._known_revisions():
                raise self._newer(f"schema revision {revision} is unknown to this release (head {SCHEMA_REVISION})")
            return revision != SCHEMA_REVISION
        if legacy is not None:
            if legacy not in LEGACY_REVISIONS:
                raise self._newer(f"schema version {legacy} is newer than this release's")
            return True
        if tables & {"studies", "trials", "families"}:
            raise StoreError(f"{self.shown_url}: has GPTailor tables but no schema version; not created by this "
                             f"tool? Point GPTAILOR_DATA_DIR / GPTAILOR_DB_URL elsewhere")
        return True

    def _upgrade(self, conn: Connection) -> None:
        """Bring the database to head: adopt a pre-Alembic one at its revision first (rows kept)."""
        from alembic import command

        if not self._needs_upgrade(conn):
            return
        revision, legacy, _ = self._state(conn)
        cfg = self._alembic(conn)
        if revision is None and legacy is not None:
            command.stamp(cfg, LEGACY_REVISIONS[legacy])
        command.upgrade(cfg, "head")

    def _migrate(self) -> None:
        try:
            if self._fresh_file() is not True:  # the common case: already at head, no lock needed
                with self.engine.connect() as conn:
                    if not self._needs_upgrade(conn):
                        return
            with self._migration_lock():
                self._upgrade_once()
        except StoreError:
            self.engine.dispose()
            raise
        except (SQLAlchemyError, sqlite3.Error, OSError) as e:
            self.engine.dispose()
            raise StoreError(self.explain(e)) from None

    def _upgrade_once(self) -> None:
        """Upgrade in one transaction. SQLite holds the lock file; PostgreSQL takes an advisory lock;
        another database (MySQL: DDL is not transactional) retries after a concurrent opener's clash."""
        for attempt in range(3):
            engine = self._migration_engine()
            try:
                with engine.begin() as conn:
                    if engine.dialect.name == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(7244310513)"))
                    self._upgrade(conn)
                return
            except SQLAlchemyError:
                if self.path is not None or engine.dialect.name == "postgresql" or attempt == 2:
                    raise
                time.sleep(0.5 + attempt)  # someone else was creating it: look again
            finally:
                if engine is not self.engine:
                    engine.dispose()

    def _fresh_file(self) -> bool | None:
        """For SQLite: whether the file is still missing or empty (None for other databases)."""
        if self.path is None:
            return None
        return not self.path.exists() or self.path.stat().st_size == 0

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """One migrating process at a time: a lock file beside a SQLite database (released if the holder dies).

        PostgreSQL serialises through an advisory lock inside the migration's transaction instead."""
        if self.path is None:
            yield
            return
        from filelock import FileLock, Timeout

        self._probe_lock_file()
        lock = FileLock(f"{self.path}.lock", timeout=120)
        try:
            lock.acquire()
        except Timeout:
            raise StoreError(f"another process has been creating or upgrading {self.path} for 120 s "
                             f"(lock {self.path}.lock); retry when it is done") from None
        except OSError as e:
            raise StoreError(f"cannot lock {self.path} for its schema upgrade ({e.strerror}); make its folder "
                             f"writable, or set GPTAILOR_DATA_DIR / GPTAILOR_DB_URL to a writable place") from None
        try:
            yield
        finally:
            lock.release()

    def _probe_lock_file(self) -> None:
        """Create the lock file once by hand: filelock takes any failure to open it for another process's
        lock and waits its whole timeout, so a folder that takes no new file (/proc, a read-only mount)
        would hang 120 s and then blame someone else."""
        lock = f"{self.path}.lock"
        try:
            os.close(os.open(lock, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as e:
            raise StoreError(f"cannot create files beside the database {self.path} ({e.strerror}: {lock}); its "
                             f"folder {self.path.parent} is not writable: set GPTAILOR_DATA_DIR or GPTAILOR_DB_URL "
                             f"to a writable place") from None

    def _migration_engine(self) -> Engine:
        """For a SQLite file: an engine whose transactions really start (BEGIN IMMEDIATE), so the whole
        upgrade, DDL included, commits or rolls back as one. pysqlite alone runs DDL outside a transaction."""
        if self.path is None:
            return self.engine
        engine = create_engine(self.url, poolclass=NullPool, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, record):
            dbapi_conn.isolation_level = None
            _sqlite_pragmas(dbapi_conn, record)

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        return engine

    def revision(self) -> str | None:
        """The database's Alembic revision (this release's ``SCHEMA_REVISION`` once opened)."""
        with self.engine.connect() as conn:
            return self._state(conn)[0]

    # -- sessions ---------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction; any database error leaves it as one StoreError line."""
        try:
            with self._sessions() as s, s.begin():
                yield s
        except SQLAlchemyError as e:
            raise StoreError(self.explain(e)) from None
