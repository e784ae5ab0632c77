"""Every ``GPTAILOR_*`` environment variable of the app, read in one place.

The store, the workers, the CLI's study commands and the pages ask these functions, one per variable,
so there is one data-dir rule, one number parser (``gptailor.common.limits.env_number``) and one error
type (``SettingsError``). The engine reads no app setting: it is handed paths and caps as arguments.
Its only variables are its own cache sizes: ``GPTAILOR_CACHE_MB`` (layer tensors, ``gptailor.weights.cache``) and
``GPTAILOR_PREFIX_CACHE_MB`` (prefix hidden states, ``gptailor.eval.prefix``).

Public mode (``GPTAILOR_PUBLIC=1``, a public Space) changes several defaults at once; each function
says both.
"""
from __future__ import annotations

import os
from pathlib import Path

from gptailor.common.limits import SettingsError, env_flag, env_number


def data_dir(create: bool = True) -> Path:
    """Where the app keeps its files (database, cache, exports, uploads, built families):
    ``GPTAILOR_DATA_DIR``, default ``data`` under the working directory."""
    d = Path(os.environ.get("GPTAILOR_DATA_DIR", "").strip() or "data").expanduser()
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def db_url() -> str:
    """The study database: ``GPTAILOR_DB_URL`` (any SQLAlchemy URL), else SQLite in the data dir."""
    return os.environ.get("GPTAILOR_DB_URL", "").strip() or f"sqlite:///{data_dir(create=False) / 'gptailor.db'}"


def public_mode() -> bool:
    """``GPTAILOR_PUBLIC=1``: a public Space. Only listed families, no local paths or hub ids, capped work."""
    return env_flag("GPTAILOR_PUBLIC")


def allow_remote_code() -> bool:
    """``GPTAILOR_ALLOW_REMOTE_CODE=1``: uploaded family specs may ask for trust_remote_code (runs their code)."""
    return env_flag("GPTAILOR_ALLOW_REMOTE_CODE")


def _cap(name: str, public: float, private: float, integer: bool = True) -> float:
    return env_number(name, public if public_mode() else private, integer=integer)


def max_workers() -> int:
    """Study workers running at once on one database (``GPTAILOR_MAX_WORKERS``; 2 public, else 0 = no cap).
    The app and the CLI's ``--background`` both obey it; further studies queue."""
    return int(_cap("GPTAILOR_MAX_WORKERS", 2, 0))


def max_trials() -> int:
    """Trials one study may ask for from the page (``GPTAILOR_MAX_TRIALS``; 200 public, 100000 otherwise)."""
    return int(_cap("GPTAILOR_MAX_TRIALS", 200, 100000))


def session_cap(what: str) -> int:
    """How many studies / exports / uploads one client (``ui.guard.client_key``: its address, not its browser
    session) may make in any 24 hours (0 = no cap): ``GPTAILOR_CLIENT_MAX_STUDIES`` (public default 5),
    ``_EXPORTS`` (3), ``_UPLOADS`` (5); the older names ``GPTAILOR_SESSION_MAX_*`` are still read."""
    public = {"studies": 5, "exports": 3, "uploads": 5}[what]
    name = f"GPTAILOR_CLIENT_MAX_{what.upper()}"
    if not os.environ.get(name, "").strip():
        name = f"GPTAILOR_SESSION_MAX_{what.upper()}"
    return int(_cap(name, public, 0))


def max_studies_per_hour() -> int:
    """Studies all visitors together may start from the app in any hour (``GPTAILOR_MAX_STUDIES_PER_HOUR``;
    30 public, 0 = no cap): a global cap, counted in the database, that no number of clients can exceed."""
    return int(_cap("GPTAILOR_MAX_STUDIES_PER_HOUR", 30, 0))


def proxy_hops() -> int:
    """How many reverse proxies stand in front of the app (``GPTAILOR_PROXY_HOPS``; 1 on a Hugging Face Space,
    where ``SPACE_ID`` is set, else 0). With n > 0 a visitor's address is the n-th entry from the right of
    ``X-Forwarded-For`` (the one the outermost proxy of ours appended; entries left of it are the client's
    own and free to forge); with 0, or a header with fewer entries, it is the connection's peer address."""
    return int(env_number("GPTAILOR_PROXY_HOPS", 1 if os.environ.get("SPACE_ID", "").strip() else 0, integer=True))


def max_export_zips() -> int:
    """Export zips kept under <data dir>/exports (``GPTAILOR_MAX_EXPORTS``; 3 public, 20); older ones go."""
    return int(_cap("GPTAILOR_MAX_EXPORTS", 3, 20))


