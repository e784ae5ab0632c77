"""A small repository API over the ORM: create studies, record trials, list and resume.

SQLite by default (``<data dir>/gptailor.db``, WAL journal and a busy timeout so a UI can read while
two workers write); any SQLAlchemy URL works through ``GPTAILOR_DB_URL``. Every trial is written in
its own transaction the moment it completes, so a killed worker loses nothing already done.
"""
from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, func, inspect, select, text
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .models import Base, FamilyRow, SchemaVersion, StudyRow, TrialRow, utcnow

SCHEMA_VERSION = 2
# version -> SQL statements that bring a database from version-1 to version. Append, never edit.
MIGRATIONS: dict[int, list[str]] = {
    2: ["ALTER TABLE studies ADD COLUMN refs JSON", "ALTER TABLE studies ADD COLUMN report JSON",
        "ALTER TABLE studies ADD COLUMN progress JSON", "ALTER TABLE trials ADD COLUMN budget FLOAT",
        "ALTER TABLE trials ADD COLUMN split VARCHAR(10)",
        "ALTER TABLE trials ADD COLUMN cached BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE trials ADD COLUMN retentions JSON"],
}


class StoreError(RuntimeError):
    """The database cannot be used; the message says which file and what to do."""


def default_url() -> str:
    if os.environ.get("GPTAILOR_DB_URL"):
        return os.environ["GPTAILOR_DB_URL"]
    data = Path(os.environ.get("GPTAILOR_DATA_DIR", "data")).expanduser()
    return f"sqlite:///{data / 'gptailor.db'}"


