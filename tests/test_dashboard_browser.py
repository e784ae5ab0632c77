"""The dashboard in a real server and a real Chromium, at 1400 px and at 760 px: linked views (a click on a
Pareto point or a table row selects that trial everywhere), open in editor, rename, and screenshots kept in
tests/output/ (dashboard-1400.png, dashboard-760.png).

The studies are written straight into the app's database (a real SQLite file through the store) with
trials whose retention depends on position 5 only, so the page is full in seconds without a search."""
import random
import re

import pytest

from gptailor import Plan
from conftest import CHROMIUM, LAID_OUT, launch_chromium, narrow, open_app, scored_trial
from test_app import OUT, start_app, stop_app

MEMBERS = ["base", "math", "strings", "facts"]
INFO = {"n_layers": 8, "members": {m: m for m in MEMBERS}}


def fill(data) -> dict[str, int]:
    """Four studies on the demo family: two searches at two fidelities, a heuristic and a manual plan."""
    from db.store import Store

    st = Store(f"sqlite:///{data / 'gptailor.db'}")
    rng = random.Random(0)
    ids = {}
    for method, n, remove in (("smac", 24, 2), ("random", 16, 2), ("last_n", 1, 3), ("manual", 1, 1)):
        sid = st.create_study(family_name="demo", family_source="demo", family_spec={"name": "demo"},
                              family_info=INFO, method=method, budget={"remove_layers": remove},
                              settings={"suite": None}, n_trials=n,
                              name=f"{method}-r{remove}" + ("-s0" if n > 1 else ""))
        ids[method] = sid
        for k in range(n):
            ops = ["base"] * 8
            for i in rng.sample(range(8), remove):
                ops[i] = "drop"
            for i in range(8):
                if ops[i] != "drop" and rng.random() < 0.4:
                    ops[i] = rng.choice(["math", "strings", "facts", "merge(math=2,facts=1)"])
            plan = Plan.from_text(" ".join(ops), "demo")
            retention = (0.8 if ops[5] == "math" else 0.5) + 0.05 * rng.random()
            fidelity = 8 if method in ("smac", "random") and k % 3 == 0 else 40
            if method == "smac" and k % 3 == 1:  # promoted: the previous trial's plan again at the top fidelity
                plan = prev  # (its scores, and every other study's data, stay what the rng made them)
            prev = plan
            st.record_trial(sid, scored_trial(k, plan, {"family": retention, "base": 1.4 * retention}, fidelity,
                                              1e6 * plan.n_kept, wall_s=2.0 * k,
                                              scores={"math": retention, "facts": 0.4},
                                              task_retentions={"family": {"math": retention, "facts": 0.5},
                                                               "base": {"math": 1.8 * retention, "facts": 1.0}}))
        st.set_study_fields(sid, refs={"definition": "family"})
        st.transition(sid, ("created",), "finished")
    return ids


