"""Liveness: which host and which process instance runs a study, and when a cancel was asked.

``worker_host`` + ``worker_start`` (the process start time) tell a reused pid from the worker; a
reader on another host relies on ``heartbeat_at`` alone. ``cancel_requested_at`` times the hard stop.
From here on the pre-Alembic ``schema_version`` says 1000, so releases before Alembic refuse the
database ("newer than this release") instead of writing to columns they do not know.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LEGACY_SENTINEL = 1000


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("worker_host", sa.String(200), nullable=True))
        batch.add_column(sa.Column("worker_start", sa.String(40), nullable=True))
        batch.add_column(sa.Column("cancel_requested_at", sa.DateTime, nullable=True))
    op.execute(f"UPDATE schema_version SET version = {LEGACY_SENTINEL}")


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        for col in ("cancel_requested_at", "worker_start", "worker_host"):
            batch.drop_column(col)
    op.execute("UPDATE schema_version SET version = 2")
