"""SQLAlchemy 2.x ORM models: families, studies, trials, and the pre-Alembic schema version.

The tables are created and changed only by the Alembic revisions in ``db/migrations/versions``;
a column added here needs a new revision there (``tests/test_db_migrations.py`` checks they agree).

Plans, scores and settings are JSON columns: they are read whole and written once, and JSON keeps
the schema stable while the engine grows new fields.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    """The pre-Alembic version row, kept so releases before Alembic refuse newer databases clearly."""
    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class FamilyRow(Base):
    __tablename__ = "families"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the FamilySpec as loaded (sources, dtype, suite)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # layers, params, members
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class StudyRow(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    family_id: Mapped[int] = mapped_column(ForeignKey("families.id"))
    family_source: Mapped[str] = mapped_column(Text)  # what to load the family from: 'demo', a spec path
    method: Mapped[str] = mapped_column(String(40))  # smac, random, shortgpt, angular, last_n, laco, manual ...
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="created")  # created running finished failed cancelled interrupted
    n_trials: Mapped[int] = mapped_column(Integer, default=0)  # how many trials were asked for
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # schema v2
    refs: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # per-task references, fixed per study
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # best plan re-scored on the test split
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # phase, step k of K, message
    # revision 0003: who runs it (a pid means something only on its host) and when a cancel was asked
    worker_host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    worker_start: Mapped[str | None] = mapped_column(String(40), nullable=True)  # process start time (ticks)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # revision 0005: the app visitor who started it: a hash of their server-issued owner token (who may change
    # it) and a keyed hash of their client address (what per-client caps count); None: the CLI or an older release
    owner_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    client_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)

    family: Mapped[FamilyRow] = relationship()
    trials: Mapped[list["TrialRow"]] = relationship(back_populates="study", order_by="TrialRow.number",
                                                    cascade="all, delete-orphan")


class TrialRow(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("study_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)  # canonical plan JSON
    plan_text: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # SMAC configuration, to re-tell
    fidelity: Mapped[int | None] = mapped_column(Integer, nullable=True)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    kept_layers: Mapped[int | None] = mapped_column(Integer, nullable=True)
    params: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stitch_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    wall_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # since the study started
    status: Mapped[str] = mapped_column(String(20), default="complete")  # complete failed rejected cut
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str] = mapped_column(String(80), default="search")  # search, a seed's name, heuristic:member
    # schema v2
    budget: Mapped[float | None] = mapped_column(Float, nullable=True)  # SMAC's budget exactly as asked (re-told on resume)
    split: Mapped[str | None] = mapped_column(String(10), nullable=True)  # search | test | all
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # served from an earlier (plan, fidelity) result
    retentions: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # {definition: {mean, tasks}}
    # revision 0004: retention stored once (``retentions``); which definition applies (None: nothing scored)
    definition: Mapped[str | None] = mapped_column(String(10), nullable=True)
    # revision 0006: what the prefix-state cache did for this trial (gptailor.eval.prefix.PrefixStats.to_dict)
    prefix_cache: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    study: Mapped[StudyRow] = relationship(back_populates="trials")
