"""Dashboard tab: live charts, trial table and layer maps of the selected studies, linked by one selected trial.

Linked views: a click on a point of best-so-far or Pareto, on a row of any layer map, or on a row of the
trial table selects that trial everywhere (its layer map, its per-task scores, "Open in editor") and says
so. Gradio's gr.Plot has no click event for Plotly points, so a small script (``CLICK_JS``, given to
``launch(js=...)``) listens to Plotly's own ``plotly_click`` and writes the point's ``study:number`` key
into a hidden textbox, whose ``input`` event does the selecting; the table uses Gradio's ``select``.
"""
from __future__ import annotations

import csv
import re
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
import gradio as gr

from db.compare import current_report, stale_report
from db.rows import best_from, split_columns, study_definition
from db.status import phase_line
from db.workers import reconcile
from db.store import ACTIVE, StoreError
from gptailor.eval.noise import Interval, retention_interval, sizes_of
from gptailor.eval.prefix import describe_prefix
from gptailor.eval.results import DEFINITIONS, References
from gptailor.search.settings import SearchSettings
from gptailor.search.trials import TrialRecord, budget_correlation, incumbent, ranked, scored
from gptailor.analysis.importance import ImportanceError, position_importance
from gptailor.common.paths import child

from . import figures
from .engine import store
from .guard import check_owner, noting, refusal_beside, session_of
from .retention import line, marked, means, pair, shared_definition

TRIAL_COLUMNS = ["study", "number", "status", "fidelity", "family retention %", "base retention %", "objective",
                 "kept", "params M", "plan", "error", "study name"]
TASK_COLUMNS = ["task", "score", "family %", "base %"]
# both splits' numbers carry their 95% interval: the search split's from the best trial's stored example counts
# (a trial stored before they were kept shows the bare number), the test split's from the report
SUMMARY_COLUMNS = ["study", "name", "method", "best trial", "best from", "kept", "family % search [95%]",
                   "base % search [95%]",
                   "family % test [95%]", "base % test [95%]", "objective", "prefix cache", "plan"]
STALE_NOTE = (" · its held-out report was scored on an older test split (the suite's files changed since): "
              "**Compare** re-scores it")
STALE = "re-score in Compare"  # the stored report is of an older test split (the suite's files changed since)
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


@dataclass
class View:
    """One read of what the dashboard draws: the studies shown, their family's, and their trials."""
    chosen: list[dict]  # the picked studies (or the newest and its family's)
    family: list[dict]  # every study on their families and suites (the Pareto chart's span)
    trials: dict[int, list[TrialRecord]]
    names: dict[int, str]
    focus: dict | None  # the study the per-trial charts follow


def focus_of(chosen: list[dict], wanted) -> dict | None:
    """The per-trial charts' study: the one picked in the dropdown if still shown, else the newest running
    (or queued) study, else the newest."""
    by_id = {s["id"]: s for s in chosen}
    try:
        if wanted not in (None, "") and int(wanted) in by_id:
            return by_id[int(wanted)]
    except (TypeError, ValueError):
        pass
    active = [s for s in chosen if s["status"] in ACTIVE]
    return max(active or chosen, key=lambda s: s["id"], default=None)


def read_view(ids, focus=None) -> View:
    """The studies list, then the trials of the chosen studies and of their family's other studies."""
    st = store()
    all_studies = st.studies()
    ids = [int(i) for i in (ids or [])] or default_ids(all_studies)
    chosen = [s for s in all_studies if s["id"] in ids]
    family = same_family(all_studies, chosen)
    return View(chosen, family, {s["id"]: st.trials(s["id"]) for s in family}, labels_of(family),
                focus_of(chosen, focus))


def trial_rows(view: View) -> list[list]:
    """The trial table: both retention definitions side by side and the study's own named per row."""
    rows = []
    for s in view.chosen:
        d = study_definition(s)
        for t in view.trials[s["id"]]:
            r = t.result
            rows.append([str(s["id"]), t.number, t.status, t.fidelity, *pair(means(t), 2), d,
                         r.kept_layers if r else None, round(r.params / 1e6, 3) if r else None,
                         t.plan.to_text(), t.error or "", view.names[s["id"]]])
    return rows


