"""Search tab: pick a budget and a method, launch a background study, watch, cancel, resume."""
from __future__ import annotations

import gradio as gr

from db.rows import best_from, study_definition

from db.runs import METHODS, StudyError, create_study
from db.status import QUEUED, phase_line
from db.workers import check_resumable, launch_or_queue, queue, start_queued, withdraw
from db.store import ACTIVE, StoreError
from gptailor import FamilyError, TaskError
from gptailor.common.limits import SettingsError, whole
from gptailor.eval.results import DEFAULT_OBJECTIVE
from gptailor.search.fidelity import search_fidelities
from gptailor.search.settings import METHODS as SEARCHES, SearchSettings, suggested_trials
from gptailor.search.space import Budget, BudgetError

from .engine import ENGINE, redact, store
from db.settings import data_dir, max_trials, max_workers
from .guard import allowance, check_owner, noting, refusal_beside, refuse, visitor
from .retention import pair

STUDY_COLUMNS = ["id", "name", "method", "family", "status", "now", "trials", "best family retention %",
                 "best base retention %", "best from", "objective", "error"]
LAUNCHABLE = [m for m in METHODS if m != "manual"]


def _budget(kind: str, remove: float, fraction: float) -> Budget:
    if kind == "parameter fraction":
        return Budget(max_param_fraction=float(fraction))
    return Budget(remove_layers=int(remove or 0))


def budget_text(family: str, remove: float, kind: str = "layers to remove", fraction: float = 0.75) -> str:
    """Live 'keeps N of L layers, X M of Y M params'."""
    try:
        fam = ENGINE.get(family).family
        L, n = fam.n_layers, _budget(kind, remove, fraction).n_remove(fam)
    except (FamilyError, TaskError, BudgetError) as e:
        return f"⚠ {redact(str(e))}"
    if n >= L:
        return f"⚠ removing {n} of {L} layers keeps none; remove at most {L - 1}"
    return (f"keeps **{L - n} of {L}** layers, **{fam.param_count(L - n) / 1e6:.2f} M of "
            f"{fam.param_count() / 1e6:.2f} M** params ({100 * fam.param_count(L - n) / fam.param_count():.1f}%)")


def _depth(family: str) -> int | None:
    """The family's layer count, or None when it cannot be loaded (the picker says why; controls stay as they are)."""
    try:
        return ENGINE.get(family).family.n_layers
    except (FamilyError, TaskError):
        return None


def budget_controls(family: str, kind: str = "layers to remove"):
    """The remove-layers slider runs 0..depth - 1 of the chosen family, and only the slider of the chosen
    budget kind is active (the other one is shown greyed out, not silently ignored)."""
    by_layers = kind != "parameter fraction"
    depth = _depth(family)
    remove = gr.Slider(interactive=by_layers) if depth is None else \
        gr.Slider(maximum=max(1, depth - 1), interactive=by_layers)
    return remove, gr.Slider(interactive=not by_layers)


def trials_default(family: str) -> gr.Number:
    """The Trials field set to what a search of this family's depth needs (``suggested_trials``: 60 on the
    8-layer demo, 200 on 30-layer families, where 100 fell short of the seeded rules), within the app's cap;
    set when the family changes, so a number the user typed afterwards stays."""
    depth = _depth(family)
    if depth is None:
        return gr.Number()
    n = min(suggested_trials(depth), max_trials())
    return gr.Number(value=n, info=f"{n} suggested for {depth} layers: what searches needed to beat the "
                                   "seeded rules (Docs: Searching)")


def start_waiting() -> list[int]:
    """Start queued studies while worker slots are free (the app's timer and every launch call this)."""
    return start_queued(store(), max_workers(), log_dir=data_dir() / "logs")


def studies_rows() -> list[list]:
    """The studies list, newest first; a queued study shows its place in line ('queued #2'). The best numbers
    say which split and fidelity they come from (``db.rows.best_from``): searches' from the search split,
    manual studies' from the test split."""
    st = store()
    start_waiting()
    line = {sid: k for k, sid in enumerate(queue(st), 1)}
    rows = []
    for s in reversed(st.studies()):
        trials = f"{s['trials_done']}/{s['n_trials']}" if s["n_trials"] else str(s["trials_done"])
        d = study_definition(s)
        best = pair(s["best_retentions"] or {})
        status = f"{QUEUED} #{line[s['id']]}" if s["id"] in line else s["status"]
        now = phase_line(s) if s["status"] in (*ACTIVE, QUEUED) else ""
        where = best_from(s.get("best_split"), s.get("best_fidelity")) if s["best_retentions"] else ""
        rows.append([s["id"], s["name"], s["method"], s["family"], status, now, trials, *best, where, d,
                     s["error"] or ""])
    return rows


