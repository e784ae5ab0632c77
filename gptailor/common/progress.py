"""What a long job is doing, told through a plain callback: the engine knows nothing of who listens
(the database worker stores it for every page and the CLI, a notebook may print it).

A phase is one of ``PHASES``; ``done``/``total`` count its steps (members scored, heuristics computed,
trials) and ``cached`` says the result came from the precompute cache instead of being computed."""
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


OnPhase = Callable[[Phase], None]


def quiet(_phase: Phase) -> None:
    """The default listener: nobody."""


# ----------------------------------------------------------------------------- fine-grained ticks
class Stopped(RuntimeError):
    """The listener asked the work to stop (a Stop button); raised from inside the engine's loops."""


Tick = Callable[[str, int | None, int | None], None]
_TICK: ContextVar[Tick | None] = ContextVar("gptailor_tick", default=None)


def tick(what: str = "", done: int | None = None, total: int | None = None) -> None:
    """Called by long engine loops between steps (each batch scored, each task, each member's hidden
    states): the current listener may show progress or raise ``Stopped``. Free when nobody listens."""
    fn = _TICK.get()
    if fn is not None:
        fn(what, done, total)


@contextmanager
def listening(fn: Tick) -> Iterator[None]:
    """Send this thread's (context's) ticks to ``fn`` while the block runs."""
    token = _TICK.set(fn)
    try:
        yield
    finally:
        _TICK.reset(token)
