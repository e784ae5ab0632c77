"""Editor tab: the layer map as an editable grid and as text, kept in sync; evaluate as a 'manual'
study (so it shows in tables and charts); export an HF folder as a zip."""
from __future__ import annotations

import shutil
from contextlib import nullcontext
import time
import uuid
from pathlib import Path

import gradio as gr

from db.runs import create_study, report_from, write_report
from gptailor import FamilyError, Op, Plan, PlanError, TaskError
from gptailor.export.hf import ExportError, export
from gptailor.merge import METHODS
from gptailor.common.limits import whole
from gptailor.eval.speed import INTERACTIVE, short
from gptailor.common.paths import PathError, child
from gptailor.common.progress import tick
from gptailor.search.settings import SearchSettings
from gptailor.search.trials import TrialRecord, incumbent
from gptailor.search.space import Budget

from . import figures, lm_eval_panel
from .engine import ENGINE, check_fidelity, gpu, redact, store, warm_references
from db.settings import data_dir, max_export_bytes, max_export_zips, max_full_examples, public_mode
from .guard import allowance, client_key, global_lock, owner_hash, valid_token
from .overload import model_slots
from .retention import headline_interval, line, marked, pct, where
from .stop import STOPPED, cleared, stop_button, stoppable, wire_stop

GRID_COLUMNS = ["position", "op", "member", "merge weights", "method"]
RESULT_COLUMNS = ["task", "this plan", "base", "current best", "family retention %", "base retention %"]


def plan_to_grid(plan: Plan) -> list[list]:
    rows = []
    for i, op in enumerate(plan.ops):
        if op.kind == "drop":
            rows.append([i, "drop", "", "", ""])
        elif op.kind == "pick":
            rows.append([i, "pick", op.member, "", ""])
        else:
            w = ", ".join(f"{m}={w:g}" for m, w in op.weights)
            rows.append([i, "merge", "", w, op.method])
    return rows


def grid_to_plan(rows, family: str = "") -> Plan:
    data = rows.values.tolist() if hasattr(rows, "values") else rows
    ops = []
    for r, row in enumerate(data):
        kind = str(row[1] or "").strip()
        where = f"position {r}"
        if kind == "drop":
            ops.append(Op.drop())
        elif kind == "pick":
            if not str(row[2] or "").strip():
                raise PlanError(f"{where}: 'pick' needs a member name in the member column")
            ops.append(Op.pick(str(row[2]).strip()))
        elif kind == "merge":
            weights = []
            for item in filter(None, (p.strip() for p in str(row[3] or "").split(","))):
                name, eq, val = item.partition("=")
                try:
                    weights.append((name.strip(), float(val)))
                except ValueError:
                    raise PlanError(f"{where}: merge weight {item!r} must look like member=0.5") from None
                if not eq:
                    raise PlanError(f"{where}: merge weight {item!r} must look like member=0.5")
            if not weights:
                raise PlanError(f"{where}: 'merge' needs weights like 'math=.6, code=.4'")
            ops.append(Op.merge(weights, str(row[4] or "linear").strip() or "linear"))
        else:
            raise PlanError(f"{where}: op must be drop, pick or merge, not {kind!r}")
    return Plan(tuple(ops), family)


STALE = ("", None, None, "")  # result, table, download, export note: they belonged to the previous plan


def text_to_grid(family: str, text: str):
    """The grid, status, map and text for the plan in the shared box; the last result, table and export
    link are cleared, since they belonged to the previous plan. An invalid plan also clears the grid and
    the map, so nothing on the page reads as the new plan's."""
    try:
        session = ENGINE.get(family)
        plan = Plan.parse(text, session.family.name)
        plan.validate(session.family.member_names, session.family.n_layers, session.family.name)
    except (PlanError, FamilyError) as e:
        return [], f"⚠ **Not a valid plan**: {e}", None, gr.skip(), *STALE
    fam = session.family
    status = (f"✓ valid plan: keeps {plan.n_kept} of {fam.n_layers} layers, "
              f"{fam.param_count(plan.n_kept) / 1e6:.2f} M of {fam.param_count() / 1e6:.2f} M params")
    return plan_to_grid(plan), status, figures.layer_map(plan, fam.member_names), plan.to_text(), *STALE


def grid_to_text(family: str, rows):
    try:
        session = ENGINE.get(family)
        plan = grid_to_plan(rows, session.family.name)
        plan.validate(session.family.member_names, session.family.n_layers, session.family.name)
    except (PlanError, FamilyError) as e:
        return gr.update(), f"⚠ {e}", None
    return plan.to_text(), "✓ valid plan", figures.layer_map(plan, session.family.member_names)


def manual_report(st, sid: int, ev, res) -> None:
    """A manual study's report, as every search's: its plan on the whole test split with both definitions'
    intervals. A full-fidelity test-split result is that already; a reduced one is re-scored."""
    if res.split == "test" and res.fidelity is None:
        st.set_study_fields(sid, report=report_from(res, 0, ev.references("test")))
    else:
        write_report(st, sid, ev, res.definition)


