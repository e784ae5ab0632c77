"""Issue 22, item 4 (Stop) and 'errors persist' in Evaluate and Compare, in a real server (``tests/held_app.py``:
the real app, whose work can be held inside its Stop block until the page presses Stop) and a real Chromium
at 1400 and 760 px: a refused plan's error stays in the note under Evaluate's buttons; Stop says 'stopped'
on the page (Compare keeps the previous table) and no output turns into Gradio's red Error badge. Screenshots in tests/output/ (stop-*.png)."""
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import CHROMIUM, launch_chromium, narrow, open_app
from test_app import OUT, ROOT, free_port

STOPPED = "stopped: the work was cut short and nothing was stored"
GUARD_S = 180
PLAN = "0:base 1:math 2:drop 3:facts 4:base 5:strings 6:drop 7:base"


@pytest.fixture(scope="module")
def held_app(tmp_path_factory):
    """(url, gate folder): the app started from tests/held_app.py on a fresh data dir."""
    root = tmp_path_factory.mktemp("held")
    gate, port = root / "gate", free_port()
    gate.mkdir()
    env = {**os.environ, "PORT": str(port), "GPTAILOR_DATA_DIR": str(root / "data"), "GATE_DIR": str(gate),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    for k in ("GPTAILOR_DB_URL", "GPTAILOR_AUTH", "GPTAILOR_PUBLIC"):
        env.pop(k, None)
    log = root / "app.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "tests/held_app.py"], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while True:  # until the app answers, or ends
        if proc.poll() is not None:
            pytest.fail(f"app did not start: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "gradio_api/info", timeout=5)
            break
        except OSError:
            time.sleep(0.2)
    yield url, gate
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def no_error_badges(page) -> None:
    """Gradio's status tracker writes 'Error' over each output of an event that raised (a refusal's toast,
    titled 'Error' too, is meant: it is not counted)."""
    badges = page.evaluate("""() => Array.from(document.querySelectorAll('body *')).filter((el) =>
        el.children.length === 0 && el.textContent.trim() === 'Error' && el.getClientRects().length
        && !el.closest('[class*="toast"]')).length""")
    assert badges == 0


def shots(page, name: str, at) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1000})
    at.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / f"stop-{name}-1400.png"), full_page=True)
    narrow(page)
    at.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / f"stop-{name}-760.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def held(gate) -> None:
    """Wait until tests/held_app.py holds the work inside its Stop block (it touches ``entered``)."""
    guard = time.time() + GUARD_S  # only against a hang
    while not (gate / "entered").exists():
        assert time.time() < guard, "the work never reached its Stop block"
        time.sleep(0.05)
    (gate / "entered").unlink()


def stop_button(page):
    return page.get_by_role("button", name="Stop", exact=True).locator("visible=true")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_stop_in_evaluate_and_compare_says_stopped_with_no_error_badge(held_app):
    from gradio_client import Client
    from playwright.sync_api import expect, sync_playwright

    url, gate = held_app
    Client(url, verbose=False).predict("demo", PLAN, 4, api_name="/evaluate_manual")  # a study for Compare
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, url)
        page.set_default_timeout(GUARD_S * 1000)  # only against a hang: each wait ends on what the page shows
        expect.set_options(timeout=GUARD_S * 1000)

        # Evaluate: held inside its Stop block, then stopped from the page
        page.get_by_role("tab", name="Evaluate").click()
        summary = page.locator("#evaluate-summary")
        # a refused plan: its one-line error stays in the note under the buttons, not only in a fading toast
        plan = page.get_by_label("Plan (text form or JSON)")
        expect(plan).to_have_value(re.compile(r"^0:base"))  # the page's own load has filled in the base plan
        plan.fill("0:base 1:ghost")
        plan.press("Tab")  # the box's change reaches Gradio before the click
        expect(plan).to_have_value("0:base 1:ghost")
        page.get_by_role("button", name="Evaluate", exact=True).click()
        expect(summary).to_contain_text("position 1: unknown member 'ghost'")
        shots(page, "evaluate-refused", summary)
        page.get_by_label("Plan (text form or JSON)").fill(PLAN)
        (gate / "hold").touch()
        page.get_by_role("button", name="Evaluate", exact=True).click()
        held(gate)
        stop_button(page).click()
        expect(summary).to_contain_text(STOPPED)
        expect(summary).not_to_contain_text("ghost")
        no_error_badges(page)
        shots(page, "evaluate", summary)

        # Compare: a first run fills the table; a second, stopped, keeps it and says so
        (gate / "hold").unlink()
        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Compare all studies").click()
        expect(page.locator("#compare-table [data-testid='cell-0-0']")).to_be_visible()
        before = page.locator("#compare-table [data-testid='cell-0-1']").text_content()
        (gate / "hold").touch()
        page.get_by_role("button", name="Compare all studies").click()
        held(gate)
        stop_button(page).click()
        note = page.locator("#compare-note")
        expect(note).to_contain_text(STOPPED)
        expect(note).to_contain_text("previous results")
        expect(page.locator("#compare-table [data-testid='cell-0-1']")).to_have_text(before)
        no_error_badges(page)
        shots(page, "compare", note)
        no_error_badges(page)

        # the lm-eval panel (Evaluate's): held inside its Stop block, then stopped from the page
        page.get_by_role("tab", name="Evaluate").click()
        panel = page.locator("#evaluate-lm-eval")
        panel.get_by_text("Standard benchmarks (lm-evaluation-harness)").click()  # open the accordion
        panel.get_by_label("lm-eval tasks (comma-separated; their datasets must be cached)").fill("arc_easy")
        panel.get_by_role("button", name="Run lm-eval on the plan and the members").click()
        held(gate)
        panel.get_by_role("button", name="Stop", exact=True).click()
        expect(panel).to_contain_text(STOPPED)
        no_error_badges(page)
        shots(page, "lm-eval", panel)
        browser.close()
    (gate / "hold").unlink()
