"""A small repository API over the ORM: create studies, record trials, list and resume.

SQLite by default (``<data dir>/gptailor.db``, WAL journal and a busy timeout so a UI can read while
two workers write); any SQLAlchemy URL works through ``GPTAILOR_DB_URL``. Every trial is written in
its own transaction the moment it completes, so a killed worker loses nothing already done.

The schema is managed by Alembic (``db/migrations``): opening a store upgrades the database to this
release's head revision, under a lock so that several processes opening a fresh file at once create
it once. Every database fault reaches callers as one ``StoreError`` line saying what to do.
"""
from __future__ import annotations

import os
import re
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import and_, create_engine, event, func, inspect, select, text, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.pool import NullPool

from gptailor.eval.prefix import summarize_prefix
from gptailor.eval.results import DEFINITIONS, tiebreak_proxy
from gptailor.search.trials import CUT, TrialRecord, rank_key

from .liveness import Owner
from .models import FamilyRow, SchemaVersion, StudyRow, TrialRow, utcnow
from .rows import PROXIES, mean_of, to_record, to_row
from .settings import db_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SCHEMA_REVISION = "0006"  # this release's Alembic head (tests check it against db/migrations/versions)
SCHEMA_VERSION = SCHEMA_REVISION  # the name older code imported
# what the pre-Alembic code's schema_version numbers correspond to
LEGACY_REVISIONS = {1: "0001", 2: "0002"}
ACTIVE = ("created", "running", "cancelling")  # a worker may be on it
CLAIMABLE = ("created", "interrupted", "cancelled", "failed")
_ANY = object()


class StoreError(RuntimeError):
    """The database cannot be used; the message says which file and what to do."""


class ClaimLost(StoreError):
    """This worker no longer owns its study (a reader declared it dead, or another worker took it over)."""



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


def _owner_is(owner: Owner):
    """SQL condition: the study's recorded worker is exactly ``owner`` (NULLs compared as equal)."""
    def eq(col, value):
        return col.is_(None) if value is None else col == value
    return and_(eq(StudyRow.worker_pid, owner.pid), eq(StudyRow.worker_host, owner.host),
                eq(StudyRow.worker_start, owner.start))


