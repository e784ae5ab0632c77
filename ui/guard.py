"""What a visitor may do: refusal messages without server paths, caps a client cannot mint its way
around, and who may cancel, resume or rename a study.

Gradio's session hash is chosen by the client (a reconnect makes a new one, anyone may send a copied
one), so nothing here rests on it:

- **Ownership** is a server-issued owner token: ``<nonce>.<signature>``, signed with the app's key under
  the data dir, handed to a browser once at page load (kept in its ``localStorage`` through a
  ``gr.BrowserState``, so a reload keeps it) and sent back with each action. A study stores only the
  token's SHA-256 (``studies.owner_hash``). A token the server did not sign is refused.
- **Per-client caps** count by the client's address (``client_key``: behind ``GPTAILOR_PROXY_HOPS``
  proxies the entry they appended to ``X-Forwarded-For``, else the connection's peer; an IPv6 address
  counts as its /64, which one subscriber gets for free), stored as a keyed hash, over a rolling day.
- **Global caps** (studies per hour, workers, export bytes) are counted in the database or on disk under
  a lock, so they hold across any number of sessions, clients and app processes on one data dir.

An operator (logged in through ``GPTAILOR_AUTH``) may manage any study and is not capped.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import html
import ipaddress
import json
import os
import secrets
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from filelock import FileLock

from db.models import utcnow
from db.settings import data_dir, max_studies_per_hour, proxy_hops, public_mode, session_cap

from .engine import redact, store

COUNTS_FILE = "client_counts.json"  # under the data dir: exports and uploads per client, with their times
KEY_FILE = "owner_key"  # under the data dir: the key that signs owner tokens and hashes client addresses
WINDOW_S = 24 * 3600  # per-client caps count what a client made in the last day
KEEP_CLIENTS = 5000  # clients remembered per kind; the oldest are forgotten first
LOCK_STRIPES = 256  # cross-process locks per kind: a client hashes to one (bounded files, rare sharing)
_LOCKS: dict[tuple[str, str], threading.Lock] = {}  # one per (kind, client): its check and count are atomic
_LOCKS_GUARD = threading.Lock()
_KEYS: dict[str, bytes] = {}


def refuse(error: Exception | str) -> gr.Error:
    """A gr.Error with the message (server folders hidden in public mode), to ``raise ... from None``.

    The page renders a toast's text as HTML, so '<' and '&' are escaped: a parser's '<unicode string>'
    or a redacted '<data>' must show as text, not vanish as a tag."""
    return gr.Error(html.escape(redact(str(error)), quote=False))


_REFUSALS: dict[str, str] = {}  # session -> its last refusal, until the page has shown it beside the control


def refused(request: gr.Request | None, error: Exception | str) -> gr.Error:
    """``refuse``, remembered for this session: the toast fades, so the event's ``.failure`` step
    (``last_refusal``) writes the same line into the note beside the control, where it stays."""
    err = refuse(error)
    _REFUSALS[session_of(request)] = str(err.message)
    return err


def noting(fn):
    """A (non-streaming) handler whose every refusal (``gr.Error``) is also remembered for this session, as
    ``refused`` does, so that its event's ``.failure(last_refusal, ...)`` keeps it beside the control."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as e:
            request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
            _REFUSALS[session_of(request)] = str(e.message)
            raise
    return wrapper


def refusal_beside(n_outputs: int):
    """A ``.failure`` step for an event with ``n_outputs`` outputs after its note: the note gets the refusal
    (``last_refusal``) and every other output an empty update, which clears the red Error badge Gradio puts
    on each output of an event that raised (the note says what went wrong instead)."""
    def show(request: gr.Request = None):
        return (last_refusal(request), *[gr.update() for _ in range(n_outputs)])
    return show


def last_refusal(request: gr.Request = None) -> str:
    """This session's last refusal as a note ('⚠ position 1: unknown member ...'), then forgotten."""
    msg = _REFUSALS.pop(session_of(request), "")
    return f"⚠ {msg}" if msg else ""