@gpu
def evaluate_manual(family: str, text: str, fidelity: float | None, suite: str | None = None,
                    owner: str | None = None, progress=gr.Progress(), request: gr.Request = None):
    """Evaluate the plan, store it as a one-trial 'manual' study, and compare with base and best."""
    try:
        session = ENGINE.get(family, suite)
        ev = session.scorer()
        fam = session.family
        plan = Plan.parse(text, fam.name).validate(fam.member_names, fam.n_layers, fam.name)
        n = whole("fidelity", fidelity) if fidelity else None  # 2.5 refused, not cut
        check_fidelity(ev, n)
        progress(0.1, desc="scoring the references (the base and each member)")
        t0 = time.perf_counter()
        with stoppable(request, progress, quiet=True) as run:  # each stage named: which model is scored
            run.stage = "scoring the references (the base and each member)"
            warm_references(ev)
            run.stage = "scoring your plan"
            res = ev.evaluate(plan, n, speed=INTERACTIVE)
            run.stage = "scoring the base"
            base = ev.evaluate(Plan.identity(fam.n_layers, family=fam.name), n)
        if run.stopped:
            return f"**{STOPPED}**", None
        st = store()
        sid = create_study(st, family, "manual", Budget(remove_layers=fam.n_layers - plan.n_kept),
                           SearchSettings(n_trials=1, max_fidelity=n, min_fidelity=min(8, n or 8)), evaluator=ev,
                           owner_hash=owner_hash(owner) if valid_token(owner) else None,
                           client_key=client_key(request))
        # the references it was scored against, and its definition, so every table marks the right objective
        st.set_study_fields(sid, refs={**ev.references(res.split).to_dict(), "definition": res.definition})
        st.record_trial(sid, TrialRecord(0, plan, n or ev.suite.max_fidelity, res,
                                         wall_s=time.perf_counter() - t0, source="manual"))
        st.transition(sid, ("created",), "finished")
        with stoppable(request, progress, quiet=True) as run:
            run.stage = "re-scoring the current best plan"
            manual_report(st, sid, ev, res)
            best_study, best_res = current_best(st, fam.name, ev, n, exclude=sid)
        if run.stopped:
            best_study = best_res = None
    except (PlanError, FamilyError, TaskError, ValueError) as e:
        return f"⚠ {redact(str(e))}", None
    rows = [[t, round(v, 4), round(base.scores[t], 4), None if best_res is None else round(best_res.scores[t], 4),
             pct(res.task_retentions["family"].get(t)), pct(res.task_retentions["base"].get(t))]
            for t, v in res.scores.items()]
    span = headline_interval(res, ev.references(res.split))
    note = (f"**This plan: {line(res.retentions, res.definition)}** retention (objective's 95% interval "
            f"{100 * span.lo:.1f}-{100 * span.hi:.1f}; {where(res)}), {res.kept_layers}/{res.n_layers} "
            f"layers, {res.params / 1e6:.2f}M params · stored as study {sid}")
    if res.speed:
        note += f"  \nSpeed: {short(res.speed)}"
    if best_res is not None:
        note += (f" · current best (study {best_study['id']}, {best_study['method']}): "
                 f"{line(best_res.retentions, best_res.definition)} with {best_res.kept_layers} layers on the same "
                 f"examples")
    elif run.stopped:
        note += " · stopped before the current best was re-scored"
    return note, gr.Dataframe(value=rows, headers=marked(RESULT_COLUMNS, res.definition))


def current_best(st, family_name: str, ev, n: int | None, exclude: int):
    """The best stored plan on this family and suite, re-scored on the same examples as the edited plan."""
    studies = [s for s in st.studies() if s["family"] == family_name and s["best_retention"] is not None
               and s["id"] != exclude and s["settings"].get("suite") == ev.suite.path]
    if not studies:
        return None, None
    study = max(studies, key=lambda s: s["best_retention"])
    trial = incumbent(st.trials(study["id"]))
    return study, ev.evaluate(trial.plan, n)


