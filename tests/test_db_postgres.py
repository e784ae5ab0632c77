"""The same migrations and liveness writes on a real PostgreSQL server, started for this module.

Skipped where no PostgreSQL server binaries or no psycopg2 are installed."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

psycopg2 = pytest.importorskip("psycopg2")
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from db.liveness import Owner  # noqa: E402
from db.database import MIGRATIONS_DIR, SCHEMA_REVISION
from db.store import Store, StoreError  # noqa: E402
from bench.pgserver import PgUnavailable, new_database, pg_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    """A throwaway PostgreSQL cluster on a free port (bench/pgserver.py), or a skip saying why not."""
    try:
        with pg_server() as url:
            yield url
    except PgUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def url(server):
    """A fresh database on the server for each test."""
    return new_database(server)


MIGRATION_LOCK = 7244310513  # the advisory lock db.store takes around a PostgreSQL schema upgrade
HANG_GUARD_S = 600  # only against a hang; the test waits on the processes and the server's lock table
OPEN = ("import sys\nfrom db.store import Store\nprint('ready', flush=True)\nsys.stdin.readline()\n"
        "print(Store(sys.argv[1]).revision())")


def test_six_processes_create_a_fresh_database_at_once(url):
    """The race, made certain: all six find the database empty and queue at the migration's advisory lock
    (held here until the server shows six waiting for it), then take it one after another."""
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, url], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for p in procs:
        assert p.stdout.readline() == "ready\n", p.communicate()[1][-1500:]  # all started, imports done
    holder = create_engine(url)
    with holder.connect() as c:
        c.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        while c.execute(waiting).scalar() < 6:
            assert all(p.poll() is None for p in procs), [p.communicate()[1][-800:] for p in procs if p.poll()]
            time.sleep(0.05)
        c.execute(text(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
    holder.dispose()
    outs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [o[1][-800:] for o in outs]
    assert [o[0].strip() for o in outs] == [SCHEMA_REVISION] * 6


def test_pre_alembic_database_is_adopted_and_newer_refused(url):
    engine = create_engine(url)
    with engine.begin() as conn:  # what the old code left: the v1 tables, schema_version 1, no alembic_version
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("INSERT INTO families (id, name, spec, info, created_at) VALUES "
                          "(1, 'tiny', '{}', '{}', now())"))
        conn.execute(text("INSERT INTO studies (id, name, family_id, family_source, method, budget, settings, "
                          "status, n_trials, created_at) VALUES (1, 'old', 1, 'demo', 'random', '{}', '{}', "
                          "'interrupted', 3, now())"))
        conn.execute(text("INSERT INTO trials (id, study_id, number, plan, plan_text, scores, task_retention, "
                          "retention, status, source, created_at) VALUES (1, 1, 0, '{}', 'p0', '{}', '{}', 0.8, "
                          "'complete', 'search', now())"))
    engine.dispose()
    store = Store(url)
    assert store.revision() == SCHEMA_REVISION
    (t,) = store.trials(1)
    assert (t.plan.meta["text"], t.retention) == ("p0", 0.8) and store.study(1)["status"] == "interrupted"
    with store.engine.connect() as c:
        assert c.execute(text("SELECT cached FROM trials")).scalar() is False
        c.execute(text("UPDATE alembic_version SET version_num = '0042'"))
        c.commit()
    store.engine.dispose()
    with pytest.raises(StoreError, match="created by a newer gptailor; upgrade to open it"):
        Store(url)


def test_owner_guarded_writes_and_inflight_trial(url):
    store = Store(url)
    sid = store.create_study(family_name="t", family_source="demo", family_spec={}, family_info={},
                             method="random", budget={}, settings={}, n_trials=2)
    me, other = Owner.me(), Owner(1, "elsewhere", "1")
    assert store.claim(sid, me) and store.beat(sid, me) and not store.beat(sid, other)
    assert store.set_progress(sid, {"phase": "trial", "trial": 0, "plan": "p", "plan_json": {}, "fidelity": 2}, me)
    seen = store.study(sid)["heartbeat_at"]
    assert store.beat(sid, me)
    assert not store.stop(sid, "interrupted", "x", owner=me, heartbeat_seen=seen)  # it beat since: alive
    seen = store.study(sid)["heartbeat_at"]
    assert store.stop(sid, "interrupted", "gone", owner=me, heartbeat_seen=seen, inflight_error="cut")
    assert [(t.number, t.status, t.error) for t in store.trials(sid)] == [(0, "cut", "cut")]
    assert not store.beat(sid, me)
