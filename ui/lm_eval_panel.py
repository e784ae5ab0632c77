"""lm-evaluation-harness on the plan being worked on, beside every family member: one panel (an accordion:
task names, docs per task, an optional folder of task YAMLs, run, Stop, lm-eval's table) that the Evaluate
and the Editor tabs both place, so the two show the same report from the same handler."""
from __future__ import annotations

import gradio as gr

from gptailor import FamilyError, Plan, PlanError, TaskError
from gptailor.common.limits import whole

from .engine import ENGINE, gpu
from db.settings import public_mode
from .guard import refuse
from .overload import model_slots
from .stop import STOPPED, cleared, stop_button, stoppable, wire_stop

TITLE = "Standard benchmarks (lm-evaluation-harness)"


def task_names(text: str | None) -> list[str]:
    """'arc_easy, hellaswag' -> ['arc_easy', 'hellaswag']; refused in one line when empty."""
    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not names:
        raise ValueError("name at least one lm-eval task, e.g. arc_easy,hellaswag (comma-separated)")
    return names


@gpu
def run(family: str, plan_text: str, tasks: str, limit: float | None, include: str | None,
        progress=gr.Progress(), request: gr.Request = None):
    """lm-eval on the plan (stitched in memory) and on every member: lm-eval's own metrics, one row each.
    Stop ends it within one of lm-eval's batches."""
    from gptailor.eval.lm_eval import lm_eval_report

    try:
        names = task_names(tasks)
        if include and include.strip() and public_mode():
            raise ValueError("task folders on the server cannot be named in public mode; use tasks whose datasets "
                             "the server has cached")
        session = ENGINE.get(family)
        fam = session.family
        plan = Plan.parse(plan_text, fam.name).validate(fam.member_names, fam.n_layers, fam.name)
        n = whole("limit", limit) if limit else None
        progress(0.02, desc="building lm-eval's tasks")
        with stoppable(request, progress, quiet=True) as stop:  # a Stop returns a 'stopped' note, no Error badge
            rep = lm_eval_report(fam, plan, names, n, (include or "").strip() or None, stitcher=session.stitcher)
    except (PlanError, FamilyError, TaskError, ValueError) as e:
        raise refuse(e) from None
    if stop.stopped:
        return f"**{STOPPED}**", None
    headers, rows = rep.grid()
    secs = sum(rep.seconds.values())
    note = (f"lm-eval, zero-shot, {n or 'all'} docs per task; value ± stderr; `plan` is the stitched model "
            f"({plan.n_kept} of {fam.n_layers} layers), the other rows the family members · lm-eval's loops "
            f"took {secs:.1f} s")
    return note, gr.Dataframe(value=rows, headers=headers)


def build(family: gr.Dropdown, plan: gr.Textbox, api_name: str, elem_id: str, open: bool = False) -> dict:
    """The accordion, wired to ``run`` on ``family`` and ``plan``; ``api_name`` names its endpoint."""
    with gr.Accordion(TITLE, open=open, elem_id=elem_id):
        with gr.Row():
            tasks = gr.Textbox(label="lm-eval tasks (comma-separated; their datasets must be cached)",
                               placeholder="arc_easy,hellaswag", scale=3)
            limit = gr.Number(value=100, label="Docs per task (0 or empty = all)", step=1, scale=1)
        include = gr.Textbox(label="Folder of your own lm-eval task YAMLs (optional)", visible=not public_mode())
        with gr.Row():
            go = gr.Button("Run lm-eval on the plan and the members")
            halt = stop_button()
        note = gr.Markdown()
        table = gr.Dataframe(label="lm-eval's metrics", interactive=False, wrap=True)
        go.click(cleared(2), None, [note, table], queue=False, show_progress="hidden",
                         api_visibility="private") \
            .then(run, [family, plan, tasks, limit, include], [note, table], api_name=api_name, **model_slots())
        wire_stop(halt)  # no cancels: the handler itself returns the 'stopped' note
    return {"tasks": tasks, "limit": limit, "include": include, "note": note, "table": table}