def session_of(request: gr.Request | None) -> str:
    """Gradio's session hash: fine for per-page scratch (a CSV, a Stop flag), never for rights or caps."""
    return str(getattr(request, "session_hash", None) or "")


def is_operator(request: gr.Request | None) -> bool:
    """Logged in through GPTAILOR_AUTH (Gradio sets the user name only then)."""
    return bool(getattr(request, "username", None))


# -- the app's key, owner tokens ---------------------------------------------------------------------
def _key() -> bytes:
    """The app's secret key, made once per data dir (mode 0600) and shared by every app process on it:
    written aside and linked into place, so two processes starting at once end with the same key."""
    path = data_dir() / KEY_FILE
    if str(path) in _KEYS:
        return _KEYS[str(path)]
    if not path.exists():
        tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # atomic, and never replaces a key another process linked first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    _KEYS[str(path)] = key = path.read_bytes()
    return key


def _sign(purpose: str, text: str) -> str:
    mac = hmac.new(_key(), f"{purpose}:{text}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode().rstrip("=")


def new_token() -> str:
    """A fresh owner token: 192 random bits and the server's signature over them."""
    nonce = secrets.token_urlsafe(24)
    return f"{nonce}.{_sign('owner', nonce)}"


def valid_token(token: Any) -> bool:
    """Issued by this app (its key signed it); anything else, a client's own invention included, is not."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 200:
        return False
    nonce, sig = token.split(".")
    return bool(nonce) and hmac.compare_digest(sig, _sign("owner", nonce))


def owner_hash(token: str) -> str:
    """What a study stores of its owner's token: a SHA-256, so the database alone hands no one a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(held: Any):
    """Page load: a browser keeps the valid token it holds (nothing is sent back) or gets a new one.

    Also the ``/owner_token`` API endpoint: an API client calls it once and passes the token to the
    actions that start or change a study."""
    return gr.skip() if valid_token(held) else new_token()


def require_token(token: Any) -> str | None:
    """The owner hash to store with a new study. In public mode a study must have an owner, so a missing
    or forged token is refused; a private app stores one when it has one."""
    if valid_token(token):
        return owner_hash(token)
    if public_mode():
        raise gr.Error("this page holds no owner token from this app, so nothing it starts could be managed "
                       "later; reload the page (an API client calls /owner_token first and passes its token)")
    return None


def check_owner(study: dict[str, Any], token: Any, request: gr.Request | None, action: str) -> None:
    """In public mode only the holder of the token that started a study (or an operator) may ``action`` it."""
    if not public_mode() or is_operator(request):
        return
    stored = study.get("owner_hash")
    if not (stored and valid_token(token) and hmac.compare_digest(stored, owner_hash(token))):
        raise gr.Error(f"study {study['id']} was started by another visitor; you can {action} only the "
                       f"studies started in this browser")


# -- who the client is ---------------------------------------------------------------------------------
def client_address(request: gr.Request | None) -> str:
    """The visitor's address: with ``proxy_hops()`` = n > 0, the n-th entry from the right of
    X-Forwarded-For (the one our outermost proxy appended; entries to its left come from the client and
    are free to forge); with 0, or a header too short (the documented fallback), the connection's peer.
    An IPv6 address is reduced to its /64."""
    peer = str(getattr(getattr(request, "client", None), "host", None) or "")
    hops = proxy_hops()
    headers = getattr(request, "headers", None) or {}
    chain = [a.strip() for a in str(headers.get("x-forwarded-for") or "").split(",") if a.strip()]
    address = chain[-hops] if hops and len(chain) >= hops else peer
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket: the same client as over IPv4
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def client_key(request: gr.Request | None) -> str:
    """The client's address as a keyed hash: what caps count and what is stored, never the address."""
    return _sign("client", client_address(request))[:32]


# -- caps -------------------------------------------------------------------------------------------------
def _counts_path() -> Path:
    return data_dir() / COUNTS_FILE


def _read_counts() -> dict[str, dict[str, list[float]]]:
    try:
        data = json.loads(_counts_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet (or a damaged file: counting starts again rather than locking everyone out)
    return data if isinstance(data, dict) else {}


def used(what: str, client: str) -> int:
    """How many ``what`` this client made in the last day, from what is stored (a restart resets nothing):
    its studies in the database (``studies.client_key``), its exports and uploads in the counts file."""
    if what == "studies":
        return store().count_started(since=utcnow() - timedelta(seconds=WINDOW_S), client_key=client)
    times = _read_counts().get(what, {}).get(client, [])
    return sum(1 for t in times if isinstance(t, (int, float)) and t > time.time() - WINDOW_S)


def _count_one(what: str, client: str) -> None:
    """One more ``what`` for this client in the counts file (under a lock: several app processes)."""
    if what == "studies":
        return  # the stored study is the count
    with FileLock(str(_counts_path()) + ".lock", timeout=30):
        counts = _read_counts()
        mine = counts.setdefault(what, {})
        recent = [t for t in mine.pop(client, []) if isinstance(t, (int, float)) and t > time.time() - WINDOW_S]
        mine[client] = [*recent, time.time()]  # re-inserted last: the newest clients are kept
        for old in list(mine)[:max(0, len(mine) - KEEP_CLIENTS)]:
            del mine[old]
        tmp = _counts_path().with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(counts), encoding="utf-8")
        os.replace(tmp, _counts_path())


def global_lock(name: str) -> FileLock:
    """One lock per data dir for a global cap's check-and-act (every app process on it waits its turn)."""
    folder = data_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{name}-global.lock"), timeout=3600)


def _check_hourly() -> None:
    cap = max_studies_per_hour()
    if cap and store().count_started(since=utcnow() - timedelta(hours=1)) >= cap:
        raise gr.Error(f"this app already started {cap} studies in the last hour, the most it runs for all "
                       f"visitors together; try again later")


@contextmanager
def allowance(what: str, request: gr.Request | None) -> Iterator[None]:
    """Refuse when this client already made ``session_cap(what)`` of them in the last day (or, for studies,
    when the app started ``max_studies_per_hour()`` in the last hour); count one more only if the block
    succeeds (a refused or failed attempt costs nothing; a study counts once stored). The check and the
    count are atomic across threads and app processes: per client, and for studies over all clients."""
    cap, client = session_cap(what), client_key(request)
    hourly = what == "studies" and max_studies_per_hour()
    if (not cap and not hourly) or is_operator(request):
        yield
        return
    with _LOCKS_GUARD:
        if len(_LOCKS) > 3 * KEEP_CLIENTS:  # bounded: forget the idle ones
            for key in [k for k, held in _LOCKS.items() if not held.locked()]:
                del _LOCKS[key]
        lock = _LOCKS.setdefault((what, client if not hourly else ""), threading.Lock())
    # studies under a hourly cap share one lock (the cap is global); other kinds lock per client
    with lock, (global_lock(what) if hourly else _client_file_lock(what, client)):
        if hourly:
            _check_hourly()
        if cap and used(what, client) >= cap:
            raise gr.Error(f"this address already made {cap} {what} in the last 24 hours, the most one visitor "
                           f"may make here; reuse them, try again later or ask the app's operator")
        yield
        _count_one(what, client)


def _client_file_lock(what: str, client: str) -> FileLock:
    """The lock that makes one client's check-and-count atomic across app processes sharing the data dir.
    Clients hash onto ``LOCK_STRIPES`` lock files per kind, so the folder stays small; two clients on one
    stripe only wait for each other, they never share a count."""
    stripe = int(hashlib.sha256(client.encode()).hexdigest(), 16) % LOCK_STRIPES
    folder = data_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{what}-{stripe:03d}.lock"), timeout=3600)


def visitor(token: Any, request: gr.Request | None) -> dict[str, str | None]:
    """What a new study stores of who started it (``Store.create_study``'s keywords)."""
    return {"owner_hash": require_token(token), "client_key": client_key(request)}
