"""The family and task-suite pickers shown above every tab, with uploads for both.

Every tab reads the same two dropdowns, so a family or suite chosen once applies to evaluation,
search, the editor and the analysis alike.
"""
from __future__ import annotations

import gradio as gr

from gptailor import FamilyError, TaskError, make_suite

from gptailor.paths import PathError, child

from .engine import (BUILD_HINT, DEFAULT_SUITE, ENGINE, allow_remote_code, data_dir, family_choices,
                     max_upload_bytes, public_mode, redact, smol_spec, suite_choices)
from .guard import allowance, refuse

MAX_PUBLIC_SUITES = 20


def upload_spec(path: str | None, request: gr.Request = None):
    """Validate an uploaded family spec and keep it as <data dir>/families/<name>.yaml; select it.

    The spec's name becomes the file name, so it must be a safe name (gptailor.paths); a spec asking
    for trust_remote_code (which runs the model repository's Python) needs GPTAILOR_ALLOW_REMOTE_CODE=1."""
    if not path:
        raise gr.Error("choose a family spec file (.yaml or .json)")
    if public_mode():
        raise gr.Error("this is a public app: uploading family specs is turned off")
    import yaml

    from gptailor.family import FamilySpec

    try:
        text = open(path, encoding="utf-8").read()
        data = yaml.safe_load(text)  # JSON is YAML too
        spec = FamilySpec.from_dict(data)
        dest = child(data_dir(), "family spec", spec.name, ".yaml", under="families")
    except (FamilyError, PathError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise refuse(f"not a usable family spec: {e}") from None
    if spec.trust_remote_code and not allow_remote_code():
        raise gr.Error("this spec sets trust_remote_code: true, which would run the model repository's own "
                       "Python on this server; the operator must start the app with GPTAILOR_ALLOW_REMOTE_CODE=1")
    if dest.exists() and dest.read_text(encoding="utf-8", errors="replace") != text:
        raise gr.Error(f"a different family spec named {spec.name!r} is already stored; rename yours")
    with allowance("uploads", request):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
    return gr.Dropdown(choices=family_choices(), value=str(dest)), f"Stored {dest}"


def upload_tasks(files: list[str] | None, name: str, request: gr.Request = None):
    """Check uploaded JSONL task files (and an optional suite.yaml), store them as a suite, select it."""
    if not files:
        raise gr.Error("choose one JSONL file per task (and optionally a suite.yaml naming their kinds)")
    if public_mode() and len(suite_choices()) - 1 >= MAX_PUBLIC_SUITES:
        raise gr.Error(f"this public app already holds {MAX_PUBLIC_SUITES} uploaded suites; pick one of them")
    name = (name or "").strip()
    try:
        with allowance("uploads", request):
            dest = child(data_dir(), "suite", name, under="suites")
            suite = make_suite(list(files), dest, name, max_bytes=max_upload_bytes())
    except (TaskError, PathError) as e:
        raise refuse(f"task files not stored: {e}") from None
    kinds = ", ".join(f"{t.name} ({t.kind}, {len(t)} examples)" for t in suite)
    return gr.Dropdown(choices=suite_choices(), value=suite.path), f"Stored suite **{suite.name}**: {kinds}"


def suite_info(family: str, suite: str) -> str:
    """One line saying which tasks the chosen suite scores."""
    try:
        ev = ENGINE.get(family, suite).evaluator
    except (FamilyError, TaskError) as e:
        return f"⚠ {redact(str(e))}"
    if ev is None:
        return "⚠ this family names no task suite: upload task files or add `suite:` to its spec"
    return "Tasks: " + ", ".join(f"{t.name} ({t.kind}, {len(t)})" for t in ev.suite)


def builtin_note() -> str:
    """Where the real built-in family is, or the one command that builds it (nothing in public mode)."""
    if public_mode():
        return ""
    if smol_spec() is not None:
        return "Built-in families: `demo` (a 1.4M-parameter toy) and the real SmolLM2-135M `smol` family (listed above)."
    return ("The real built-in family **smol** (SmolLM2-135M-Instruct + 3 LoRA skill finetunes) is not built "
            f"yet: run `{BUILD_HINT}` (offline, a few minutes), then reload this page.")


def refresh_choices():
    return gr.Dropdown(choices=family_choices()), gr.Dropdown(choices=suite_choices()), builtin_note()


def build() -> dict:
    with gr.Row():
        family = gr.Dropdown(family_choices(), value="demo", label="Family (or a path to a family.yaml)",
                             allow_custom_value=not public_mode(), scale=2)
        suite = gr.Dropdown(suite_choices(), value=DEFAULT_SUITE, label="Task suite (scores and calibration)",
                            allow_custom_value=not public_mode(), scale=2)
    builtin = gr.Markdown(builtin_note())
    info = gr.Markdown()
    with gr.Accordion("Add a family spec or task files", open=False):
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Family spec** (YAML/JSON: name, base, candidates, dtype, device, suite)"
                            + (" · turned off in this public app" if public_mode() else ""))
                spec_file = gr.File(label="Family spec", file_types=[".yaml", ".yml", ".json"], type="filepath")
                spec_note = gr.Markdown()
            with gr.Column():
                gr.Markdown("**Task files**: one JSONL file per task; the kind is read from the keys "
                            "(`prompt`+`target`: exact match, `context`+`choices`+`answer`: multiple choice, "
                            "`text`: perplexity), or add a `suite.yaml` naming each file's kind. "
                            f"At most {max_upload_bytes() / 1e6:.0f} MB.")
                suite_name = gr.Textbox(label="Suite name", placeholder="my-tasks")
                task_files = gr.File(label="Task files (.jsonl, optional suite.yaml)", file_count="multiple",
                                     file_types=[".jsonl", ".json", ".yaml", ".yml"], type="filepath")
                add_tasks = gr.Button("Store these tasks as a suite")
                tasks_note = gr.Markdown()
    # progress hidden: on a refused upload the error toast says why, and the pickers stay in view
    spec_file.upload(upload_spec, [spec_file], [family, spec_note], api_name="upload_spec", show_progress="hidden")
    add_tasks.click(upload_tasks, [task_files, suite_name], [suite, tasks_note], api_name="upload_tasks",
                    show_progress="hidden")
    for comp in (family, suite):
        comp.change(suite_info, [family, suite], [info], show_progress="hidden")
    return {"family": family, "suite": suite, "info": info, "builtin": builtin}
