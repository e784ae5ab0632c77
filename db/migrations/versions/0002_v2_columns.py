"""Schema v2: exact SMAC budget, split, cached flag and both retentions per trial; references,
test-split report and progress per study (what commit cb5b61b added by hand).

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("refs", sa.JSON, nullable=True))
        batch.add_column(sa.Column("report", sa.JSON, nullable=True))
        batch.add_column(sa.Column("progress", sa.JSON, nullable=True))
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("budget", sa.Float, nullable=True))
        batch.add_column(sa.Column("split", sa.String(10), nullable=True))
        batch.add_column(sa.Column("cached", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("retentions", sa.JSON, nullable=True))
    op.execute("UPDATE schema_version SET version = 2")


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        for col in ("retentions", "cached", "split", "budget"):
            batch.drop_column(col)
    with op.batch_alter_table("studies") as batch:
        for col in ("progress", "report", "refs"):
            batch.drop_column(col)
    op.execute("UPDATE schema_version SET version = 1")
