"""One Progress listener carries a job's phases, its ticks and its stop: a real SMAC search on the demo
family reports its phases to it and ends when it asks, between trials or inside a trial's evaluation."""
import pytest

from gptailor import Evaluator, Family, load_suite
from gptailor.common.progress import QUIET, Phase, Progress, Stopped, listening, tick
from gptailor.search.optimizer import Search
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget

SETTINGS = dict(n_trials=40, max_fidelity=8, min_fidelity=2)


@pytest.fixture()
def demo_ev():
    fam = Family.from_spec("demo")
    return Evaluator(fam, load_suite(fam.spec.suite_path()))


class Listener(Progress):
    """A notebook's listener: records phases, ticks and trials; asks for a stop after ``after_trials``
    trials (seen between trials) or at the first tick where ``at_tick(listener, what, done)`` holds."""

    def __init__(self, after_trials=None, at_tick=None):
        super().__init__()
        self.phases: list[Phase] = []
        self.ticks: list[tuple[str, int | None, int | None]] = []
        self.trials: list = []
        self.after_trials, self.at_tick = after_trials, at_tick
        self.asked = False
        self.ticks_after_stop = 0

    def phase(self, p: Phase) -> None:
        self.phases.append(p)

    def tick(self, what="", done=None, total=None) -> None:
        if self.stop_requested():
            self.ticks_after_stop += 1
        super().tick(what, done, total)  # raises Stopped once a stop was asked for
        self.ticks.append((what, done, total))
        if self.at_tick is not None and self.at_tick(self, what, done):
            self.asked = True

    def stop_requested(self) -> bool:
        return self.asked or (self.after_trials is not None and len(self.trials) >= self.after_trials)


def test_quiet_never_stops_and_a_bare_tick_is_free():
    tick("nobody listens")
    assert not QUIET.stop_requested()
    QUIET.check()
    with listening(Progress(should_stop=lambda: True)):
        with pytest.raises(Stopped):
            tick("scoring math", 0, 4)


def test_one_progress_gets_the_phases_and_stops_a_search_between_trials(demo_ev):
    p = Listener(after_trials=3)
    res = Search(demo_ev, Budget(remove_layers=2), SearchSettings(method="smac", **SETTINGS), on_trial=p.trials.append,
                 progress=p).run()
    assert res.stopped == "cancelled" and len(res.trials) == 3 and res.trials == p.trials
    assert p.ticks_after_stop == 0  # SMAC ended at the trial's end: no fourth evaluation began
    members = demo_ev.family.member_names
    refs = [x for x in p.phases if x.phase == "references"]
    assert [(x.done, x.total) for x in refs] == [(k, len(members)) for k in range(len(members))]
    assert [x.phase for x in p.phases][len(refs):] == ["seeds"]  # then SMAC's initial design, then trials
    # the engine's ticks reached the same object: every task of every trial scored, named
    tasks = [t.name for t in demo_ev.suite]
    named = [w for w, _, _ in p.ticks if w.startswith("scoring ") and w[len("scoring "):] in tasks]
    assert len(named) >= len(tasks) * (1 + len(members))  # the references' members, then at least one trial


def test_one_progress_stops_a_search_inside_an_evaluation(demo_ev):
    """Asked during a trial's second task, the search ends at the next tick: that trial is not recorded,
    the ones before it are, and no tick reaches the listener after the stop."""
    tasks = len(demo_ev.suite.tasks)
    p = Listener(at_tick=lambda lst, what, done: len(lst.trials) >= 2 and what.startswith("scoring ") and done == 1)
    res = Search(demo_ev, Budget(remove_layers=2), SearchSettings(method="smac", **SETTINGS), on_trial=p.trials.append,
                 progress=p).run()
    assert p.asked and p.ticks_after_stop == 1  # the tick that raised Stopped, and nothing after it
    assert res.stopped == "cancelled" and res.trials == p.trials and len(res.trials) >= 2
    last_task = [d for w, d, t in p.ticks if w.startswith("scoring ") and t == tasks][-1]
    assert last_task == 1  # the stopped evaluation never began its third task
    assert all(t.status == "complete" for t in res.trials)  # the cut trial is dropped, not a failed one
