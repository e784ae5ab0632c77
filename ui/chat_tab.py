"""Chat tab: the plan's model and the base answer the same prompt, side by side, streaming."""
from __future__ import annotations

import gradio as gr

from gptailor import FamilyError, Plan, PlanError
from gptailor.chat import stream_reply

from .engine import ENGINE, gpu


@gpu
def chat(family: str, plan_text: str, prompt: str, max_new_tokens: float, temperature: float):
    try:
        session = ENGINE.get(family)
        fam = session.family
        plan = Plan.parse(plan_text, fam.name) if plan_text.strip() else Plan.identity(fam.n_layers)
        model = session.stitcher.build(plan)
        base = session.stitcher.build(Plan.identity(fam.n_layers))
    except (PlanError, FamilyError) as e:
        raise gr.Error(str(e)) from None
    if not prompt.strip():
        raise gr.Error("type a prompt first")
    n = int(max_new_tokens)
    answer = ""
    for answer in stream_reply(model, fam.tokenizer, prompt, n, float(temperature)):
        yield answer, ""
    base_answer = ""
    for base_answer in stream_reply(base, fam.tokenizer, prompt, n, float(temperature)):
        yield answer, base_answer


def build(family: gr.Dropdown, plan: gr.Textbox) -> None:
    gr.Markdown("Uses the family and plan from the Evaluate tab. Demo prompts: `123+45`, `rev plokta`, "
                "`color of bazok`.")
    prompt = gr.Textbox(label="Prompt", value="123+45")
    with gr.Row():
        max_new = gr.Slider(1, 256, value=24, step=1, label="Max new tokens")
        temp = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
    go = gr.Button("Generate", variant="primary")
    with gr.Row():
        out = gr.Textbox(label="Plan's model", lines=4)
        base = gr.Textbox(label="Base model", lines=4)
    go.click(chat, [family, plan, prompt, max_new, temp], [out, base], api_name="chat")
