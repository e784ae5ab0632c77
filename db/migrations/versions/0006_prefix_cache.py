"""What the prefix-state cache did for each trial (``gptailor.eval.prefix``): ``trials.prefix_cache`` holds the
trial's batch forwards, hits, layers skipped and run, and the time saved, so the dashboard and ``studies``
can show a study's hit rate and the time the cache saved. Rows written before it keep NULL (unknown).

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("prefix_cache", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("prefix_cache")
