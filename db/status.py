"""What a study is doing, in words, and whether its worker is alive: the phase line every page and the
CLI show (``phase_line``), and the heartbeat rule that declares a worker dead (``dead_reason``).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from .liveness import local_worker_dead
from .settings import grace_s, heartbeat_s
from .models import utcnow
from .store import ACTIVE

QUEUED = "queued"


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600} h {s % 3600 // 60:02d} m" if s >= 3600 else f"{s // 60} m {s % 60:02d} s" if s >= 60 \
        else f"{s} s"


def _steps(p: dict[str, Any], unit: str) -> str:
    done, total = p.get("done"), p.get("total")
    if total:
        return f"{done or 0} of {total} {unit}"
    return f"{done} {unit}" if done is not None else ""


def phase_text(p: dict[str, Any] | None) -> str:
    """What a worker says it is doing (``studies.progress``), in words; '' if it said nothing yet."""
    p = p or {}
    phase, detail, cached = p.get("phase"), p.get("detail") or "", p.get("cached")
    if phase == "launching":
        return "launching the worker"
    if phase == "starting":
        return "starting the worker (loading torch)"
    if phase == "loading family":
        return f"loading family {detail}".strip()
    if phase == "references":
        if cached:
            return f"references reused from the cache ({detail})" if detail else "references reused from the cache"
        return f"scoring references: {_steps(p, 'members')} ({detail})"
    if phase == "heuristics":
        if cached and p.get("done") == p.get("total"):
            return "heuristics reused from the cache"
        return f"computing heuristics: {_steps(p, 'done')} ({detail})" if p.get("done") != p.get("total") \
            else f"heuristics computed ({detail})"
    if phase == "seeds":
        return detail or "building the initial design"
    if phase == "trial":
        total = f" of {p['total']}" if p.get("total") else ""
        n = p.get("done", p.get("trial"))  # trials counted so far (a cut one is run again, not counted)
        top = p.get("max_fidelity")
        fid = f" at fidelity {p.get('fidelity')}" + (f"/{top}" if top else "") + " examples per task"
        eta = f" · ETA {_duration(p['eta_s'])}" if p.get("eta_s") is not None else ""
        return f"trial {int(n or 0) + 1}{total}{fid}{eta}"
    if phase == "between trials":
        return f"between trials (trial {int(p.get('last_trial') or 0) + 1} stored)"
    if phase == "report":
        return "re-scoring the best plan on the test split"
    if phase == "stopped":
        return "stopped"
    return str(phase or "")


def phase_line(s: dict[str, Any], now: datetime | None = None) -> str:
    """A study's status as one line for every page and the CLI: the phase of an active study (with a
    warning once its worker's heartbeat is late), or how it ended."""
    status = s["status"]
    if status == QUEUED:
        return "queued: waiting for a free worker"
    if status not in ACTIVE:
        return status + (f": {s['error']}" if s.get("error") else "")
    text = phase_text(s.get("progress")) or ("waiting for a worker" if not _launched(s) else "starting")
    if status == "cancelling":
        text = f"cancel requested; still {text}"
    last = s.get("heartbeat_at")
    if _launched(s) and last is not None:
        age = ((now or utcnow()) - last).total_seconds()
        if age > max(3 * heartbeat_s(), 10.0):
            text += (f" · ⚠ no heartbeat for {age:.0f} s: the worker may be stuck (declared interrupted after "
                     f"{grace_s():g} s)")
    return text


def _launched(s: dict[str, Any]) -> bool:
    """Whether a worker was ever started for an active study (a created, never launched one has none)."""
    return bool(s["worker_pid"] or s["heartbeat_at"])


def dead_reason(s: dict[str, Any], now: datetime | None = None) -> str | None:
    """Why the study's worker counts as dead, or None while it may be alive.

    The heartbeat decides, wherever the worker runs: older than the grace period means dead. A pid is
    a fast path only here, on the worker's own host, for the very process that claimed the study."""
    if local_worker_dead(s["worker_pid"], s["worker_host"], s["worker_start"]):
        return f"the worker process (pid {s['worker_pid']}) ended unexpectedly"
    last = s["heartbeat_at"] or s["started_at"] or s["created_at"]
    age = ((now or utcnow()) - last).total_seconds()
    grace = grace_s()
    if age > grace:
        where = f"pid {s['worker_pid']}" + (f" on {s['worker_host'].split('/')[0]}" if s["worker_host"] else "")
        return (f"the worker ({where}) stopped responding: no heartbeat for {age:.0f} s "
                f"(grace {grace:g} s, GPTAILOR_GRACE_S)")
    return None


def worker_alive(s: dict[str, Any]) -> bool:
    """An active study's worker may still be running (launched, and not known to be dead)."""
    return _launched(s) and dead_reason(s) is None


__all__ = ["QUEUED", "phase_text", "phase_line", "dead_reason", "worker_alive"]
