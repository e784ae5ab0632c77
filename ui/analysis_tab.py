"""Analysis tab: layer-similarity heatmaps of the family on a calibration set, computed once and cached."""
from __future__ import annotations

import gradio as gr

from gptailor import FamilyError, TaskError
from gptailor.analysis.layers import cached_analysis
from gptailor.search.baselines import calibration_ids
from gptailor.common.paths import PathError

from . import figures
from .engine import ENGINE, gpu
from db.settings import data_dir
from .engine import redact
from .overload import model_slots
from .stop import STOPPED, armed, stop_button, stoppable, wire_stop

TITLES = {"influence": "Block influence", "angular": "Angular distance", "cka_layers": "CKA between positions",
          "cka_members": "CKA between members", "drift": "Weight drift"}
CAPTIONS = {
    "influence": "How much each layer changes its input. Low values (pale) are layers ShortGPT would drop first; "
                 "a finetune's row shows where its training changed the computation.",
    "angular": "Distance between the hidden state entering layer l and the one n layers later. A dark cell is a "
               "small distance: the block of n layers starting at l barely moves the representation, so it is a "
               "removal candidate. Yellow cells change it most.",
    "cka_layers": "Similarity of the representations after each pair of layers. Bright blocks along the diagonal "
                  "are runs of redundant layers.",
    "cka_members": "How alike the members' representations are after the chosen layer. Values near 1 mean the "
                   "members are interchangeable there (bright); lower values (dark) mark where finetunes diverged.",
    "drift": "How far each finetune's weights moved from the base, per layer (dark = moved most): where the new "
             "skill lives.",
}


N_PLOTS = len(TITLES)


def kept(note: str) -> tuple:
    """The member picker and the charts as they are (the last results stay), with ``note`` above them:
    a Stop or an error reads as what it is, never as Gradio's red Error badge on every chart."""
    return (gr.skip(), *(gr.skip(),) * N_PLOTS, note)


@gpu
def compute(family: str, n_texts: float, member: str, position: float, suite: str | None = None,
            progress=gr.Progress(), request: gr.Request = None):
    try:
        session = ENGINE.get(family, suite)
        ev = session.scorer()
        fam = session.family
        texts = calibration_ids(ev.suite, fam.tokenizer, int(n_texts))
        with stoppable(request, quiet=True) as run:  # Stop ends it between batches; nothing half-done is cached
            res = cached_analysis(fam, texts, data_dir() / "analysis", stitcher=session.stitcher,
                                  progress=lambda f, d: progress(f, desc=d))
    except (FamilyError, TaskError, PathError) as e:  # PathError: a family name unfit for a cache file name
        return kept(f"⚠ {redact(str(e))}")
    if run.stopped:
        return kept(f"**{STOPPED}**; the charts below are the previous results")
    member = member if member in fam.member_names else "base"
    figs = figures.analysis_figures(res.to_dict(), member, int(position or 0))
    return (gr.Dropdown(choices=fam.member_names, value=member), *figs.values(), "")


def build(family: gr.Dropdown, suite: gr.Dropdown) -> None:
    with gr.Row():
        n_texts = gr.Slider(8, 512, value=64, step=8, label="Calibration texts (from the chosen task suite)")
        member = gr.Dropdown(["base"], value="base", label="Member (angular, CKA between positions)")
        position = gr.Number(value=0, precision=0, label="Position (CKA between members)")
    with gr.Row():
        go_btn = gr.Button("Compute (cached per family and calibration set)", variant="primary")
        halt = stop_button()
    note = gr.Markdown(elem_id="analysis-note")
    plots = []
    for key in ("influence", "angular", "cka_layers", "cka_members", "drift"):
        plots.append(gr.Plot(label=TITLES[key], elem_id=f"analysis-{key}"))
        gr.Markdown(CAPTIONS[key], elem_id=f"analysis-{key}-caption")
    inputs = [family, n_texts, member, position, suite]
    armed(go_btn.click).then(compute, inputs, [member, *plots, note], api_name="analysis", **model_slots())
    wire_stop(halt)  # no cancels: the handler itself returns the 'stopped' note and keeps the charts
    # a new member or position only re-draws from the cache (computed once per family and calibration set)
    for comp in (member, position):
        armed(comp.input).then(compute, inputs, [member, *plots, note], show_progress="minimal")
