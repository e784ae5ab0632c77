"""Stop buttons for long work (evaluate, compare, analysis, export) that really stop it.

Gradio's ``cancels=`` ends the page's wait for an event, but a synchronous handler keeps running in its
thread. So each long handler runs inside ``stoppable``, whose ``PageProgress`` is the engine's listener
(``gptailor.common.progress.Progress``): each ``tick`` (between batches, tasks and members) raises
``Stopped`` once this session pressed Stop, which frees the server within one batch instead of at the end
of the work, and otherwise shows progress on the page.

A Stop applies to the work already asked for, even while it still waits in Gradio's queue: each button that
starts stoppable work first runs ``arm`` (``queue=False``, at the click: an older Stop no longer applies), and
the handler does not clear the flag when it starts, only when it ends. Clearing it at the start lost a Stop
pressed between the click and the handler's start, on a loaded machine (CI, once: the work ran to its end).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from gptailor.common.progress import Progress, Stopped, listening

from .guard import session_of

_FLAGS: dict[str, threading.Event] = {}
_LOCK = threading.Lock()


def _flag(request: gr.Request | None) -> threading.Event:
    with _LOCK:
        return _FLAGS.setdefault(session_of(request), threading.Event())


STOPPED = "stopped: the work was cut short and nothing was stored"


@dataclass
class Run:
    """What a ``stoppable`` block reports: whether Stop ended it, and which model it is scoring now
    (``stage``, put before the engine's own words on the progress bar, e.g. 'scoring the base')."""
    stopped: bool = False
    stage: str = ""


class PageProgress(Progress):
    """The engine's listener for one handler: this session's Stop flag, and Gradio's progress bar (the
    engine's ticks name each task and model; phases, a study worker's lines, are not shown here)."""

    def __init__(self, flag: threading.Event, progress: Any, run: Run) -> None:
        super().__init__()
        self.flag, self.bar, self.run = flag, progress, run
        self.shown: str | None = None  # the stage the bar's label names now

    def stop_requested(self) -> bool:
        return self.flag.is_set()

    def tick(self, what: str = "", done: int | None = None, total: int | None = None) -> None:
        self.check()  # before showing anything: no progress reaches the page after a Stop
        stage = self.run.stage
        if self.bar is None or not (what or stage):
            return
        if not what and not total and self.shown == stage:
            return  # a bare batch tick: Gradio's bar shows no label without a fraction, so keep the last one
        self.shown = stage
        desc = f"{stage}: {what}" if stage and what else stage or what
        self.bar(None if not total else (done or 0) / total, desc=desc)


@contextmanager
def stoppable(request: gr.Request | None, progress: Any = None, quiet: bool = False) -> Iterator[Run]:
    """Run the block so that this session's Stop ends it, with engine progress.

    By default a Stop raises gr.Error 'stopped'. With ``quiet`` the block just ends and ``Run.stopped`` is
    set, so the handler can return the page's previous results and a 'stopped' note instead of Gradio's
    red Error badges on every output (wire its Stop button with ``wire_stop(btn)``, no ``cancels``, so
    that return reaches the page)."""
    flag = _flag(request)  # not cleared here: a Stop pressed while this work was queued must stop it (``arm``)
    run = Run()
    try:
        with listening(PageProgress(flag, progress, run)):
            yield run
    except Stopped:
        if not quiet:
            raise gr.Error(STOPPED) from None
        run.stopped = True
    finally:
        flag.clear()  # this Stop was for this work: the next starts unstopped


def arm(request: gr.Request = None) -> None:
    """At the click that asks for stoppable work (``queue=False``, before the work is queued): a Stop pressed
    earlier, with nothing running, no longer applies; one pressed from now on stops this work."""
    _flag(request).clear()


def armed(trigger: Any) -> Any:
    """``trigger`` (e.g. ``btn.click``) arming this session's Stop at once; chain the work with ``.then``."""
    return trigger(arm, None, None, queue=False, show_progress="hidden", api_visibility="private")


def stop(request: gr.Request = None) -> None:
    """The Stop button: the running handler of this session stops at its next batch."""
    _flag(request).set()


def stop_button(label: str = "Stop") -> gr.Button:
    return gr.Button(label, variant="stop", min_width=80, scale=0)


def wire_stop(btn: gr.Button, *events: Any) -> None:
    """``btn`` cancels ``events`` on the page and stops their work on the server. Without events it only
    stops the work: a ``quiet`` handler then returns its own 'stopped' state to the page."""
    btn.click(stop, None, None, cancels=list(events), api_visibility="private", queue=False)


def cleared(n: int):
    """What a result area shows while new work runs: nothing, so an error never leaves the last run's
    numbers on the page as if they were this run's. It runs at the click (``queue=False``), so it also
    ``arm``s this session's Stop for the work chained after it."""
    def clear(request: gr.Request = None):
        arm(request)
        return ("",) + (None,) * (n - 1)
    return clear
