"""Issue 22, item 6 in a real server and a real Chromium (1400 and 760 px): the base plan evaluated through the
Evaluate tab reads "same as the base within noise" for prefill and decode, with the spread of its runs, never
a bare "0.13x the base" ratio. Screenshots in tests/output/ (speed-base-1400.png, speed-base-760.png)."""
import re

import pytest

from conftest import CHROMIUM, launch_chromium, narrow, open_app
from test_app import OUT, start_app, stop_app

SPREAD = r"\(\d+\.\d\d-\d+\.\d\dx over \d+ runs each\)"
NOISE = rf"same as the base within noise {SPREAD}"  # gptailor.eval.speed.ratio_text's words for "same"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    proc, url, data = start_app(tmp_path_factory)
    yield url
    stop_app(proc)


def speed_line(page) -> str:
    """Evaluate the plan in the box and return the summary's speed line, once the page shows it."""
    from playwright.sync_api import expect

    summary = page.locator("p", has_text="Speed: prefill")
    page.get_by_role("button", name="Evaluate", exact=True).click()
    expect(summary).to_have_count(0)  # the last result is cleared first: what follows is this run's
    expect(summary).to_be_visible()
    return next(ln for ln in summary.inner_text().splitlines() if ln.startswith("Speed:"))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_base_plan_reads_the_same_speed_as_the_base_within_noise(app):
    from playwright.sync_api import expect, sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, app)
        plan = page.get_by_label("Plan (text form or JSON)")
        expect(plan).to_have_value(re.compile(r"^0:base 1:base 2:base 3:base 4:base 5:base 6:base 7:base$"))
        for width in (1400, 760):
            if width == 760:
                narrow(page, "Evaluate")
                page.get_by_role("button", name="Base plan (keep every layer)").click()
                expect(plan).to_have_value(re.compile(r"^0:base 1:base 2:base 3:base 4:base 5:base 6:base 7:base$"))
            line = speed_line(page)
            assert re.fullmatch(rf"Speed: prefill [\d,]+ tok/s \({NOISE}\), decode [\d,.]+ tok/s \({NOISE}\), "
                                r"measured on cpu in \S+", line), (width, line)
            assert "x the base" not in line, (width, line)  # no ratio where the runs cannot tell them apart
            for lo, hi in re.findall(r"(\d+\.\d\d)-(\d+\.\d\d)x over", line):  # the spread holds 1.0
                assert float(lo) <= 1.0 <= float(hi), (width, line)
            assert page.get_by_text("Error", exact=True).count() == 0
            page.locator("p", has_text="Speed: prefill").scroll_into_view_if_needed()
            page.screenshot(path=str(OUT / f"speed-base-{width}.png"), full_page=True)
        browser.close()
