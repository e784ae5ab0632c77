"""Study lifecycle across processes: launch a background worker, cancel, detect interruption, resume, queue.

A study runs in its own process (``python -m db.worker``), never in the UI's thread: it writes each
trial in its own transaction as soon as it completes, beats a heartbeat, and polls the database for
a cancel request between trials. A worker killed outright (SIGKILL, OOM killer, reboot) or hung
(stopped, swapped out, its host gone) stops beating; ``reconcile``, which any reader may call, turns
its study into ``interrupted`` (recording the trial it was inside as failed), and ``resume`` starts a
new worker that re-tells the stored trials to SMAC and goes on to the requested number. A cancel the
worker does not honour in time ends in SIGTERM, then SIGKILL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .liveness import Owner, host_id, local_worker_dead, process_start
from .settings import data_dir, stop_grace_s
from .models import utcnow
from .runs import StudyError
from .status import QUEUED, _launched, dead_reason, worker_alive
from .store import ACTIVE, Store

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- background workers
WORKER = ("-m", "db.worker")


def launch(store: Store, study_id: int, log_dir: str | os.PathLike | None = None,
           worker: tuple[str, ...] = WORKER) -> subprocess.Popen:
    """Start a worker process for the study; returns at once.

    ``worker`` is the Python command line that runs it (tests pass a slowed-down one)."""
    if store.in_memory:
        raise StudyError(f"{store.url} is an in-memory database: a worker process cannot see it (and it is gone "
                         f"when this process ends); use a file, e.g. sqlite:////absolute/path/gptailor.db in "
                         f"--db or GPTAILOR_DB_URL")
    store.check_intact()  # a damaged database gets no worker writing into it
    study = store.study(study_id)
    if study["status"] in ACTIVE and worker_alive(study):
        raise StudyError(f"study {study_id} already has a live worker (pid {study['worker_pid']}, "
                         f"{study['status']})")
    seed = int(study["settings"].get("seed", 0))
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = None
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(log_dir) / f"study-{study_id}.log", "ab")
    try:
        proc = subprocess.Popen([sys.executable, *worker, "--db", store.url, "--study", str(study_id)],
                                env=env, cwd=str(ROOT), stdout=log or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log is not None:
            log.close()  # the child has its own descriptor
    store.launched(study_id, Owner(proc.pid, host_id(), process_start(proc.pid)))
    reap(proc)
    return proc


def reap(proc: subprocess.Popen) -> None:
    """Wait for the worker in a daemon thread, so that a long-lived launcher (the app) collects its exit
    status when it ends: no zombie process stays behind. A caller may still ``proc.wait()`` itself."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def _owner(s: dict[str, Any]) -> Owner:
    return Owner(s["worker_pid"], s["worker_host"], s["worker_start"])


FULL_BYTES = 1 << 20  # a disk with less free than this counts as full (SQLite, logs and caches need more)


def full_disk(store: Store) -> str | None:
    """A reader's diagnosis of a dead worker: the disk of the database, the data dir or the temp dir (what
    a worker writes) when it is full, in words, else None. Said when the worker could not say it itself
    (its database and log on that very disk)."""
    seen: set[int] = set()
    for folder in (store.path.parent if store.path else None, data_dir(create=False), Path(tempfile.gettempdir())):
        try:
            st = os.statvfs(folder) if folder is not None else None
            dev = os.stat(folder).st_dev if folder is not None else None
        except OSError:
            continue
        if st is None or dev in seen:
            continue
        seen.add(dev)
        free = st.f_bavail * st.f_frsize
        if free < FULL_BYTES:
            return (f"the disk holding {folder} is full ({free:,} bytes free), the likely cause: free some space, "
                    f"then resume it")
    return None


def reconcile(store: Store) -> list[int]:
    """Mark studies whose worker died (or stopped beating) 'interrupted', or 'cancelled' if a cancel was
    asked; record the trial each was inside as failed; hard-stop cancelled workers that overstay their
    grace. Returns the ids of the studies it ended."""
    out = []
    now = utcnow()
    for s in store.studies():
        if s["status"] not in ACTIVE or not _launched(s):
            continue
        reason = dead_reason(s, now)
        if reason is None:
            if s["status"] == "cancelling":
                _escalate(s, now)
            continue
        if s["status"] == "cancelling":
            asked = s["cancel_requested_at"]
            forced = asked is not None and (now - asked).total_seconds() >= stop_grace_s()
            status, error = "cancelled", (f"cancelled; stopped by force: the worker had not stopped "
                                          f"{stop_grace_s():g} s after the cancel (GPTAILOR_STOP_GRACE_S)"
                                          if forced else f"cancelled; {reason}")
        else:
            disk = full_disk(store)
            status, error = "interrupted", f"{reason}; " + (disk or "resume it")
        if store.stop(s["id"], status, error, owner=_owner(s), heartbeat_seen=s["heartbeat_at"],
                      inflight_error="worker stopped responding during this trial"):
            out.append(s["id"])
    return out


def _signal(s: dict[str, Any], sig: int) -> bool:
    """Send ``sig`` to the study's worker and its process group, only if it is certainly that worker
    (this host, same process start time); True if sent."""
    if local_worker_dead(s["worker_pid"], s["worker_host"], s["worker_start"]) is not False:
        return False
    pid = s["worker_pid"]
    try:
        os.killpg(pid, sig)  # the background worker leads its own session: its children go too
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)  # a foreground run is not a group leader
        except (ProcessLookupError, PermissionError):
            return False
    return True


