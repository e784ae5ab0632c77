"""Dashboard tab: live charts, trial table and layer maps of the selected studies, linked by one selected trial.

Linked views: a click on a point of best-so-far or Pareto, on a row of any layer map, or on a row of the
trial table selects that trial everywhere (its layer map, its per-task scores, "Open in editor") and says
so. Gradio's gr.Plot has no click event for Plotly points, so a small script (``CLICK_JS``, given to
``launch(js=...)``) listens to Plotly's own ``plotly_click`` and writes the point's ``study:number`` key
into a hidden textbox, whose ``input`` event does the selecting; the table uses Gradio's ``select``.
"""
from __future__ import annotations

import csv
import tempfile
import time
from functools import lru_cache
from pathlib import Path
import gradio as gr

from db.runs import best_trial, phase_line, rank_key, reconcile
from db.store import StoreError
from gptailor import Plan
from gptailor.importance import ImportanceError, position_importance
from gptailor.paths import child

from . import figures
from .engine import store
from .guard import session_of

TRIAL_COLUMNS = ["study", "number", "status", "fidelity", "retention %", "kept", "params M", "plan", "error",
                 "study name"]
MIN_TOP_TRIALS = 8  # fewer trials at the top fidelity: importance uses every fidelity (and says so)

CLICK_JS = """
() => {
  const send = (key) => {
    const box = document.querySelector('#trial-click textarea, #trial-click input');
    if (!box || !key) return;
    const proto = box.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
    Object.getOwnPropertyDescriptor(proto, 'value').set.call(box, key);
    box.dispatchEvent(new Event('input', { bubbles: true }));
  };
  const onClick = (ev) => {
    const pt = ev && ev.points && ev.points[0];
    const cd = pt && pt.customdata;
    const key = Array.isArray(cd) ? cd[0] : cd;
    if (typeof key === 'string' && /^\\d+:\\d+$/.test(key)) send(key + '#' + Date.now());
  };
  const hook = () => {
    document.querySelectorAll('.js-plotly-plot').forEach((gd) => {
      if (!gd.on) return;
      if (gd._ev && gd._ev.listeners && gd._ev.listeners('plotly_click').includes(onClick)) return;
      gd.on('plotly_click', onClick);
    });
  };
  setInterval(hook, 700);
}
"""


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


def labels_of(studies: list[dict]) -> dict[int, str]:
    """Legend names: the study's short name (unique in its family); the id is added only if two clash."""
    names = [s["name"] for s in studies]
    return {s["id"]: s["name"] if names.count(s["name"]) == 1 else f"{s['id']}: {s['name']}" for s in studies}


def same_family(all_studies: list[dict], chosen: list[dict]) -> list[dict]:
    """Every study on the chosen studies' families and suites (all budgets): what the Pareto chart spans."""
    keys = {(s["family"], s["settings"].get("suite")) for s in chosen}
    return [s for s in all_studies if (s["family"], s["settings"].get("suite")) in keys]


def refresh(ids):
    """Everything the dashboard shows, for the selected study ids (runs every few seconds: one read of
    the study list, then the trials of the selected studies and of their family's other studies)."""
    st = store()
    all_studies = st.studies()
    ids = [int(i) for i in (ids or [])] or default_ids(all_studies)
    chosen = [s for s in all_studies if s["id"] in ids]
    family = same_family(all_studies, chosen)
    names = labels_of(family)
    trials = {s["id"]: st.trials(s["id"]) for s in family}
    picked = {names[s["id"]]: trials[s["id"]] for s in chosen}
    rows = [[str(s["id"]), t["number"], t["status"], t["fidelity"],
             None if t["retention"] is None else round(100 * t["retention"], 2), t["kept_layers"],
             None if t["params"] is None else round(t["params"] / 1e6, 3), t["plan_text"], t["error"] or "",
             names[s["id"]]] for s in chosen for t in trials[s["id"]]]
    members = _members(chosen)
    all_trials = [t for s in chosen for t in trials[s["id"]]]
    main = max(chosen, key=lambda s: len(trials[s["id"]]), default=None)  # the longest run shows convergence best
    main_trials = trials[main["id"]] if main else []
    imp, marg = importance_figures(main["id"] if main else None, names.get(main["id"], "") if main else "",
                                   main_trials, tuple(members))
    choices = trial_choices(all_trials, names)
    return (figures.best_so_far(picked), figures.best_so_far(picked, x="wall_s"),
            figures.pareto({names[s["id"]]: trials[s["id"]] for s in family}),
            figures.top_k_layer_maps(all_trials, members, names=names) if members else None,
            figures.layer_choice_per_trial(main_trials, members, names.get(main["id"], "")) if members and main_trials
            else None, imp, marg, gr.Dropdown(choices=choices), rows)


