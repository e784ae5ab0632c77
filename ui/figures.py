"""Plotly figure builders: plain data in, ``go.Figure`` out, no Gradio, tested on their own.

Trials are the engine's ``TrialRecord`` objects the store returns, ranked by the engine's one rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gptailor import Plan
from gptailor.plan import split_source
from gptailor.search.trials import TrialRecord, fidelity_rank, ranked, scored, size_front, trial_rank

MERGE, DROP = "merge", "drop"


# ----------------------------------------------------------------------------- layer maps
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#9d755d"]
DROP_COLOR = "#c7c7c7"  # an explicit grey cell, never blank and never a member's colour
MERGE_NAME = "merge (hatched, colour = largest weight)"
CELL = 0.92  # cell width in positions: the gap between cells keeps them apart


@dataclass
class MapRow:
    """One row of a layer map: a plan, the score beside it, and what hover and a click need."""
    label: str
    plan: Plan
    score: float | None = None  # retention in [0, 1+]
    note: str = ""  # hover extra, e.g. "fidelity 40"
    key: str = ""  # "study:number", what a click on the row selects
    faint: bool = False  # a score at a lower fidelity: drawn faint
    span: tuple[float, float] | None = None  # the score's 95% interval, drawn as an error bar when known


def member_colors(members: list[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(members)}


def cell_of(op, members: list[str]) -> tuple[str, str]:
    """(category, member whose colour the cell takes): pick -> member, merge -> largest weight, drop -> drop."""
    if op.kind == "drop":
        return DROP, DROP
    if op.kind == "pick":
        return op.member, op.member
    weight: dict[str, float] = {}
    for src, w in op.weights:
        m = split_source(src)[0]
        weight[m] = weight.get(m, 0.0) + w
    top = max(weight, key=lambda m: (weight[m], -members.index(m) if m in members else 0))
    return MERGE, top


def cell_hover(op, i: int) -> str:
    """Position, op and (for a merge) each member's weight as a share of the total."""
    if op.kind == "drop":
        return f"position {i}: drop (layer removed)"
    if op.kind == "pick":
        return f"position {i}: pick {op.member}"
    total = sum(w for _, w in op.weights) or 1.0
    parts = ", ".join(f"{m} {w:g} ({100 * w / total:.0f}%)" for m, w in op.weights)
    return f"position {i}: merge [{op.method}] {parts}"


def plan_map(rows: list[MapRow], members: list[str], title: str = "Layer map") -> go.Figure:
    """The one layer-map component (Dashboard, Editor, Compare): one row per plan, one cell per position.

    Colour = member; a merge is hatched in the colour of its largest weight with the weights on hover;
    a drop is a grey cell with its own legend entry. The score is a bar beside each row. Each category
    is its own trace, so the legend lists members, merge and drop, and a click reads the row's key."""
    n_pos = max((len(r.plan) for r in rows), default=0)
    scored = any(r.score is not None for r in rows)
    fig = make_subplots(rows=1, cols=2 if scored else 1, shared_yaxes=True, horizontal_spacing=0.02,
                        column_widths=[0.84, 0.16] if scored else None)
    colors = member_colors(members)
    cells: dict[str, dict[str, list]] = {}
    for y, r in enumerate(rows):
        for i, op in enumerate(r.plan.ops):
            cat, colour_of = cell_of(op, members)
            c = cells.setdefault(cat, {"x": [], "y": [], "color": [], "data": []})
            c["x"].append(i - CELL / 2)
            c["y"].append(y)
            c["color"].append(DROP_COLOR if cat == DROP else colors.get(colour_of, "#333333"))
            score = "" if r.score is None else f" · {100 * r.score:.1f}%"
            c["data"].append([r.key, f"{r.label}{score}{' ' + r.note if r.note else ''}<br>{cell_hover(op, i)}"])
    for cat in [*members, MERGE, DROP]:
        c = cells.get(cat)
        if c is None:
            continue
        marker: dict[str, Any] = {"color": c["color"], "line": {"width": 0}}
        if cat == MERGE:
            marker["pattern"] = {"shape": "/", "fgcolor": "white", "size": 6, "solidity": 0.35}
        fig.add_trace(go.Bar(orientation="h", x=[CELL] * len(c["x"]), base=c["x"], y=c["y"], width=0.84,
                             marker=marker, name=MERGE_NAME if cat == MERGE else cat, legendgroup=cat,
                             customdata=c["data"], hovertemplate="%{customdata[1]}<extra></extra>"), row=1, col=1)
    if scored:
        fig.add_trace(go.Bar(
            orientation="h", y=list(range(len(rows))), x=[None if r.score is None else 100 * r.score for r in rows],
            marker={"color": ["#bdbdbd" if r.faint else "#3a3a3a" for r in rows]}, width=0.84, name="retention",
            showlegend=False, text=["" if r.score is None else f"{100 * r.score:.1f}%" for r in rows],
            textposition="auto", textangle=0, insidetextanchor="end", cliponaxis=False, textfont={"size": 11},
            insidetextfont={"color": ["#333333" if r.faint else "white" for r in rows]},  # dark on a faint bar
            outsidetextfont={"color": "#333333"},  # a short bar: its text beside it, upright
            customdata=[[r.key, f"{r.label}: {'-' if r.score is None else f'{100 * r.score:.1f}%'} {r.note}"]
                        for r in rows], hovertemplate="%{customdata[1]}<extra></extra>",
            error_x=error_bars([r.score for r in rows], [r.span for r in rows])), row=1, col=2)
        top = max([100 * r.score for r in rows if r.score is not None] + [100.0]
                  + [100 * r.span[1] for r in rows if r.span is not None and r.score is not None])
        fig.update_xaxes(range=[0, top * 1.02], title_text="retention %", row=1, col=2, showgrid=False)
    fig.update_xaxes(range=[-0.5, n_pos - 0.5], title_text="layer position", row=1, col=1, showgrid=False,
                     dtick=1 if n_pos <= 32 else None, zeroline=False)
    px, every = row_height(len(rows))
    ticks = list(range(0, len(rows), every))
    fig.update_yaxes(tickvals=ticks, ticktext=[rows[i].label for i in ticks], autorange="reversed",
                     showgrid=False, row=1, col=1)
    if px < 14 and scored:  # rows too thin for a label inside the score bar: the hover has it
        fig.update_traces(text=None, selector={"name": "retention"})
    fig.update_layout(barmode="overlay", bargap=0, height=max(220, 190 + px * len(rows)), plot_bgcolor="white")
    legend_outside(fig, title)
    fig.update_layout(margin={"b": 86})
    return fig


