"""The v1 schema, exactly as the pre-Alembic code (commit aba1175) created it.

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schema_version",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "families",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("info", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("family_id", sa.Integer, sa.ForeignKey("families.id"), nullable=False),
        sa.Column("family_source", sa.Text, nullable=False),
        sa.Column("method", sa.String(40), nullable=False),
        sa.Column("budget", sa.JSON, nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("n_trials", sa.Integer, nullable=False),
        sa.Column("worker_pid", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("heartbeat_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("plan_text", sa.Text, nullable=False),
        sa.Column("config", sa.JSON, nullable=True),
        sa.Column("fidelity", sa.Integer, nullable=True),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("task_retention", sa.JSON, nullable=False),
        sa.Column("retention", sa.Float, nullable=True),
        sa.Column("kept_layers", sa.Integer, nullable=True),
        sa.Column("params", sa.Integer, nullable=True),
        sa.Column("stitch_s", sa.Float, nullable=True),
        sa.Column("score_s", sa.Float, nullable=True),
        sa.Column("wall_s", sa.Float, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("source", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("study_id", "number"),
    )
    op.create_index("ix_trials_study_id", "trials", ["study_id"])
    # the pre-Alembic code kept its version here; later revisions keep it meaningful for old releases
    op.execute("INSERT INTO schema_version (id, version) VALUES (1, 1)")


def downgrade() -> None:
    op.drop_index("ix_trials_study_id", table_name="trials")
    for table in ("trials", "studies", "families", "schema_version"):
        op.drop_table(table)