def trial_choices(trials: list[dict], names: dict[int, str]) -> list[tuple[str, str]]:
    """The selector's choices, best first (the one ranking rule): 'smac-r2-s0 #12 · 72.2%' -> '3:12'."""
    done = sorted((t for t in trials if t["status"] == "complete" and t["retention"] is not None), key=rank_key)
    return [(f"{names.get(t['study_id'], t['study_id'])} #{t['number']} · {100 * t['retention']:.1f}%",
             figures.trial_key(t)) for t in done]


def importance_figures(study_id: int | None, name: str, trials: list[dict], members: tuple[str, ...]):
    """fANOVA importance and the per-position marginal of one study (cached per study and trial count)."""
    n = sum(1 for t in trials if t["status"] == "complete" and t["retention"] is not None)
    return _importance(study_id, name, members, importance_bucket(n)) if study_id is not None else (None, None)


def importance_bucket(n: int) -> int:
    """fANOVA fits a forest (a second or more): recompute when a tenth more trials are in, not every tick."""
    return n if n < 20 else n - n % max(1, n // 10)


@lru_cache(maxsize=32)
def _importance(study_id: int, name: str, members: tuple[str, ...], _bucket: int):
    done = [t for t in store().trials(study_id) if t["status"] == "complete" and t["retention"] is not None]
    top = figures.top_fidelity(done)
    use, which = (top, "top fidelity") if len(top) >= MIN_TOP_TRIALS else (done, "all fidelities")
    try:
        imp = position_importance([Plan.from_dict(t["plan"]) for t in use], [t["retention"] for t in use])
    except ImportanceError:
        return None, None
    return (figures.importance_bars(imp.importance, f"Which positions matter: {name}",
                                    f"fANOVA over {imp.n_trials} trials ({which})"),
            figures.marginal_map(imp.marginals, list(members)))


def find_trial(key: str | None) -> tuple[dict, dict] | None:
    """The (study, trial) a 'study:number' key names (a '#nonce' after it is ignored), or None."""
    try:
        sid, number = (int(x) for x in str(key or "").partition("#")[0].split(":"))
    except ValueError:
        return None
    study = next((s for s in store().studies() if s["id"] == sid), None)
    trial = next((t for t in store().trials(sid) if t["number"] == number), None) if study else None
    return (study, trial) if trial else None


def select_trial(key: str | None):
    """Show one trial everywhere: the selector's value, a confirmation, its layer map and per-task scores."""
    found = find_trial(key)
    if found is None:
        return gr.update(), "No trial selected: click a point, a layer-map row or a table row.", None, []
    study, t = found
    members = _members([study])
    ret = "-" if t["retention"] is None else f"{100 * t['retention']:.1f}%"
    note = (f"✓ **Trial {t['number']} of {study['name']} selected**: {ret} at fidelity {t['fidelity'] or 'full'}, "
            f"{t['kept_layers']} layers kept · `{t['plan_text']}`")
    fig = figures.layer_map(Plan.from_dict(t["plan"]), members, f"Selected: {study['name']} #{t['number']}",
                            score=t["retention"], label=f"#{t['number']}", note=f"at fidelity {t['fidelity'] or 'full'}",
                            key=figures.trial_key(t)) if members else None
    return figures.trial_key(t), note, fig, figures.task_scores(t)


def select_best(ids, selected: str | None):
    """On the first refresh (nothing selected yet) the best trial of the selected studies is selected."""
    if selected:
        return gr.update(), gr.update(), gr.update(), gr.update()
    st = store()
    ids = [int(i) for i in (ids or [])] or default_ids(st.studies())
    best = best_trial([t for sid in ids for t in st.trials(sid)])
    return select_trial(figures.trial_key(best)) if best else (gr.update(),) * 4


def table_select(evt: gr.SelectData) -> str:
    """A click on a trial-table row: the key of that row's trial (the row as shown, filtered or not), with a
    nonce so that selecting the same trial again is still a change."""
    row = evt.row_value
    return f"{int(row[0])}:{int(row[1])}#{time.time()}"


def open_in_editor(key: str | None):
    """The selected trial's plan into the shared plan box, and the Editor tab in front."""
    found = find_trial(key)
    if found is None:
        raise gr.Error("select a trial first: click a point, a layer-map row or a table row")
    return found[1]["plan_text"], gr.Tabs(selected="editor")


def rename(study_id, name: str):
    """The dashboard's rename box: a short unique name for a study (the CLI: studies --rename ID NAME)."""
    if study_id in (None, ""):
        raise gr.Error("pick the study to rename")
    try:
        new = store().rename_study(int(study_id), name)
    except StoreError as e:
        raise gr.Error(str(e)) from None
    choices = study_choices()
    return f"✓ study {int(study_id)} is now named **{new}**", gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)


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