def max_export_bytes() -> int:
    """Bytes all kept export zips may hold together (``GPTAILOR_MAX_EXPORT_MB``; 2000 public, 0 = no cap)."""
    return int(_cap("GPTAILOR_MAX_EXPORT_MB", 2000, 0, integer=False) * 1e6)


def max_upload_bytes() -> int:
    """Bytes one upload may hold (``GPTAILOR_MAX_UPLOAD_MB``; 5 public, 50): Gradio refuses bigger files
    before storing them. Larger suites are for the command line's own files, not a web upload."""
    return int(_cap("GPTAILOR_MAX_UPLOAD_MB", 5, 50, integer=False) * 1e6)


def max_task_examples() -> int:
    """Examples one uploaded task may hold (``GPTAILOR_MAX_TASK_EXAMPLES``; 2000 public, 20000, 0 = no cap):
    what is still scored interactively in reasonable time."""
    return int(_cap("GPTAILOR_MAX_TASK_EXAMPLES", 2000, 20000))


def max_full_examples() -> int:
    """The most examples per task an evaluation may score with "all" (``GPTAILOR_MAX_FULL_EXAMPLES``,
    1000, 0 = no cap); above it the page asks for a number (a fidelity) instead."""
    return int(_cap("GPTAILOR_MAX_FULL_EXAMPLES", 1000, 1000))


def queue_max() -> int:
    """Requests that may wait in the app's queue at once (``GPTAILOR_QUEUE_MAX``; 16 public, 64 otherwise,
    0 = no bound): Gradio's ``queue(max_size=...)``. One more is refused at once with "busy, try again"
    (and one server log line) instead of waiting past its client's patience; a queued one is told its place."""
    return int(_cap("GPTAILOR_QUEUE_MAX", 16, 64))


def model_concurrency() -> int:
    """Requests that run a model (evaluate, lm-eval, compare, analysis, chat, export) at once, all of them
    together (``GPTAILOR_MODEL_CONCURRENCY``, default 2, at least 1); the rest wait in the queue."""
    return int(env_number("GPTAILOR_MODEL_CONCURRENCY", 2, integer=True, above_zero=True))


def auth_pairs() -> list[tuple[str, str]] | None:
    """``GPTAILOR_AUTH`` as Gradio's auth list: ``user:password``, several separated by commas; None if unset."""
    raw = os.environ.get("GPTAILOR_AUTH", "").strip()
    if not raw:
        return None
    pairs = []
    for item in raw.split(","):
        user, colon, password = item.strip().partition(":")
        if not colon or not user.strip() or not password:
            raise SettingsError("GPTAILOR_AUTH must be user:password (several separated by commas), with a "
                                "user name and a password in each; login is not turned off silently")
        pairs.append((user.strip(), password))
    return pairs


def heartbeat_s() -> float:
    """How often a worker beats (``GPTAILOR_HEARTBEAT_S``, default 5 s)."""
    return env_number("GPTAILOR_HEARTBEAT_S", 5.0, above_zero=True, unit="seconds")


def grace_s() -> float:
    """How old a heartbeat may be before the worker counts as dead (``GPTAILOR_GRACE_S``, default 60 s).

    At least three beats, so a worker busy in a long trial or a briefly locked database is not
    declared dead by one late beat."""
    return max(env_number("GPTAILOR_GRACE_S", 60.0, above_zero=True, unit="seconds"), 3 * heartbeat_s())


def stop_grace_s() -> float:
    """How long a cancelled worker may take to stop by itself before it is terminated
    (``GPTAILOR_STOP_GRACE_S``, default 30 s); SIGKILL follows SIGTERM after another third of it."""
    return env_number("GPTAILOR_STOP_GRACE_S", 30.0, above_zero=True, unit="seconds")


def host_id_override() -> str | None:
    """``GPTAILOR_HOST_ID``: who "this host" is for pid checks, when set (declares separate machines)."""
    return os.environ.get("GPTAILOR_HOST_ID", "").strip()[:200] or None


def check_all() -> None:
    """Read every setting once, so a malformed one stops the app or a worker at start (SettingsError)."""
    for read in (max_workers, max_trials, max_studies_per_hour, proxy_hops, max_export_zips, max_export_bytes, max_upload_bytes,
                 max_task_examples, max_full_examples, queue_max, model_concurrency, auth_pairs, heartbeat_s,
                 grace_s, stop_grace_s):
        read()
    for what in ("studies", "exports", "uploads"):
        session_cap(what)
