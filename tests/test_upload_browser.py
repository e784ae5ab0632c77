"""The uploads in a real server and a real Chromium, at 1400 px and at 760 px: a refused upload says why in
a note beside the upload that stays on the page (not only a toast that fades), and a new task-file upload
replaces the files chosen before it (Gradio's multi-file box appends), so a fixed file is checked alone
and stored. Screenshots kept in tests/output/ (upload-error-1400.png, upload-error-760.png,
upload-stored-1400.png)."""
import pytest

from conftest import CHROMIUM, launch_chromium, narrow, open_app
from test_app import OUT, start_app, stop_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    proc, url, data = start_app(tmp_path_factory)
    yield url, data
    stop_app(proc)


def write_lines(path, lines) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def listed(files, name: str):
    """The upload box's entry for the file ``name`` (its download link)."""
    return files.locator(f"a[href$='/{name}']")


def beside(note, box) -> bool:
    """The note sits under the upload box, in the same column."""
    n, b = note.bounding_box(), box.bounding_box()
    return n["y"] >= b["y"] + b["height"] - 1 and n["x"] < b["x"] + b["width"] and b["x"] < n["x"] + n["width"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_upload_errors_stay_beside_the_upload_and_a_new_upload_replaces_the_old(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, data = app
    broken = write_lines(tmp_path / "broken.jsonl", ['{"prompt": "1+1=", "target": "2"}', '{"prompt": "x"}'])
    adds = write_lines(tmp_path / "adds.jsonl", [f'{{"prompt": "{a}+{b}=", "target": "{a + b}"}}'
                                                 for a in range(1, 5) for b in range(1, 4)])
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text("name: x\ncandidates: [a, b\n")
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, url, 1000)
        page.get_by_text("Add a family spec or task files").click()
        files, note = page.locator("#task-files"), page.locator("#tasks-note")
        page.get_by_label("Suite name").fill("my-tasks")

        # a broken file: the reason, naming the file and line, stays in the note beside the upload
        files.locator("input[type=file]").set_input_files(broken)
        expect(listed(files, "broken.jsonl")).to_have_count(1)
        page.get_by_role("button", name="Store these tasks as a suite").click()
        expect(note).to_contain_text("⚠ task files not stored: broken.jsonl:2: exact_match example needs a string 'target'")
        # a refused family spec: its parser's line and column, beside the spec upload
        page.locator("#spec-file input[type=file]").set_input_files(str(bad_spec))
        spec_note = page.locator("#spec-note")
        expect(spec_note).to_contain_text("⚠ not a usable family spec: bad.yaml: line 3")
        assert beside(note, page.get_by_role("button", name="Store these tasks as a suite"))
        assert beside(spec_note, page.locator("#spec-file"))
        page.screenshot(path=str(OUT / "upload-error-1400.png"), full_page=True)
        narrow(page)
        expect(note).to_contain_text("broken.jsonl:2")  # still there, and still beside the upload
        assert beside(note, page.get_by_role("button", name="Store these tasks as a suite"))
        box = note.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 760 + 1
        page.screenshot(path=str(OUT / "upload-error-760.png"), full_page=True)
        page.set_viewport_size({"width": 1400, "height": 1000})

        # the fixed file, uploaded next: it replaces the broken one (which is no longer listed or checked)
        files.locator("input[type=file]").set_input_files(adds)
        expect(listed(files, "adds.jsonl")).to_have_count(1)
        expect(listed(files, "broken.jsonl")).to_have_count(0)
        page.get_by_role("button", name="Store these tasks as a suite").click()
        expect(note).to_contain_text("Stored suite my-tasks: adds (exact_match, 12 examples: 6 search, 6 held out)")
        assert "broken" not in note.inner_text()
        assert sorted(p.name for p in (data / "suites" / "my-tasks").iterdir()) == ["adds.jsonl", "suite.yaml"]
        page.screenshot(path=str(OUT / "upload-stored-1400.png"), full_page=True)
        browser.close()
    for name in ("upload-error-1400.png", "upload-error-760.png", "upload-stored-1400.png"):
        assert (OUT / name).stat().st_size > 30_000
