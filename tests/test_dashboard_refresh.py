"""The dashboard's 3-second timer reads only what changed: statements counted on the real SQLAlchemy engine
of the app's real SQLite store (an event listener, no mock). An unchanged database costs the one fingerprint
query and re-draws nothing; a new trial, a rename or a new study is a full re-read; a running study's status
line is still re-read (its worker may have stopped beating) while the charts are not. Also the focus study
of the per-trial charts: the newest running study by default, the one picked otherwise."""
import pytest
from sqlalchemy import event

from conftest import scored_trial
from gptailor import Plan

MEMBERS = ["base", "math", "strings", "facts"]
INFO = {"n_layers": 8, "members": {m: m for m in MEMBERS}}
SKIP = {"__type__": "update"}


def add_trial(st, sid: int, number: int, retention: float) -> None:
    plan = Plan.from_text(" ".join(["base"] * 6 + ["drop", "drop"]), "demo")
    st.record_trial(sid, scored_trial(number, plan, {"family": retention, "base": 1.5 * retention}, 40, 6e6,
                                      wall_s=1.0 * number, scores={"math": retention},
                                      task_retentions={"family": {"math": retention}, "base": {"math": 1.5 * retention}}))


@pytest.fixture()
def dash(tmp_path, monkeypatch):
    """The dashboard module on a fresh app database with two finished studies of three trials each."""
    from db.store import Store
    from ui import dashboard_tab, engine

    monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GPTAILOR_DB_URL", f"sqlite:///{tmp_path / 'gptailor.db'}")
    monkeypatch.setattr(engine, "_STORE", None)
    st = engine.store()
    ids = []
    for k, method in enumerate(("smac", "random")):
        sid = st.create_study(family_name="demo", family_source="demo", family_spec={"name": "demo"},
                              family_info=INFO, method=method, budget={"remove_layers": 2},
                              settings={"suite": None}, n_trials=3, name=f"{method}-r2-s0")
        for n in range(3):
            add_trial(st, sid, n, 0.5 + 0.1 * n + 0.01 * k)
        st.transition(sid, ("created",), "finished")
        ids.append(sid)
    statements: list[str] = []
    event.listen(st.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert isinstance(st, Store)
    return dashboard_tab, st, ids, statements


def outputs(dashboard_tab, result) -> dict:
    return dict(zip(dashboard_tab.OUTPUTS, result))


def test_an_unchanged_database_costs_one_query_and_redraws_nothing(dash):
    d, st, ids, statements = dash
    first = outputs(d, d.refresh([], None, None, None))
    assert len(statements) > 5  # a full read: studies, their trials, the best trial...
    for _ in range(3):
        statements.clear()
        again = d.tick([], None, "1:0", first["state"])
        assert all(v == SKIP for v in again)  # gr.skip() for every output, the state included
        assert len(statements) == 1 and "count(trials.id)" in statements[0]  # the fingerprint alone

    # a new trial is a full re-read, and the new row is in the table
    add_trial(st, ids[1], 3, 0.9)
    statements.clear()
    new = outputs(d, d.tick([], None, "1:0", first["state"]))
    assert len(statements) > 5 and new["state"]["fp"] != first["state"]["fp"]
    assert len(new["table"].value["data"]) == 7
    statements.clear()
    assert all(v == SKIP for v in d.tick([], None, "1:0", new["state"])) and len(statements) == 1

    # a rename is a change too (names are in the legends); so is another choice of studies
    st.rename_study(ids[0], "smac main")
    assert d.tick([], None, "1:0", new["state"])[0] != SKIP
    statements.clear()
    assert d.tick([ids[0]], None, "1:0", new["state"])[0] != SKIP and len(statements) > 5


def test_picked_studies_fingerprint_only_their_family(dash):
    d, st, ids, statements = dash
    first = outputs(d, d.refresh([ids[0]], None, "1:0", None))
    assert first["state"]["families"] == ["demo"]
    other = st.create_study(family_name="other", family_source="other", family_spec={"name": "other"},
                            family_info=INFO, method="random", budget={}, settings={}, n_trials=1, name="o")
    add_trial(st, other, 0, 0.3)  # another family's study and trial: nothing to redraw here
    statements.clear()
    assert all(v == SKIP for v in d.tick([ids[0]], None, "1:0", first["state"])) and len(statements) == 1


def test_a_running_study_rereads_its_status_line_but_not_the_charts(dash):
    from db.liveness import Owner

    d, st, ids, statements = dash
    sid = st.create_study(family_name="demo", family_source="demo", family_spec={"name": "demo"},
                          family_info=INFO, method="smac", budget={"remove_layers": 2}, settings={"suite": None},
                          n_trials=10, name="live")
    assert st.claim(sid, Owner.me())  # this process is its (alive) worker; the heartbeat is now
    first = outputs(d, d.refresh([], None, None, None))
    assert first["state"]["active"] and first["focus"].value == sid  # the running study is the focus
    statements.clear()
    again = outputs(d, d.tick([], None, "1:0", first["state"]))
    assert "**3: live**" in again["status"]
    assert all(v == SKIP for k, v in again.items() if k != "status")


def test_the_per_trial_charts_follow_the_focus_study(dash):
    d, st, ids, _ = dash
    default = outputs(d, d.refresh([], None, None, None))
    assert default["focus"].value == ids[1]  # nothing running: the newest
    assert {t.name.split(" (")[0] for t in default["curve"].data} == {"random-r2-s0"}
    assert {t.name for t in default["pareto"].data} >= {"smac-r2-s0", "random-r2-s0"}  # family-wide
    picked = outputs(d, d.refresh([], ids[0], None, default["state"]))
    assert picked["focus"].value == ids[0]
    assert {t.name.split(" (")[0] for t in picked["curve"].data} == {"smac-r2-s0"}
    assert {t.name for t in picked["pareto"].data} >= {"smac-r2-s0", "random-r2-s0"}
    tops = [c[0] for t in picked["topk"].data if t.customdata is not None for c in t.customdata]
    assert tops and all(k.startswith(f"{ids[0]}:") for k in tops)
    # the table still lists the trials of every shown study, both definitions side by side
    head = picked["table"].headers
    assert "family retention % (objective)" in head and "base retention %" in head
    row = next(r for r in picked["table"].value["data"] if r[0] == str(ids[0]) and r[1] == 2)
    assert row[head.index("family retention % (objective)")] == 70.0 and row[head.index("base retention %")] == 105.0
