"""The "Start here" block under the page title: three steps on the demo family that a first-time user can
follow without the README, each with a button that opens its tab."""
from __future__ import annotations

import gradio as gr

from db.settings import public_mode

from .engine import builtin_spec

# (tab id, button label, step text): only the app's own tab, button and control labels are in **bold** (the
# browser test checks that each is on the page)
STEPS = [
    ("evaluate", "Open Evaluate",
     "*Score the base.* The picker below holds `demo`, a toy family (a base and three finetunes, each with its "
     "own skill). In the **Evaluate** tab press **Evaluate**. *Retention* is the share of the members' accuracy "
     "a plan keeps (per task, its score over the best member's; 100% = nothing lost): the base alone keeps "
     "little, as the skills are the finetunes'."),
    ("search", "Open Search",
     "*Search for a smaller model.* In the **Search** tab set the budget (**Layers to remove**), keep Method "
     "`evolution` and press **Launch in the background**; watch the study come in on the **Dashboard** tab."),
    ("dashboard", "Open Dashboard",
     "*Use the best plan.* On the **Dashboard** press **Open in editor**: the **Editor** tab scores it or "
     "exports it (**Export HF checkpoint (zip)**), and the **Chat** tab talks with it."),
]


def next_step() -> str:
    """The line after the steps: the real built-in family, built here (nothing to build in public mode)."""
    if public_mode():
        return ""
    if builtin_spec("smol") is not None:
        return "*Next:* pick the real family `smol` (SmolLM2-135M and three skill finetunes) in the picker."
    return ("*Next:* a real model: press **Build the smol family** beside the picker (SmolLM2-135M and three "
            "skill finetunes, about a minute, offline), then do the same steps on `smol`.")


def build() -> dict:
    """The block, open by default (the user can fold it); returns its (tab id, button) pairs for ``wire``
    ("jumps") and the next-step line ("next", re-read on each page load: smol may have been built since)."""
    jumps = []
    with gr.Accordion("Start here: three steps on the demo family", open=True, elem_id="start-here"):
        for number, (tab, label, text) in enumerate(STEPS, 1):
            with gr.Row():
                gr.Markdown(f"{number}. {text}", elem_id=f"start-step-{number}", container=False)
                jumps.append((tab, gr.Button(label, size="sm", scale=0, min_width=140,
                                             elem_id=f"start-go-{number}")))
        after = gr.Markdown(next_step(), elem_id="start-next")
    return {"jumps": jumps, "next": after}


def wire(parts: dict, tabs: gr.Tabs) -> None:
    """Each step's button selects its tab (the tabs exist only after the block is laid out)."""
    for tab, button in parts["jumps"]:
        button.click(_select(tab), None, [tabs], queue=False, api_visibility="private", show_progress="hidden")


def _select(tab: str):
    return lambda: gr.Tabs(selected=tab)
