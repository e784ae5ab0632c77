"""A small repository API over the ORM: create studies, record trials, list and resume.

Every trial is written in its own transaction the moment it completes, so a killed worker loses nothing
already done. The database under it (URL, engine, Alembic schema, integrity, one-line errors) is
``db.database.Database``.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session, aliased

from gptailor.eval.prefix import summarize_prefix
from gptailor.eval.results import DEFINITIONS, tiebreak_proxy
from gptailor.search.trials import CUT, TrialRecord, rank_key

from .database import Database, StoreError  # StoreError: what every Store method raises
from .liveness import Owner
from .models import FamilyRow, StudyRow, TrialRow, utcnow
from .rows import PROXIES, mean_of, to_record, to_row

ACTIVE = ("created", "running", "cancelling")  # a worker may be on it
CLAIMABLE = ("created", "interrupted", "cancelled", "failed")
_ANY = object()


class ClaimLost(StoreError):
    """This worker no longer owns its study (a reader declared it dead, or another worker took it over)."""



def _owner_is(owner: Owner):
    """SQL condition: the study's recorded worker is exactly ``owner`` (NULLs compared as equal)."""
    def eq(col, value):
        return col.is_(None) if value is None else col == value
    return and_(eq(StudyRow.worker_pid, owner.pid), eq(StudyRow.worker_host, owner.host),
                eq(StudyRow.worker_start, owner.start))



class Store(Database):
    """Studies and trials in a ``Database``: what the CLI, the workers and the app read and write."""

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
