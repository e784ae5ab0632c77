"""Is a study's worker still alive? Heartbeats, worker identity and the settings that time them.

As optuna's RDB storage does it: a running worker writes ``studies.heartbeat_at`` every
``GPTAILOR_HEARTBEAT_S`` seconds from a background thread, and any reader treats a study whose last
beat is older than ``GPTAILOR_GRACE_S`` as dead, whatever its pid and wherever it runs. A pid is
only a fast path, used when the worker runs on this host (same kernel boot and pid namespace) and
the process with that pid is the very one that claimed the study (same start time): pids are reused.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Protocol

from .settings import heartbeat_s, host_id_override


@lru_cache(maxsize=None)
def _kernel_identity() -> str:
    """Boot id and pid namespace: two processes see the same pids only if both match."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "noboot"
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = "nons"
    return f"{boot}/{ns}"


def host_id() -> str:
    """Who "this host" is for pid checks: ``GPTAILOR_HOST_ID`` if set, else hostname + kernel identity.

    Two readers with different host ids never judge each other's workers by pid, only by heartbeat;
    setting ``GPTAILOR_HOST_ID`` simulates (or declares) separate machines sharing one database."""
    explicit = host_id_override()
    if explicit:
        return explicit
    return f"{socket.gethostname()}/{_kernel_identity()}"[:200]


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat; fields[0] is field 3 (state)
    except (OSError, IndexError):
        return None


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class Owner:
    """The process that runs a study: pid, host and start time together (a pid alone is reused)."""

    pid: int
    host: str
    start: str | None

    @classmethod
    def me(cls) -> "Owner":
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> "Owner":
        """A process on this host (a worker just started, or this one)."""
        return cls(pid, host_id(), process_start(pid))


def local_worker_dead(pid: int | None, host: str | None, start: str | None) -> bool | None:
    """True if the recorded worker is certainly gone: it ran here and its pid is gone, a zombie, or now
    another process (different start time). None when this host cannot tell (another host, no start
    time recorded, no /proc): the caller then relies on the heartbeat."""
    if not pid or host != host_id():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's
    if start is None:
        return None
    state = _state(pid)
    if state is None:
        return None if not os.path.exists("/proc/self/stat") else True
    return state in ("Z", "X") or process_start(pid) != start


class _Beats(Protocol):
    def beat(self, study_id: int, owner: Owner) -> bool: ...


class Heartbeat:
    """Beats for one study from a daemon thread while its context is open.

    ``beat`` returns False once the study no longer belongs to this process (a reader declared it
    dead, or another worker claimed it): each ``on_lost`` is then called once, from the thread,
    innermost first. Database hiccups (a locked or briefly unreachable database) skip a beat; the
    grace period allows for it. A heartbeat opened inside another for the same study adds its
    ``on_lost`` to the outer one instead of starting a second thread."""

    _active: dict[tuple[int, int], "Heartbeat"] = {}
    _guard = threading.Lock()

    def __init__(self, store: _Beats, study_id: int, owner: Owner, interval: float | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.store, self.study_id, self.owner = store, study_id, owner
        self.interval = interval or heartbeat_s()
        self.listeners: list[Callable[[], None]] = [on_lost] if on_lost else []
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outer: Heartbeat | None = None
        self._key = (id(store), study_id)

    def __enter__(self) -> "Heartbeat":
        with self._guard:
            outer = self._active.get(self._key)
            if outer is not None:
                self._outer, self.lost = outer, outer.lost
                outer.listeners.extend(self.listeners)
                return self
            self._active[self._key] = self
        self._beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.study_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._outer is not None:
            for fn in self.listeners:
                if fn in self._outer.listeners:
                    self._outer.listeners.remove(fn)
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 5)
        with self._guard:
            self._active.pop(self._key, None)

    def quiet(self) -> None:
        """Stop beating before this process ends the study itself, so that the end is not taken for a
        lost claim."""
        (self._outer or self)._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._beat():
                return

    def _beat(self) -> bool:
        """One beat; False (and the ``on_lost`` listeners called) when the study is no longer ours."""
        try:
            ours = self.store.beat(self.study_id, self.owner)
        except Exception as e:  # noqa: BLE001 - skip this beat; the next may get through
            try:
                print(f"heartbeat of study {self.study_id} skipped: {e}", file=sys.stderr, flush=True)
            except OSError:  # the log's disk is full too: beating matters more than saying so
                pass
            return True
        if not ours and not self.lost.is_set() and not self._stop.is_set():
            self.lost.set()
            for fn in reversed(list(self.listeners)):
                fn()
        return ours
