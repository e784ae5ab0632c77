"""Evaluate tab: pick a family, paste a plan, score it, see per-task scores beside the base."""
from __future__ import annotations

import gradio as gr

from gptailor import FamilyError, Plan, PlanError, TaskError

from .engine import ENGINE, data_dir, family_choices, gpu, public_mode

COLUMNS = ["task", "metric", "score", "reference", "reference from", "retention %"]


@gpu
def evaluate(family: str, plan_text: str, fidelity: float | None, progress=gr.Progress()):
    """Score a plan; returns a summary line and a per-task table."""
    try:
        progress(0.1, desc="loading family")
        session = ENGINE.get(family)
        if session.evaluator is None:
            raise gr.Error(f"family {family!r} has no task suite; add 'suite: path/to/suite.yaml' to its spec")
        plan = Plan.parse(plan_text, session.family.name)
        plan.validate(session.family.member_names, session.family.n_layers, session.family.name)
        progress(0.4, desc="stitching and scoring")
        n = int(fidelity) if fidelity else None
        res = session.evaluator.evaluate(plan, n)
    except (PlanError, FamilyError, TaskError) as e:
        raise gr.Error(str(e)) from None
    rows = [[t, res.metrics[t], round(v, 4), round(res.references[t].value, 4), res.references[t].member,
             None if res.task_retention[t] is None else round(100 * res.task_retention[t], 1)]
            for t, v in res.scores.items()]
    summary = (f"**Retention {100 * res.retention:.1f}%** · keeps {res.kept_layers} of {res.n_layers} layers · "
               f"{res.params / 1e6:.2f}M of {session.family.param_count() / 1e6:.2f}M params · "
               f"stitch {res.stitch_s * 1e3:.0f} ms, score {res.score_s * 1e3:.0f} ms")
    return summary, rows


def upload_spec(path: str | None):
    """Validate an uploaded family spec and keep it under <data dir>/families; select it."""
    if not path:
        raise gr.Error("choose a family spec file (.yaml or .json)")
    if public_mode():
        raise gr.Error("this is a public app: uploading family specs is turned off")
    import yaml

    from gptailor.family import FamilySpec

    try:
        text = open(path, encoding="utf-8").read()
        data = yaml.safe_load(text)  # JSON is YAML too
        spec = FamilySpec.from_dict(data)
    except (FamilyError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise gr.Error(f"not a usable family spec: {e}") from None
    dest = data_dir() / "families" / f"{spec.name}.yaml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and dest.read_text() != text:
        raise gr.Error(f"a different family spec named {spec.name!r} is already stored at {dest}; rename yours")
    dest.write_text(text)
    return gr.Dropdown(choices=family_choices(), value=str(dest)), f"Stored {dest}"


def identity_plan(family: str) -> str:
    try:
        return ENGINE.get(family).identity_text()
    except FamilyError as e:
        raise gr.Error(str(e)) from None


def build() -> dict:
    with gr.Row():
        family = gr.Dropdown(family_choices(), value="demo", label="Family (or a path to a family.yaml)",
                             allow_custom_value=not public_mode(), scale=2)
        fidelity = gr.Number(value=None, label="Examples per task (empty = all)", precision=0, scale=1)
    with gr.Accordion("Add a family spec (YAML/JSON: name, base, candidates, dtype, device, suite)", open=False):
        spec_file = gr.File(label="Family spec", file_types=[".yaml", ".yml", ".json"], type="filepath")
        spec_note = gr.Markdown()
        spec_file.upload(upload_spec, [spec_file], [family, spec_note], api_name="upload_spec")
    plan = gr.Textbox(label="Plan (text form or JSON)", lines=3,
                      placeholder="0:base 1:math 2:drop 3:merge(math=.6,strings=.4) ...")
    with gr.Row():
        reset = gr.Button("Base plan (keep every layer)")
        run = gr.Button("Evaluate", variant="primary")
    summary = gr.Markdown()
    table = gr.Dataframe(headers=COLUMNS, label="Per-task scores", interactive=False)
    run.click(evaluate, [family, plan, fidelity], [summary, table], api_name="evaluate")
    reset.click(identity_plan, [family], [plan], api_name="identity_plan")
    return {"family": family, "plan": plan}