def row_height(n: int) -> tuple[int, int]:
    """Pixels per map row and 'label every k-th row': roomy for a few rows, at most ~900 px for hundreds."""
    px = 30 if n <= 12 else max(5, min(22, 900 // max(n, 1)))
    return px, max(1, math.ceil(14 / px))


def layer_map(plan: Plan, members: list[str], title: str = "Layer map", score: float | None = None,
              label: str = "plan", note: str = "", key: str = "") -> go.Figure:
    """One plan as a one-row layer map (the Editor's preview, the dashboard's selected trial)."""
    return plan_map([MapRow(label, plan, score, note, key)], members, title)


def trial_key(t: TrialRecord) -> str:
    """What a click on a trial's point, cell or table row selects: ``study:number``."""
    return f"{'' if t.study_id is None else t.study_id}:{t.number}"


def trial_row(t: TrialRecord, label: str, top_fid: float | None = None) -> MapRow:
    faint = top_fid is not None and fidelity_rank(t.fidelity) < top_fid
    return MapRow(label, t.plan, t.retention,
                  f"at fidelity {t.fidelity or 'full'}" + (" (lower rung)" if faint else ""), trial_key(t), faint)


def top_k_layer_maps(trials: list[TrialRecord], members: list[str], k: int = 5,
                     names: dict[Any, str] | None = None) -> go.Figure:
    """The best k trials, one row each with its score, ranked by the one rule (gptailor.search.trials.rank_key):
    the highest fidelity first, then retention; labelled 'study #number'."""
    best = ranked(trials)[:k]
    names = names or {}
    def label(t: TrialRecord) -> str:
        sid = t.study_id
        return f"{names.get(sid, sid) if sid is not None else ''} #{t.number}".strip()
    rows = [trial_row(t, label(t)) for t in best]
    return plan_map(rows, members, f"Top {len(best)} trials")


def layer_choice_per_trial(trials: list[TrialRecord], members: list[str], study: str = "") -> go.Figure:
    """Every trial of one study in order, one row each: which layer each position took as the search went
    on, with the score beside it (lower fidelities faint)."""
    rows = sorted(trials, key=lambda t: t.number)
    top = max((fidelity_rank(t.fidelity) for t in scored(rows)), default=None)
    return plan_map([trial_row(t, f"#{t.number}", top) for t in rows], members,
                    f"Layer choice per trial{': ' + study if study else ''}")


def legend_outside(fig: go.Figure, title: str, subtitle: str | None = None) -> go.Figure:
    """Title top left (details in a smaller subtitle, so a 760 px page does not clip it), legend in one
    horizontal band under the plot: never on top of the data and never squeezing the plot's width."""
    head: dict[str, Any] = {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}}
    if subtitle:
        head["subtitle"] = {"text": subtitle, "font": {"size": 12, "color": "#666"}}
    fig.update_layout(title=head, legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom",
                                          "x": 0, "xanchor": "left", "font": {"size": 11}},
                      margin={"l": 60, "r": 20, "t": 64 if subtitle else 44, "b": 100}, showlegend=True)
    return fig


