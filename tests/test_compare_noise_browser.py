"""Issue 22, items 2, 5 and 8 in a real server and a real Chromium, at 1400 px and at 760 px, on the demo
family's real studies (conftest's ``demo_studies_app``: a random search and a last_n baseline) plus a manual
plan evaluated through the Editor's API:

- Compare shows each retention with its 95% interval (Wilson per task, checked here against the closed
  form), says pair by pair against the best whether the difference is larger than the noise, and shows
  each study's trials and wall time beside it;
- the Search list says which split and fidelity each best number comes from (the manual study's: the test
  split), and the Dashboard summary files the manual study under the test columns, not the search ones;
- the best-so-far chart says the best is ranked by fidelity first (so it may go down).

Screenshots: compare-noise-1400.png, compare-noise-760.png, split-search-1400.png, split-dashboard-1400.png,
split-dashboard-760.png in tests/output/."""
import math

import pytest
from conftest import CHROMIUM, launch_chromium, narrow, open_app
from test_app import OUT
from test_compare_browser import headers, table_rows

PLAN = "0:base 1:math 2:drop 3:facts 4:base 5:strings 6:drop 7:base"
Z = 1.96


def wilson_by_hand(p: float, n: int) -> tuple[float, float]:
    """Wilson's score interval, written out: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    c = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    h = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return max(0.0, c - h), min(1.0, c + h)


def objective_by_hand(report: dict, refs: dict) -> tuple[float, float, float, float]:
    """(mean, lo, hi, se) of a report's objective retention from its per-task retentions, scores, example
    counts and the test split's references, by hand: Wilson per accuracy task over its reference, tasks
    added in quadrature; a perplexity task counts in the mean with no binomial noise."""
    d = report["definition"]
    rets, downs, ups, var = [], 0.0, 0.0, 0.0
    for t, r in report["task_retentions"][d].items():
        if r is None:  # no reference under this definition: left out of the mean
            continue
        rets.append(r)
        if refs["kinds"][t] == "perplexity":
            continue
        members = refs["scores"]
        ref = members["base"][t] if d == "base" else max(members[m][t] for m in members)
        cap = 1.0 if d == "family" else math.inf
        p, n = report["scores"][t], int(report["details"][t]["n"])
        assert r == pytest.approx(min(cap, p / ref))
        lo, hi = wilson_by_hand(p, n)
        downs += (r - min(cap, lo / ref)) ** 2
        ups += (min(cap, hi / ref) - r) ** 2
        var += ((hi - lo) / (2 * Z) / ref) ** 2
    k = len(rets)
    m = sum(rets) / k
    return m, max(0.0, m - math.sqrt(downs) / k), m + math.sqrt(ups) / k, math.sqrt(var) / k


def fidelity_rise(st, like: dict) -> int:
    """A finished study on the demo family and suite of ``like`` (so the Dashboard shows it with the others) whose second rung scores below the first one's best: the best
    as ranked goes 30, 50, then 40 (fidelity 30 outranks fidelity 10), 45."""
    from conftest import scored_trial

    sid = st.create_study(family_name="demo", family_source="demo", family_spec={"name": "demo"},
                          family_info={"n_layers": 8, "members": {m: m for m in ("base", "math", "strings", "facts")}},
                          method="random", budget={"remove_layers": 2}, settings=dict(like["settings"]), n_trials=4,
                          name="fidelity-rise")
    for k, (retention, fidelity) in enumerate([(0.3, 10), (0.5, 10), (0.4, 30), (0.45, 30)]):
        t = scored_trial(k, "0:base 1:base 2:drop 3:base 4:base 5:base 6:drop 7:base",
                         {"family": retention, "base": retention}, fidelity)
        t.result.split = "search"  # as a search's trial
        st.record_trial(sid, t)
    st.set_study_fields(sid, refs={"definition": "family"})
    st.transition(sid, ("created",), "finished")
    return sid


CLIPPED = """(sel) => Array.from(document.querySelectorAll(sel)).flatMap((cell) => [cell, ...cell.querySelectorAll('*')])
    .filter((el) => el.clientWidth > 0 && el.scrollWidth > el.clientWidth).map((el) => el.textContent.trim())"""


def clipped(page, column: int) -> list[str]:
    """The texts of Compare's cells in ``column`` (or of an element inside one) wider than their box: cut off."""
    return page.evaluate(CLIPPED, f"#compare-table [data-testid^='cell-'][data-testid$='-{column}']")


