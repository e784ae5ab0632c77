"""The Gradio Blocks app: one tab per module, figures and handlers kept out of the layout."""
from __future__ import annotations

import os
import sys
import threading
import time

import gradio as gr
from starlette.middleware import Middleware

from . import (analysis_tab, chat_tab, compare_tab, dashboard_tab, editor_tab, evaluate_tab, guard, landing, picker,
               search_tab)
from .login import LoginEverywhere
from .overload import BusyNote
from db.settings import auth_pairs, check_all, max_upload_bytes, public_mode, queue_max
from gptailor.common.limits import SettingsError


def build_app() -> gr.Blocks:
    # public mode: Gradio deletes its cached uploads and downloads older than an hour, every hour
    with gr.Blocks(title="GPTailor Studio", delete_cache=(3600, 3600) if public_mode() else None) as demo:
        gr.Markdown("# GPTailor Studio\nCut and stitch layers across a model family into a smaller model, "
                    "without retraining.")
        start = landing.build()  # "Start here": three steps on the demo family, each opening its tab
        # the server-issued owner token, kept in this browser's localStorage (ui/guard.py)
        owner = gr.BrowserState(None, storage_key="gptailor-owner")
        shared = picker.build()
        family, suite = shared["family"], shared["suite"]
        with gr.Tabs() as tabs:
            with gr.Tab("Evaluate", id="evaluate"):
                shared.update(evaluate_tab.build(family, suite))
            with gr.Tab("Search", id="search"):
                search = search_tab.build(family, suite, owner)
            with gr.Tab("Dashboard", id="dashboard"):
                dashboard_tab.build(shared["plan"], tabs, owner)
            with gr.Tab("Compare", id="compare"):
                compare_tab.build(family, suite)
            with gr.Tab("Editor", id="editor"):
                editor_tab.build(family, suite, shared["plan"], owner)
            with gr.Tab("Analysis", id="analysis"):
                analysis_tab.build(family, suite)
            with gr.Tab("Chat", id="chat"):
                chat_tab.build(shared["family"], shared["plan"])
        landing.wire(start, tabs)
        demo.load(guard.issue_token, [owner], [owner], api_name="owner_token", show_progress="hidden")
        demo.load(picker.refresh_choices, None, [family, suite, shared["builtin"], shared["make_smol"],
                                                 shared["make_smol_all"]])
        demo.load(landing.next_step, None, [start["next"]], show_progress="hidden", api_visibility="private")
        demo.load(picker.suite_info, [family, suite], [shared["info"]])
        demo.load(evaluate_tab.identity_plan, [shared["family"]], [shared["plan"]])
        demo.load(search_tab.budget_text, [shared["family"], search["remove"], search["kind"], search["fraction"]],
                  [search["budget_info"]])
        demo.load(search_tab.budget_controls, [shared["family"], search["kind"]], [search["remove"], search["fraction"]])
        demo.load(search_tab.trials_default, [shared["family"]], [search["trials"]], show_progress="hidden",
                  api_visibility="private")
    return demo


# Two-column rows (class gt-grid) become one column on narrow screens (a phone, a 760 px window), so no
# chart is squeezed to half of that and no title is clipped; the hidden textbox receives Plotly clicks.
CSS = """
.gt-hidden { display: none !important; }
#editor-download { height: 96px !important; min-height: 0 !important; overflow: hidden; }  /* one file, no empty drop area */
@media (max-width: 900px) {
  .gt-grid { flex-direction: column !important; flex-wrap: nowrap !important; }
  .gt-grid > * { width: 100% !important; min-width: 0 !important; flex: 1 1 auto !important; }
}
"""


def _start_queued_forever(period_s: float = 5.0) -> None:
    """Queued studies start when a worker slot frees, even with no page open (a daemon thread)."""
    def loop() -> None:
        while True:
            time.sleep(period_s)
            try:
                search_tab.start_waiting()
            except Exception as e:  # noqa: BLE001 - a database hiccup must not end the loop
                print(f"queued studies not started this time: {type(e).__name__}: {e}", file=sys.stderr)
    threading.Thread(target=loop, name="gptailor-queue", daemon=True).start()


def main() -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        check_all()
        port = int(os.environ.get("PORT", os.environ.get("GRADIO_SERVER_PORT", 7860)))
    except (SettingsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)  # one line and exit 2, like the CLI's refusals
        sys.exit(2)
    # a bounded queue: one request more is refused at once ("busy", logged by ui/overload.py), a queued one
    # is told its place; the model-running events share their own slots (ui.overload.model_slots)
    app = build_app().queue(default_concurrency_limit=2, max_size=queue_max() or None)
    _start_queued_forever()
    app.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", os.environ.get("HOST", "127.0.0.1")),
               server_port=port, **launch_options())


def launch_options() -> dict:
    """What ``launch`` gets besides the address: login (asked on every endpoint, ``ui/login.py``), the
    upload cap, the page's CSS and click script, and the log line and message of a refusal when the queue is
    full (``ui/overload.py``)."""
    return {"auth": auth_pairs(), "max_file_size": max_upload_bytes(), "css": CSS, "js": dashboard_tab.CLICK_JS,
            "app_kwargs": {"middleware": [Middleware(LoginEverywhere), Middleware(BusyNote)]}}