def _escalate(s: dict[str, Any], now: datetime) -> None:
    """The hard stop: SIGTERM once a cancel has waited GPTAILOR_STOP_GRACE_S, SIGKILL a third later."""
    asked = s["cancel_requested_at"]
    if asked is None:
        return
    waited, grace = (now - asked).total_seconds(), stop_grace_s()
    if waited >= grace:
        _signal(s, signal.SIGKILL if waited >= grace * 4 / 3 else signal.SIGTERM)


def cancel(store: Store, study_id: int, wait: float | None = None) -> str:
    """Ask the worker to stop after the current trial (or mark a study without a live worker cancelled).

    With ``wait``, block up to that many seconds for it to stop, then stop it by force (SIGTERM, then
    SIGKILL) if it runs on this host. Without, ``reconcile`` (the UI's refresh, ``studies``) escalates
    once the cancel is GPTAILOR_STOP_GRACE_S old. Returns the study's status."""
    s = store.study(study_id)
    if not (worker_alive(s) and store.request_cancel(study_id)):
        store.transition(study_id, ACTIVE, "cancelled")
        return store.study(study_id)["status"]
    if wait is None:
        return "cancelling"
    deadline = time.time() + wait
    while time.time() < deadline and store.study(study_id)["status"] in ACTIVE:
        time.sleep(0.2)
    s = store.study(study_id)
    if s["status"] in ACTIVE and _signal(s, signal.SIGTERM):
        kill_at = time.time() + max(1.0, stop_grace_s() / 3)
        while time.time() < kill_at and store.study(study_id)["status"] in ACTIVE:
            time.sleep(0.2)
        s = store.study(study_id)
        if s["status"] in ACTIVE:
            _signal(s, signal.SIGKILL)
            for _ in range(50):
                if local_worker_dead(s["worker_pid"], s["worker_host"], s["worker_start"]):
                    store.stop(study_id, "cancelled", f"cancelled; stopped by force (SIGKILL): the worker had not "
                               f"stopped {wait:g} s after the cancel nor after SIGTERM", owner=_owner(s),
                               inflight_error="stopped by force during this trial")
                    break
                time.sleep(0.1)
    reconcile(store)
    return store.study(study_id)["status"]


def check_resumable(store: Store, study_id: int) -> dict[str, Any]:
    """The study, if it can be resumed (not finished, no live worker); StudyError saying why not."""
    reconcile(store)
    s = store.study(study_id)
    if s["status"] == "finished":
        raise StudyError(f"study {study_id} is finished ({s['trials_done']} trials); nothing to resume")
    if s["status"] in ACTIVE and worker_alive(s):
        raise StudyError(f"study {study_id} is still running (pid {s['worker_pid']}); cancel it first")
    return s


def resume(store: Store, study_id: int, log_dir: str | os.PathLike | None = None) -> subprocess.Popen:
    check_resumable(store, study_id)
    return launch(store, study_id, log_dir)


def wait(store: Store, study_id: int, timeout: float = 600, poll: float = 0.5) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = store.study(study_id)
        if s["status"] in ("finished", "failed", "cancelled", "interrupted"):
            return s
        reconcile(store)
        time.sleep(poll)
    raise TimeoutError(f"study {study_id} still {store.study(study_id)['status']} after {timeout}s")


# ----------------------------------------------------------------------------- a capped number of workers
_QUEUE_LOCK = threading.Lock()  # one process's launches are counted one at a time


def running(store: Store) -> list[int]:
    """Ids of the studies holding a live worker right now (each one a process using CPU or GPU)."""
    return [s["id"] for s in store.studies() if s["status"] in ACTIVE and worker_alive(s)]


def _busy(store: Store) -> int:
    return len(running(store))


def launch_or_queue(store: Store, study_id: int, max_workers: int = 0,
                    log_dir: str | os.PathLike | None = None) -> str:
    """Start a worker for the study if fewer than ``max_workers`` run (0: no cap), else mark it 'queued'
    for ``start_queued``; returns 'started' or 'queued'. The stored seed is checked first: a worker
    cannot start with a PYTHONHASHSEED outside 0..2**32-1."""
    from gptailor.common.limits import SettingsError, whole

    try:
        whole("seed", store.study(study_id)["settings"].get("seed", 0))
    except SettingsError as e:
        raise StudyError(f"study {study_id}: {e}") from None
    with _QUEUE_LOCK:
        if max_workers and (_busy(store) >= max_workers or queue(store)):
            if store.transition(study_id, ("created", "interrupted", "cancelled", "failed"), QUEUED):
                return QUEUED
        launch(store, study_id, log_dir)
        return "started"


def queue(store: Store) -> list[int]:
    """Ids of the queued studies, first in line first."""
    return [s["id"] for s in store.studies() if s["status"] == QUEUED]


def start_queued(store: Store, max_workers: int = 0, log_dir: str | os.PathLike | None = None) -> list[int]:
    """Start queued studies, oldest first, while fewer than ``max_workers`` run; returns the ids started.

    Safe to call often and from several places (the app's timer and launch path): a study leaves the
    queue by one atomic status change, so no two callers start it twice."""
    started: list[int] = []
    with _QUEUE_LOCK:
        reconcile(store)
        free = (max_workers - _busy(store)) if max_workers else len(queue(store))
        for sid in queue(store)[:max(0, free)]:
            if store.transition(sid, (QUEUED,), "created"):
                launch(store, sid, log_dir)
                started.append(sid)
    return started


def withdraw(store: Store, study_id: int) -> None:
    """Cancel a study: a queued one leaves the queue at once, others go through ``cancel``."""
    if not store.transition(study_id, (QUEUED,), "cancelled"):
        cancel(store, study_id)


def terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


__all__ = ["launch", "reap", "reconcile", "cancel", "check_resumable", "resume", "wait", "running",
           "launch_or_queue", "queue", "start_queued", "withdraw", "terminate"]