def parse(cell: str) -> tuple[float, float, float]:
    value, _, rest = cell.partition(" [")
    lo, hi = rest.rstrip("]").split(", ")
    return float(value), float(lo), float(hi)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_every_number_says_its_split_and_its_noise(demo_studies_app):
    from playwright.sync_api import expect, sync_playwright

    client, st, ids, _data, test_refs = demo_studies_app
    client.predict("demo", PLAN, None, api_name="/evaluate_manual")  # the Editor: a manual study, full fidelity
    studies = {s["id"]: s for s in st.studies()}
    manual = max(sid for sid, s in studies.items() if s["method"] == "manual")
    search = ids[0]
    assert studies[manual]["best_split"] == "test" and studies[search]["best_split"] == "search"
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, client.src, 1000)
        page.set_default_timeout(120_000)  # a guard against a hang only: every wait ends on what the page shows
        expect.set_options(timeout=120_000)

        # item 5, the Search list: each best number names its split and fidelity
        page.get_by_role("tab", name="Search").click()
        expect(page.locator("#studies-table [data-testid='cell-0-0']")).to_have_text(str(manual))
        head = headers(page, "studies-table")
        assert "best from" in head, head
        listed = {int(r[0]): r for r in table_rows(page, "studies-table", len(head))}
        where = head.index("best from")
        assert listed[manual][where] == f"test split, fidelity {st.trials(manual)[0].fidelity}"
        assert listed[search][where] == f"search split, fidelity {studies[search]['best_fidelity'] or 'full'}"
        page.screenshot(path=str(OUT / "split-search-1400.png"), full_page=True)

        # item 2, Compare: intervals, the verdict against the best, trials and wall time beside each study
        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Compare all studies").click()
        page.locator("#compare-maps .js-plotly-plot").wait_for()
        expect(page.locator("#compare-table [data-testid='cell-2-0']")).to_be_visible()
        head = headers(page, "compare-table")
        shown = {int(r[0]): r for r in table_rows(page, "compare-table", len(head))}
        assert {manual, *ids} <= set(shown)
        studies = {s["id"]: s for s in st.studies()}
        definition = studies[search]["report"]["definition"]
        obj = next(i for i, h in enumerate(head) if h.startswith(f"{definition} retention % [95%]"))
        vs, trials, wall = head.index("vs the best (objective)"), head.index("trials"), head.index("wall s")
        assert obj < trials < wall < vs  # cost stands beside quality
        hand = {}
        for sid in shown:
            rep = studies[sid]["report"]
            hand[sid] = objective_by_hand(rep, test_refs)
            value, lo, hi = parse(shown[sid][obj])
            m, hlo, hhi, _se = hand[sid]
            assert (value, lo, hi) == (round(100 * m, 1), round(100 * hlo, 1), round(100 * hhi, 1)), shown[sid]
            assert hi > lo  # never zero noise, not even for a 0% row
            assert int(shown[sid][trials]) == len(st.trials(sid))
            assert float(shown[sid][wall]) == round(max(t.wall_s for t in st.trials(sid)), 1)
        best = max(hand, key=lambda s: hand[s][0])
        assert shown[best][vs] == "best"
        for sid in set(shown) - {best}:  # the benchmark's rule, by hand: |diff| > 1.96 x sqrt(se_a^2 + se_b^2)
            diff = hand[sid][0] - hand[best][0]
            noise = math.sqrt(hand[sid][3] ** 2 + hand[best][3] ** 2)
            want = "worse by more than the noise" if abs(diff) > Z * noise else "within the noise"
            assert shown[sid][vs] == f"{100 * diff:+.1f} (noise {100 * noise:.1f}): {want}"
        # the per-task chart's whiskers and the map's retention bar: each task's 95% interval, Wilson by hand
        bars = page.wait_for_function("""() => {
            const gd = document.querySelector('#compare-bars .js-plotly-plot');
            return gd && gd.data && gd.data.length ? gd.data.map(t => ({name: t.name, x: t.x, y: t.y,
                plus: t.error_y.array, minus: t.error_y.arrayminus})) : null; }""").json_value()
        for trace in bars:
            rep = studies[int(trace["name"].split(":")[0])]["report"]
            d = rep["definition"]
            for task, y, plus, minus in zip(trace["x"], trace["y"], trace["plus"], trace["minus"]):
                r = rep["task_retentions"][d][task]
                if test_refs["kinds"][task] == "perplexity" or r is None:
                    assert not plus and not minus
                    continue
                members = test_refs["scores"]
                ref = members["base"][task] if d == "base" else max(members[m][task] for m in members)
                cap = 1.0 if d == "family" else math.inf
                lo, hi = wilson_by_hand(rep["scores"][task], int(rep["details"][task]["n"]))
                assert y == pytest.approx(100 * r)
                assert [y + plus, y - minus] == pytest.approx([100 * min(cap, hi / ref), 100 * min(cap, lo / ref)])
        whiskers = page.wait_for_function("""() => {
            const gd = document.querySelector('#compare-maps .js-plotly-plot');
            const t = gd && gd.data && gd.data.find(t => t.name === 'retention');
            return t ? {who: t.customdata.map(c => c[1]), x: t.x, plus: t.error_x.array,
                        minus: t.error_x.arrayminus} : null; }""").json_value()
        assert len(whiskers["x"]) == len(shown)
        for x, plus, minus, who in zip(whiskers["x"], whiskers["plus"], whiskers["minus"], whiskers["who"]):
            sid = int(who.split(":")[0])  # the row's label, "12: smac-r2-s0"
            m, hlo, hhi, _se = hand[sid]
            assert [x, x + plus, x - minus] == pytest.approx([100 * m, 100 * hhi, 100 * hlo], abs=1e-6)
        assert page.locator(f"#compare-table [data-testid^='cell-'][data-testid$='-{vs}']").count() >= len(shown)
        assert clipped(page, vs) == []  # "worse by more than the noise" wraps, never cut to "worse by more thar"
        page.wait_for_timeout(500)  # the plot's transition settles before the picture
        page.screenshot(path=str(OUT / "compare-noise-1400.png"), full_page=True)

        # items 5 and 8, the Dashboard: the manual study under the test columns; the best ranked fidelity first,
        # shown on a study whose fidelity rose mid-run (its best went 50% -> 40%), written straight to the store
        rise = fidelity_rise(st, studies[search])
        page.get_by_role("tab", name="Dashboard").click()
        expect(page.locator("#best-summary [data-testid='cell-2-0']")).to_be_visible()
        shead = headers(page, "best-summary")
        summary = {int(r[0]): r for r in table_rows(page, "best-summary", len(shead))}
        col = {h.split(" (")[0]: i for i, h in enumerate(shead)}
        m = summary[manual]
        assert m[col["best from"]].startswith("test split")
        assert m[col["family % search [95%]"]] == "" and m[col["base % search [95%]"]] == ""  # not filed as a search number
        for sid in shown:
            for d in ("family", "base"):
                cell = summary[sid][col[f"{d} % test [95%]"]]
                assert cell == shown[sid][head.index(next(h for h in head if h.startswith(f"{d} retention")))]
        caption = page.wait_for_function("""() => {
            const gd = document.querySelector('#curve .js-plotly-plot');
            return gd && gd.layout && gd.layout.title.subtitle.text; }""").json_value()
        assert "fidelity first" in caption and "can go down" in caption.replace("<br>", " "), caption
        assert "fidelity first" in page.locator("#curve").text_content()  # drawn, not only set
        page.wait_for_timeout(500)
        page.screenshot(path=str(OUT / "split-dashboard-1400.png"), full_page=True)
        expect(page.locator("#focus-study input")).to_have_value(f"{rise}: fidelity-rise [finished]")
        drawn = page.wait_for_function("""() => {
            const gd = document.querySelector('#curve .js-plotly-plot');
            const dashed = gd && gd.data.find((t) => (t.name || '').endsWith('best as ranked (fidelity first)'));
            return dashed && {y: dashed.y, marks: (gd.layout.annotations || []).map((a) => a.text)}; }""").json_value()
        assert [round(y, 6) for y in drawn["y"]] == [30.0, 50.0, 40.0, 45.0] and drawn["marks"] == ["fidelity 10 → 30"]
        assert "fidelity 10 → 30" in page.locator("#curve").text_content()

        # 760 px: both tables scroll inside their boxes, the chart's caption stays inside the page
        narrow(page, "Compare")
        table = page.locator("#compare-table").bounding_box()
        assert table["x"] + table["width"] <= 760
        assert clipped(page, vs) == []
        page.screenshot(path=str(OUT / "compare-noise-760.png"), full_page=True)
        page.set_viewport_size({"width": 1400, "height": 1000})  # a resize lays the hidden tab's charts out again
        narrow(page, "Dashboard")
        box = page.locator("#curve").bounding_box()
        assert box["x"] + box["width"] <= 760
        page.screenshot(path=str(OUT / "split-dashboard-760.png"), full_page=True)
        browser.close()