def best_summary(view: View) -> list[list]:
    """Each shown study's best trial (the one ranking rule), filed under the split it was scored on
    (``db.rows.split_columns``: a search's under search, a manual study's under test), and its report's
    numbers on the whole held-out test split with their 95% intervals: what Compare shows for the study."""
    rows = []
    for s in view.chosen:
        best = incumbent(view.trials[s["id"]])
        if best is None:
            continue
        d = study_definition(s)
        search, test = split_columns(best.result.split, means(best))
        rep = current_report(s, best.number)  # None: an earlier best's, or scored on an older test split
        if rep is not None:
            test = rep.get("retentions") or {}
        spans = (rep.get("intervals") or {}) if rep is not None else {}
        found = search_spans(s, best) if search else {}
        stale = rep is None and (s.get("report") or {}).get("trial") == best.number
        held_out = [STALE if stale else with_interval(test, spans, k) for k in DEFINITIONS]
        rows.append([s["id"], view.names[s["id"]], s["method"], best.number,
                     best_from(best.result.split, best.fidelity), best.result.kept_layers,
                     *(with_interval(search, found, k) for k in DEFINITIONS), *held_out, d,
                     describe_prefix(s.get("prefix_cache")), best.plan.to_text()])
    return rows


def search_spans(study: dict, best: TrialRecord) -> dict[str, dict]:
    """The best trial's 95% intervals on the split it was scored on (both definitions: Wilson per task over
    its stored example counts, against the study's references, as Compare's); {} for a trial stored before
    its counts were kept, or a study without stored references."""
    sizes = sizes_of(best.result.details)
    if not any(sizes.values()) or not study.get("refs"):
        return {}
    refs = References.from_dict(study["refs"])
    return {d: retention_interval(best.result.scores, sizes, refs, d).to_dict() for d in DEFINITIONS}


def with_interval(values: dict[str, float], spans: dict[str, dict], definition: str) -> str | None:
    """'22.8 [19.1, 26.9]' (the 95% interval, as Compare shows it); the bare number where no interval is
    known; empty where there is no number."""
    if definition in spans:
        return Interval.from_dict(spans[definition]).text()
    v = values.get(definition)
    return None if v is None else f"{100 * v:.1f}"


def summary_table(view: View, objective: str | None) -> gr.Dataframe:
    """The summary as shown: with one objective for every study the headers mark it and the per-row
    'objective' column goes (the table then fits 1400 px without scrolling)."""
    rows, head = best_summary(view), marked(SUMMARY_COLUMNS, objective)
    if objective is not None:
        k = SUMMARY_COLUMNS.index("objective")
        rows, head = [r[:k] + r[k + 1:] for r in rows], head[:k] + head[k + 1:]
    return gr.Dataframe(value=rows, headers=head)


def draw(view: View):
    """The charts, tables and choices of one read. Per-trial charts (best-so-far, top trials, layer choice,
    importance) follow the focus study; the Pareto chart spans every study on the family."""
    names, members = view.names, _members(view.chosen)
    focus = view.focus
    focus_trials = view.trials[focus["id"]] if focus else []
    focus_name = names.get(focus["id"], "") if focus else ""
    picked = {focus_name: focus_trials} if focus else {}
    imp, marg = importance_figures(focus["id"] if focus else None, focus_name, focus_trials, tuple(members))
    objective = shared_definition(view.chosen)
    all_trials = [t for s in view.chosen for t in view.trials[s["id"]]]
    return {
        "focus": gr.Dropdown(choices=[(f"{s['id']}: {names[s['id']]} [{s['status']}]", s["id"])
                                      for s in reversed(view.chosen)], value=focus["id"] if focus else None),
        "curve": figures.best_so_far(picked), "curve_t": figures.best_so_far(picked, x="wall_s"),
        "pareto": figures.pareto({names[s["id"]]: view.trials[s["id"]] for s in view.family}),
        "topk": figures.top_k_layer_maps(focus_trials, members, names=names) if members and focus_trials else None,
        "over": figures.layer_choice_per_trial(focus_trials, members, focus_name) if members and focus_trials else None,
        "imp": imp, "marg": marg,
        "summary": summary_table(view, objective),
        "choices": trial_choices(all_trials, names),
        "table": gr.Dataframe(value=trial_rows(view), headers=marked(TRIAL_COLUMNS, objective)),
        "budget": budget_note(focus, focus_trials, focus_name),
    }


