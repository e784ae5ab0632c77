"""Alembic migration environment of the study database (``env.py`` and ``versions/``)."""
