"""Compare tab: every study's best plan re-evaluated at full fidelity, as a table and per-task bars."""
from __future__ import annotations

import gradio as gr

from db.runs import compare
from gptailor import FamilyError, TaskError

from . import figures
from .engine import ENGINE, gpu, store

COLUMNS = ["id", "study", "method", "average retention %", "kept", "params M", "trials", "wall s", "plan"]


@gpu
def run_compare(progress=gr.Progress()):
    """Re-evaluate each study's best plan on the full suite (the app's loaded engines are reused)."""
    progress(0.1, desc="re-evaluating each study's best plan")
    evaluators = {}
    for s in store().studies():
        key = f"{s['family_source']}|{s['settings'].get('suite')}"
        try:
            session = ENGINE.get(s["family_source"])
        except (FamilyError, TaskError):
            continue
        if session.evaluator is not None and session.evaluator.suite.path == s["settings"].get("suite"):
            evaluators[key] = session.evaluator
    try:
        rows = compare(store(), evaluators=evaluators)
    except (FamilyError, TaskError) as e:
        raise gr.Error(str(e)) from None
    tasks = list(rows[0].task_retention) if rows else []
    table = [[r.study_id, r.name, r.method, round(100 * r.retention, 1), r.kept_layers, round(r.params / 1e6, 3),
              r.trials, round(r.wall_s, 1), r.plan] +
             [None if r.task_retention[t] is None else round(100 * r.task_retention[t], 1) for t in tasks]
             for r in rows]
    headers = COLUMNS + [f"{t} %" for t in tasks]
    return gr.Dataframe(value=table, headers=headers), figures.task_bars([r.__dict__ for r in rows])


def build() -> None:
    gr.Markdown("Each study's best plan (highest fidelity reached, then best retention), re-evaluated on the "
                "full suite so that searches and baselines are compared on equal terms.")
    go_btn = gr.Button("Compare all studies", variant="primary")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, show_search="filter")
    bars = gr.Plot()
    go_btn.click(run_compare, None, [table, bars], api_name="compare")
