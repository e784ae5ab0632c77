"""The Dashboard's selected trial in a real server and a real Chromium: selected automatically, it follows the
best trial as a study goes on and ends (so "Open in editor" opens the final best, not the best of the first
refresh); picked by the user, it stays. The trial table's CSV downloads under the shown
studies' names. Screenshots kept in tests/output/ (dashboard-best-1400.png, dashboard-best-760.png).

The study's trials are written by this test into the app's database (a real SQLite file through the store)
while the page is open, as a worker would record them."""
import re
from pathlib import Path

import pytest

from conftest import CHROMIUM, LAID_OUT, launch_chromium, narrow, open_app, scored_trial
from gptailor import Plan
from test_app import OUT, start_app, stop_app

MEMBERS = ["base", "math", "strings", "facts"]
INFO = {"n_layers": 8, "members": {m: m for m in MEMBERS}}


def plan_of(number: int) -> Plan:
    """A different plan per trial (two layers dropped, the rest from the members in turn)."""
    ops = [MEMBERS[(number + i) % 4] for i in range(8)]
    ops[number % 8], ops[(number + 3) % 8] = "drop", "drop"
    return Plan.from_text(" ".join(ops), "demo")


def record(st, sid: int, number: int, retention: float) -> None:
    st.record_trial(sid, scored_trial(number, plan_of(number), {"family": retention, "base": 1.2 * retention}, 40,
                                      6e6, scores={"math": retention},
                                      task_retentions={"family": {"math": retention},
                                                       "base": {"math": 1.2 * retention}}))


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A server over a database with one study under way: 13 trials, the best #12 (21.0%)."""
    from db.store import Store

    proc, url, data = start_app(tmp_path_factory)
    st = Store(f"sqlite:///{data / 'gptailor.db'}")
    sid = st.create_study(family_name="demo", family_source="demo", family_spec={"name": "demo"}, family_info=INFO,
                          method="smac", budget={"remove_layers": 2}, settings={"suite": None}, n_trials=40,
                          name="smac-r2-s0")
    st.set_study_fields(sid, refs={"definition": "family"})
    for n in range(13):
        record(st, sid, n, 0.21 if n == 12 else 0.10 + 0.005 * n)
    yield url, st, sid
    stop_app(proc)


def best_in_summary(page, number: int) -> None:
    """Wait until the page has re-read the study: its best-trial summary names trial ``number``."""
    from playwright.sync_api import expect

    expect(page.locator("#best-summary [data-testid='cell-0-3']")).to_have_text(str(number))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_automatic_selection_follows_the_best_and_a_users_pick_stays(running):
    from playwright.sync_api import expect, sync_playwright

    url, st, sid = running
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, url, 1000)
        page.get_by_role("tab", name="Dashboard").click()
        confirm = page.locator("#trial-selected")
        best_in_summary(page, 12)
        expect(confirm).to_contain_text("Trial 12 of smac-r2-s0 selected")  # the best so far, chosen for the user

        # the study goes on and ends with a new best, #34 (27.8%), while the page is open
        for n in range(13, 35):
            record(st, sid, n, 0.278 if n == 34 else 0.15)
        st.transition(sid, ("created",), "finished")
        best_in_summary(page, 34)
        expect(confirm).to_contain_text("Trial 34 of smac-r2-s0 selected")
        assert "Trial 12 " not in confirm.inner_text()
        expect(page.locator("#trial-selector input")).to_have_value(re.compile(r"#34 ·"))
        page.wait_for_function(LAID_OUT, arg=1400, polling="raf")
        page.screenshot(path=str(OUT / "dashboard-best-1400.png"), full_page=True)

        # "Open in editor" opens that best trial's plan
        page.get_by_role("button", name="Open in editor").click()
        expect(page.get_by_label("Plan (compact text form)")).to_have_value(plan_of(34).to_text())

        # a trial the user picks stays picked when a better one comes in
        page.get_by_role("tab", name="Dashboard").click()
        page.locator("#trial-selector input").click()
        page.get_by_role("option", name=re.compile(r"smac-r2-s0 #5 ·")).click()
        expect(confirm).to_contain_text("Trial 5 of smac-r2-s0 selected")
        record(st, sid, 35, 0.30)
        best_in_summary(page, 35)
        expect(confirm).to_contain_text("Trial 5 of smac-r2-s0 selected")
        expect(page.locator("#trial-selector input")).to_have_value(re.compile(r"#5 ·"))

        # the trial table's CSV downloads under the study's name, with every trial of it
        with page.expect_download() as got:
            page.get_by_role("button", name="Download CSV").click()
        download = got.value
        assert download.suggested_filename == "gptailor-trials-smac-r2-s0.csv"
        lines = Path(download.path()).read_text().splitlines()
        assert len(lines) == 1 + 36 and lines[0].startswith("study,number,status")

        # the same at 760 px, in a new page (its selection automatic again): the best is chosen, a new best
        # taken over, and "Open in editor" opens it
        page = open_app(browser, url, 1000)
        narrow(page, "Dashboard")
        confirm = page.locator("#trial-selected")
        best_in_summary(page, 35)
        expect(confirm).to_contain_text("Trial 35 of smac-r2-s0 selected")
        record(st, sid, 36, 0.32)
        best_in_summary(page, 36)
        expect(confirm).to_contain_text("Trial 36 of smac-r2-s0 selected")
        assert "Trial 35 " not in confirm.inner_text()
        expect(page.locator("#trial-selector input")).to_have_value(re.compile(r"#36 ·"))
        page.wait_for_function(LAID_OUT, arg=760, polling="raf")
        page.screenshot(path=str(OUT / "dashboard-best-760.png"), full_page=True)
        page.get_by_role("button", name="Open in editor").click()
        expect(page.get_by_label("Plan (compact text form)")).to_have_value(plan_of(36).to_text())
        browser.close()
    for width in (1400, 760):
        assert (OUT / f"dashboard-best-{width}.png").stat().st_size > 50_000


def test_the_csv_is_named_after_the_shown_studies(tmp_path):
    import gradio as gr

    from ui.dashboard_tab import TRIAL_COLUMNS, to_csv

    name = TRIAL_COLUMNS.index("study name")

    def row(study: str) -> list:
        r = [1, 0, "complete"] + [None] * (len(TRIAL_COLUMNS) - 3)
        r[name] = study
        return r

    req = gr.Request(session_hash="csv-names")
    one = Path(to_csv([row("smac-r2-s0"), row("smac-r2-s0")], req))
    assert one.name == "gptailor-trials-smac-r2-s0.csv" and one.read_text().count("\n") == 3
    two = Path(to_csv([row("smac main"), row("random-r2-s0"), row("../x")], req))
    assert two.name == "gptailor-trials-smac-main_random-r2-s0_x.csv"
    assert sorted(p.name for p in two.parent.iterdir()) == [two.name]  # one file per session, the newest name
    many = Path(to_csv([row(f"study-{k}") for k in range(5)], req))
    assert many.name == "gptailor-trials-study-0_study-1_study-2-and-2-more.csv"
    assert Path(to_csv([], req)).name == "gptailor-trials.csv"
