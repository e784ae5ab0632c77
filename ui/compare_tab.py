"""Compare tab: every study's best plan re-evaluated at full fidelity, as a table and per-task bars."""
from __future__ import annotations

import gradio as gr

from db.runs import compare, engine_key
from gptailor import FamilyError, Plan, TaskError

from . import figures
from .engine import ENGINE, gpu, store
from .guard import refuse
from .stop import stop_button, stoppable, wire_stop

COLUMNS = ["id", "study", "method", "average retention %", "kept", "params M", "trials", "wall s", "plan"]


@gpu
def run_compare(family: str, suite: str | None = None, progress=gr.Progress(), request: gr.Request = None):
    """Re-evaluate the best plan of every study on this family and task suite, on the full suite.

    Only studies scored on the same suite are compared: retention on different tasks is not comparable.
    """
    try:
        session = ENGINE.get(family, suite)
        ev = session.scorer()
    except (FamilyError, TaskError) as e:
        raise refuse(e) from None
    same = [s for s in store().studies()
            if s["family"] == session.family.name and s["settings"].get("suite") == ev.suite.path]
    progress(0.1, desc=f"re-evaluating the best plan of {len(same)} studies")
    try:  # the app's loaded evaluator serves every one of them
        with stoppable(request, progress):
            rows = compare(store(), [s["id"] for s in same], evaluators={engine_key(s): ev for s in same}) \
                if same else []
    except (FamilyError, TaskError) as e:
        raise refuse(e) from None
    tasks = list(rows[0].task_retention) if rows else []
    table = [[r.study_id, r.name, r.method, round(100 * r.retention, 1), r.kept_layers, round(r.params / 1e6, 3),
              r.trials, round(r.wall_s, 1), r.plan] +
             [None if r.task_retention[t] is None else round(100 * r.task_retention[t], 1) for t in tasks]
             for r in rows]
    headers = COLUMNS + [f"{t} %" for t in tasks]
    return gr.Dataframe(value=table, headers=headers), figures.task_bars([r.__dict__ for r in rows]), \
        best_maps(rows, session.family.member_names)


def best_maps(rows, members: list[str]):
    """Each study's best plan as one row of the shared layer-map component, with the same retention as the
    table (re-scored on the test split), best first."""
    if not rows:
        return None
    ranked = sorted(rows, key=lambda r: -r.retention)
    return figures.plan_map([figures.MapRow(f"{r.study_id}: {r.name}", Plan.from_text(r.plan), r.retention,
                                            f"({r.split} split, {r.definition} retention)") for r in ranked],
                            members, "Best plan of each study")


def build(family: gr.Dropdown, suite: gr.Dropdown) -> None:
    gr.Markdown("Each study's best plan (highest fidelity reached, then best retention), re-evaluated on the "
                "full suite so that searches and baselines are compared on equal terms. Only studies of the "
                "chosen family and task suite are compared.")
    with gr.Row():
        go_btn = gr.Button("Compare all studies", variant="primary")
        halt = stop_button()
    table = gr.Dataframe(headers=COLUMNS, interactive=False, show_search="filter")
    maps = gr.Plot(label="Best plans", show_label=False, elem_id="compare-maps")
    bars = gr.Plot(show_label=False)
    going = go_btn.click(run_compare, [family, suite], [table, bars, maps], api_name="compare")
    wire_stop(halt, going)
