"""Alembic migrations: old databases adopted with every row, fresh ones created once under concurrency."""
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from db.models import Base
from db.store import MIGRATIONS_DIR, SCHEMA_REVISION, Store, StoreError

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


def columns(db: Path) -> dict[str, list[tuple]]:
    """Each table's columns as (name, type, not null, primary key), indexes and unique constraints.

    Sorted: a v2 database created fresh has ``created_at`` last, one migrated from v1 has it before
    the v2 columns; both are the same schema."""
    eng = create_engine(f"sqlite:///{db}")
    try:
        insp = inspect(eng)
        out = {}
        for t in sorted(set(insp.get_table_names()) - {"alembic_version"}):
            cols = sorted((c["name"], str(c["type"]), not c["nullable"], bool(c.get("primary_key")))
                          for c in insp.get_columns(t))
            out[t] = [cols, sorted(str(sorted(i["column_names"])) for i in insp.get_indexes(t)),
                      sorted(str(sorted(u["column_names"])) for u in insp.get_unique_constraints(t))]
        return out
    finally:
        eng.dispose()


def upgraded_to(tmp_path: Path, revision: str) -> Path:
    from alembic import command

    db = tmp_path / f"at-{revision}.db"
    eng = create_engine(f"sqlite:///{db}")
    with eng.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    eng.dispose()
    return db


def test_head_revision_and_models_agree(tmp_path):
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_REVISION
    Store(f"sqlite:///{tmp_path / 'g.db'}")
    eng = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    Base.metadata.create_all(eng)
    eng.dispose()
    assert columns(tmp_path / "g.db") == columns(tmp_path / "m.db")  # the models are what the migrations make


@pytest.mark.parametrize("old,revision", [("v1.db", "0001"), ("v2.db", "0002")])
def test_revisions_reproduce_the_old_schemas(tmp_path, old, revision):
    shutil.copy(FIXTURES / old, tmp_path / old)  # read a copy: the fixture stays as the old code wrote it
    assert columns(upgraded_to(tmp_path, revision)) == columns(tmp_path / old)


@pytest.mark.parametrize("old", ["v1.db", "v2.db"])
def test_old_database_is_adopted_with_every_row(tmp_path, old):
    db = tmp_path / old
    shutil.copy(FIXTURES / old, db)
    with sqlite3.connect(db) as con:
        before = {t: con.execute(f"SELECT * FROM {t} ORDER BY id").fetchall()
                  for t in ("families", "studies", "trials")}
    store = Store(f"sqlite:///{db}")
    assert store.revision() == SCHEMA_REVISION
    with sqlite3.connect(db) as con:
        for table, rows in before.items():
            now = con.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            assert [r[: len(rows[0])] for r in now] == rows  # old columns first, values unchanged
        assert con.execute("SELECT version FROM schema_version").fetchone()[0] == 1000  # old releases refuse it
    trials = store.trials(1)
    assert [t["retention"] for t in trials] == [0.71, 0.83, 0.79]
    assert store.study(1)["status"] == "interrupted" and store.study(2)["status"] == "created"
    # the new columns are usable
    with store.session() as s:
        from db.models import StudyRow, TrialRow

        s.get(StudyRow, 1).progress = {"phase": "trial", "trial": 3}
        s.get(StudyRow, 1).worker_host = "elsewhere"
        t = s.get(TrialRow, 1)
        t.cached, t.split, t.budget, t.retentions = True, "search", 4.0, {"base": {"mean": 0.7}}
    assert store.study(1)["progress"]["trial"] == 3
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT cached, split FROM trials WHERE id = 1").fetchone() == (1, "search")
        assert con.execute("SELECT cached FROM trials WHERE id = 2").fetchone() == (0,)
    assert Store(f"sqlite:///{db}").revision() == SCHEMA_REVISION  # a second open changes nothing


def test_old_release_newer_version_and_foreign_tables_are_refused_untouched(tmp_path):
    db = tmp_path / "g.db"
    shutil.copy(FIXTURES / "v2.db", db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE schema_version SET version = 7")
    before = db.read_bytes()
    with pytest.raises(StoreError, match="schema version 7.*created by a newer gptailor; upgrade to open it"):
        Store(f"sqlite:///{db}")
    assert db.read_bytes() == before
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE studies (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreError, match="no schema version; not created by this tool"):
        Store(f"sqlite:///{other}")


# A process that opens a database: it imports everything, says "ready", waits for a line on stdin (the
# start signal), then opens the store; filelock's own log says when it found the lock taken ("waiting").
OPEN = """
import logging, sys
import sqlalchemy, alembic, filelock
from db.store import Store


class Waiting(logging.Handler):
    said = False

    def emit(self, record):
        if "not acquired" in record.getMessage() and not self.said:
            self.said = True
            print("waiting", flush=True)


log = logging.getLogger("filelock")
log.setLevel(logging.DEBUG)
log.addHandler(Waiting())
print("ready", flush=True)
sys.stdin.readline()
print(Store(sys.argv[1]).revision())
"""
HANG_GUARD_S = 600  # only against a hang; the test waits on the processes' own words


def said(proc: subprocess.Popen, word: str) -> None:
    """Wait for ``proc``'s next line and check it is ``word`` (else show why it ended)."""
    line = proc.stdout.readline()
    if line != word + "\n":
        proc.kill()
        pytest.fail(f"expected {word!r}, got {line!r}: {proc.communicate()[1][-1500:]}")


def test_six_processes_create_a_fresh_database_at_once(tmp_path):
    """The race, made certain: all six find the file fresh and queue at the migration lock (held here
    until each says so), then take it one after another; one creates the schema, the rest find it."""
    from filelock import FileLock

    path = tmp_path / "fresh.db"
    url = f"sqlite:///{path}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, url], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for p in procs:
        said(p, "ready")  # all started, imports done
    with FileLock(f"{path}.lock"):
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            said(p, "waiting")  # each found the database fresh and now waits for the lock
        assert not path.exists() or path.stat().st_size == 0  # nobody has created anything yet
    outs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [o[1][-800:] for o in outs]
    assert [o[0].strip() for o in outs] == [SCHEMA_REVISION] * 6
    with sqlite3.connect(tmp_path / "fresh.db") as con:
        assert con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
