"""The landing page's "Start here" block in a real server and a real Chromium, at 1400 and 760 px: its three
steps show under the title, every label they name in bold is a tab or a control the page really has (read
from the DOM), each step's button opens the tab it names, and following step 1 (press Evaluate in the
Evaluate tab) puts the base plan's retention on the page, the value the engine computes on its own in this
process. At 760 px the block stays short enough for the tab bar to show on the first screen, and folds
away. Screenshots: /tmp/landing-1400.png and /tmp/landing-760.png (full pages)."""
import re
from pathlib import Path

import pytest

from conftest import CHROMIUM, NARROW, launch_chromium, open_app
from test_app import start_app, stop_app

SHOTS = Path("/tmp")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url, _ = start_app(tmp_path_factory)
    yield url
    stop_app(proc)


def base_retention() -> str:
    """The demo base plan's headline retention as the page words it, computed here by the engine itself."""
    from db.runs import load_engine
    from gptailor import Plan

    ev = load_engine("demo")
    res = ev.evaluate(Plan.identity(ev.family.n_layers, family="demo"), None)
    return f"Retention {100 * res.retention:.1f}%"


def tab_labels(page) -> list[str]:
    return [t.strip() for t in page.get_by_role("tab").all_inner_texts()]


def named_labels_exist(page, tabs: list[str]) -> None:
    """Every **bold** name in the steps is a tab of the page, or a button or labelled control on one of its
    tabs. A tab's panel is put in the DOM when it is first shown: each tab is opened in turn (the first is
    shown already) and its panel waited for before looking."""
    from playwright.sync_api import expect

    names = {s.strip() for s in page.locator("#start-here strong").all_inner_texts()}
    assert len(names) >= 8, names
    missing = names - set(tabs)
    for opened, tab in enumerate(tabs, 1):
        page.get_by_role("tab", name=tab, exact=True).click()
        expect(page.locator("[role=tabpanel]")).to_have_count(opened)
        missing = {name for name in missing if not (page.get_by_role("button", name=name, exact=True).count()
                                                    + page.get_by_text(name, exact=True).count())}
    assert not missing, f"the Start here block names {missing}, neither a tab ({tabs}) nor a control on the page"


def steps_visible(page, tabs: list[str], width: int) -> None:
    """The three steps show, uncut, above the tab bar, and each names tabs the page has."""
    from playwright.sync_api import expect

    for n in (1, 2, 3):
        step = page.locator(f"#start-step-{n}")
        expect(step).to_be_visible()
        box = step.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (n, box, width)
        named = re.findall(r"(\w+) tab\b", step.inner_text())
        assert named and set(named) <= set(tabs), (n, named, tabs)
    bar = page.get_by_role("tab", name="Evaluate").bounding_box()
    assert page.locator("#start-step-3").bounding_box()["y"] < bar["y"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_start_here_steps_name_real_tabs_and_step_one_scores_the_base(server):
    from playwright.sync_api import expect, sync_playwright

    expected = base_retention()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, server, 1000)
        expect(page.get_by_role("tab", name="Chat")).to_be_visible()
        tabs = tab_labels(page)
        assert {"Evaluate", "Search", "Dashboard", "Editor", "Chat"} <= set(tabs), tabs
        expect(page.locator("#start-here")).to_contain_text("Start here")
        steps_visible(page, tabs, 1400)
        named_labels_exist(page, tabs)
        expect(page.locator("#start-next")).to_contain_text("Build the smol family")

        # each step's button opens the tab it names (the first named in its step)
        for n, tab in ((2, "Search"), (3, "Dashboard"), (1, "Evaluate")):
            page.locator(f"#start-go-{n}").click()
            expect(page.get_by_role("tab", name=tab, exact=True)).to_have_attribute("aria-selected", "true")

        # step 1: the plan box holds the base plan (every layer kept); press Evaluate
        expect(page.get_by_label("Plan (text form or JSON)")).to_have_value(re.compile(r"\S"))
        page.get_by_role("button", name="Evaluate", exact=True).click()
        summary = page.locator("p").filter(has_text=re.compile(r"Retention \d+\.\d%"))  # the summary line
        expect(summary).to_be_visible()
        assert expected in summary.inner_text() and "keeps 8 of 8 layers" in summary.inner_text()
        page.screenshot(path=str(SHOTS / "landing-1400.png"), full_page=True)

        page.set_viewport_size({"width": NARROW, "height": 1000})
        page.wait_for_function("(w) => window.innerWidth === w", arg=NARROW)
        steps_visible(page, tabs, NARROW)
        page.screenshot(path=str(SHOTS / "landing-760.png"), full_page=True)
        # short enough: the block under half the window, the tab bar still on the first screen
        assert page.locator("#start-here").bounding_box()["height"] < 500
        bar = page.get_by_role("tab", name="Evaluate").bounding_box()
        assert bar["y"] + bar["height"] <= 1000, bar
        # and the user can fold it away: the steps hide and the tabs move up
        page.get_by_text("Start here: three steps on the demo family").click()
        expect(page.locator("#start-step-1")).to_be_hidden()
        assert page.get_by_role("tab", name="Evaluate").bounding_box()["y"] < bar["y"] - 250
        browser.close()
