"""A throwaway PostgreSQL server on a free loopback port, for tests and benchmarks.

Uses Debian's server binaries (``apt-get install postgresql``; ``PG_BINDIR`` to point elsewhere) and
runs them as the ``postgres`` user when we are root (initdb refuses root). Nothing listens beyond
127.0.0.1 and a Unix socket in the server's own temporary folder; the folder is removed on exit.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class PgUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why (a test skips with it)."""


def bindir() -> str | None:
    """The folder holding initdb and pg_ctl, newest installed version first."""
    for d in [os.environ.get("PG_BINDIR", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if d and os.path.exists(os.path.join(d, "initdb")):
            return d
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
        raise PgUnavailable("running as root without a postgres user to start the server as")
    return ["runuser", "-u", "postgres", "--"]


@contextmanager
def pg_server() -> Iterator[str]:
    """Start a cluster (trust auth, fsync off), yield its URL without a database name, stop it after."""
    try:
        import psycopg2  # noqa: F401  - SQLAlchemy's default PostgreSQL driver
    except ImportError:
        raise PgUnavailable("no psycopg2 (pip install psycopg2-binary)") from None
    bd = bindir()
    if bd is None:
        raise PgUnavailable("no PostgreSQL server binaries (initdb) installed; apt-get install postgresql")
    as_user = _as_user()
    d = Path(tempfile.mkdtemp(prefix="gptailor-pg-"))  # not under a root-only folder
    if as_user:
        shutil.chown(d, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        for cmd in ([f"{bd}/initdb", "-D", f"{d}/data", "-A", "trust", "-U", "postgres"],
                    [f"{bd}/pg_ctl", "-D", f"{d}/data", "-l", f"{d}/log", "-w", "-o",
                     f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]):
            res = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
            if res.returncode:
                raise PgUnavailable(f"cannot start a PostgreSQL server here: "
                                    f"{(res.stderr or res.stdout).strip()[-300:]}")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, f"{bd}/pg_ctl", "-D", f"{d}/data", "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def new_database(server: str, prefix: str = "t") -> str:
    """Create an empty database on ``server`` and return its URL."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {name}"))
    finally:
        admin.dispose()
    return f"{server}/{name}"
