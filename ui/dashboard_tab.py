"""Dashboard tab: live charts, trial table and layer-map heatmaps of the selected studies."""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import gradio as gr

from db.runs import best_trial, phase_line, reconcile
from gptailor import Plan
from gptailor.paths import child

from . import figures
from .engine import store
from .guard import session_of

TRIAL_COLUMNS = ["study", "number", "status", "fidelity", "retention %", "kept", "params M", "plan", "error"]


def study_choices() -> list[tuple[str, int]]:
    return [(f"{s['id']}: {s['name']} [{s['status']}]", s["id"]) for s in reversed(store().studies())]


def default_ids(studies: list[dict], limit: int = 8) -> list[int]:
    """Nothing picked: the newest study and the other studies of its family and task suite, newest first.

    So a SMAC search, its random-search twin and the baselines land on the same charts without clicking.
    """
    if not studies:
        return []
    newest = studies[-1]
    same = [s["id"] for s in reversed(studies) if s["family"] == newest["family"]
            and s["settings"].get("suite") == newest["settings"].get("suite")]
    return same[:limit]


def refresh(ids):
    """Everything the dashboard shows, for the selected study ids (runs every few seconds: one read of
    the study list, then the selected studies' trials)."""
    st = store()
    all_studies = st.studies()
    ids = [int(i) for i in (ids or [])] or default_ids(all_studies)
    chosen = {s["id"]: s for s in all_studies if s["id"] in ids}
    studies = {f"{sid}: {s['name']}": st.trials(sid) for sid, s in chosen.items()}
    rows = [[name.split(":")[0], t["number"], t["status"], t["fidelity"],
             None if t["retention"] is None else round(100 * t["retention"], 2), t["kept_layers"],
             None if t["params"] is None else round(t["params"] / 1e6, 3), t["plan_text"], t["error"] or ""]
            for name, trials in studies.items() for t in trials]
    members = _members([chosen[i] for i in ids if i in chosen])
    all_trials = [t for ts in studies.values() for t in ts]
    best = best_trial(all_trials)
    if best is not None and members:
        study = chosen[best["study_id"]]
        best_fig = figures.layer_map(Plan.from_dict(best["plan"]), members,
                                     f"Best: study {study['id']} ({study['method']}) trial #{best['number']}, "
                                     f"{100 * best['retention']:.1f}% at fidelity {best['fidelity']}")
    else:
        best_fig = None
    first = max(studies.values(), key=len, default=[])  # the longest run shows convergence best
    return (figures.best_so_far(studies), figures.best_so_far(studies, x="wall_s"), figures.pareto(studies),
            best_fig, figures.top_k_layer_maps(all_trials, members) if members else None,
            figures.trials_over_time(first, members) if members and first else None, rows)


def status_line(ids) -> str:
    """One line per shown study: what its worker is doing now (phase, trial i of N, fidelity, ETA), a
    late heartbeat, or how it ended. Markdown, refreshed with the charts."""
    st = store()
    reconcile(st)  # a worker that stopped beating is shown as interrupted, not as running
    studies = st.studies()
    ids = [int(i) for i in (ids or [])] or default_ids(studies)
    chosen = [s for s in reversed(studies) if s["id"] in ids]
    if not chosen:
        return "No studies yet: launch one in the Search tab."
    return "\n".join(f"- **{s['id']}: {_md(s['name'])}** ({s['method']}, {s['trials_done']}"
                     f"{'/' + str(s['n_trials']) if s['n_trials'] else ''} trials) · {_md(phase_line(s))}"
                     for s in chosen)


def _md(text: str) -> str:
    """Plain text inside Markdown: no tags, no emphasis by accident."""
    import html

    return html.escape(str(text), quote=False).replace("*", "\\*").replace("_", "\\_")


def _members(studies: list[dict]) -> list[str]:
    """Members of the (first selected) study's family, base first, as stored with the family."""
    for s in studies:
        info = store().family_info(s["family"])
        if info.get("members"):
            return list(info["members"])
    return []


def csv_path(session: str) -> Path:
    """One CSV file per browser session, rewritten on each refresh (never a new file every 3 seconds)."""
    folder = Path(tempfile.gettempdir()) / "gptailor-csv"
    folder.mkdir(exist_ok=True)
    return child(folder, "session", session or "anonymous", ".csv")


def to_csv(rows, request: gr.Request = None) -> str:
    """The trial table as CSV for the download button, in this session's one file."""
    path = csv_path(session_of(request))
    data = rows.values.tolist() if hasattr(rows, "values") else (rows or [])
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRIAL_COLUMNS)
        w.writerows(data)
    tmp.replace(path)
    return str(path)


def row_plan(rows, evt: gr.SelectData) -> str:
    """Clicking a trial row loads its plan into the editor."""
    data = rows.values.tolist() if hasattr(rows, "values") else rows
    return data[evt.index[0]][TRIAL_COLUMNS.index("plan")]


def build(plan_box: gr.Textbox) -> dict:
    with gr.Row():
        pick = gr.Dropdown(choices=study_choices(), multiselect=True, label="Studies (empty: the newest and the others on its family and suite)",
                           allow_custom_value=True, scale=4)
        reload_btn = gr.Button("Reload list", scale=1)
        live = gr.Checkbox(value=True, label="Live refresh", scale=1)
    status = gr.Markdown(elem_id="study-status")
    with gr.Row():
        curve = gr.Plot(label="Best so far (trials)")
        curve_t = gr.Plot(label="Best so far (wall time)")
    with gr.Row():
        par = gr.Plot(label="Retention vs size")
        best = gr.Plot(label="Best layer map", elem_id="best-layer-map")
    topk = gr.Plot(label="Top trials")
    over = gr.Plot(label="Trials over time (the selected study with the most trials)")
    table = gr.Dataframe(headers=TRIAL_COLUMNS, label="Trials (click a row to load its plan into the editor)",
                         interactive=False, show_search="filter")
    dl = gr.DownloadButton("Download CSV")
    outputs = [curve, curve_t, par, best, topk, over, table]
    pick.change(refresh, [pick], outputs, api_name="dashboard")
    reload_btn.click(lambda: gr.Dropdown(choices=study_choices()), None, [pick])
    timer = gr.Timer(3)
    timer.tick(refresh, [pick], outputs, show_progress="hidden")
    timer.tick(status_line, [pick], [status], show_progress="hidden")
    pick.change(status_line, [pick], [status], api_name="dashboard_status", show_progress="hidden")
    live.change(lambda on: gr.Timer(active=on), [live], [timer])
    table.select(row_plan, [table], [plan_box])
    table.change(to_csv, [table], [dl])
    return {"pick": pick}