def search_settings(method: str, trials: float, walltime: float | None, seed: float, min_fid: float,
                    max_fid: float | None, owner: str | None = None, objective: str = DEFAULT_OBJECTIVE) -> SearchSettings:
    """The form's numbers as checked settings: whole numbers in range (2.5 trials is refused, not cut),
    0 or empty wall time / max fidelity meaning none; SettingsError says which field is wrong."""
    settings = SearchSettings(method=method if method in SEARCHES else SearchSettings.method,
                              n_trials=trials, walltime_s=walltime or None, seed=seed, min_fidelity=min_fid,
                              max_fidelity=max_fid or None, owner=owner, objective=objective or DEFAULT_OBJECTIVE)
    settings.check()
    if settings.n_trials > max_trials():
        raise SettingsError(f"at most {max_trials()} trials per study on this app (GPTAILOR_MAX_TRIALS)")
    return settings


def _started(sid: int, how: str) -> str:
    if how == QUEUED:
        ahead = queue(store()).index(sid) + 1 if sid in queue(store()) else 1
        return (f"Study {sid} is queued (#{ahead} in line): at most {max_workers()} studies run at once on this "
                f"app; it starts by itself when one ends.")
    return f"Study {sid} started in the background."


@noting
def launch_study(family: str, method: str, remove: float, trials: float, walltime: float | None, seed: float,
                 min_fid: float, max_fid: float | None, name: str, kind: str = "layers to remove",
                 fraction: float = 0.75, suite: str | None = None, owner: str | None = None,
                 objective: str = DEFAULT_OBJECTIVE, request: gr.Request = None):
    """Check the form, store the study (owned by this browser's token, counted for its client), start it
    or queue it."""
    try:
        settings = search_settings(method, trials, walltime, seed, min_fid, max_fid, objective=objective)
        if kind != "parameter fraction":
            whole("layers to remove", remove)
        who = visitor(owner, request)
        with allowance("studies", request):
            session = ENGINE.get(family, suite)
            sid = create_study(store(), family, method, _budget(kind, remove, fraction), settings,
                               name=name or None, evaluator=session.scorer(), **who)
            how = launch_or_queue(store(), sid, max_workers(), log_dir=data_dir() / "logs")
            note = search_fidelities(settings, session.scorer().suite.split_fidelity("search"))[2]
    except (BudgetError, StudyError, StoreError, FamilyError, TaskError, ValueError) as e:
        raise refuse(e) from None
    return _started(sid, how) + (f" Note: {note}." if note else ""), studies_rows(), sid


def _study(study_id: float | None) -> dict:
    try:
        return store().study(whole("study id", study_id))
    except (SettingsError, StoreError):
        raise gr.Error(f"no study {study_id!r}; click a row of the studies list to pick one") from None


@noting
def cancel_study(study_id: float, owner: str | None = None, request: gr.Request = None):
    study = _study(study_id)
    check_owner(study, owner, request, "cancel")
    if study["status"] not in (*ACTIVE, QUEUED):
        raise gr.Error(f"study {study['id']} is already {study['status']}; there is nothing to cancel")
    try:
        withdraw(store(), study["id"])
        after = store().study(study["id"])["status"]
    except (StudyError, StoreError) as e:
        raise refuse(f"cannot cancel: {e}") from None
    if after == "cancelling":
        return (f"Study {study['id']}: cancel requested; it stops after its current trial, and its status in the "
                f"list below turns to cancelled.", studies_rows())
    return f"Study {study['id']}: {after}.", studies_rows()