# ----------------------------------------------------------------------------- study charts
def top_fidelity(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Complete trials at the highest fidelity the study reached: the only ones whose scores are comparable
    with the best trial, the tables and Compare (the same rule as gptailor.search.trials.rank_key)."""
    done = scored(trials)
    if not done:
        return []
    top = max(fidelity_rank(t.fidelity) for t in done)
    return [t for t in done if fidelity_rank(t.fidelity) == top]


def best_so_far(studies: dict[str, list[TrialRecord]], x: str = "number") -> go.Figure:
    """Best retention so far against trial number (or wall time, x='wall_s'), one line per study, from the
    trials at the study's top fidelity only (the number the tables show); lower Hyperband rungs are faint
    points of their own. A click on a point selects that trial."""
    fig = go.Figure()
    for k, (name, trials) in enumerate(studies.items()):
        colour = PALETTE[k % len(PALETTE)]
        top = top_fidelity(trials)
        fid = top[0].fidelity if top else None
        best, xs, ys, data = -math.inf, [], [], []
        for t in sorted(top, key=lambda t: getattr(t, x) or 0):
            best = max(best, t.retention)
            xs.append(getattr(t, x) or 0)
            ys.append(100 * best)
            data.append([trial_key(t), f"{name} #{t.number}: {100 * t.retention:.1f}% "
                                       f"(best so far {100 * best:.1f}%) at fidelity {fid or 'full'}"])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line={"shape": "hv", "color": colour},
                                 marker={"size": 6}, name=f"{name} (fidelity {fid or 'full'})", legendgroup=name,
                                 customdata=data, hovertemplate="%{customdata[1]}<extra></extra>"))
        on_top = {id(t) for t in top}
        low = [t for t in scored(trials) if id(t) not in on_top]
        if low:
            fig.add_trace(go.Scatter(
                x=[getattr(t, x) or 0 for t in low], y=[100 * t.retention for t in low], mode="markers", opacity=0.3,
                marker={"size": 5, "color": colour}, name=f"{name}: lower fidelities", legendgroup=name,
                customdata=[[trial_key(t), f"{name} #{t.number}: {100 * t.retention:.1f}% at fidelity "
                                           f"{t.fidelity} (lower rung, not comparable)"] for t in low],
                hovertemplate="%{customdata[1]}<extra></extra>"))
        ranked_best(fig, name, trials, x, colour)
    fig.update_layout(xaxis_title="trial" if x == "number" else "wall time (s)", yaxis_title="retention %",
                      height=400)
    return legend_outside(fig, "Best retention so far" + (" (wall time)" if x != "number" else ""),
                          "solid: top fidelity; faint: lower fidelities; dashed: the best as ranked<br>"
                          "(fidelity first, so it can go down; dotted: the fidelity rose)")


def incumbents(trials: list[TrialRecord], x: str = "number") -> list[tuple[TrialRecord, TrialRecord]]:
    """After each scored trial (in ``x`` order), the study's best by the one ranking rule (``rank_key``:
    fidelity first): what the tables called "best" at that moment. It goes down when a trial at a higher
    fidelity arrives scoring below the lower fidelity's best."""
    out, best = [], None
    for t in sorted(scored(trials), key=lambda t: (getattr(t, x) or 0, t.number)):
        if best is None or trial_rank(t) < trial_rank(best):
            best = t
        out.append((t, best))
    return out


