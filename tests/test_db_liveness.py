"""Heartbeats, dead or hung workers, reused pids, two hosts and the hard stop, with real processes."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

from db.liveness import host_id, process_start
from db.models import StudyRow, utcnow
from db.runs import StudyError, create_study
from db.workers import cancel, check_resumable, launch, reconcile
from db.store import Store
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget

from conftest import make_tiny_family_with_suite

SLOW = ("tests/slow_worker.py",)
CUT = "worker stopped responding during this trial"
HANG_GUARD_S = 600  # only against a test that would hang for ever; every wait below ends on an event
FOREVER = "3600"  # seconds: a setting no step of a test may reach, however loaded the machine


@pytest.fixture(scope="module")
def fam_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("livefam")
    make_tiny_family_with_suite(d, n_layers=6, n_test=12)
    return d


@pytest.fixture
def fast_beats(monkeypatch):
    """Frequent heartbeats for this test and the workers it launches (they inherit the environment), graces
    and a stuck trial no slow machine can outlast: a test that needs a grace passed lowers it only once the
    real silence is longer (``silent_for``)."""
    monkeypatch.setenv("GPTAILOR_HEARTBEAT_S", "0.3")
    monkeypatch.setenv("GPTAILOR_GRACE_S", FOREVER)
    monkeypatch.setenv("GPTAILOR_STOP_GRACE_S", FOREVER)
    monkeypatch.setenv("SLOW_EVAL_S", FOREVER)


def wait_until(cond: Callable[[], Any], proc: subprocess.Popen | None = None, log: Path | None = None) -> Any:
    """Poll ``cond`` until it holds (an event in the database or a process), failing at once if ``proc``
    (the worker it depends on) ended instead. No deadline: a slow machine only makes it wait longer."""
    while not (value := cond()):
        if proc is not None:
            assert proc.poll() is None, log.read_text() if log is not None and log.exists() else "no log"
        time.sleep(0.05)
    return value


def state(pid: int) -> str:
    """The process's scheduler state letter (/proc/<pid>/stat): R, S, T (stopped), Z..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def write_locked(db: Path) -> bool:
    """Whether some process holds the SQLite database's write lock right now."""
    con = sqlite3.connect(db, timeout=0)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.rollback()
        return False
    except sqlite3.OperationalError as e:
        assert "locked" in str(e), e
        return True
    finally:
        con.close()


def stop_between_beats(store: Store, sid: int, proc: subprocess.Popen, db: Path, log: Path) -> None:
    """SIGSTOP the worker right after one of its beats, at a moment it holds no write lock (a writer
    stopped inside its transaction would lock every other writer out); retried after the next beat if not."""
    while True:
        seen = store.study(sid)["heartbeat_at"]
        wait_until(lambda seen=seen: store.study(sid)["heartbeat_at"] != seen, proc, log)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: state(proc.pid) == "T")
        if not write_locked(db):
            return
        os.kill(proc.pid, signal.SIGCONT)


def silent_for(store: Store, sid: int, seconds: float) -> None:
    """Wait until the study's last heartbeat is really ``seconds`` old (its worker is stopped)."""
    last = store.study(sid)["heartbeat_at"]
    wait_until(lambda: (utcnow() - last).total_seconds() > seconds)