def build(plan_box: gr.Textbox, tabs: gr.Tabs) -> dict:
    with gr.Row():
        pick = gr.Dropdown(choices=study_choices(), multiselect=True, label="Studies (empty: the newest and the others on its family and suite)",
                           allow_custom_value=True, scale=4)
        reload_btn = gr.Button("Reload list", scale=1)
        live = gr.Checkbox(value=True, label="Live refresh", scale=1)
    status = gr.Markdown(elem_id="study-status")
    with gr.Row(elem_classes=["gt-grid"]):
        selector = gr.Dropdown(choices=[], label="Selected trial (or click a point, a layer-map row or a table row)",
                               elem_id="trial-selector", scale=3, min_width=240)
        open_btn = gr.Button("Open in editor", scale=1, min_width=140)
    click_box = gr.Textbox(elem_id="trial-click", elem_classes=["gt-hidden"], container=False, show_label=False)
    confirm = gr.Markdown("No trial selected: click a point, a layer-map row or a table row.", elem_id="trial-selected")
    with gr.Row(elem_classes=["gt-grid"]):
        with gr.Column(scale=3, min_width=300):
            selected_map = gr.Plot(label="Selected trial's layer map", show_label=False, elem_id="best-layer-map")
        with gr.Column(scale=2, min_width=240):
            task_table = gr.Dataframe(headers=["task", "score", "retention %"], label="Selected trial's scores per task",
                                      interactive=False)
    with gr.Row(elem_classes=["gt-grid"]):
        curve = gr.Plot(label="Best so far (trials)", show_label=False, elem_id="curve")
        curve_t = gr.Plot(label="Best so far (wall time)", show_label=False)
    with gr.Row(elem_classes=["gt-grid"]):
        par = gr.Plot(label="Retention vs size (every study on the family)", show_label=False, elem_id="pareto")
        topk = gr.Plot(label="Top trials", show_label=False, elem_id="top-trials")
    over = gr.Plot(label="Layer choice per trial (the selected study with the most trials)", show_label=False,
                   elem_id="per-trial")
    with gr.Row(elem_classes=["gt-grid"]):
        imp = gr.Plot(label="Which positions matter (fANOVA)", show_label=False, elem_id="importance")
        marg = gr.Plot(label="Mean retention per op and position", show_label=False, elem_id="marginal")
    table = gr.Dataframe(headers=TRIAL_COLUMNS, label="Trials (click a row to select the trial)",
                         interactive=False, show_search="filter", elem_id="trial-table")
    dl = gr.DownloadButton("Download CSV")
    with gr.Accordion("Rename a study", open=False) as rename_box:
        with gr.Row(elem_classes=["gt-grid"]):
            rename_pick = gr.Dropdown(choices=study_choices(), label="Study", scale=2, min_width=200,
                                      allow_custom_value=True)
            new_name = gr.Textbox(label="New short name (unique in its family)", scale=2, min_width=200)
            rename_btn = gr.Button("Rename", scale=1, min_width=100)
        rename_note = gr.Markdown()
    outputs = [curve, curve_t, par, topk, over, imp, marg, selector, table]
    shown = [selector, confirm, selected_map, task_table]
    pick.change(refresh, [pick], outputs, api_name="dashboard").then(
        select_best, [pick, selector], shown, show_progress="hidden")
    reload_btn.click(lambda: (gr.Dropdown(choices=study_choices()),) * 2, None, [pick, rename_pick])
    timer = gr.Timer(3)
    timer.tick(refresh, [pick], outputs, show_progress="hidden").then(
        select_best, [pick, selector], shown, show_progress="hidden")
    timer.tick(status_line, [pick], [status], show_progress="hidden")
    pick.change(status_line, [pick], [status], api_name="dashboard_status", show_progress="hidden")
    live.change(lambda on: gr.Timer(active=on), [live], [timer])
    selector.input(select_trial, [selector], shown, api_name="select_trial")
    # Plotly clicks (CLICK_JS) and table rows both write 'study:number#nonce' into the hidden box
    click_box.change(select_trial, [click_box], shown, show_progress="hidden")
    table.select(table_select, None, [click_box], show_progress="hidden")
    open_btn.click(open_in_editor, [selector], [plan_box, tabs])
    table.change(to_csv, [table], [dl])
    rename_box.expand(lambda: gr.Dropdown(choices=study_choices()), None, [rename_pick])
    rename_btn.click(rename, [rename_pick, new_name], [rename_note, pick, rename_pick], api_name="rename_study")
    return {"pick": pick}