def budget_note(study: dict | None, trials: list[TrialRecord], name: str) -> str:
    """The focus study's budget correlation (``gptailor.search.trials.budget_correlation``) in one line:
    do its low fidelities rank plans as its top one does? Empty for a study with one fidelity."""
    if not study:
        return ""
    objective = SearchSettings.from_dict(study.get("settings") or {}).objective
    rows = [r for r in budget_correlation(trials, objective) if r.n]
    if not rows:
        return ""
    return (f"**Budget correlation** of {_md(name)} ({objective}; Spearman's ρ of each lower fidelity's scores "
            f"against the same plans' at the top, over the plans scored at both, as DeepCAVE computes it; "
            f"near 0 means the low fidelities rank noise): " + "; ".join(r.text() for r in rows))


# the order of build()'s outputs list: the fingerprint state, the status line, then what draw() returns
OUTPUTS = ["state", "status", "focus", "curve", "curve_t", "pareto", "topk", "over", "imp", "marg", "summary",
           "selector", "confirm", "selected_map", "task_table", "budget", "table"]  # the trial table last
N_OUTPUTS = len(OUTPUTS)


def refresh(ids, focus=None, selected=None, last=None, user_pick=None):
    """Everything the dashboard shows (the study picker's change, the focus dropdown, the 'dashboard' API):
    a full read. Returns the outputs of ``build``'s ``outputs`` list, the fingerprint state first.

    The selected trial: one the user picked (``user_pick``: a click, a row, the selector) stays; otherwise
    the selection is automatic and follows the best trial of the shown studies, so that when a study ends
    with a new best, "Open in editor" opens that one and not the best of an earlier refresh."""
    st = store()
    reconcile(st)  # a worker that stopped beating is shown as interrupted, not as running
    families = None
    if ids:  # the fingerprint covers the picked studies' families; nothing picked: the whole database
        families = sorted({s["family"] for s in st.studies() if s["id"] in {int(i) for i in ids}})
    fp = st.fingerprint(families)  # taken before the read: a trial recorded during it shows next tick
    view = read_view(ids, focus)
    state = {"key": _key(ids, focus), "families": families, "fp": fp,
             "active": any(s["status"] in ACTIVE for s in view.family)}
    out = draw(view)
    out.update(state=state, status=status_of(view.chosen))
    best = None if user_pick else incumbent([t for s in view.chosen for t in view.trials[s["id"]]])
    if best is None or figures.trial_key(best) == selected:  # the user's pick stays; the best is shown already
        out.update(selector=gr.Dropdown(choices=out["choices"]), confirm=gr.skip(), selected_map=gr.skip(),
                   task_table=gr.skip())
    else:  # automatic: the best trial of the shown studies, now
        key, note, fig, tasks = select_trial(figures.trial_key(best))
        out.update(selector=gr.Dropdown(choices=out["choices"], value=key), confirm=note, selected_map=fig,
                   task_table=tasks)
    return tuple(out[k] for k in OUTPUTS)


def tick(ids, focus, selected, last, user_pick=None):
    """The 3-second timer: one fingerprint query; nothing is re-read or re-drawn when it has not changed.

    A running study changes its fingerprint with every heartbeat; a stalled one does not, so while any
    shown study is active the status line is still re-read (reconcile marks a dead worker)."""
    if last and last.get("key") == _key(ids, focus):
        fp = store().fingerprint(last["families"])
        if fp == last["fp"]:
            if not last["active"]:
                return (gr.skip(),) * N_OUTPUTS
            return tuple(status_line(ids) if k == "status" else gr.skip() for k in OUTPUTS)
    return refresh(ids, focus, selected, last, user_pick)


