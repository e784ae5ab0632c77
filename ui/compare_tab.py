"""Compare tab: every study's best plan re-evaluated at full fidelity, as a table and per-task bars."""
from __future__ import annotations

import gradio as gr

from db.compare import against_best, compare, engine_key, retention_text
from gptailor import FamilyError, Plan, TaskError
from gptailor.eval.results import DEFINITIONS

from . import figures
from .engine import ENGINE, gpu, store
from .guard import last_refusal, refused
from .overload import model_slots
from .retention import marked, pct
from .stop import STOPPED, armed, stop_button, stoppable, wire_stop

COLUMNS = ["id", "study", "method", "family retention % [95%]", "base retention % [95%]", "trials", "wall s",
           "vs the best (objective)", "objective", "kept", "params M", "plan"]
WIDTHS = ["50px", "130px", "90px", "150px", "150px", "70px", "70px", "230px", "100px", "60px", "90px", "260px"]


@gpu
def run_compare(family: str, suite: str | None = None, progress=gr.Progress(), request: gr.Request = None):
    """Re-evaluate the best plan of every study on this family and task suite, on the full suite.

    Only studies scored on the same suite are compared: retention on different tasks is not comparable.
    """
    try:
        session = ENGINE.get(family, suite)
        ev = session.scorer()
    except (FamilyError, TaskError) as e:
        raise refused(request, e) from None
    same = [s for s in store().studies()
            if s["family"] == session.family.name and s["settings"].get("suite") == ev.suite.path]
    progress(0.1, desc=f"re-evaluating the best plan of {len(same)} studies")
    try:  # the app's loaded evaluator serves every one of them
        with stoppable(request, progress, quiet=True) as run:  # a Stop keeps the last table and says so
            rows = compare(store(), [s["id"] for s in same], evaluators={engine_key(s): ev for s in same}) \
                if same else []
    except (FamilyError, TaskError) as e:
        raise refused(request, e) from None
    if run.stopped:
        return gr.skip(), gr.skip(), gr.skip(), f"**{STOPPED}**; the table and charts below are the previous results"
    table, headers = compare_grid(rows)
    return gr.Dataframe(value=table, headers=headers), figures.task_bars(rows), \
        best_maps(rows, session.family.member_names), ""


def compare_grid(rows) -> tuple[list[list], list[str]]:
    """Compare's table: both retention definitions with their 95% intervals side by side (the objective's
    header marked when every study shares it), each study against the best by the noise rule, its trials and
    wall time beside it, then each task's retention under the study's own definition."""
    tasks = list(rows[0].task_retention) if rows else []
    objective = rows[0].definition if rows and len({r.definition for r in rows}) == 1 else None
    vs = against_best(rows)
    table = [[r.study_id, r.name, r.method, *(retention_text(r, d) for d in DEFINITIONS), r.trials,
              round(r.wall_s, 1), vs[r.study_id], r.definition, r.kept_layers, round(r.params / 1e6, 3), r.plan] +
             [pct(r.task_retention[t]) for t in tasks] for r in rows]
    per_task = [f"{t} % ({objective or 'objective'})" for t in tasks]
    return table, [*marked(COLUMNS, objective), *per_task]


def best_maps(rows, members: list[str]):
    """Each study's best plan as one row of the shared layer-map component, with the same retention as the
    table (re-scored on the test split), best first."""
    if not rows:
        return None
    ranked = sorted(rows, key=lambda r: -r.retention)
    return figures.plan_map([figures.MapRow(f"{r.study_id}: {r.name}", Plan.from_text(r.plan), r.retention,
                                            f"({r.split} split, {r.definition} retention, 95% interval "
                                            f"{r.interval.text().split(' ', 1)[1]})",
                                            span=(r.interval.lo, r.interval.hi)) for r in ranked],
                            members, "Best plan of each study")


def build(family: gr.Dropdown, suite: gr.Dropdown) -> None:
    gr.Markdown("Each study's best plan (highest fidelity reached, then best retention), re-scored on the held-out "
                "test split so that searches and baselines are compared on equal terms. Only studies of the "
                "chosen family and task suite are compared. Both retention definitions are shown: `family` "
                "(score / the best member's, capped at 100%) and `base` (score / the base's); the study's "
                "objective is marked. Each retention carries its 95% interval (the test split's sampling error, "
                "Wilson per task), and each study is compared with the best: *larger than the noise* only when "
                "the difference exceeds 1.96 x the two rows' combined noise (the benchmark's rule). Each "
                "study's trial count and wall time stand beside it: what its number cost.")
    with gr.Row():
        go_btn = gr.Button("Compare all studies", variant="primary")
        halt = stop_button()
    note = gr.Markdown(elem_id="compare-note")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, show_search="filter", elem_id="compare-table",
                         wrap=True,  # a long verdict wraps in its cell instead of being clipped
                         column_widths=WIDTHS)  # ... and no header breaks letter by letter
    maps = gr.Plot(label="Best plans", show_label=False, elem_id="compare-maps")
    bars = gr.Plot(show_label=False, elem_id="compare-bars")
    armed(go_btn.click).then(run_compare, [family, suite], [table, bars, maps, note], api_name="compare",
                             **model_slots()) \
        .failure(last_refusal, None, [note], queue=False, show_progress="hidden", api_visibility="private")
    wire_stop(halt)  # no cancels: the handler itself returns the 'stopped' note and keeps the last table
