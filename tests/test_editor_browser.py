"""The Editor tab in a real server and a real Chromium: a plan typed in the editor, then lm-eval's report on
it from the Editor's own lm-eval panel (local task files, demo family); screenshots kept in tests/output/
(editor-lm-eval-1400.png, editor-lm-eval-760.png)."""
import pytest

from conftest import CHROMIUM, launch_chromium, narrow, open_app
from test_app import OUT, start_app, stop_app

PLAN = "0:math 1:math 2:math 3:math 4:drop 5:math 6:math 7:merge(math=.5,facts=.5)"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    proc, url, _data = start_app(tmp_path_factory)
    yield url
    stop_app(proc)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_editor_lm_eval_table_at_both_widths(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from gptailor import Family, Plan, Stitcher
    from gptailor.builtin.demo import write_lm_eval_tasks
    from gptailor.eval.lm_eval import run_lm_eval

    tasks = write_lm_eval_tasks(tmp_path / "lm", n=8)
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, app, 1000)
        page.get_by_role("tab", name="Editor").click()
        text = page.get_by_label("Plan (compact text form)")
        expect(text).to_have_value("0:base 1:base 2:base 3:base 4:base 5:base 6:base 7:base", timeout=60_000)
        text.fill(PLAN)
        page.get_by_role("button", name="Apply").click()
        panel = page.locator("#editor-lm-eval")
        expect(page.get_by_text("keeps 7 of 8 layers")).to_be_visible(timeout=30_000)  # the grid followed
        panel.get_by_text("Standard benchmarks (lm-evaluation-harness)").click()
        panel.get_by_label("lm-eval tasks").fill("demo_facts,demo_math")
        panel.get_by_label("Docs per task").fill("8")
        panel.get_by_label("Folder of your own lm-eval task YAMLs").fill(str(tasks))
        panel.get_by_role("button", name="Run lm-eval on the plan and the members").click()
        note = panel.get_by_text("docs per task; value ± stderr")
        expect(note).to_be_visible(timeout=120_000)
        cell = panel.locator("[data-testid='cell-0-0']")
        expect(cell).to_have_text("plan", timeout=20_000)
        page.wait_for_timeout(800)
        panel.scroll_into_view_if_needed()
        page.screenshot(path=str(OUT / "editor-lm-eval-1400.png"), full_page=True)

        # the page's numbers are lm-eval's own on this plan, run here independently
        fam = Family.from_spec("demo")
        own = run_lm_eval(Stitcher(fam).build(Plan.from_text(PLAN, "demo")), fam.tokenizer,
                          ["demo_facts", "demo_math"], 8, str(tasks)).metrics
        shown = [panel.locator(f"[data-testid='cell-0-{c}']").inner_text().strip() for c in (1, 2, 3)]
        assert shown == [f"{own['demo_facts']['acc']:.4f} ± {own['demo_facts']['acc_stderr']:.4f}",
                         f"{own['demo_facts']['acc_norm']:.4f} ± {own['demo_facts']['acc_norm_stderr']:.4f}",
                         f"{own['demo_math']['exact_match']:.4f} ± {own['demo_math']['exact_match_stderr']:.4f}"]
        labels = [panel.locator(f"[data-testid='cell-{r}-0']").inner_text().strip() for r in range(5)]
        assert labels == ["plan", "base", "math", "strings", "facts"]

        # the export's file shows whole in its (short) box: the box is only as tall as one file needs
        page.get_by_role("button", name="Export HF checkpoint (zip)").click()
        link = page.locator("#editor-download a").first
        expect(link).to_be_visible(timeout=120_000)
        box, inner = page.locator("#editor-download").bounding_box(), link.bounding_box()
        assert box["height"] < 120 and inner["y"] + inner["height"] <= box["y"] + box["height"]

        # 760 px: the table stays inside the page (no column cut off at the right edge)
        narrow(page)
        panel.scroll_into_view_if_needed()
        page.screenshot(path=str(OUT / "editor-lm-eval-760.png"), full_page=True)
        box = panel.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 760 + 1
        browser.close()
    for name in ("editor-lm-eval-1400.png", "editor-lm-eval-760.png"):
        assert (OUT / name).stat().st_size > 30_000