@pytest.fixture(scope="module")
def dash(tmp_path_factory):
    proc, url, data = start_app(tmp_path_factory)
    ids = fill(data)
    yield url, ids
    stop_app(proc)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_dashboard_linked_views_and_both_widths(dash):
    from playwright.sync_api import expect, sync_playwright

    url, ids = dash
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, url, 1000)
        page.get_by_role("tab", name="Dashboard").click()
        confirm = page.locator("#trial-selected")
        # the newest study (manual) and the others on its family are shown; the best trial is selected first
        expect(confirm).to_contain_text("selected")
        # the per-trial charts follow the newest study (the one-trial manual plan) until another is picked
        focus = page.locator("#focus-study input")
        expect(focus).to_have_value(f"{ids['manual']}: manual-r1 [finished]")
        expect(page.locator("#curve .legendtext").first).to_contain_text("manual-r1")
        focus.click()
        page.get_by_role("option", name=f"{ids['smac']}: smac-r2-s0 [finished]").click()
        expect(page.locator("#curve .legendtext").first).to_contain_text("smac-r2-s0")
        # its budget correlation: the 8 plans scored at 8 and again at 40 examples per task
        expect(page.locator("#budget-correlation")).to_contain_text(re.compile(r"8 → 40 examples: ρ = [+-]\d\.\d\d \(n = 8\)"))
        page.locator("#importance .js-plotly-plot").wait_for()
        page.locator("#per-trial .js-plotly-plot").wait_for()

        # the layer maps: a grey drop cell and a legend entry for it; the score beside each top-5 row
        top = page.locator("#top-trials")
        expect(top.locator(".legendtext", has_text="drop")).to_have_count(1)
        top.locator(".barlayer .trace").nth(2).wait_for()  # at least 3
        page.wait_for_function(LAID_OUT, arg=1400, polling="raf")  # every chart drawn: the screenshot is whole
        page.screenshot(path=str(OUT / "dashboard-1400.png"), full_page=True)

        # a click on a Pareto point (of another study than the best trial's) selects that trial everywhere
        expect(confirm).to_contain_text("of smac-r2-s0 selected")
        key = page.wait_for_function("""() => {
            const gd = document.querySelector('#pareto .js-plotly-plot');
            return gd && gd.data && gd.data[1] && gd.data[1].customdata[0][0]; }""").json_value()
        sid, number = (int(x) for x in key.split(":"))
        assert sid == ids["random"]
        point = page.locator("#pareto .scatterlayer .trace").nth(1).locator(".point").first
        point.scroll_into_view_if_needed()
        box = point.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        name_of = {v: f"{k}-r{r}" + ("-s0" if k in ("smac", "random") else "")
                   for (k, v), r in zip(ids.items(), (2, 2, 3, 1))}
        name = name_of[sid]
        expect(confirm).to_contain_text(f"Trial {number} of {name}")
        expect(page.locator("#trial-selector input")).to_have_value(re.compile(f"#{number} ·"))

        # a click on a cell of the top-5 map selects that row's trial
        key = page.evaluate("""() => {
            const gd = document.querySelector('#top-trials .js-plotly-plot');
            const tr = gd.data.find((t) => t.type === 'bar' && t.name !== 'retention');
            return tr.customdata[tr.customdata.length - 1][0]; }""")
        cell_sid, cell_n = (int(x) for x in key.split(":"))
        bar = page.locator("#top-trials .barlayer .trace").first.locator(".point").last
        bar.scroll_into_view_if_needed()
        bb = bar.bounding_box()
        page.mouse.move(bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2)
        page.mouse.click(bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2)
        expect(confirm).to_contain_text(f"Trial {cell_n} of {name_of[cell_sid]}")

        # a click on a row of the trial table selects that row's trial
        def cell(r, c):
            return page.locator(f"#trial-table [data-testid='cell-{r}-{c}']")
        r = 5 if (cell(5, 0).inner_text().strip(), cell(5, 1).inner_text().strip()) != (str(sid), str(number)) else 6
        want_sid, want_n = cell(r, 0).inner_text().strip(), cell(r, 1).inner_text().strip()
        cell(r, 3).click()
        want = name_of[int(want_sid)]
        expect(confirm).to_contain_text(f"Trial {want_n} of {want}")

        # open in editor: the Editor tab comes to the front with that trial's plan
        page.get_by_role("button", name="Open in editor").click()
        editor_text = page.get_by_label("Plan (compact text form)")
        expect(editor_text).to_be_visible()
        expect(editor_text).to_have_value(page.locator("#trial-selected code").inner_text())

        # 760 px: the two-column rows become one column (best-so-far above wall time), nothing clipped
        narrow(page, "Dashboard")
        page.screenshot(path=str(OUT / "dashboard-760.png"), full_page=True)
        a = page.locator("#curve").bounding_box()
        w = page.locator("#curve-time").bounding_box()
        b = page.locator("#pareto").bounding_box()
        assert a["width"] > 500 and w["width"] > 500 and b["width"] > 500 and w["y"] >= a["y"] + a["height"] - 1
        title_box = page.locator("#pareto .gtitle").bounding_box()
        assert title_box["x"] >= b["x"] and title_box["x"] + title_box["width"] <= b["x"] + b["width"]
        browser.close()
    assert (OUT / "dashboard-1400.png").stat().st_size > 50_000 and (OUT / "dashboard-760.png").stat().st_size > 50_000


def test_rename_from_the_dashboard(dash):
    from gradio_client import Client

    url, ids = dash
    client = Client(url, verbose=False)
    note, _pick, _rename_pick = client.predict(ids["smac"], "smac main", api_name="/rename_study")
    assert "is now named **smac main**" in note
    with pytest.raises(Exception, match="already named 'random-r2-s0'"):
        client.predict(ids["smac"], "random-r2-s0", api_name="/rename_study")