def _absolute(url: str) -> str:
    """A relative SQLite path made absolute, so a worker started elsewhere opens the same file."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(url[len("sqlite:///"):]).expanduser().resolve())
    return url


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Store:
    def __init__(self, url: str | None = None) -> None:
        self.url = _absolute(url or default_url())
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:":
                p = Path(path)
                try:
                    p.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise StoreError(f"cannot create the database folder {p.parent}: {e.strerror}; "
                                     f"set GPTAILOR_DATA_DIR or GPTAILOR_DB_URL to a writable place") from None
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine = create_engine(self.url, **kwargs)
        if self.url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._migrate()

    # -- schema -----------------------------------------------------------------------
    def _migrate(self) -> None:
        try:
            with self.engine.begin() as conn:
                tables = set(inspect(conn).get_table_names())
                if "schema_version" not in tables:
                    if tables & {"studies", "trials"}:
                        raise StoreError(f"{self.url}: has GPTailor tables but no schema version; not created by "
                                         f"this tool?")
                    Base.metadata.create_all(conn)
                    conn.execute(SchemaVersion.__table__.insert().values(id=1, version=SCHEMA_VERSION))
                    return
                version = conn.execute(select(SchemaVersion.version)).scalar_one()
                if version > SCHEMA_VERSION:
                    raise StoreError(f"{self.url}: schema version {version} is newer than this release's "
                                     f"({SCHEMA_VERSION}); upgrade gptailor to open it")
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for stmt in MIGRATIONS.get(v, []):
                        conn.execute(text(stmt))
                    conn.execute(SchemaVersion.__table__.update().values(version=v))
        except (DatabaseError, OperationalError, sqlite3.DatabaseError) as e:
            reason = str(getattr(e, "orig", e))
            raise StoreError(f"cannot use the database {self.url}: {reason}. If the file is corrupt, move it aside "
                             f"(nothing will be overwritten); if it is read-only, set GPTAILOR_DB_URL or "
                             f"GPTAILOR_DATA_DIR to a writable place") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

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
                     n_trials: int, name: str | None = None) -> int:
        fid = self.ensure_family(family_name, family_spec, family_info)
        with self.session() as s:
            row = StudyRow(name=name or f"{method} on {family_name}", family_id=fid, family_source=family_source,
                           method=method, budget=budget, settings=settings, n_trials=n_trials, status="created")
            s.add(row)
            s.flush()
            return row.id

    def transition(self, study_id: int, allowed_from: tuple[str, ...], status: str, error: str | None = None,
                   pid: int | None = None) -> bool:
        """Change the status only if it is one of ``allowed_from`` (one atomic UPDATE); True if it changed."""
        from sqlalchemy import update

        values: dict[str, Any] = {"status": status}
        if error is not None:
            values["error"] = error
        if pid is not None:
            values["worker_pid"] = pid
        now = utcnow()
        if status == "running":
            values.update(heartbeat_at=now, finished_at=None, error=None)
        elif status in ("finished", "failed", "cancelled", "interrupted"):
            values["finished_at"] = now
        with self.session() as s:
            res = s.execute(update(StudyRow).where(StudyRow.id == study_id, StudyRow.status.in_(allowed_from))
                            .values(**values))
            if status == "running" and res.rowcount:
                row = s.get(StudyRow, study_id)
                row.started_at = row.started_at or now
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

    def heartbeat(self, study_id: int) -> None:
        with self.session() as s:
            s.get(StudyRow, study_id).heartbeat_at = utcnow()

    def delete_study(self, study_id: int) -> None:
        with self.session() as s:
            row = s.get(StudyRow, study_id)
            if row is not None:
                s.delete(row)

    # -- trials ---------------------------------------------------------------------
    def record_trial(self, study_id: int, trial: dict[str, Any]) -> int:
        """Store one finished trial (its own transaction); ``trial`` is a TrialRecord.to_dict()."""
        result = trial.get("result") or {}
        with self.session() as s:
            number = trial.get("number")
            if number is None:
                number = (s.scalar(select(func.max(TrialRow.number)).where(TrialRow.study_id == study_id)) or -1) + 1
            row = TrialRow(study_id=study_id, number=number, plan=trial["plan"], plan_text=trial["plan_text"],
                           config=trial.get("config"), fidelity=trial.get("fidelity"),
                           scores=result.get("scores", {}), task_retention=result.get("task_retention", {}),
                           retention=result.get("retention"), kept_layers=result.get("kept_layers"),
                           params=result.get("params"), stitch_s=result.get("stitch_s"),
                           score_s=result.get("score_s"), wall_s=trial.get("wall_s"),
                           status=trial.get("status", "complete"), error=trial.get("error"),
                           source=trial.get("source") or "search", budget=trial.get("budget"),
                           split=result.get("split") or trial.get("split"), cached=bool(trial.get("cached")),
                           retentions={d: {"mean": m, "tasks": result.get("task_retentions", {}).get(d, {})}
                                       for d, m in result.get("retentions", {}).items()} or None)
            s.add(row)
            study = s.get(StudyRow, study_id)
            study.heartbeat_at = utcnow()
            s.flush()
            return row.id

    def trials(self, study_id: int) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.number)).all()
            return [_trial_dict(r) for r in rows]

    def study(self, study_id: int) -> dict[str, Any]:
        with self.session() as s:
            row = s.get(StudyRow, study_id)
            if row is None:
                raise StoreError(f"no study {study_id}; list them with `python -m gptailor studies`")
            return _study_dict(s, row)

    def studies(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [_study_dict(s, r) for r in s.scalars(select(StudyRow).order_by(StudyRow.id)).all()]


def _trial_dict(r: TrialRow) -> dict[str, Any]:
    return {"id": r.id, "study_id": r.study_id, "number": r.number, "plan": r.plan, "plan_text": r.plan_text,
            "config": r.config, "fidelity": r.fidelity, "scores": r.scores, "task_retention": r.task_retention,
            "retention": r.retention, "kept_layers": r.kept_layers, "params": r.params, "stitch_s": r.stitch_s,
            "score_s": r.score_s, "wall_s": r.wall_s, "status": r.status, "error": r.error,
            "source": r.source, "budget": r.budget, "split": r.split, "cached": bool(r.cached),
            "retentions": r.retentions}


def _study_dict(s: Session, r: StudyRow) -> dict[str, Any]:
    done = s.scalar(select(func.count()).select_from(TrialRow).where(TrialRow.study_id == r.id))
    max_fid = s.scalar(select(func.max(TrialRow.fidelity)).where(TrialRow.study_id == r.id,
                                                                  TrialRow.status == "complete"))
    best = s.scalar(select(func.max(TrialRow.retention)).where(
        TrialRow.study_id == r.id, TrialRow.status == "complete",
        (TrialRow.fidelity == max_fid) if max_fid is not None else TrialRow.fidelity.is_(None)))
    return {"id": r.id, "name": r.name, "family": r.family.name, "family_source": r.family_source,
            "method": r.method, "budget": r.budget, "settings": r.settings, "status": r.status,
            "n_trials": r.n_trials, "trials_done": done, "best_retention": best,
            "test_retention": (r.report or {}).get("retention"), "worker_pid": r.worker_pid,
            "error": r.error, "created_at": r.created_at, "started_at": r.started_at,
            "finished_at": r.finished_at, "heartbeat_at": r.heartbeat_at, "refs": r.refs, "report": r.report,
            "progress": r.progress}
