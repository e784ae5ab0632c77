"""With login on (``GPTAILOR_AUTH``), every endpoint asks for it, not only the ones Gradio guards.

Gradio checks its login cookie on the page's config, the API, uploads and files, but answers some
session endpoints without it (``/gradio_api/reset``, ``/cancel``, ``/heartbeat/<session>``,
``/stream/...``, the run history...). This ASGI middleware turns that around: a
request without a valid login gets 401 unless its path is on a short allow-list, the pieces the login
form itself needs (the page, its scripts, styles and icons, the login and logout calls, and Gradio's
"who am I" probes, which answer only about the caller; and ``/startup-events``, see ``OPEN_PATHS``). A path Gradio adds in a later release is
therefore closed until it is listed here.
"""
from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

OPEN_PATHS = frozenset({
    "/", "/login", "/login/", "/logout", "/logout/", "/favicon.ico", "/manifest.json", "/robots.txt",
    "/theme.css", "/gradio_api/theme.css", "/gradio_api/login_check", "/gradio_api/login_check/",
    "/gradio_api/user", "/gradio_api/user/", "/gradio_api/token", "/gradio_api/token/",
    "/gradio_api/app_id", "/gradio_api/app_id/",
    # Gradio's launch() calls this itself, without a login, and fails to start on a 401; it runs the
    # startup events once (at that call) and is a no-op answering false ever after
    "/gradio_api/startup-events",
})
OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")  # the page's own scripts, styles, icons


def is_open(path: str) -> bool:
    """Reachable before login: what the login form needs, nothing that acts on a session or a study."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def logged_in(app: Any, scope: dict) -> bool:
    """The request carries a login cookie that Gradio issued (the same check as Gradio's own)."""
    cookies = HTTPConnection(scope).cookies
    cookie_id = getattr(app, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return bool(token) and getattr(app, "tokens", {}).get(token) is not None


class LoginEverywhere:
    """ASGI middleware for Gradio's app (``launch(app_kwargs={"middleware": [...]})``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        gradio_app = scope.get("app")
        if scope["type"] in ("http", "websocket") and getattr(gradio_app, "auth", None) is not None:
            path = scope.get("path", "")
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):] or "/"
            if not is_open(path) and not logged_in(gradio_app, scope):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await JSONResponse({"detail": "Not authenticated: log in first"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)
