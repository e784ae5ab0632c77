"""Under overload the app says so: a bounded queue, one model slot pool, and a logged, clear refusal.

Gradio's own mechanisms do the work (``Blocks.queue(max_size=...)``, ``concurrency_id``/``concurrency_limit``):
a request that finds ``GPTAILOR_QUEUE_MAX`` others waiting gets HTTP 503 at ``/gradio_api/queue/join``
at once (gradio_client raises ``QueueError("Queue is full! Please try again.")``, the page shows "This
application is currently busy. Please try again."), and a queued one is told its place through the
event stream (``Job.status().rank`` / ``queue_size``; the page shows "queue: 3/7"). What Gradio leaves
out, this module adds: every request that runs a model shares one pool of ``GPTAILOR_MODEL_CONCURRENCY``
slots (not 2 per endpoint, which let evaluate, lm-eval, compare and chat thrash the CPU together), and
``BusyNote``, an ASGI middleware, logs each refusal in one line and gives raw HTTP callers a 503 body
that says how many are waiting and what to do.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any

from starlette.requests import Request

from db.settings import model_concurrency

MODEL_POOL = "model"  # the concurrency_id of every event that runs a model
JOIN_PATH = "/gradio_api/queue/join"
GRADIO_FULL = re.compile(r"Max size is (\d+) and size is (\d+)")


def model_slots() -> dict[str, Any]:
    """Keyword arguments for an event that runs a model: it waits for one of the shared model slots."""
    return {"concurrency_id": MODEL_POOL, "concurrency_limit": model_concurrency()}


def busy_message(waiting: int | None, size: int | None) -> str:
    """The one sentence a refused request gets (and the log repeats)."""
    held = f"{waiting} request{'' if waiting == 1 else 's'} waiting" if waiting is not None else "the queue is full"
    if waiting is not None and size is not None:
        held += f", the queue holds {size}"
    return f"The app is busy ({held}): try again in a moment."


def _endpoint(app: Any, body: bytes) -> str:
    """The api name of the refused request, from its fn_index (``?`` when it cannot be told)."""
    try:
        fn_index = json.loads(body or b"{}").get("fn_index")
        fn = app.get_blocks().fns.get(int(fn_index))
        return f"/{fn.api_name}" if isinstance(fn.api_name, str) else f"fn {fn_index}"
    except Exception:  # noqa: BLE001 - a log line must not fail on a strange body
        return "?"


def _client(scope: dict) -> str:
    """The caller as the caps count it (a keyed hash of its address, ``ui.guard.client_key``), never the address."""
    from .guard import client_key

    try:
        return client_key(Request(scope))[:12]
    except Exception:  # noqa: BLE001
        return "?"


class BusyNote:
    """ASGI middleware: a 503 from ``/gradio_api/queue/join`` (Gradio's queue-full refusal) is logged in
    one line on stderr and its body replaced by ``busy_message`` (status and JSON shape unchanged)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").endswith(JOIN_PATH):
            await self.app(scope, receive, send)
            return
        body = bytearray()

        async def watch_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        refused: dict[str, Any] = {}

        async def watch_send(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                refused["start"] = message  # held back until the body says why
                return
            if refused and message["type"] == "http.response.body":
                refused["body"] = refused.get("body", b"") + message.get("body", b"")
                if message.get("more_body"):
                    return
                await self._refuse(scope, bytes(body), refused, send)
                return
            await send(message)

        await self.app(scope, watch_receive, watch_send)

    async def _refuse(self, scope: dict, request_body: bytes, refused: dict, send: Any) -> None:
        try:
            detail = str(json.loads(refused["body"]).get("detail", ""))
        except ValueError:
            detail = refused["body"].decode(errors="replace")
        m = GRADIO_FULL.search(detail)
        size, waiting = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        text = busy_message(waiting, size) if m else (detail or busy_message(None, None))
        print(f"busy: refused {_endpoint(scope.get('app'), request_body)} from client {_client(scope)}: {text}",
              file=sys.stderr, flush=True)
        payload = json.dumps({"detail": text}).encode()
        headers = [(k, v) for k, v in refused["start"].get("headers", []) if k.lower() != b"content-length"]
        await send({**refused["start"], "headers": [*headers, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
