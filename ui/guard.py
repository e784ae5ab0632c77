"""What a visitor may do in one browser session: refusal messages without server paths, per-session
caps on studies, exports and uploads, and who may cancel or resume a study.

A session is Gradio's ``gr.Request.session_hash`` (one per open page or API client). A visitor may
manage only the studies started in their own session; an operator (logged in through
``GPTAILOR_AUTH``) may manage any.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from filelock import FileLock

from .engine import redact, store
from db.settings import data_dir, public_mode, session_cap

COUNTS_FILE = "session_counts.json"  # under the data dir: exports and uploads made per session
KEEP_SESSIONS = 5000  # sessions remembered per kind; the oldest are forgotten first
LOCK_STRIPES = 256  # cross-process locks per kind: a session hashes to one (bounded files, rare sharing)
_LOCKS: dict[tuple[str, str], threading.Lock] = {}  # one per (kind, session): its check and count are atomic
_LOCKS_GUARD = threading.Lock()


def refuse(error: Exception | str) -> gr.Error:
    """A gr.Error with the message (server folders hidden in public mode), to ``raise ... from None``.

    The page renders a toast's text as HTML, so '<' and '&' are escaped: a parser's '<unicode string>'
    or a redacted '<data>' must show as text, not vanish as a tag."""
    return gr.Error(html.escape(redact(str(error)), quote=False))


def session_of(request: gr.Request | None) -> str:
    return str(getattr(request, "session_hash", None) or "")


def is_operator(request: gr.Request | None) -> bool:
    """Logged in through GPTAILOR_AUTH (Gradio sets the user name only then)."""
    return bool(getattr(request, "username", None))


def _counts_path() -> Path:
    return data_dir() / COUNTS_FILE


def _read_counts() -> dict[str, dict[str, int]]:
    try:
        data = json.loads(_counts_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet (or a damaged file: counting starts again rather than locking everyone out)
    return data if isinstance(data, dict) else {}


def used(what: str, session: str) -> int:
    """How many ``what`` this session made, from what is stored (so an app restart resets nothing):
    its studies in the database (its session is their ``owner``), its exports and uploads in
    ``<data dir>/session_counts.json``."""
    if what == "studies":
        return store().count_owned(session)
    n = _read_counts().get(what, {}).get(session, 0)
    return n if isinstance(n, int) else 0


def _count_one(what: str, session: str) -> None:
    """One more ``what`` for this session in the counts file (under a lock: several app processes)."""
    if what == "studies":
        return  # the stored study is the count
    with FileLock(str(_counts_path()) + ".lock", timeout=30):
        counts = _read_counts()
        mine = counts.setdefault(what, {})
        mine[session] = mine.pop(session, 0) + 1  # re-inserted last: the newest sessions are kept
        for old in list(mine)[:max(0, len(mine) - KEEP_SESSIONS)]:
            del mine[old]
        tmp = _counts_path().with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(counts), encoding="utf-8")
        os.replace(tmp, _counts_path())


@contextmanager
def allowance(what: str, request: gr.Request | None) -> Iterator[None]:
    """Refuse when this session already made ``session_cap(what)`` of them; count one more only if the
    block succeeds (a refused or failed attempt costs nothing; a study counts once stored). The counts are
    stored, not in memory, and one session's check and count are atomic within this process."""
    cap, session = session_cap(what), session_of(request)
    if not cap or is_operator(request):
        yield
        return
    with _LOCKS_GUARD:
        if len(_LOCKS) > 3 * KEEP_SESSIONS:  # bounded: forget the idle ones
            for key in [k for k, held in _LOCKS.items() if not held.locked()]:
                del _LOCKS[key]
        lock = _LOCKS.setdefault((what, session), threading.Lock())
    # two clicks of one session at once, in one process or in two serving one data dir, cannot both
    # take the last one
    with lock, _session_file_lock(what, session):
        if used(what, session) >= cap:
            raise gr.Error(f"this session already made {cap} {what}, the most one visitor may make here; "
                           f"reuse them or ask the app's operator")
        yield
        _count_one(what, session)


def _session_file_lock(what: str, session: str) -> FileLock:
    """The lock that makes one session's check-and-count atomic across app processes sharing the data dir.
    Sessions hash onto ``LOCK_STRIPES`` lock files per kind, so the folder stays small; two sessions on one
    stripe only wait for each other, they never share a count."""
    stripe = int(hashlib.sha256(session.encode()).hexdigest(), 16) % LOCK_STRIPES
    folder = data_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{what}-{stripe:03d}.lock"), timeout=3600)


def check_owner(study: dict[str, Any], request: gr.Request | None, action: str) -> None:
    """In public mode, only the session that started a study (or an operator) may ``action`` it."""
    if not public_mode() or is_operator(request):
        return
    owner = (study.get("settings") or {}).get("owner")
    if not owner or owner != session_of(request):
        raise gr.Error(f"study {study['id']} was started by another visitor; you can {action} only the "
                       f"studies started on this page")
