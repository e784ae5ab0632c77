"""Public mode: who started a study from the app, so ownership and caps rest on what a client cannot mint.

``owner_hash`` is the SHA-256 of the server-issued owner token of the browser that started the study
(only its holder, or an operator, may cancel, resume or rename it); ``client_key`` is a keyed hash of
the visitor's client address (what per-client caps count). Both are indexed (a cap is one COUNT) and
NULL for every existing row: studies from the CLI or an older release have no visitor, so only an
operator manages them (an older release kept a Gradio session hash in ``settings.owner``, which any
client could copy; it is left as it was and no longer trusted).

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("owner_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("client_key", sa.String(64), nullable=True))
        batch.create_index("ix_studies_owner_hash", ["owner_hash"])
        batch.create_index("ix_studies_client_key", ["client_key"])


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_client_key")
        batch.drop_index("ix_studies_owner_hash")
        batch.drop_column("client_key")
        batch.drop_column("owner_hash")