class Store:
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

    # -- families and studies -----------------------------------------------------------
    def ensure_family(self, name: str, spec: dict[str, Any], info: dict[str, Any]) -> int:
        with self.session() as s:
            row = s.scalar(select(FamilyRow).where(FamilyRow.name == name))
            if row is None:
                row = FamilyRow(name=name, spec=spec, info=info)
                s.add(row)
                s.flush()
            else:
                row.spec, row.info = spec, info
            return row.id

    def family_info(self, name: str) -> dict[str, Any]:
        with self.session() as s:
            row = s.scalar(select(FamilyRow).where(FamilyRow.name == name))
            return dict(row.info) if row is not None else {}

    def create_study(self, *, family_name: str, family_source: str, family_spec: dict[str, Any],
                     family_info: dict[str, Any], method: str, budget: dict[str, Any], settings: dict[str, Any],
                     n_trials: int, name: str | None = None, owner_hash: str | None = None,
                     client_key: str | None = None) -> int:
        """Store a new study; its name (default: the method) is made unique in its family with a suffix.
        ``owner_hash`` and ``client_key`` name the app visitor who started it (see ``ui/guard.py``).
        Refused, nothing written, on a damaged database."""
        self.check_intact()
        fid = self.ensure_family(family_name, family_spec, family_info)
        with self.session() as s:
            taken = set(s.scalars(select(StudyRow.name).where(StudyRow.family_id == fid)))
            row = StudyRow(name=unique_name(clean_name(name or method), taken), family_id=fid,
                           family_source=family_source, method=method, budget=budget, settings=settings,
                           n_trials=n_trials, status="created", owner_hash=owner_hash, client_key=client_key)
            s.add(row)
            s.flush()
            return row.id

    def rename_study(self, study_id: int, name: str) -> str:
        """Give a study a new short name; refused (StoreError) if empty, too long or taken in its family."""
        name = clean_name(name)
        with self.session() as s:
            row = s.get(StudyRow, study_id)
            if row is None:
                raise StoreError(f"no study {study_id}")
            clash = s.scalar(select(StudyRow.id).where(StudyRow.family_id == row.family_id, StudyRow.name == name,
                                                       StudyRow.id != study_id))
            if clash is not None:
                raise StoreError(f"study {clash} on this family is already named {name!r}; pick another name")
            row.name = name
            return name

    def transition(self, study_id: int, allowed_from: tuple[str, ...], status: str, error: str | None = None,
                   owner: Owner | None = None) -> bool:
        """Change the status only if it is one of ``allowed_from`` (one atomic UPDATE); True if it changed.

        With ``owner``, only while that process still owns the study: a worker declared dead (or
        replaced) must not overwrite what the reader or the new worker wrote."""
        values: dict[str, Any] = {"status": status}
        if error is not None:
            values["error"] = error
        if status in ("finished", "failed", "cancelled", "interrupted"):
            values["finished_at"] = utcnow()
        cond = [StudyRow.id == study_id, StudyRow.status.in_(allowed_from)]
        if owner is not None:
            cond.append(_owner_is(owner))
        with self.session() as s:
            return bool(s.execute(update(StudyRow).where(*cond).values(**values)).rowcount)

    def launched(self, study_id: int, owner: Owner) -> bool:
        """Record the worker process just started for a study (not yet claimed by it)."""
        with self.session() as s:
            return bool(s.execute(update(StudyRow).where(StudyRow.id == study_id, StudyRow.status.in_(CLAIMABLE))
                                  .values(status="created", worker_pid=owner.pid, worker_host=owner.host,
                                          worker_start=owner.start, heartbeat_at=utcnow(), cancel_requested_at=None,
                                          progress={"phase": "launching", "updated": _iso()})).rowcount)

    def claim(self, study_id: int, owner: Owner) -> bool:
        """Make ``owner`` the study's running worker, atomically: of two workers only one gets it.

        Claiming again from the same process is a no-op that succeeds (the worker claims early, then
        ``run_study`` does)."""
        now = utcnow()
        with self.session() as s:
            mine = and_(StudyRow.status.in_(("created", "running")), _owner_is(owner))
            res = s.execute(update(StudyRow).where(StudyRow.id == study_id,
                                                   StudyRow.status.in_(CLAIMABLE) | mine)
                            .values(status="running", worker_pid=owner.pid, worker_host=owner.host,
                                    worker_start=owner.start, heartbeat_at=now, finished_at=None, error=None,
                                    cancel_requested_at=None,
                                    started_at=func.coalesce(StudyRow.started_at, now)))
            if res.rowcount:
                row = s.get(StudyRow, study_id)
                if not row.progress or row.progress.get("phase") in (None, "launching"):
                    row.progress = {"phase": "starting", "updated": _iso()}
            return bool(res.rowcount)

    def set_study_fields(self, study_id: int, **fields: Any) -> None:
        """Write study-level results (``refs``, ``report``, ``progress``) in one transaction."""
        allowed = {"refs", "report", "progress", "name"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"not a study field: {', '.join(sorted(bad))}")
        with self.session() as s:
            row = s.get(StudyRow, study_id)
            for k, v in fields.items():
                setattr(row, k, v)

    def beat(self, study_id: int, owner: Owner) -> bool:
        """One heartbeat; False if ``owner`` no longer runs this study."""
        with self.session() as s:
            res = s.execute(update(StudyRow).where(StudyRow.id == study_id, StudyRow.status.in_(ACTIVE),
                                                   _owner_is(owner)).values(heartbeat_at=utcnow()))
            return bool(res.rowcount)

    def set_progress(self, study_id: int, progress: dict[str, Any], owner: Owner) -> bool:
        """What the worker is doing now (a reader records its in-flight trial as failed if it dies)."""
        with self.session() as s:
            res = s.execute(update(StudyRow).where(StudyRow.id == study_id, StudyRow.status.in_(ACTIVE),
                                                   _owner_is(owner))
                            .values(progress={**progress, "updated": _iso()}, heartbeat_at=utcnow()))
            return bool(res.rowcount)

    def request_cancel(self, study_id: int) -> bool:
        """Ask the study's worker to stop after its current trial; the time starts the hard-stop clock."""
        with self.session() as s:
            return bool(s.execute(update(StudyRow).where(StudyRow.id == study_id,
                                                         StudyRow.status.in_(("running", "created")))
                                  .values(status="cancelling", cancel_requested_at=utcnow())).rowcount)

    def stop(self, study_id: int, status: str, error: str, *, owner: Owner, heartbeat_seen: Any = _ANY,
             inflight_error: str | None = None) -> bool:
        """End an active study whose worker is ``owner``, in one transaction: set the status and, if the
        worker was inside a trial (``progress``), record that trial as failed.

        ``heartbeat_seen`` (a reader's view of the last beat) makes it a no-op if the worker beat since."""
        cond = [StudyRow.id == study_id, StudyRow.status.in_(ACTIVE), _owner_is(owner)]
        if heartbeat_seen is not _ANY:
            cond.append(StudyRow.heartbeat_at.is_(None) if heartbeat_seen is None
                        else StudyRow.heartbeat_at == heartbeat_seen)
        with self.session() as s:
            res = s.execute(update(StudyRow).where(*cond).values(status=status, error=error, finished_at=utcnow()))
            if not res.rowcount:
                return False
            if inflight_error:
                self._fail_inflight(s, study_id, inflight_error)
            return True

    @staticmethod
    def _fail_inflight(s: Session, study_id: int, error: str) -> None:
        """The trial the progress says was being evaluated, stored as ``cut`` (once): kept for the record, not
        counted toward the study's trials, and run again by a resume under the same source label."""
        row = s.get(StudyRow, study_id)
        p = row.progress or {}
        if p.get("phase") != "trial" or p.get("trial") is None:
            return
        number = int(p["trial"])
        if s.scalar(select(TrialRow.id).where(TrialRow.study_id == study_id, TrialRow.number == number)):
            return
        s.add(TrialRow(study_id=study_id, number=number, plan=p.get("plan_json") or {}, plan_text=p.get("plan") or "",
                       config=p.get("config"), fidelity=p.get("fidelity"), scores={}, status=CUT, error=error,
                       source=p.get("source") or "search", wall_s=p.get("wall_s")))
        row.progress = {**p, "phase": "stopped", "updated": _iso()}

    # -- trials ---------------------------------------------------------------------
    def record_trial(self, study_id: int, trial: TrialRecord, owner: Owner | None = None) -> int:
        """Store one finished trial (its own transaction); a ``number`` of None takes the next free one.

        With ``owner``, first checks (and beats) that this worker still owns the study, in the same
        transaction: ClaimLost, and nothing written, if not."""
        with self.session() as s:
            study = s.get(StudyRow, study_id) if owner is None else None
            if owner is not None:
                res = s.execute(update(StudyRow).where(StudyRow.id == study_id, StudyRow.status.in_(ACTIVE),
                                                       _owner_is(owner))
                                .values(heartbeat_at=utcnow(),
                                        progress={"phase": "between trials", "last_trial": trial.number,
                                                  "updated": _iso()}))
                if not res.rowcount:
                    raise ClaimLost(f"study {study_id} is no longer this worker's (declared dead or taken over); "
                                    f"stopping without writing")
            number = trial.number
            if number is None:
                number = (s.scalar(select(func.max(TrialRow.number)).where(TrialRow.study_id == study_id)) or -1) + 1
            row = to_row(study_id, number, trial)
            s.add(row)
            if study is not None:
                study.heartbeat_at = utcnow()
            s.flush()
            return row.id

    def trials(self, study_id: int) -> list[TrialRecord]:
        """The study's trials in number order, as the engine's objects."""
        with self.session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.number)).all()
            return [to_record(r) for r in rows]

    def study(self, study_id: int) -> dict[str, Any]:
        with self.session() as s:
            row = s.get(StudyRow, study_id)
            if row is None:
                raise StoreError(f"no study {study_id} is stored")
            return _study_dict(s, row)

    def count_started(self, since: datetime | None = None, client_key: str | None = None,
                      exclude_methods: tuple[str, ...] = ("manual",)) -> int:
        """Studies created after ``since`` (all if None), by ``client_key`` (everyone's if None), in one query:
        the app's caps count what is stored, so they hold across sessions, app processes and restarts."""
        q = select(func.count()).select_from(StudyRow).where(StudyRow.method.not_in(exclude_methods))
        if since is not None:
            q = q.where(StudyRow.created_at > since)
        if client_key is not None:
            q = q.where(StudyRow.client_key == client_key)
        with self.session() as s:
            return int(s.scalar(q) or 0)

    def fingerprint(self, families: list[str] | None = None) -> tuple:
        """What a page compares before re-reading anything, in one query: per study of ``families`` its name,
        status, last heartbeat, cancel request, trial count and newest trial (and, over the whole database
        when ``families`` is None, the newest study id). Equal fingerprints: nothing a dashboard draws changed."""
        cols = [StudyRow.id, StudyRow.name, StudyRow.status, StudyRow.heartbeat_at, StudyRow.cancel_requested_at,
                func.count(TrialRow.id), func.max(TrialRow.id)]
        if families is None:  # the whole database: a new study anywhere may become the page's default
            cols.insert(0, select(func.max(aliased(StudyRow).id)).scalar_subquery())
        q = select(*cols).outerjoin(TrialRow, TrialRow.study_id == StudyRow.id).group_by(StudyRow.id) \
            .order_by(StudyRow.id)
        if families is not None:
            q = q.join(FamilyRow, FamilyRow.id == StudyRow.family_id).where(FamilyRow.name.in_(families))
        with self.session() as s:
            return tuple(tuple(row) for row in s.execute(q).all())

    def studies(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [_study_dict(s, r) for r in s.scalars(select(StudyRow).order_by(StudyRow.id)).all()]


NAME_MAX = 60


def clean_name(name: str) -> str:
    """A study name as stored: stripped, one line, 1..NAME_MAX characters (StoreError otherwise)."""
    name = " ".join(str(name or "").split())
    if not name:
        raise StoreError("a study name cannot be empty")
    if len(name) > NAME_MAX:
        raise StoreError(f"a study name has at most {NAME_MAX} characters, this one has {len(name)}")
    return name


def unique_name(wanted: str, taken: set[str]) -> str:
    """``wanted``, or ``wanted-2``, ``wanted-3``... the first not in ``taken``."""
    if wanted not in taken:
        return wanted
    k = 2
    while f"{wanted}-{k}" in taken:
        k += 1
    return f"{wanted}-{k}"


def _iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _best_of(s: Session, study_id: int) -> tuple[float | None, int | None, dict[str, float] | None, dict[str, Any]]:
    """The study's best complete trial by the one ranking rule (``gptailor.search.trials.rank_key``, applied here
    in Python rather than re-stated in SQL): its retention, number, every definition's mean, and where the
    number comes from (its split and fidelity: ``db.rows.best_from``)."""
    rows = s.execute(select(TrialRow.number, TrialRow.fidelity, TrialRow.retentions, TrialRow.definition,
                            TrialRow.split).where(
        TrialRow.study_id == study_id, TrialRow.status == "complete", TrialRow.definition.is_not(None))).all()
    scored = [(r, mean_of(r.retentions, r.definition)) for r in rows]
    scored = [(r, m) for r, m in scored if m is not None]
    if not scored:
        return None, None, None, {}
    row, retention = min(scored, key=lambda rm: rank_key(
        rm[0].fidelity, rm[1], rm[0].number,
        tiebreak=tiebreak_proxy((rm[0].retentions or {}).get(PROXIES) or {}, rm[0].definition)))
    means = {d: v.get("mean") for d, v in row.retentions.items() if d in DEFINITIONS and isinstance(v, dict)}
    return retention, row.number, means, {"split": row.split, "fidelity": row.fidelity}


def _study_dict(s: Session, r: StudyRow) -> dict[str, Any]:
    done = s.scalar(select(func.count()).select_from(TrialRow).where(TrialRow.study_id == r.id,
                                                                      TrialRow.status != CUT))  # as counted()
    best, best_number, best_means, best_at = _best_of(s, r.id)
    cache = summarize_prefix(s.scalars(select(TrialRow.prefix_cache).where(
        TrialRow.study_id == r.id, TrialRow.prefix_cache.is_not(None))).all())
    return {"id": r.id, "name": r.name, "family": r.family.name, "family_source": r.family_source,
            "method": r.method, "budget": r.budget, "settings": r.settings, "status": r.status,
            "n_trials": r.n_trials, "trials_done": done, "best_retention": best,
            "best_trial": best_number, "best_retentions": best_means, "best_split": best_at.get("split"),
            "best_fidelity": best_at.get("fidelity"),
            "test_retention": (r.report or {}).get("retention"), "worker_pid": r.worker_pid,
            "worker_host": r.worker_host, "worker_start": r.worker_start, "error": r.error,
            "created_at": r.created_at, "started_at": r.started_at, "finished_at": r.finished_at,
            "heartbeat_at": r.heartbeat_at, "cancel_requested_at": r.cancel_requested_at, "progress": r.progress,
            "refs": r.refs, "report": r.report, "owner_hash": r.owner_hash, "client_key": r.client_key,
            "prefix_cache": cache}