def ranked_best(fig: go.Figure, name: str, trials: list[TrialRecord], x: str, colour: str) -> None:
    """The best as the tables rank it (fidelity first), dashed, with a dotted vertical line and a label
    where the best's fidelity rose: the moments the shown best may drop. Drawn only when the study ran
    more than one fidelity (otherwise it is the solid line)."""
    steps = incumbents(trials, x)
    if len({fidelity_rank(t.fidelity) for t, _ in steps}) < 2:
        return
    xs = [getattr(t, x) or 0 for t, _ in steps]
    fig.add_trace(go.Scatter(
        x=xs, y=[100 * b.retention for _, b in steps], mode="lines", name=f"{name}: best as ranked (fidelity first)",
        line={"shape": "hv", "dash": "dash", "color": colour, "width": 1.5}, legendgroup=name,
        customdata=[[trial_key(b), f"after #{t.number}: best #{b.number}, {100 * b.retention:.1f}% at fidelity "
                                   f"{b.fidelity or 'full'} (fidelity ranks first)"] for t, b in steps],
        hovertemplate="%{customdata[1]}<extra></extra>"))
    for (t, b), (_, before) in zip(steps[1:], steps[:-1]):
        if fidelity_rank(b.fidelity) > fidelity_rank(before.fidelity):
            fig.add_vline(x=getattr(t, x) or 0, line={"dash": "dot", "color": "#888", "width": 1},
                          annotation={"text": f"fidelity {before.fidelity or 'full'} → {b.fidelity or 'full'}",
                                      "font": {"size": 10, "color": "#555"}, "textangle": -90},
                          annotation_position="top left")


def pareto(studies: dict[str, list[TrialRecord]]) -> go.Figure:
    """Retention against parameter count over every given study (all budgets of a family): each study's
    trials at its top fidelity, and the one Pareto front (``pareto_front``) across all of them."""
    fig = go.Figure()
    tops = {name: top_fidelity(trials) for name, trials in studies.items()}
    for k, (name, done) in enumerate(tops.items()):
        fig.add_trace(go.Scatter(
            x=[t.result.params / 1e6 for t in done], y=[100 * t.retention for t in done], mode="markers",
            name=name, marker={"size": 8, "color": PALETTE[k % len(PALETTE)], "opacity": 0.8},
            customdata=[[trial_key(t), f"{name} #{t.number}: {100 * t.retention:.1f}% with "
                                       f"{t.result.kept_layers} layers, {t.result.params / 1e6:.2f}M (fidelity "
                                       f"{t.fidelity or 'full'})"] for t in done],
            hovertemplate="%{customdata[1]}<extra></extra>"))
    front = pareto_front([t for ts in tops.values() for t in ts])
    if front:
        fig.add_trace(go.Scatter(x=[t.result.params / 1e6 for t in front], y=[100 * t.retention for t in front],
                                 mode="lines", line={"shape": "hv", "dash": "dot", "color": "black"},
                                 name="Pareto front (all studies)", hoverinfo="skip"))
    fig.update_layout(xaxis_title="parameters (M)", yaxis_title="retention %", height=380)
    return legend_outside(fig, "Retention vs size", "every study and budget on the family; dotted: the Pareto front")


