"""Evaluate tab: pick a family, paste a plan, score it, see per-task scores beside the base."""
from __future__ import annotations

import gradio as gr

from gptailor import FamilyError, Plan, PlanError, TaskError
from gptailor.common.limits import whole
from gptailor.eval.speed import INTERACTIVE, short

from . import lm_eval_panel
from .engine import ENGINE, check_fidelity, gpu, warm_references
from .guard import last_refusal, refuse, refused
from .overload import model_slots
from .retention import headline_interval, marked, pct, where
from .stop import STOPPED, cleared, stop_button, stoppable, wire_stop

COLUMNS = ["task", "metric", "score", "best member", "family reference", "family retention %", "base reference",
           "base retention %"]


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
        with stoppable(request, progress, quiet=True) as run:  # a Stop returns a 'stopped' note, no Error badge
            warm_references(ev)
            res = ev.evaluate(plan, n, speed=INTERACTIVE)
    except (PlanError, FamilyError, TaskError, ValueError) as e:
        raise refused(request, e) from None  # a toast, and (``last_refusal``) the note under the buttons
    if run.stopped:
        return f"**{STOPPED}**", None
    refs = ev.references(res.split)
    headers, rows = result_grid(res, refs)
    span = headline_interval(res, refs)
    summary = (f"**Retention {100 * res.retention:.1f}%** (95% interval {100 * span.lo:.1f}-{100 * span.hi:.1f}; "
               f"{where(res)}; {retention_note(res)}) · keeps {res.kept_layers} of "
               f"{res.n_layers} layers · {res.params / 1e6:.2f}M of {session.family.param_count() / 1e6:.2f}M params · "
               f"stitch {res.stitch_s * 1e3:.0f} ms, score {res.score_s * 1e3:.0f} ms")
    if res.speed:
        summary += f"  \nSpeed: {short(res.speed)}"
    return summary, gr.Dataframe(value=rows, headers=headers)


def refusal(request: gr.Request = None) -> tuple[str, None]:
    """After a refused run: its error in the note under the buttons (it outlasts the toast), and an empty
    table in place of the failed event's red Error badge."""
    return last_refusal(request), None


def retention_note(res) -> str:
    """'family, the objective; base 95.1%': which definition the headline is, and the other one's mean."""
    others = "; ".join(f"{d} {100 * v:.1f}%" for d, v in res.retentions.items() if d != res.definition)
    return f"{res.definition}, the objective" + (f"; {others}" if others else "")


def result_grid(res, refs) -> tuple[list[str], list[list]]:
    """Per task: the score, each definition's reference (the best member's, the base's) and retention, side
    by side; the evaluator's default definition (what a study would optimise) is marked in the headers."""
    fam, base = refs.table("family"), refs.table("base")
    rows = [[t, res.metrics[t], round(v, 4), fam[t].member, round(fam[t].value, 4),
             pct(res.task_retentions["family"].get(t)), None if base[t].member == "none" else round(base[t].value, 4),
             pct(res.task_retentions["base"].get(t))] for t, v in res.scores.items()]
    return marked(COLUMNS, res.definition), rows


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
    summary = gr.Markdown(elem_id="evaluate-summary")
    table = gr.Dataframe(headers=COLUMNS, label="Per-task scores", interactive=False)
    run.click(cleared(2), None, [summary, table], queue=False, show_progress="hidden",
                      api_visibility="private") \
        .then(evaluate, [family, plan, fidelity, suite], [summary, table], api_name="evaluate",
              **model_slots()) \
        .failure(refusal, None, [summary, table], queue=False, show_progress="hidden", api_visibility="private")
    wire_stop(halt)  # no cancels: the handler itself returns the 'stopped' note
    reset.click(identity_plan, [family], [plan], api_name="identity_plan")
    lm_eval_panel.build(family, plan, api_name="lm_eval", elem_id="evaluate-lm-eval")
    return {"plan": plan}