def kill_group(proc: subprocess.Popen) -> None:
    """End a launched worker and its children (stopped or not), whatever the test left it doing."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def new_study(store: Store, fam_dir, n_trials=3) -> tuple[Store, int]:
    """A random search (no SMAC model, no heuristics to compute: the worker reaches its first trial soonest)."""
    sid = create_study(store, str(fam_dir / "family.yaml"), "random", Budget(remove_layers=2),
                       SearchSettings(method="random", n_trials=n_trials, min_fidelity=2, max_fidelity=8, seed=0))
    return store, sid


def in_trial(store: Store, sid: int, proc: subprocess.Popen, log) -> dict:
    """Wait until the worker is inside a trial (its progress says which)."""
    def trial():
        s = store.study(sid)
        return s if (s["progress"] or {}).get("phase") == "trial" else None
    return wait_until(trial, proc, log)


def test_sigstop_past_grace_from_another_host_then_resume(tmp_path, fam_dir, fast_beats, monkeypatch):
    """Host A runs a worker; host B (another data dir and host id, the same database URL) cannot see its
    pid: it leaves it alone while it beats, and declares it dead once it has not beaten for the grace
    period (here: stopped by SIGSTOP inside a trial). The woken worker then writes nothing more."""
    db = tmp_path / "shared" / "g.db"
    monkeypatch.setenv("GPTAILOR_DB_URL", f"sqlite:///{db}")
    monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path / "host-a"))
    monkeypatch.setenv("GPTAILOR_HOST_ID", "host-a")
    store, sid = new_study(Store(), fam_dir)
    logs = tmp_path / "host-a" / "logs"
    proc = launch(store, sid, log_dir=logs, worker=SLOW)
    log = logs / f"study-{sid}.log"
    try:
        s = in_trial(store, sid, proc, log)
        assert s["worker_host"] == "host-a"
        monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path / "host-b"))
        monkeypatch.setenv("GPTAILOR_HOST_ID", "host-b")
        b = Store()
        for _ in range(2):  # a live worker elsewhere, seen beating: left alone
            seen = b.study(sid)["heartbeat_at"]
            wait_until(lambda seen=seen: b.study(sid)["heartbeat_at"] != seen, proc, log)
            assert reconcile(b) == []
        with pytest.raises(StudyError, match="still running"):
            check_resumable(b, sid)
        stop_between_beats(b, sid, proc, db, log)
        try:
            assert reconcile(b) == []  # not beating any more, but not for the grace period
            silent_for(b, sid, 2.0)
            monkeypatch.setenv("GPTAILOR_GRACE_S", "2")  # now the silence is longer than the grace
            assert reconcile(b) == [sid]
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        s2 = b.study(sid)
        assert s2["status"] == "interrupted" and "on host-a" in s2["error"] and "no heartbeat for" in s2["error"]
        trials = b.trials(sid)
        assert [(t.number, t.status, t.error) for t in trials] == [(s["progress"]["trial"], "cut", CUT)]
        assert trials[0].plan.to_text() == s["progress"]["plan"] and trials[0].fidelity == s["progress"]["fidelity"]
        # woken up, the worker finds its study is no longer its own and stops without writing anything
        assert proc.wait(timeout=HANG_GUARD_S) != 0
        assert b.trials(sid) == trials and b.study(sid)["status"] == "interrupted"
        assert "no longer owns its study" in log.read_text()
        # resumable from there (test_db's SIGKILL test runs such a resume to the end)
        assert check_resumable(b, sid)["status"] == "interrupted"
    finally:
        kill_group(proc)


def test_cancel_hard_stops_a_worker_stuck_in_a_trial(tmp_path, fam_dir, fast_beats):
    store, sid = new_study(Store(f"sqlite:///{tmp_path / 'g.db'}"), fam_dir)
    proc = launch(store, sid, log_dir=tmp_path / "logs", worker=SLOW)
    try:
        s = in_trial(store, sid, proc, tmp_path / "logs" / f"study-{sid}.log")
        # the trial never ends by itself: after 1 s SIGTERM ends it, and the worker records that itself
        # (SIGKILL would come only GPTAILOR_STOP_GRACE_S / 3 later: never, here)
        assert cancel(store, sid, wait=1.0) == "cancelled"
        assert proc.wait(timeout=HANG_GUARD_S) is not None
        done = store.study(sid)
        assert done["status"] == "cancelled" and done["error"] == "stopped by a signal"
        (cut,) = store.trials(sid)
        assert (cut.number, cut.status, cut.error) == (s["progress"]["trial"], "cut",
                                                                "stopped by a signal during this trial")
    finally:
        kill_group(proc)


# ------------------------------------------------------------------ pid reuse, with real unrelated processes
@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", FOREVER])
    yield proc
    proc.kill()
    proc.wait()


def running_study(store: Store, pid: int, host: str | None, start: str | None, beat_age_s: float) -> int:
    sid = store.create_study(family_name="tiny", family_source="demo", family_spec={}, family_info={},
                             method="random", budget={"remove_layers": 1}, settings={}, n_trials=3)
    with store.session() as s:
        row = s.get(StudyRow, sid)
        row.status, row.worker_pid, row.worker_host, row.worker_start = "running", pid, host, start
        row.heartbeat_at = utcnow() - timedelta(seconds=beat_age_s)
        row.progress = {"phase": "trial", "trial": 0, "plan": "0:base 1:drop", "plan_json": {"family": "tiny"},
                        "fidelity": 4}
    return sid


@pytest.mark.parametrize("case,start,beat_age_s,dead", [
    ("reused pid: another process now, fresh heartbeat", "1", 0, True),
    ("reused pid, stale heartbeat", "1", 120, True),
    ("the very process, fresh heartbeat", "real", 0, False),
    ("the very process, hung: stale heartbeat", "real", 120, True),
    ("written by an older release: pid only, stale heartbeat", None, 120, True),
])
def test_a_live_pid_is_not_proof_of_life(tmp_path, sleeper, case, start, beat_age_s, dead):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    host = None if start is None else host_id()
    sid = running_study(store, sleeper.pid, host, process_start(sleeper.pid) if start == "real" else start,
                        beat_age_s)
    assert reconcile(store) == ([sid] if dead else [])
    s = store.study(sid)
    assert s["status"] == ("interrupted" if dead else "running")
    if dead:
        assert [(t.number, t.status, t.error) for t in store.trials(sid)] == [(0, "cut", CUT)]
    assert sleeper.poll() is None  # never signalled


def test_hard_stop_signals_only_the_recorded_process(tmp_path, monkeypatch):
    """A 'worker' that ignores SIGTERM is killed; a reused pid (another process) is never signalled."""
    monkeypatch.setenv("GPTAILOR_STOP_GRACE_S", "0.6")
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 f"signal.SIG_IGN); print('ready', flush=True); time.sleep({FOREVER})"],
                                stdout=subprocess.PIPE, start_new_session=True)
    other = subprocess.Popen(["sleep", FOREVER], start_new_session=True)
    try:
        stubborn.stdout.readline()
        store = Store(f"sqlite:///{tmp_path / 'g.db'}")
        a = running_study(store, stubborn.pid, host_id(), process_start(stubborn.pid), 0)
        b = running_study(store, other.pid, host_id(), "1", 0)  # its worker died; the pid went to `sleep`
        assert cancel(store, b, wait=0.3) == "cancelled"
        assert other.poll() is None
        assert cancel(store, a, wait=0.3) == "cancelled"  # SIGTERM is ignored: SIGKILL ends it
        assert stubborn.wait(timeout=HANG_GUARD_S) == -signal.SIGKILL
        assert "SIGKILL" in store.study(a)["error"]
    finally:
        for p in (stubborn, other):
            p.kill()
            p.wait()


def cancel_asked_ago(store: Store, sid: int, seconds: float) -> None:
    """Date the study's cancel request ``seconds`` back, as if that long had passed since it was asked:
    each step of the escalation is then reached on purpose, not by the machine's speed."""
    with store.session() as s:
        s.get(StudyRow, sid).cancel_requested_at = utcnow() - timedelta(seconds=seconds)


