"""The Gradio Blocks app: one tab per module, figures and handlers kept out of the layout."""
from __future__ import annotations

import os

import gradio as gr

from . import (analysis_tab, chat_tab, compare_tab, dashboard_tab, editor_tab, evaluate_tab, picker,
               search_tab)


def build_app() -> gr.Blocks:
    with gr.Blocks(title="GPTailor Studio") as demo:
        gr.Markdown("# GPTailor Studio\nCut and stitch layers across a model family into a smaller model, "
                    "without retraining.")
        shared = picker.build()
        family, suite = shared["family"], shared["suite"]
        with gr.Tab("Evaluate"):
            shared.update(evaluate_tab.build(family, suite))
        with gr.Tab("Search"):
            search = search_tab.build(family, suite)
        with gr.Tab("Dashboard"):
            dashboard_tab.build(shared["plan"])
        with gr.Tab("Compare"):
            compare_tab.build(family, suite)
        with gr.Tab("Editor"):
            editor_tab.build(family, suite, shared["plan"])
        with gr.Tab("Analysis"):
            analysis_tab.build(family, suite)
        with gr.Tab("Chat"):
            chat_tab.build(shared["family"], shared["plan"])
        demo.load(picker.refresh_choices, None, [family, suite])
        demo.load(picker.suite_info, [family, suite], [shared["info"]])
        demo.load(evaluate_tab.identity_plan, [shared["family"]], [shared["plan"]])
        demo.load(search_tab.budget_text, [shared["family"], search["remove"], search["kind"], search["fraction"]],
                  [search["budget_info"]])
    return demo


def main() -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    auth = os.environ.get("GPTAILOR_AUTH")
    app = build_app().queue(default_concurrency_limit=2)
    app.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", os.environ.get("HOST", "127.0.0.1")),
               server_port=int(os.environ.get("PORT", os.environ.get("GRADIO_SERVER_PORT", 7860))),
               auth=tuple(auth.split(":", 1)) if auth and ":" in auth else None)
