"""Retention stored once: ``trials.retentions`` ({definition: {mean, tasks}}) plus ``trials.definition``
(which one applies) replace ``trials.retention`` and ``trials.task_retention``, which repeated the
applicable definition's entry.

Every row is kept. A scored row's flat values move into its definition's entry where that entry is
missing (rows written before both definitions were stored have only them). Its definition is the
study's, by the rule of this release (``gptailor.eval.results.applicable_definition``, written out
here so the revision never changes with the code): fixed with the study's references or report, else
its setting, else ``family``; unless the stored means say otherwise (the flat value equals another
definition's mean and not the study's).

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DEFINITIONS = ("family", "base")

JSON = sa.JSON(none_as_null=True)  # None is SQL NULL, as the models write it
trials = sa.table("trials", sa.column("id", sa.Integer), sa.column("study_id", sa.Integer),
                  sa.column("retention", sa.Float), sa.column("task_retention", JSON),
                  sa.column("retentions", JSON), sa.column("definition", sa.String))
studies = sa.table("studies", sa.column("id", sa.Integer), sa.column("refs", sa.JSON),
                   sa.column("report", sa.JSON), sa.column("settings", sa.JSON))


def study_definition(refs: Any, report: Any, settings: Any) -> str:
    fixed = (refs or {}).get("definition") or (report or {}).get("definition")
    if fixed in DEFINITIONS:
        return fixed
    setting = (settings or {}).get("retention")
    return setting if setting in DEFINITIONS else "family"


def _mean(retentions: dict[str, Any], d: str) -> float | None:
    entry = retentions.get(d)
    return entry.get("mean") if isinstance(entry, dict) else None


def moved(retention: float | None, tasks: Any, retentions: Any, study: str) -> tuple[dict | None, str | None]:
    """(retentions, definition) for one row; definition None when it holds no retention (nothing scored)."""
    stored = {d: dict(v) for d, v in (retentions or {}).items() if isinstance(v, dict)}
    if retention is None:
        return (stored or None), None
    d = study
    if _mean(stored, d) not in (None, retention):
        d = next((o for o in DEFINITIONS if _mean(stored, o) == retention), study)
    entry = stored.setdefault(d, {})
    if entry.get("mean") is None:
        entry["mean"] = retention
    if not entry.get("tasks"):
        entry["tasks"] = dict(tasks or {})
    return stored, d


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("definition", sa.String(10), nullable=True))
    conn = op.get_bind()
    defs = {r.id: study_definition(r.refs, r.report, r.settings)
            for r in conn.execute(sa.select(studies.c.id, studies.c.refs, studies.c.report, studies.c.settings))}
    rows = conn.execute(sa.select(trials.c.id, trials.c.study_id, trials.c.retention, trials.c.task_retention,
                                  trials.c.retentions)).all()
    for r in rows:
        stored, d = moved(r.retention, r.task_retention, r.retentions, defs.get(r.study_id, "family"))
        conn.execute(trials.update().where(trials.c.id == r.id).values(retentions=stored, definition=d))
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("task_retention")
        batch.drop_column("retention")


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("task_retention", sa.JSON, nullable=True))
        batch.add_column(sa.Column("retention", sa.Float, nullable=True))
    conn = op.get_bind()
    for r in conn.execute(sa.select(trials.c.id, trials.c.retentions, trials.c.definition)).all():
        entry = (r.retentions or {}).get(r.definition) or {}
        conn.execute(trials.update().where(trials.c.id == r.id).values(
            retention=entry.get("mean"), task_retention=entry.get("tasks") or {}))
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("definition")