@noting
def resume_study(study_id: float, owner: str | None = None, request: gr.Request = None):
    study = _study(study_id)
    check_owner(study, owner, request, "resume")
    try:
        if study["status"] == QUEUED:
            raise StudyError(f"study {study['id']} is already queued; it starts when a worker is free")
        check_resumable(store(), study["id"])
        how = launch_or_queue(store(), study["id"], max_workers(), log_dir=data_dir() / "logs")
    except (StudyError, StoreError) as e:
        raise refuse(e) from None
    return _started(study["id"], how).replace("started in the background", "resumed"), studies_rows()


def pick_study(rows, evt: gr.SelectData) -> int:
    """A click on a study row fills the study id for Cancel / Resume."""
    data = rows.values.tolist() if hasattr(rows, "values") else rows
    return int(data[evt.index[0]][0])


def build(family: gr.Dropdown, suite: gr.Dropdown, owner: gr.BrowserState) -> dict:
    with gr.Row():
        method = gr.Dropdown(LAUNCHABLE, value=SearchSettings.method, label="Method")
        kind = gr.Radio(["layers to remove", "parameter fraction"], value="layers to remove", label="Budget by")
        remove = gr.Slider(0, 7, value=2, step=1, label="Layers to remove", elem_id="remove-layers")
        fraction = gr.Slider(0.05, 1.0, value=0.75, step=0.01, label="Keep at most this fraction of parameters",
                             interactive=False, elem_id="param-fraction")
        trials = gr.Number(value=suggested_trials(8), step=1, label="Trials (searches)")  # the demo's; then the family's
    budget_info = gr.Markdown()
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            walltime = gr.Number(value=None, label="Wall time limit (s, 0 = none)")
            # no precision=0: Gradio would round 2.5 silently; the settings check refuses it instead
            seed = gr.Number(value=0, step=1, label="Seed")
            min_fid = gr.Number(value=8, step=1, label="Min fidelity (examples per task)")
            max_fid = gr.Number(value=None, step=1, label="Max fidelity (0 or empty = all)")
            objective = gr.Dropdown([("accuracy (each task's metric)", "accuracy"),
                                     ("loglik (its continuous proxy)", "loglik"),
                                     ("kl (divergence to each task's reference)", "kl")], value=DEFAULT_OBJECTIVE,
                                    label="Objective the search optimises", elem_id="objective")
            name = gr.Textbox(label="Study name (optional)")
    go_btn = gr.Button("Launch in the background", variant="primary")
    message = gr.Markdown(elem_id="search-message")
    studies = gr.Dataframe(headers=STUDY_COLUMNS, value=studies_rows, interactive=False, elem_id="studies-table",
                           label="Studies (best trial by the one ranking rule; 'objective' is the retention it maximises)")
    with gr.Row():
        study_id = gr.Number(value=None, precision=0, label="Study id (click a row above)")
        cancel_btn = gr.Button("Cancel")
        resume_btn = gr.Button("Resume")
    for comp in (family, remove, kind, fraction):
        comp.change(budget_text, [family, remove, kind, fraction], [budget_info])
    family.change(trials_default, [family], [trials], api_visibility="private", show_progress="hidden")
    for comp in (family, kind):
        comp.change(budget_controls, [family, kind], [remove, fraction], api_visibility="private", show_progress="hidden")
    # a refusal: a toast, and the same line kept in the message under the buttons (ui.guard.noting)
    go_btn.click(launch_study, [family, method, remove, trials, walltime, seed, min_fid, max_fid, name, kind,
                                fraction, suite, owner, objective],
                 [message, studies, study_id], api_name="launch_study", show_progress="hidden") \
        .failure(refusal_beside(2), None, [message, studies, study_id], queue=False, show_progress="hidden",
                 api_visibility="private")
    studies.select(pick_study, [studies], [study_id])
    # quick actions: progress hidden, so a refusal shows as a toast and the studies list stays in view
    for btn, fn, api in ((cancel_btn, cancel_study, "cancel_study"), (resume_btn, resume_study, "resume_study")):
        btn.click(fn, [study_id, owner], [message, studies], api_name=api, show_progress="hidden") \
            .failure(refusal_beside(1), None, [message, studies], queue=False, show_progress="hidden",
                     api_visibility="private")
    gr.Timer(3).tick(studies_rows, None, [studies], show_progress="hidden", api_name="studies")
    return {"budget_info": budget_info, "remove": remove, "trials": trials, "kind": kind, "fraction": fraction,
            "study_id": study_id, "studies": studies}
