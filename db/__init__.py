"""Persistence of studies and trials (SQLAlchemy). Built in the search issue; the engine never imports it."""
