"""What a long job is doing, and how it is asked to stop: one channel, a ``Progress`` listener.

The engine knows nothing of who listens (the database worker stores each phase for every page and the
CLI and polls its study's cancel between trials; the app's Stop button stops the work within a batch; a
notebook may print or stop it). A listener gets three things, as transformers' ``TrainerCallback`` with
its ``TrainerControl.should_training_stop`` or optuna's ``study.stop()`` split them:

- ``phase(Phase)``: the coarse steps before and between trials (one of ``PHASES``; ``done``/``total``
  count its steps, ``cached`` says the result came from the precompute cache);
- ``tick(what, done, total)``: called by long engine loops between steps (each batch scored, each task,
  each member's hidden states); it may raise ``Stopped`` to end the work there;
- ``stop_requested()``: polled between units of work (a search between trials, a baseline between its
  plans), which then end cleanly with what they have (a search's ``stopped`` is ``cancelled``).

``Search``, ``Precompute``, the members' report and lm-eval take it as ``progress=``; any engine loop
reaches the one in force through a context variable (``listening``), so ``tick()`` is free when nobody
listens. ``Progress(on_phase=..., on_tick=..., should_stop=...)`` builds one from plain callables;
subclasses override the methods instead (the worker's study run, the app's Stop)."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

PHASES = ("loading family", "references", "heuristics", "seeds", "trial", "report")


@dataclass
class Phase:
    phase: str
    done: int | None = None
    total: int | None = None
    detail: str = ""
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}


class Stopped(RuntimeError):
    """The listener asked the work to stop (a Stop button); raised from inside the engine's loops."""


OnPhase = Callable[[Phase], None]
Tick = Callable[[str, int | None, int | None], None]


class Progress:
    """One job's listener: phases, ticks and whether to stop. The base class does nothing by itself;
    pass callables or subclass it.

    ``on_phase`` gets each ``Phase``; ``on_tick`` gets each tick ``(what, done, total)`` (``what`` is empty
    for the per-batch ones); ``should_stop`` says a stop was asked for. By default a tick first checks
    ``stop_requested()`` (raising ``Stopped``, so a stop lands within one batch) and then calls ``on_tick``;
    a listener whose check is costly (the worker reads its study's row) overrides ``tick``."""

    _on_phase: OnPhase | None = None
    _on_tick: Tick | None = None
    _should_stop: Callable[[], bool] | None = None

    def __init__(self, on_phase: OnPhase | None = None, on_tick: Tick | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self._on_phase, self._on_tick, self._should_stop = on_phase, on_tick, should_stop

    def phase(self, p: Phase) -> None:
        """A coarse step began (or ended: ``done == total``)."""
        if self._on_phase is not None:
            self._on_phase(p)

    def tick(self, what: str = "", done: int | None = None, total: int | None = None) -> None:
        """A step of a long loop: stop here if asked to, else show it."""
        self.check()
        if self._on_tick is not None:
            self._on_tick(what, done, total)

    def stop_requested(self) -> bool:
        """Whether the work should end at its next clean point."""
        return self._should_stop is not None and bool(self._should_stop())

    def check(self) -> None:
        """Raise ``Stopped`` when a stop was asked for."""
        if self.stop_requested():
            raise Stopped("stopped")


QUIET = Progress()  # the default listener: nobody; never stops


class _TickOnly(Progress):
    """A bare tick function as a listener (it raises ``Stopped`` itself when it wants the work to end)."""

    def __init__(self, fn: Tick) -> None:
        super().__init__(on_tick=fn)

    def tick(self, what: str = "", done: int | None = None, total: int | None = None) -> None:
        self._on_tick(what, done, total)  # type: ignore[misc]


_CURRENT: ContextVar[Progress | None] = ContextVar("gptailor_progress", default=None)


def current() -> Progress:
    """The listener in force in this thread (context), ``QUIET`` when none."""
    return _CURRENT.get() or QUIET


def tick(what: str = "", done: int | None = None, total: int | None = None) -> None:
    """Called by long engine loops between steps: the listener in force may show progress or raise
    ``Stopped``. Free when nobody listens."""
    p = _CURRENT.get()
    if p is not None:
        p.tick(what, done, total)


@contextmanager
def listening(progress: Progress | Tick | None) -> Iterator[Progress]:
    """Make ``progress`` (a ``Progress``, or a bare tick function) the listener of this thread's (context's)
    engine work while the block runs, and yield it; ``None`` keeps the one in force (an outer block's)."""
    if progress is None:
        yield current()
        return
    p = progress if isinstance(progress, Progress) else _TickOnly(progress)
    token = _CURRENT.set(p)
    try:
        yield p
    finally:
        _CURRENT.reset(token)


__all__ = ["PHASES", "Phase", "Progress", "QUIET", "Stopped", "current", "listening", "tick"]