def _key(ids, focus) -> tuple:
    """What the user chose (studies, focus): a change of it is a full read, whatever the fingerprint."""
    return tuple(sorted(int(i) for i in (ids or []))), None if focus in (None, "") else str(focus)


def trial_choices(trials: list[TrialRecord], names: dict[int, str]) -> list[tuple[str, str]]:
    """The selector's choices, best first (the one ranking rule): 'smac-r2-s0 #12 · 72.2%' -> '3:12'."""
    return [(f"{names.get(t.study_id, t.study_id)} #{t.number} · {100 * t.retention:.1f}%",
             figures.trial_key(t)) for t in ranked(trials)]


def importance_figures(study_id: int | None, name: str, trials: list[TrialRecord], members: tuple[str, ...]):
    """fANOVA importance and the per-position marginal of one study (cached per study and trial count)."""
    n = len(scored(trials))
    return _importance(study_id, name, members, importance_bucket(n)) if study_id is not None else (None, None)


def importance_bucket(n: int) -> int:
    """fANOVA fits a forest (a second or more): recompute when a tenth more trials are in, not every tick."""
    return n if n < 20 else n - n % max(1, n // 10)


@lru_cache(maxsize=32)
def _importance(study_id: int, name: str, members: tuple[str, ...], _bucket: int):
    done = scored(store().trials(study_id))
    top = figures.top_fidelity(done)
    use, which = (top, "top fidelity") if len(top) >= MIN_TOP_TRIALS else (done, "all fidelities")
    try:
        imp = position_importance([t.plan for t in use], [t.retention for t in use])
    except ImportanceError:
        return None, None
    return (figures.importance_bars(imp.importance, f"Which positions matter: {name}",
                                    f"fANOVA over {imp.n_trials} trials ({which})"),
            figures.marginal_map(imp.marginals, list(members)))


def find_trial(key: str | None) -> tuple[dict, TrialRecord] | None:
    """The (study, trial) a 'study:number' key names (a '#nonce' after it is ignored), or None."""
    try:
        sid, number = (int(x) for x in str(key or "").partition("#")[0].split(":"))
    except ValueError:
        return None
    study = next((s for s in store().studies() if s["id"] == sid), None)
    trial = next((t for t in store().trials(sid) if t.number == number), None) if study else None
    return (study, trial) if trial else None


def select_trial(key: str | None):
    """Show one trial everywhere: the selector's value, a confirmation, its layer map and per-task scores."""
    found = find_trial(key)
    if found is None:
        return gr.update(), "No trial selected: click a point, a layer-map row or a table row.", None, []
    study, t = found
    members = _members([study])
    d = study_definition(study)
    kept = t.result.kept_layers if t.result else None
    note = (f"✓ **Trial {t.number} of {study['name']} selected**: {line(means(t), d)} at fidelity "
            f"{t.fidelity or 'full'}, {kept} layers kept · `{t.plan.to_text()}`")
    fig = figures.layer_map(t.plan, members, f"Selected: {study['name']} #{t.number}",
                            score=t.retention, label=f"#{t.number}",
                            note=f"at fidelity {t.fidelity or 'full'} ({d} retention)",
                            key=figures.trial_key(t)) if members else None
    return figures.trial_key(t), note, fig, gr.Dataframe(value=figures.task_scores(t),
                                                        headers=marked(TASK_COLUMNS, d))


def pick_trial(key: str | None):
    """A trial the user picked (selector, click, table row): shown everywhere, and remembered as the user's
    own pick (the refresh then keeps it instead of following the best)."""
    shown = select_trial(key)
    return (*shown, shown[0] if find_trial(key) else None)


def table_select(evt: gr.SelectData) -> str:
    """A click on a trial-table row: the key of that row's trial (the row as shown, filtered or not), with a
    nonce so that selecting the same trial again is still a change."""
    row = evt.row_value
    return f"{int(row[0])}:{int(row[1])}#{time.time()}"


@noting
def open_in_editor(key: str | None, request: gr.Request = None):
    """The selected trial's plan into the shared plan box, and the Editor tab in front."""
    found = find_trial(key)
    if found is None:
        raise gr.Error("select a trial first: click a point, a layer-map row or a table row")
    return found[1].plan.to_text(), gr.Tabs(selected="editor")


@noting
def rename(study_id, name: str, owner: str | None = None, request: gr.Request = None):
    """The dashboard's rename box: a short unique name for a study (the CLI: studies --rename ID NAME); in
    public mode only for the browser that started it (or an operator), like cancel and resume."""
    if study_id in (None, ""):
        raise gr.Error("pick the study to rename")
    try:
        check_owner(store().study(int(study_id)), owner, request, "rename")
        new = store().rename_study(int(study_id), name)
    except (StoreError, ValueError) as e:
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
    return status_of([s for s in studies if s["id"] in ids])


def status_of(chosen: list[dict]) -> str:
    if not chosen:
        return "No studies yet: launch one in the Search tab."
    return "\n".join(f"- **{s['id']}: {_md(s['name'])}** ({s['method']}, {s['trials_done']}"
                     f"{'/' + str(s['n_trials']) if s['n_trials'] else ''} trials) · {_md(phase_line(s))}"
                     f"{STALE_NOTE if stale_report(s) else ''}"
                     for s in reversed(chosen))


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


def csv_name(rows: list[list], head: list[str]) -> str:
    """The download's file name (the browser saves it under this name): the shown studies' names, so a
    saved file says what it holds ('gptailor-trials-smac-r2-s0_random-r2-s0'); a safe name
    (gptailor.common.paths), at most 64 characters."""
    col = head.index("study name") if "study name" in head else None
    names = list(dict.fromkeys(str(r[col]) for r in rows if col is not None and col < len(r) and r[col]))
    slugs = [s for s in (re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]+", "-", n)).strip("-.") for n in names) if s]
    label = "_".join(slugs[:3]) + (f"-and-{len(slugs) - 3}-more" if len(slugs) > 3 else "")
    return ("gptailor-trials" + (f"-{label}" if label else ""))[:64].rstrip("-._")


def csv_path(session: str, name: str = "gptailor-trials") -> Path:
    """This browser session's one CSV file, named ``name``: rewritten on each refresh (never a new file every
    3 seconds); a new name replaces the session's earlier file."""
    folder = child(Path(tempfile.gettempdir()) / "gptailor-csv", "session", session or "anonymous")
    folder.mkdir(parents=True, exist_ok=True)
    path = child(folder, "file", name, ".csv")
    for old in folder.glob("*.csv"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def to_csv(rows, request: gr.Request = None) -> str:
    """The trial table as CSV for the download button, in this session's one file, named after the
    shown studies."""
    data = rows.values.tolist() if hasattr(rows, "values") else (rows or [])
    head = [str(c) for c in rows.columns] if hasattr(rows, "columns") else TRIAL_COLUMNS
    path = csv_path(session_of(request), csv_name(data, head))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(data)
    tmp.replace(path)
    return str(path)


def build(plan_box: gr.Textbox, tabs: gr.Tabs, owner: gr.BrowserState) -> dict:
    with gr.Row(elem_classes=["gt-grid"]):
        pick = gr.Dropdown(choices=study_choices(), multiselect=True, label="Studies (empty: the newest and the others on its family and suite)",
                           allow_custom_value=True, scale=4)
        reload_btn = gr.Button("Reload list", scale=1)
        live = gr.Checkbox(value=True, label="Live refresh", scale=1)
    status = gr.Markdown(elem_id="study-status")
    summary = gr.Dataframe(headers=SUMMARY_COLUMNS, interactive=False, elem_id="best-summary",
                           label="Best trial of each study: search split, and re-scored on the held-out test split "
                                 "(the numbers Compare shows)")
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
            task_table = gr.Dataframe(headers=TASK_COLUMNS, label="Selected trial's scores per task",
                                      interactive=False, elem_id="task-table")
    par = gr.Plot(label="Retention vs size (every study on the family)", show_label=False, elem_id="pareto")
    focus = gr.Dropdown(choices=[], label="Per-trial charts below follow this study (default: the newest running one)",
                        elem_id="focus-study")
    with gr.Row(elem_classes=["gt-grid"]):
        curve = gr.Plot(label="Best so far (trials)", show_label=False, elem_id="curve")
        curve_t = gr.Plot(label="Best so far (wall time)", show_label=False, elem_id="curve-time")
    budget = gr.Markdown(elem_id="budget-correlation")
    topk = gr.Plot(label="Top trials", show_label=False, elem_id="top-trials")
    over = gr.Plot(label="Layer choice per trial", show_label=False, elem_id="per-trial")
    with gr.Row(elem_classes=["gt-grid"]):
        imp = gr.Plot(label="Which positions matter (fANOVA)", show_label=False, elem_id="importance")
        marg = gr.Plot(label="Mean retention per op and position", show_label=False, elem_id="marginal")
    table = gr.Dataframe(headers=TRIAL_COLUMNS, label="Trials of the shown studies (click a row to select the trial)",
                         interactive=False, show_search="filter", elem_id="trial-table")
    dl = gr.DownloadButton("Download CSV")
    with gr.Accordion("Rename a study", open=False) as rename_box:
        with gr.Row(elem_classes=["gt-grid"]):
            rename_pick = gr.Dropdown(choices=study_choices(), label="Study", scale=2, min_width=200,
                                      allow_custom_value=True)
            new_name = gr.Textbox(label="New short name (unique in its family)", scale=2, min_width=200)
            rename_btn = gr.Button("Rename", scale=1, min_width=100)
        rename_note = gr.Markdown(elem_id="rename-note")
    state = gr.State(None)  # the last read's fingerprint: the timer re-reads only when it changed
    user_pick = gr.State(None)  # the trial the user picked, if any: it stays; else the selection follows the best
    parts = {"state": state, "status": status, "focus": focus, "curve": curve, "curve_t": curve_t, "pareto": par,
             "topk": topk, "over": over, "imp": imp, "marg": marg, "summary": summary, "selector": selector,
             "confirm": confirm, "selected_map": selected_map, "task_table": task_table, "table": table,
             "budget": budget}
    outputs = [parts[k] for k in OUTPUTS]
    shown = [selector, confirm, selected_map, task_table]
    inputs = [pick, focus, selector, state, user_pick]
    pick.change(refresh, inputs, outputs, api_name="dashboard")
    focus.input(refresh, inputs, outputs, api_name="dashboard_focus", show_progress="hidden")
    reload_btn.click(lambda: (gr.Dropdown(choices=study_choices()),) * 2, None, [pick, rename_pick])
    timer = gr.Timer(3)
    timer.tick(tick, inputs, outputs, show_progress="hidden")
    pick.change(status_line, [pick], [status], api_name="dashboard_status", show_progress="hidden")
    live.change(lambda on: gr.Timer(active=on), [live], [timer])
    selector.input(pick_trial, [selector], [*shown, user_pick], api_name="select_trial")
    # Plotly clicks (CLICK_JS) and table rows both write 'study:number#nonce' into the hidden box
    click_box.change(pick_trial, [click_box], [*shown, user_pick], show_progress="hidden")
    table.select(table_select, None, [click_box], show_progress="hidden")
    open_btn.click(open_in_editor, [selector], [plan_box, tabs]) \
        .failure(refusal_beside(2), None, [confirm, plan_box, tabs], queue=False, show_progress="hidden",
                 api_visibility="private")
    table.change(to_csv, [table], [dl])
    rename_box.expand(lambda: gr.Dropdown(choices=study_choices()), None, [rename_pick])
    rename_btn.click(rename, [rename_pick, new_name, owner], [rename_note, pick, rename_pick], api_name="rename_study") \
        .failure(refusal_beside(2), None, [rename_note, pick, rename_pick], queue=False, show_progress="hidden",
                 api_visibility="private")
    return {"pick": pick}
