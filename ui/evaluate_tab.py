"""Evaluate tab: pick a family, paste a plan, score it, see per-task scores beside the base."""
from __future__ import annotations

import gradio as gr

from gptailor import FamilyError, Plan, PlanError, TaskError
from gptailor.limits import whole
from gptailor.speed import INTERACTIVE, short

from . import lm_eval_panel
from .engine import ENGINE, check_fidelity, gpu, warm_references
from .guard import refuse
from .stop import cleared, stop_button, stoppable, wire_stop

COLUMNS = ["task", "metric", "score", "reference", "reference from", "retention %"]


@gpu
def evaluate(family: str, plan_text: str, fidelity: float | None, suite: str | None = None,
             progress=gr.Progress(), request: gr.Request = None):
    """Score a plan; returns a summary line and a per-task table. Stop ends it within a batch."""
    try:
        progress(0.05, desc="loading family")
        session = ENGINE.get(family, suite)
        ev = session.scorer()
        plan = Plan.parse(plan_text, session.family.name)
        plan.validate(session.family.member_names, session.family.n_layers, session.family.name)
        n = whole("fidelity", fidelity) if fidelity else None  # 2.5 refused, not cut
        check_fidelity(ev, n)
        progress(0.1, desc="stitching and scoring")
        with stoppable(request, progress):
            warm_references(ev)
            res = ev.evaluate(plan, n, speed=INTERACTIVE)
    except (PlanError, FamilyError, TaskError, ValueError) as e:
        raise refuse(e) from None
    rows = [[t, res.metrics[t], round(v, 4), round(res.references[t].value, 4), res.references[t].member,
             None if res.task_retention[t] is None else round(100 * res.task_retention[t], 1)]
            for t, v in res.scores.items()]
    summary = (f"**Retention {100 * res.retention:.1f}%** · keeps {res.kept_layers} of {res.n_layers} layers · "
               f"{res.params / 1e6:.2f}M of {session.family.param_count() / 1e6:.2f}M params · "
               f"stitch {res.stitch_s * 1e3:.0f} ms, score {res.score_s * 1e3:.0f} ms")
    if res.speed:
        summary += f"  \nSpeed: {short(res.speed)}"
    return summary, rows


def identity_plan(family: str) -> str:
    try:
        return ENGINE.get(family).identity_text()
    except FamilyError as e:
        raise refuse(e) from None


def build(family: gr.Dropdown, suite: gr.Dropdown) -> dict:
    fidelity = gr.Number(value=None, label="Examples per task (0 or empty = all)", step=1)
    plan = gr.Textbox(label="Plan (text form or JSON)", lines=3,
                      placeholder="0:base 1:math 2:drop 3:merge(math=.6,strings=.4) ...")
    with gr.Row():
        reset = gr.Button("Base plan (keep every layer)")
        run = gr.Button("Evaluate", variant="primary")
        halt = stop_button()
    summary = gr.Markdown()
    table = gr.Dataframe(headers=COLUMNS, label="Per-task scores", interactive=False)
    going = run.click(cleared(2), None, [summary, table], queue=False, show_progress="hidden",
                      api_visibility="private") \
        .then(evaluate, [family, plan, fidelity, suite], [summary, table], api_name="evaluate")
    wire_stop(halt, going)
    reset.click(identity_plan, [family], [plan], api_name="identity_plan")
    lm_eval_panel.build(family, plan, api_name="lm_eval", elem_id="evaluate-lm-eval")
    return {"plan": plan}