def pareto_front(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Trials no other trial beats on both size and retention, smallest first (the engine's one rule)."""
    return size_front(trials, size=lambda t: t.result.params, score=lambda t: t.retention)


def error_bars(values: list[float | None], spans: list[tuple[float, float] | None]) -> dict[str, Any]:
    """Plotly's asymmetric error bars (in percent) for ``values`` and their 95% intervals; none where no
    interval is known (a perplexity task, a report without example counts)."""
    if not any(v is not None and s is not None for v, s in zip(values, spans)):
        return {"visible": False}
    plus = [None if v is None or s is None else 100 * max(0.0, s[1] - v) for v, s in zip(values, spans)]
    minus = [None if v is None or s is None else 100 * max(0.0, v - s[0]) for v, s in zip(values, spans)]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "color": "#555555",
            "thickness": 1.2, "width": 3}


def task_bars(rows: list[Any]) -> go.Figure:
    """Grouped bars: per task retention of each study's best plan with its 95% interval (compare's rows:
    ``study_id``, ``name``, ``task_retention``, ``task_spans``, ``definition``)."""
    fig = go.Figure()
    tasks = list(rows[0].task_retention) if rows else []
    for r in rows:
        values = [r.task_retention[t] for t in tasks]
        spans = [r.task_spans.get(t) for t in tasks]
        fig.add_trace(go.Bar(name=f"{r.study_id}: {r.name}", x=tasks,
                             y=[None if v is None else 100 * v for v in values], error_y=error_bars(values, spans)))
    defs = sorted({r.definition for r in rows})
    fig.update_layout(barmode="group", yaxis_title=f"{'/'.join(defs)} retention %", height=380)
    return legend_outside(fig, "Retention per task (best plan, test split)",
                          f"each study's objective: {', '.join(defs)} retention; whiskers: 95% interval "
                          f"(none for perplexity)" if rows else None)


def task_scores(trial: TrialRecord) -> list[list[Any]]:
    """The selected trial's per-task table: task, score, family retention %, base retention %."""
    from .retention import pct

    if trial.result is None:
        return []
    both = trial.result.task_retentions
    return [[task, None if v is None else round(v, 4), pct(both.get("family", {}).get(task)),
             pct(both.get("base", {}).get(task))] for task, v in trial.result.scores.items()]


# ----------------------------------------------------------------------------- which positions matter
def importance_bars(importance: list[float], title: str, subtitle: str | None = None) -> go.Figure:
    """fANOVA share of the retention's variance explained by each position's op."""
    fig = go.Figure(go.Bar(x=list(range(len(importance))), y=[100 * v for v in importance], marker_color="#4c78a8",
                           name="importance", hovertemplate="position %{x}: %{y:.1f}% of the variance<extra></extra>"))
    fig.update_layout(xaxis={"title": "layer position", "dtick": 1}, yaxis_title="importance %", height=320,
                      showlegend=False)
    legend_outside(fig, title, subtitle)
    fig.update_layout(showlegend=False, margin={"b": 50})
    return fig


def marginal_map(marginals: list[dict[str, tuple[float, int]]], members: list[str]) -> go.Figure:
    """Mean retention of the trials that chose each op at each position (the count on hover): op x position."""
    ops = [m for m in [*members, MERGE, DROP] if any(m in pos for pos in marginals)]
    z = [[100 * pos[o][0] if o in pos else None for pos in marginals] for o in ops]
    n = [[pos[o][1] if o in pos else 0 for pos in marginals] for o in ops]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(len(marginals))), y=ops, customdata=n, colorscale="Viridis",
                               xgap=1, ygap=1, colorbar={"title": {"text": "mean %"}, "thickness": 12},
                               hovertemplate="position %{x}, %{y}: mean %{z:.1f}% over %{customdata} trials"
                                             "<extra></extra>"))
    fig.update_layout(xaxis={"title": "layer position", "dtick": 1}, yaxis_title="op", height=120 + 30 * len(ops))
    legend_outside(fig, "Mean retention per op and position")
    fig.update_layout(showlegend=False, margin={"b": 50, "r": 10})
    return fig


# ----------------------------------------------------------------------------- analysis
def heatmap(z, x, y, title: str, xaxis: str, yaxis: str, colorscale: str = "Viridis", zmin=None, zmax=None,
            reverse_y: bool = False, scale: str = "") -> go.Figure:
    """One analysis heatmap; ``scale`` titles the colour bar with what a colour means, so the bar and the
    caption under the chart read the same way (every scale here runs pale/dark at the low end as named)."""
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale=colorscale, zmin=zmin, zmax=zmax, xgap=1, ygap=1,
                               colorbar={"title": {"text": scale, "side": "right"}, "thickness": 12},
                               hovertemplate=f"{xaxis} %{{x}}, {yaxis} %{{y}}: %{{z:.4f}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, height=max(260, 80 + 28 * len(y)),
                      margin={"l": 70, "r": 20, "t": 50, "b": 40})
    if reverse_y:
        fig.update_yaxes(autorange="reversed")
    return fig


def analysis_figures(a: dict[str, Any], member: str, position: int) -> dict[str, go.Figure]:
    """The analysis tab's heatmaps from a LayerAnalysis.to_dict()."""
    members, L = a["members"], a["n_layers"]
    pos = list(range(L))
    position = max(0, min(L - 1, position))
    return {
        "influence": heatmap([a["block_influence"][m] for m in members], pos, members,
                             "Block influence (1 - cos(in, out))", "position", "member", "Reds",
                             scale="pale = low"),
        "angular": heatmap(a["angular"][member], pos, list(range(1, L)),
                           f"Angular distance d(l, l+n) of {member}", "start l", "block size n", "Viridis",
                           scale="dark = small distance"),  # dark = small: the caption's removal candidate
        "cka_layers": heatmap(a["cka_layers"][member], pos, pos, f"Linear CKA between positions of {member}",
                              "position", "position", "Viridis", 0, 1, reverse_y=True, scale="bright = similar"),
        "cka_members": heatmap(a["cka_members"][position], members, members,
                               f"Linear CKA between members at position {position}", "member", "member",
                               "Viridis", 0, 1, reverse_y=True, scale="bright = alike"),
        "drift": heatmap([a["drift"][m] for m in members], pos, members,
                         "Weight drift ||W_m - W_base|| / ||W_base||", "position", "member", "Oranges",
                         scale="dark = moved most"),
    }
