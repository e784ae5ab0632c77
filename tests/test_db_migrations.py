"""Alembic migrations: old databases adopted with every row, fresh ones created once under concurrency."""
import json
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
from db.database import MIGRATIONS_DIR, SCHEMA_REVISION
from db.store import Store, StoreError

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
    before = {t: table_rows(db, t) for t in ("families", "studies", "trials")}
    store = Store(f"sqlite:///{db}")
    assert store.revision() == SCHEMA_REVISION
    moved = {"retention", "task_retention", "retentions"}  # 0004 keeps the first two once, in the third
    for table, rows in before.items():
        now = table_rows(db, table)
        assert [{k: r[k] for k in old if k not in moved} for r, old in zip(now, rows)] == \
            [{k: v for k, v in old.items() if k not in moved} for old in rows]  # every row, values unchanged
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT version FROM schema_version").fetchone()[0] == 1000  # old releases refuse it
    trials = store.trials(1)
    assert [t.retention for t in trials] == [r["retention"] for r in before["trials"]] == [0.71, 0.83, 0.79]
    assert [json.dumps(t.result.task_retention) for t in trials] == [r["task_retention"] for r in before["trials"]]
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


def table_rows(db: Path, table: str) -> list[dict]:
    """Every row of ``table`` by id, as {column: value}."""
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(f"SELECT * FROM {table} ORDER BY id")]


def at_0003(tmp_path: Path) -> Path:
    """A database at revision 0003 (the schema before retention was stored once) with every shape of trial
    that schema holds, written as that release's store wrote them (plain SQL: its code is gone)."""
    db = upgraded_to(tmp_path, "0003")
    studies = [  # id, refs, report, settings: where each study's definition came from
        (1, {"definition": "base"}, None, {"retention": "auto"}),  # fixed with its references
        (2, None, {"definition": "family"}, {}),  # only its report says
        (3, None, None, {"retention": "base"}),  # only its setting
        (4, None, None, {}),  # nothing: a retention then meant family
    ]
    fam = {"t": 0.8, "u": 0.4}
    both = {"family": {"mean": 0.6, "tasks": fam}, "base": {"mean": 0.9, "tasks": {"t": 1.2, "u": 0.6}}}
    trials = [  # id, study, number, status, retention, task_retention, retentions
        (1, 1, 0, "complete", 0.9, {"t": 1.2, "u": 0.6}, both),  # both stored: base applies
        (2, 1, 1, "complete", 0.75, {"t": 0.75}, None),  # before both were kept: the study's (base)
        (3, 1, 2, "failed", None, {}, None),  # nothing scored
        (4, 2, 0, "complete", 0.6, fam, None),
        (5, 3, 0, "complete", 1.1, {"t": 1.1}, None),
        (6, 4, 0, "complete", 0.5, {"t": 0.5}, None),
        (7, 4, 1, "complete", 0.9, {"t": 1.2, "u": 0.6}, both),  # the means say base, not the study's family
        (8, 4, 2, "complete", 0.3, {"t": 0.3}, {"base": {"mean": 0.45, "tasks": {"t": 0.45}}}),  # family missing
    ]
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO families (id, name, spec, info, created_at) VALUES (1, 'tiny', '{}', '{}', "
                    "'2026-12-01 00:00:00')")
        for sid, refs, report, settings in studies:
            con.execute("INSERT INTO studies (id, name, family_id, family_source, method, budget, settings, status, "
                        "n_trials, created_at, refs, report) VALUES (?, ?, 1, 'demo', 'random', '{}', ?, 'finished', "
                        "3, '2026-12-01 00:00:00', ?, ?)",
                        (sid, f"s{sid}", json.dumps(settings), refs and json.dumps(refs), report and json.dumps(report)))
        for tid, sid, number, status, ret, tasks, rets in trials:
            con.execute("INSERT INTO trials (id, study_id, number, plan, plan_text, fidelity, scores, task_retention, "
                        "retention, kept_layers, params, status, source, cached, retentions, created_at) VALUES "
                        "(?, ?, ?, ?, ?, 4, ?, ?, ?, 2, 1000, ?, 'search', 0, ?, '2026-12-01 00:00:00')",
                        (tid, sid, number, json.dumps({"family": "tiny", "layers": ["base", "drop", "base"]}),
                         "0:base 1:drop 2:base", json.dumps({k: v / 2 for k, v in tasks.items()}), json.dumps(tasks),
                         ret, status, rets and json.dumps(rets)))
    return db