def export_zip(family: str, text: str, suite: str | None = None, progress=gr.Progress(),
               request: gr.Request = None):
    """Export the plan's model as a zip under <data dir>/exports; keep only the newest few zips."""
    try:
        with allowance("exports", request):
            session = ENGINE.get(family, suite)
            fam = session.family
            plan = Plan.parse(text, fam.name).validate(fam.member_names, fam.n_layers, fam.name)
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            folder = child(data_dir(), "family", fam.name, f"-{stamp}", under="exports")
            ev = session.evaluator
            big = ev is not None and max(t.split_size("test") for t in ev.suite) > max_full_examples() > 0
            with stoppable(request, progress, quiet=True) as run:  # the model card's scores: the test split
                progress(0.1, desc="scoring your plan for the model card")
                run.stage = "scoring your plan for the model card"
                res = ev.evaluate(plan, max_full_examples() if big else None, speed=INTERACTIVE) if ev else None
                progress(0.7, desc="writing the checkpoint")
                tick()  # a Stop pressed while scoring ends here, before anything is written
            if run.stopped:
                return None, f"**{STOPPED}**"
            # one export at a time per data dir under a byte cap: the cap then bounds the disk, not the cap
            # times the exports running at once
            with global_lock("exports") if max_export_bytes() else nullcontext():
                export(fam, plan, folder, result=res)
                archive = Path(shutil.make_archive(str(folder), "zip", root_dir=folder))
                if public_mode():  # visitors download the zip; the folder would only fill the disk
                    shutil.rmtree(folder, ignore_errors=True)
                prune_exports(folder.parent, keep=archive)
    except (PlanError, FamilyError, TaskError, ExportError, PathError) as e:
        return None, f"⚠ {redact(str(e))}"
    if public_mode():
        return str(archive), f"Exported {archive.name}"
    return str(archive), f"Saved {folder} (and {archive})"


def prune_exports(folder: Path, keep: Path) -> None:
    """Keep at most ``max_export_zips()`` zips (newest first) within ``max_export_bytes()``; delete the
    rest with their folders. If ``keep`` alone is over the byte cap it goes too, and ExportError says so."""
    zips = sorted(folder.glob("*.zip"), key=lambda p: p.stat().st_mtime, reverse=True)
    zips.sort(key=lambda p: p != keep)  # the new export first
    cap, total, kept = max_export_bytes(), 0, 0
    for z in zips:
        size = z.stat().st_size
        if kept < max_export_zips() and (not cap or total + size <= cap):
            total, kept = total + size, kept + 1
            continue
        z.unlink(missing_ok=True)
        shutil.rmtree(z.with_suffix(""), ignore_errors=True)
        if z == keep:
            raise ExportError(f"the export is {size / 1e6:.0f} MB, over this app's cap of {cap / 1e6:.0f} MB "
                              f"for exports (GPTAILOR_MAX_EXPORT_MB); the operator can raise the cap")


def build(family: gr.Dropdown, suite: gr.Dropdown, plan_box: gr.Textbox, owner: gr.BrowserState) -> None:
    gr.Markdown("Edit the grid, or the text and press **Apply** (leaving the text box applies it too); the other "
                "follows. The plan is shared with the Evaluate and Chat tabs, and a click on a trial in the "
                "Dashboard loads it here.")
    with gr.Row():
        text = gr.Textbox(label="Plan (compact text form)", lines=2, scale=5)
        apply_btn = gr.Button("Apply", scale=0, min_width=80)
    status = gr.Markdown(elem_id="editor-plan-status")  # right under the plan box: its errors stay beside it
    grid = gr.Dataframe(headers=GRID_COLUMNS, datatype=["number", "str", "str", "str", "str"], interactive=True,
                        label=f"Layer map (op: drop / pick / merge; method: {', '.join(METHODS)})")
    preview = gr.Plot(label="Layer map", show_label=False)
    with gr.Row():
        fidelity = gr.Number(value=None, step=1, label="Examples per task (0 or empty = all)")
        eval_btn = gr.Button("Evaluate (stored as a manual study)", variant="primary")
        export_btn = gr.Button("Export HF checkpoint (zip)")
        halt = stop_button()
    result = gr.Markdown(elem_id="editor-result")
    table = gr.Dataframe(headers=RESULT_COLUMNS, interactive=False, elem_id="editor-results")
    download = gr.File(label="Exported checkpoint", interactive=False, elem_id="editor-download")
    export_note = gr.Markdown(elem_id="editor-export-note")
    plan_box.change(text_to_grid, [family, plan_box], [grid, status, preview, text, result, table, download,
                                                       export_note])
    for trigger in (text.submit, text.blur, apply_btn.click):
        trigger(lambda t: t, [text], [plan_box], api_visibility="private")
    grid.input(grid_to_text, [family, grid], [plan_box, status, preview])
    eval_btn.click(cleared(2), None, [result, table], queue=False, show_progress="hidden",
                           api_visibility="private") \
        .then(evaluate_manual, [family, plan_box, fidelity, suite, owner], [result, table], api_name="evaluate_manual",
              **model_slots())
    export_btn.click(cleared(2), None, [export_note, download], queue=False,
                     show_progress="hidden", api_visibility="private") \
        .then(export_zip, [family, plan_box, suite], [download, export_note], api_name="export", **model_slots())
    wire_stop(halt)  # no cancels: evaluate and export return their own 'stopped' note to the page
    lm_eval_panel.build(family, plan_box, api_name="editor_lm_eval", elem_id="editor-lm-eval")