def test_reader_escalates_a_cancel_to_sigterm_then_sigkill(tmp_path, monkeypatch):
    """What the UI's refresh does: cancel without waiting; later reconciles send SIGTERM once the cancel
    is GPTAILOR_STOP_GRACE_S old, and SIGKILL a third of it later, to a worker that honours neither."""
    grace = 600
    monkeypatch.setenv("GPTAILOR_STOP_GRACE_S", str(grace))
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "lambda *a: print('term', flush=True)); print('ready', flush=True)\n"
                                 "while True: time.sleep(1)"],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert stubborn.stdout.readline() == "ready\n"
        store = Store(f"sqlite:///{tmp_path / 'g.db'}")
        sid = running_study(store, stubborn.pid, host_id(), process_start(stubborn.pid), 0)
        assert cancel(store, sid) == "cancelling"
        assert reconcile(store) == [] and store.study(sid)["status"] == "cancelling"  # a fresh cancel: no signal
        cancel_asked_ago(store, sid, grace * 1.1)  # past the grace, short of its 4/3: SIGTERM
        assert reconcile(store) == []
        assert stubborn.stdout.readline() == "term\n"  # it was asked nicely first (and ignored it)
        assert stubborn.poll() is None and store.study(sid)["status"] == "cancelling"
        cancel_asked_ago(store, sid, grace * 1.5)  # past 4/3 of the grace: SIGKILL
        reconcile(store)
        assert stubborn.wait(timeout=HANG_GUARD_S) == -signal.SIGKILL
        wait_until(lambda: reconcile(store) or store.study(sid)["status"] != "cancelling")
        s = store.study(sid)
        assert s["status"] == "cancelled" and "stopped by force" in s["error"]
        assert [t.error for t in store.trials(sid)] == [CUT]
    finally:
        for p in (stubborn,):
            p.kill()
            p.wait()


def test_a_trial_cut_by_a_kill_is_run_again_and_not_counted(tmp_path, fam_dir, fast_beats):
    """SIGKILL inside the first trial (a seeded plan); resumed, the study ends with exactly the trials asked
    for that ran to their end, the cut one among them again: same plan, same fidelity, same source label."""
    store, sid = new_study(Store(f"sqlite:///{tmp_path / 'g.db'}"), fam_dir, n_trials=4)
    logs = tmp_path / "logs"
    proc = launch(store, sid, log_dir=logs, worker=SLOW)
    try:
        s = in_trial(store, sid, proc, logs / f"study-{sid}.log")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
    finally:
        kill_group(proc)
    assert reconcile(store) == [sid]
    (cut,) = store.trials(sid)
    assert (cut.number, cut.status, cut.error, cut.source) == (0, "cut", CUT, s["progress"]["source"])
    assert cut.source != "search"  # the first trial is a seed plan, stored under the seed's name
    assert store.study(sid)["trials_done"] == 0  # nothing counted yet
    resumed = launch(store, sid, log_dir=logs)
    assert resumed.wait(timeout=HANG_GUARD_S) == 0, (logs / f"study-{sid}.log").read_text()
    done = store.study(sid)
    trials = store.trials(sid)
    assert done["status"] == "finished" and done["trials_done"] == 4
    assert [t.status for t in trials].count("cut") == 1 and len(trials) == 5
    again = [t for t in trials[1:] if (t.plan.key(), t.fidelity) == (cut.plan.key(), cut.fidelity)]
    # scored once (a repeat SMAC asks for in another bracket is served from the cache), all under its label
    assert [(t.status, t.source, t.cached) for t in again][:1] == [("complete", cut.source, False)] and \
        all((t.status, t.source, t.cached) == ("complete", cut.source, True) for t in again[1:]), \
        [(t.number, t.plan.to_text(), t.fidelity, t.source, t.cached) for t in trials]
