"""Stop buttons really stop the engine's work, and the page's caps and controls follow the family."""
import threading
from types import SimpleNamespace

import gradio as gr
import pytest

from gptailor import Evaluator, Family, Plan, TaskError, load_suite
from gptailor.common.progress import Stopped, listening, tick


@pytest.fixture(scope="module")
def demo_ev():
    fam = Family.from_spec("demo")
    return Evaluator(fam, load_suite(fam.spec.suite_path()))


def test_ticks_reach_the_listener_and_can_stop_an_evaluation(demo_ev):
    tick("nobody listens")  # free and harmless without a listener
    seen = []
    plan = Plan.identity(demo_ev.family.n_layers, family="demo")
    refs = []
    with listening(lambda what, done, total: refs.append(what)):  # the references score every member first
        demo_ev.references("test")
    assert refs.count("scoring math") == len(demo_ev.family.member_names)
    with listening(lambda what, done, total: seen.append((what, done, total))):
        demo_ev.evaluate(plan, 4)
    tasks = [t.name for t in demo_ev.suite]
    assert [s for s in seen if s[0]] == [(f"scoring {t}", k, len(tasks)) for k, t in enumerate(tasks)]
    assert len([s for s in seen if not s[0]]) >= len(tasks)  # one tick per batch as well

    def stop_at_second_task(what, done, total):
        if done == 1:
            raise Stopped("stopped")
    with listening(stop_at_second_task), pytest.raises(Stopped):
        demo_ev.evaluate(plan, 4)


def test_the_stop_button_ends_a_running_evaluation_within_a_batch(demo_ev, monkeypatch):
    from ui import stop as stop_mod

    request = SimpleNamespace(session_hash="s-stop", username=None)
    plan = Plan.identity(demo_ev.family.n_layers, family="demo")
    ticks: list[str] = []
    started: list[int] = []  # how many progress lines the page had shown when each task began
    slow = demo_ev.task_values  # what every evaluation runs once per task

    def stop_during_the_first_task(*a, **kw):
        """Stop is pressed (from another thread, as the button's own request comes) while the first task
        runs, before its first batch: the work must end at that batch, whatever the machine's speed."""
        started.append(len(ticks))
        if len(started) == 1:
            press = threading.Thread(target=stop_mod.stop, args=[request])
            press.start()
            press.join()
        return slow(*a, **kw)
    monkeypatch.setattr(demo_ev, "task_values", stop_during_the_first_task)
    with pytest.raises(gr.Error, match="stopped: the work was cut short"):
        with stop_mod.stoppable(request, lambda f, desc: ticks.append(desc)):
            demo_ev.evaluate(plan, 4)
    assert len(started) == 1  # no task began after Stop
    assert len(ticks) == started[0] < len(demo_ev.suite.tasks)  # nor did the page see any progress after it
    with stop_mod.stoppable(request):  # the next run of the session starts unstopped
        demo_ev.evaluate(plan, 2)


def test_a_stop_pressed_while_the_work_is_queued_stops_it_and_an_idle_one_does_not(demo_ev):
    """The click arms (``arm``, at once), the work waits in Gradio's queue, Stop comes before it starts: the
    work stops at its first tick (CI, once, on a loaded machine: the handler cleared the flag when it started
    and ran to its end). A Stop pressed with nothing running does not stop the next click's work."""
    from ui import stop as stop_mod

    request = SimpleNamespace(session_hash="s-queued", username=None)
    plan = Plan.identity(demo_ev.family.n_layers, family="demo")
    stop_mod.arm(request)  # the click
    stop_mod.stop(request)  # Stop, before the queued handler starts
    with stop_mod.stoppable(request, quiet=True) as run:
        demo_ev.evaluate(plan, 2)
    assert run.stopped
    stop_mod.stop(request)  # a Stop with nothing running
    stop_mod.arm(request)  # the next click
    with stop_mod.stoppable(request, quiet=True) as run:
        res = demo_ev.evaluate(plan, 2)
    assert not run.stopped and res.kept_layers == demo_ev.family.n_layers
    assert stop_mod.cleared(3)(request) == ("", None, None)  # the clearing pre-step arms too


def test_a_stage_keeps_its_label_through_the_batch_ticks(demo_ev):
    """Issue 22, item 10: Gradio sends only the latest progress update (ten times a second) and its bar shows
    no label for an update without a fraction, so the per-batch ticks between a stage's task ticks must not
    replace "scoring your plan: scoring math" (0%) with an unlabelled one; a new stage still shows at once."""
    from ui import stop as stop_mod

    request = SimpleNamespace(session_hash="s-stages", username=None)
    shown: list[tuple] = []
    with stop_mod.stoppable(request, lambda f, desc: shown.append((f, desc))) as run:
        run.stage = "scoring your plan"
        demo_ev.evaluate(Plan.identity(demo_ev.family.n_layers, family="demo"), 2)
        run.stage = "scoring the base"
        tick()  # a batch tick of a new stage: its name shows
        tick()
    n = len(demo_ev.suite.tasks)
    assert shown == [(k / n, f"scoring your plan: scoring {t.name}") for k, t in enumerate(demo_ev.suite)] + \
        [(None, "scoring the base")]


def test_all_examples_is_refused_above_the_cap_with_what_to_type(demo_ev, monkeypatch):
    from ui.engine import check_fidelity

    largest = max(t.split_size("test") for t in demo_ev.suite)
    monkeypatch.setenv("GPTAILOR_MAX_FULL_EXAMPLES", str(largest - 1))
    with pytest.raises(TaskError, match=f"the suite has up to {largest} examples per task; .* needs a number of "
                                        f"examples per task \\(at most {largest - 1} here\\)"):
        check_fidelity(demo_ev, None)
    check_fidelity(demo_ev, 50)  # a number is always fine
    monkeypatch.setenv("GPTAILOR_MAX_FULL_EXAMPLES", str(largest))
    check_fidelity(demo_ev, None)


def test_budget_sliders_follow_the_family_and_only_one_is_active():
    from ui.search_tab import budget_controls

    remove, fraction = budget_controls("demo", "layers to remove")
    assert remove.maximum == 7 and remove.interactive is True and fraction.interactive is False
    remove, fraction = budget_controls("demo", "parameter fraction")
    assert remove.interactive is False and fraction.interactive is True


def test_the_trials_field_follows_the_familys_depth_within_the_apps_cap(tmp_path, monkeypatch):
    """60 on the 8-layer demo; 200 on a family deeper than 12 layers (what searches on the 30-layer smol
    families needed to beat the seeded rules); never above GPTAILOR_MAX_TRIALS; an unknown family leaves it."""
    from conftest import make_tiny_family
    from ui.search_tab import trials_default

    monkeypatch.delenv("GPTAILOR_PUBLIC", raising=False)
    monkeypatch.delenv("GPTAILOR_MAX_TRIALS", raising=False)
    demo = trials_default("demo")
    assert demo.value == 60 and "60 suggested for 8 layers" in demo.info
    deep = str(make_tiny_family(tmp_path / "deep", n_layers=16))
    field = trials_default(deep)
    assert field.value == 200 and "200 suggested for 16 layers" in field.info
    monkeypatch.setenv("GPTAILOR_MAX_TRIALS", "150")
    assert trials_default(deep).value == 150
    kept = trials_default(str(tmp_path / "missing.yaml"))
    assert kept.value is None and kept.info is None  # an update that changes nothing
