"""The Analysis tab in a real server and a real Chromium, at 1400 px and at 760 px: the angular-distance
heatmap as drawn reads the way its caption says (a dark cell is a small distance, the removal candidate),
checked on the pixels of the drawn cells and colour bar; screenshots kept in tests/output/
(analysis-1400.png, analysis-760.png)."""
import io

import pytest

from conftest import CHROMIUM, LAID_OUT, launch_chromium, narrow, open_app
from test_app import OUT, start_app, stop_app

# Where the smallest and the largest distance are drawn, and where the colour bar's two ends are, in pixels
# of the chart element (Plotly's own axes map the data to pixels).
WHERE = """(root) => {
    const gd = root.querySelector('.js-plotly-plot');
    const tr = gd.data[0], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
    let lo = null, hi = null;
    tr.z.forEach((row, i) => row.forEach((v, j) => {
        if (v === null) return;
        const cell = {v: v, x: xa.l2p(tr.x[j]) + xa._offset, y: ya.l2p(tr.y[i]) + ya._offset};
        if (lo === null || v < lo.v) lo = cell;
        if (hi === null || v > hi.v) hi = cell;
    }));
    const g = gd.getBoundingClientRect(), bar = gd.querySelector('.cbfill').getBoundingClientRect();
    const cx = bar.x + bar.width / 2 - g.x;
    return {lo: lo, hi: hi, bar_low: {x: cx, y: bar.bottom - 3 - g.y}, bar_high: {x: cx, y: bar.top + 3 - g.y}};
}"""


DARK, BRIGHT = 90, 160  # luminance (0-255) below which a cell reads as dark, above which as bright


def luminance(rgb) -> float:
    """Relative luminance (ITU-R BT.709 weights) of an 8-bit RGB pixel: what "dark" means on screen."""
    r, g, b = rgb[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def drawn_shades(page) -> dict[str, float]:
    """The luminance of the smallest-distance cell, the largest, and the colour bar's low and high ends,
    read from a screenshot of the chart as Chromium drew it."""
    from PIL import Image

    root = page.locator("#analysis-angular")
    root.scroll_into_view_if_needed()
    at = root.evaluate(WHERE)
    shot = Image.open(io.BytesIO(root.locator(".js-plotly-plot").screenshot())).convert("RGB")
    return {k: luminance(shot.getpixel((round(at[k]["x"]), round(at[k]["y"]))))
            for k in ("lo", "hi", "bar_low", "bar_high")}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    proc, url, _data = start_app(tmp_path_factory)
    yield url
    stop_app(proc)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_angular_heatmap_reads_as_its_caption_says_at_both_widths(app):
    from playwright.sync_api import expect, sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, app, 1000)
        page.get_by_role("tab", name="Analysis").click()
        page.get_by_role("button", name="Compute (cached per family and calibration set)").click()
        page.locator("#analysis-angular .hm image").wait_for()
        page.locator("#analysis-drift .hm image").wait_for()  # the last chart: all five are drawn
        caption = page.locator("#analysis-angular-caption")
        expect(caption).to_contain_text("A dark cell is a small distance")
        expect(caption).to_contain_text("removal candidate")
        for width in (1400, 760):
            if width == 760:
                narrow(page)
            else:
                page.wait_for_function(LAID_OUT, arg=width, polling="raf")
            shade = drawn_shades(page)
            # the caption's removal candidate (the smallest distance) is drawn dark, the largest bright,
            # and the colour bar says the same: dark at its low end
            assert shade["lo"] < DARK and shade["hi"] > BRIGHT, shade
            assert shade["bar_low"] < DARK and shade["bar_high"] > BRIGHT, shade
            expect(page.locator("#analysis-angular .cbtitle")).to_contain_text("dark = small distance")
            page.locator("#analysis-angular").scroll_into_view_if_needed()
            page.screenshot(path=str(OUT / f"analysis-{width}.png"), full_page=True)
        browser.close()
    for width in (1400, 760):
        assert (OUT / f"analysis-{width}.png").stat().st_size > 30_000
