"""What a visitor may do in one browser session: refusal messages without server paths, per-session
caps on studies, exports and uploads, and who may cancel or resume a study.

A session is Gradio's ``gr.Request.session_hash`` (one per open page or API client). A visitor may
manage only the studies started in their own session; an operator (logged in through
``GPTAILOR_AUTH``) may manage any.
"""
from __future__ import annotations

import html
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

import gradio as gr

from .engine import public_mode, redact, session_cap

_USED: Counter[tuple[str, str]] = Counter()
_LOCK = threading.Lock()


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


@contextmanager
def allowance(what: str, request: gr.Request | None) -> Iterator[None]:
    """Refuse when this session already made ``session_cap(what)`` of them; count one more only if the
    block succeeds (a refused or failed attempt costs nothing)."""
    cap, key = session_cap(what), (what, session_of(request))
    if cap and not is_operator(request):
        with _LOCK:
            if _USED[key] >= cap:
                raise gr.Error(f"this session already made {cap} {what}, the most one visitor may make here; "
                               f"reuse them or ask the app's operator")
    yield
    with _LOCK:
        _USED[key] += 1


def check_owner(study: dict[str, Any], request: gr.Request | None, action: str) -> None:
    """In public mode, only the session that started a study (or an operator) may ``action`` it."""
    if not public_mode() or is_operator(request):
        return
    owner = (study.get("settings") or {}).get("owner")
    if not owner or owner != session_of(request):
        raise gr.Error(f"study {study['id']} was started by another visitor; you can {action} only the "
                       f"studies started on this page")
