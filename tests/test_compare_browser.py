"""Compare in a real server and a real Chromium, at 1400 px and at 760 px: two real studies on the demo
family (conftest's ``demo_studies_app``), the table with both retention definitions, the layer maps (the
dashboard's component: a row per study, grey drop cells with their legend entry, the score bar), and the
same numbers as the Dashboard's best-trial summary for the same studies. Screenshots: compare-1400.png,
compare-760.png in tests/output/."""
import pytest

from conftest import CHROMIUM, launch_chromium, narrow, open_app
from test_app import OUT


def table_rows(page, elem: str, n_cols: int) -> list[list[str]]:
    """The cells of a Gradio Dataframe as shown, row by row."""
    rows = []
    r = 0
    while page.locator(f"#{elem} [data-testid='cell-{r}-0']").count():
        rows.append([page.locator(f"#{elem} [data-testid='cell-{r}-{c}']").inner_text().strip()
                     for c in range(n_cols)])
        r += 1
    return rows


def headers(page, elem: str) -> list[str]:
    return [h.strip() for h in page.locator(f"#{elem} thead th").all_inner_texts()]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_compare_in_the_browser_matches_the_dashboard(demo_studies_app):
    from playwright.sync_api import expect, sync_playwright

    client, st, ids, _data, _refs = demo_studies_app
    url = client.src
    studies = {s["id"]: s for s in st.studies()}
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, url, 1000)
        page.get_by_role("tab", name="Compare").click(timeout=60_000)
        page.get_by_role("button", name="Compare all studies").click()
        page.locator("#compare-maps .js-plotly-plot").wait_for(timeout=120_000)
        expect(page.locator("#compare-table [data-testid='cell-1-0']")).to_be_visible(timeout=30_000)
        head = headers(page, "compare-table")
        definition = studies[ids[0]]["refs"]["definition"]
        assert f"{definition} retention % [95%] (objective)" in head, head
        fam, base = (next(i for i, h in enumerate(head) if h.startswith(f"{d} retention")) for d in ("family", "base"))
        shown = {int(r[0]): r for r in table_rows(page, "compare-table", len(head))}
        assert set(ids) <= set(shown)
        for sid in ids:  # the study's stored report (test split), both definitions
            rep = studies[sid]["report"]["retentions"]
            assert float(shown[sid][fam].split(" [")[0]) == round(100 * rep["family"], 1)  # '20.2 [16.1, 24.9]'
            assert float(shown[sid][base].split(" [")[0]) == round(100 * rep["base"], 1)

        # the layer maps: the dashboard's component, one row per study, its score bar = the table's number
        maps = page.evaluate("""() => {
            const gd = document.querySelector('#compare-maps .js-plotly-plot');
            return gd.data.map((t) => ({name: t.name, x: t.x, label: (t.customdata || []).map((c) => c[1])})); }""")
        names = [t["name"] for t in maps]
        assert "drop" in names and "retention" in names and "base" in names
        bars = next(t for t in maps if t["name"] == "retention")
        objective = fam if definition == "family" else base
        assert len(bars["x"]) == len(shown)
        for label, x in zip(bars["label"], bars["x"]):  # 'id: name: 20.2% (test split, family retention)'
            sid = int(label.split(":")[0])
            assert round(x, 1) == float(shown[sid][objective].split(" [")[0])
        assert page.locator("#compare-maps .legendtext", has_text="drop").count() == 1
        page.wait_for_timeout(1000)
        page.screenshot(path=str(OUT / "compare-1400.png"), full_page=True)

        # the Dashboard's best-trial summary, same studies: the same test-split numbers
        page.get_by_role("tab", name="Dashboard").click()
        pick = page.locator("#best-summary [data-testid='cell-1-0']")
        expect(pick).to_be_visible(timeout=60_000)
        shead = headers(page, "best-summary")
        tfam = next(i for i, h in enumerate(shead) if h.startswith("family % test"))  # with its interval
        tbase = next(i for i, h in enumerate(shead) if h.startswith("base % test"))
        summary = {int(r[0]): r for r in table_rows(page, "best-summary", len(shead))}
        for sid in ids:
            assert summary[sid][tfam] == shown[sid][fam] and summary[sid][tbase] == shown[sid][base]

        # 760 px: the table scrolls inside its box, the maps keep the page's width, nothing clipped
        narrow(page, "Compare")
        page.screenshot(path=str(OUT / "compare-760.png"), full_page=True)
        box = page.locator("#compare-maps").bounding_box()
        table = page.locator("#compare-table").bounding_box()
        assert box["x"] + box["width"] <= 760 and box["width"] >= table["width"] - 2  # the page's full width
        title = page.locator("#compare-maps .gtitle").bounding_box()
        assert title["x"] >= box["x"] and title["x"] + title["width"] <= box["x"] + box["width"]
        browser.close()
    assert (OUT / "compare-1400.png").stat().st_size > 30_000 and (OUT / "compare-760.png").stat().st_size > 30_000