def test_retention_stored_once_keeps_every_trial(tmp_path):
    """Upgrading a database of the previous schema to revision 0004 keeps every trial with the same retention:
    the applicable definition's mean and per-task values, and every definition stored before."""
    db = at_0003(tmp_path)
    before = table_rows(db, "trials")
    store = Store(f"sqlite:///{db}")
    assert store.revision() == SCHEMA_REVISION
    after = {(s, t.number): t for s in range(1, 5) for t in store.trials(s)}
    assert len(after) == len(before) == 8  # every trial survives
    base_means = {1: 0.9, 2: 0.75, 5: 1.1, 7: 0.9, 8: 0.45}  # where base applies or was stored
    for row in before:
        t = after[(row["study_id"], row["number"])]
        assert (t.status, t.plan.to_text(), t.fidelity) == (row["status"], row["plan_text"], row["fidelity"])
        if row["retention"] is None:
            assert t.result is None and t.retention is None
            continue
        assert t.retention == row["retention"]  # the same number, under the definition that applies
        assert t.result.task_retention == json.loads(row["task_retention"])
        assert t.result.scores == json.loads(row["scores"])
        assert t.result.retentions.get("base") == base_means.get(row["id"])
    # which definition applied, hand-checked per trial (study 1 base: refs; 2 family: report; 3 base: setting;
    # 4 family: nothing stored, except trial 7 whose stored means say base)
    assert {k: t.result.definition for k, t in after.items() if t.result} == {
        (1, 0): "base", (1, 1): "base", (2, 0): "family", (3, 0): "base", (4, 0): "family", (4, 1): "base",
        (4, 2): "family"}
    assert after[(1, 0)].result.retentions == {"family": 0.6, "base": 0.9}  # both kept as they were
    assert after[(4, 2)].result.retentions == {"family": 0.3, "base": 0.45}
    assert store.study(1)["best_retentions"] == {"family": 0.6, "base": 0.9}
    with sqlite3.connect(db) as con:
        cols = {r[1] for r in con.execute("PRAGMA table_info(trials)")}
    assert "retention" not in cols and "task_retention" not in cols and "definition" in cols
    from alembic import command

    eng = create_engine(f"sqlite:///{db}")  # and back: the flat columns come back with the same values
    with eng.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    eng.dispose()
    again = table_rows(db, "trials")
    assert [(r["id"], r["retention"], json.loads(r["task_retention"] or "{}")) for r in again] == \
        [(r["id"], r["retention"], json.loads(r["task_retention"])) for r in before]


def test_visitor_columns_keep_every_row_of_todays_schema(tmp_path):
    """A database at revision 0004 (with a study an older app stamped with a session hash) upgrades to head
    (0005 visitor columns, 0006 prefix-cache figures) with every row and value unchanged; the new columns
    start empty (no visitor owns an older study; its trials' cache figures are unknown), and the downgrade
    gives the same rows back."""
    from alembic import command

    db = at_0003(tmp_path)
    Store(f"sqlite:///{db}")  # to head; then back to today's schema, as a database of today would be
    eng = create_engine(f"sqlite:///{db}")
    with eng.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    eng.dispose()
    with sqlite3.connect(db) as con:
        con.execute("""UPDATE studies SET settings = '{"owner": "copied-session"}' WHERE id = 2""")
    before = {t: table_rows(db, t) for t in ("families", "studies", "trials")}
    store = Store(f"sqlite:///{db}")
    assert store.revision() == SCHEMA_REVISION == "0006"
    assert [r["prefix_cache"] for r in table_rows(db, "trials")] == [None] * len(before["trials"])
    for table, rows in before.items():
        now = table_rows(db, table)
        assert [{k: r[k] for k in old} for r, old in zip(now, rows)] == rows and len(now) == len(rows)
    assert [(s["owner_hash"], s["client_key"]) for s in store.studies()] == [(None, None)] * 4
    assert store.count_started() == 4 and store.count_started(client_key="anyone") == 0
    eng = create_engine(f"sqlite:///{db}")
    with eng.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    eng.dispose()
    assert {t: table_rows(db, t) for t in before} == before


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
