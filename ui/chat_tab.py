"""Chat tab: a multi-turn chat with the plan's model, the base answering the same turns beside it,
both streaming, both through the family's chat template."""
from __future__ import annotations

import gradio as gr

from gptailor import FamilyError, Plan, PlanError
from gptailor.chat import stream_reply

from .engine import ENGINE, gpu
from .guard import refusal_beside, refused
from .overload import model_slots


def text_of(content) -> str:
    """A chat message's text, whether Gradio hands it over as a string or as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(text_of(p) for p in content)
    if isinstance(content, dict):
        return str(content.get("text", content.get("content", "")))
    return str(content)


def _messages(history: list[dict], prompt: str) -> list[dict]:
    turns = [{"role": m["role"], "content": text_of(m["content"])}
             for m in history or [] if m.get("role") in ("user", "assistant")]
    return [*turns, {"role": "user", "content": prompt}]


@gpu
def chat(family: str, plan_text: str, prompt: str, max_new_tokens: float, temperature: float,
         history: list[dict] | None = None, base_history: list[dict] | None = None, request: gr.Request = None):
    """Stream the plan's model's answer, then the base's, to the same conversation."""
    if not prompt or not prompt.strip():
        raise refused(request, "type a prompt first")
    try:
        session = ENGINE.get(family)
        fam = session.family
        plan = Plan.parse(plan_text, fam.name) if plan_text and plan_text.strip() else Plan.identity(fam.n_layers)
        plan.validate(fam.member_names, fam.n_layers, fam.name)
        model = session.stitcher.build(plan)
        base = session.stitcher.build(Plan.identity(fam.n_layers, family=fam.name))
    except (PlanError, FamilyError) as e:
        raise refused(request, e) from None
    n, t = int(max_new_tokens), float(temperature)
    history, base_history = list(history or []), list(base_history or [])
    msgs, base_msgs = _messages(history, prompt), _messages(base_history, prompt)
    history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
    base_history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
    for text in stream_reply(model, fam.tokenizer, msgs, n, t):
        history[-1]["content"] = text
        yield history, base_history, ""
    for text in stream_reply(base, fam.tokenizer, base_msgs, n, t):
        base_history[-1]["content"] = text
        yield history, base_history, ""


def build(family: gr.Dropdown, plan: gr.Textbox) -> None:
    gr.Markdown("Chats with the model of the plan in the Evaluate/Editor tabs; the base answers beside it. "
                "Demo prompts: `23+45`, `rev plokta`, `color of bazok`.")
    with gr.Row():
        bot = gr.Chatbot(label="Plan's model", height=320)
        base_bot = gr.Chatbot(label="Base model", height=320)
    which = gr.Markdown()
    prompt = gr.Textbox(label="Prompt", value="23+45")
    with gr.Row():
        max_new = gr.Slider(1, 256, value=24, step=1, label="Max new tokens")
        temp = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
    with gr.Row():
        send = gr.Button("Send", variant="primary")
        clear = gr.Button("Clear")
    inputs = [family, plan, prompt, max_new, temp, bot, base_bot]
    note = gr.Markdown(elem_id="chat-note")  # a refusal stays here, not only in a fading toast
    for event, named in ((send.click, {"api_name": "chat"}), (prompt.submit, {})):
        sent = event(chat, inputs, [bot, base_bot, prompt], **named, **model_slots())
        sent.failure(refusal_beside(3), None, [note, bot, base_bot, prompt], queue=False, show_progress="hidden",
                     api_visibility="private")
        sent.success(lambda: "", None, [note], queue=False, show_progress="hidden", api_visibility="private")
    clear.click(lambda: ([], []), None, [bot, base_bot])
    plan.change(lambda p: f"Plan's model: `{p.strip()}`" if p and p.strip() else "", [plan], [which],
                show_progress="hidden")
