"""Alembic environment: ``db.store`` runs it programmatically with its own open connection.

``Store`` puts that connection (already inside a transaction and holding the migration lock) in
``config.attributes["connection"]``; the ``alembic`` command line also works with ``-x url=...``.
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from db.models import Base

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic command line: alembic -x url=sqlite:////path/g.db upgrade head
        url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
        with create_engine(url).begin() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection) -> None:
    # batch mode: SQLite cannot ALTER most things in place; alembic copies the table where needed
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
