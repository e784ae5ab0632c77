"""Evaluate tab: pick a family, paste a plan, score it, see per-task scores beside the base."""
from __future__ import annotations

import gradio as gr

from gptailor import FamilyError, Plan, PlanError, TaskError
from gptailor.limits import whole
from gptailor.speed import INTERACTIVE, short

from .engine import ENGINE, check_fidelity, gpu, public_mode, warm_references
from .guard import refuse
from .retention import marked, pct
from .stop import stop_button, stoppable, wire_stop

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
        with stoppable(request, progress):
            warm_references(ev)
            res = ev.evaluate(plan, n, speed=INTERACTIVE)
    except (PlanError, FamilyError, TaskError, ValueError) as e:
        raise refuse(e) from None
    headers, rows = result_grid(res, ev.references(res.split))
    summary = (f"**Retention {100 * res.retention:.1f}%** ({retention_note(res)}) · keeps {res.kept_layers} of "
               f"{res.n_layers} layers · {res.params / 1e6:.2f}M of {session.family.param_count() / 1e6:.2f}M params · "
               f"stitch {res.stitch_s * 1e3:.0f} ms, score {res.score_s * 1e3:.0f} ms")
    if res.speed:
        summary += f"  \nSpeed: {short(res.speed)}"
    return summary, gr.Dataframe(value=rows, headers=headers)


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


@gpu
def lm_eval_tab(family: str, plan_text: str, tasks: str, limit: float | None, include: str | None,
                progress=gr.Progress(), request: gr.Request = None):
    """lm-evaluation-harness on the plan (stitched in memory) beside every member: lm-eval's own metrics."""
    from gptailor.lm_eval_tasks import lm_eval_report

    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    try:
        if not names:
            raise ValueError("name at least one lm-eval task, e.g. arc_easy,hellaswag (comma-separated)")
        if include and include.strip() and public_mode():
            raise ValueError("task folders on the server cannot be named in public mode; use tasks whose datasets "
                             "the server has cached")
        session = ENGINE.get(family)
        fam = session.family
        plan = Plan.parse(plan_text, fam.name).validate(fam.member_names, fam.n_layers, fam.name)
        n = whole("limit", limit) if limit else None
        progress(0.05, desc="running lm-eval on the plan and every member")
        with stoppable(request, progress):
            rep = lm_eval_report(fam, plan, names, n, (include or "").strip() or None, stitcher=session.stitcher)
    except (PlanError, FamilyError, TaskError, ValueError) as e:
        raise refuse(e) from None
    headers, rows = rep.grid()
    note = (f"lm-eval, zero-shot, {n or 'all'} docs per task; value ± stderr; `plan` is the stitched model, the "
            f"other rows the family members")
    return note, gr.Dataframe(value=rows, headers=headers)


def identity_plan(family: str) -> str:
    try:
        return ENGINE.get(family).identity_text()
    except FamilyError as e:
        raise refuse(e) from None


def cleared(n: int):
    """What a result area shows while new work runs: nothing, so an error never leaves the last run's
    numbers on the page as if they were this run's."""
    return lambda: ("",) + (None,) * (n - 1)


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
    with gr.Accordion("Standard benchmarks (lm-evaluation-harness)", open=False):
        with gr.Row():
            lm_tasks = gr.Textbox(label="lm-eval tasks (comma-separated; their datasets must be cached)",
                                  placeholder="arc_easy,hellaswag", scale=3)
            lm_limit = gr.Number(value=100, label="Docs per task (0 or empty = all)", step=1, scale=1)
        lm_include = gr.Textbox(label="Folder of your own lm-eval task YAMLs (optional)", visible=not public_mode())
        with gr.Row():
            lm_run = gr.Button("Run lm-eval on the plan and the members")
            lm_halt = stop_button()
        lm_note = gr.Markdown()
        lm_table = gr.Dataframe(label="lm-eval's metrics", interactive=False)
        lm_going = lm_run.click(cleared(2), None, [lm_note, lm_table], queue=False, show_progress="hidden",
                                api_visibility="private") \
            .then(lm_eval_tab, [family, plan, lm_tasks, lm_limit, lm_include], [lm_note, lm_table], api_name="lm_eval")
        wire_stop(lm_halt, lm_going)
    return {"plan": plan}
