"""Plotly figure builders: plain data in, ``go.Figure`` out, no Gradio, tested on their own.

Trials are the dicts the store returns (``plan``, ``plan_text``, ``retention``, ``fidelity``, ...).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import plotly.graph_objects as go

from db.runs import rank_key
from gptailor import Plan
from gptailor.plan import split_source
from gptailor.search import fidelity_rank

MERGE, DROP = "merge", "drop"


# ----------------------------------------------------------------------------- layer maps
def layer_map_matrix(plan: Plan, members: list[str]) -> tuple[list[list[float | None]], list[list[str]]]:
    """z[member][position]: the weight each member contributes (pick = 1, merge = normalised weights,
    drop = None), and matching hover texts naming the op."""
    z = [[0.0] * len(plan) for _ in members]
    hover = [[""] * len(plan) for _ in members]
    for i, op in enumerate(plan.ops):
        text = f"position {i}: {op.to_text()}"
        for r, m in enumerate(members):
            hover[r][i] = text
            if op.kind == "drop":
                z[r][i] = None
            elif op.kind == "pick":
                z[r][i] = 1.0 if op.member == m else 0.0
            else:
                total = sum(w for _, w in op.weights)
                mine = sum(w for src, w in op.weights if split_source(src)[0] == m)  # member@j counts as member
                z[r][i] = round(mine / total, 6)
    return z, hover


def layer_map(plan: Plan, members: list[str], title: str = "Layer map") -> go.Figure:
    """Members x positions heatmap of one plan; dropped positions are blank and marked with an x."""
    z, hover = layer_map_matrix(plan, members)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(len(plan))), y=members, text=hover, hoverinfo="text",
                               colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "weight"}, xgap=1, ygap=1))
    dropped = [i for i, op in enumerate(plan.ops) if op.kind == "drop"]
    if dropped:
        fig.add_trace(go.Scatter(x=dropped, y=[members[len(members) // 2]] * len(dropped), mode="markers",
                                 marker={"symbol": "x", "size": 12, "color": "crimson"}, name="dropped",
                                 hovertext=[f"position {i}: drop" for i in dropped], hoverinfo="text"))
    fig.update_layout(title=title, xaxis_title="layer position", yaxis_title="member", height=120 + 40 * len(members),
                      margin={"l": 60, "r": 20, "t": 50, "b": 40}, showlegend=False)
    return fig


def top_k_layer_maps(trials: list[dict[str, Any]], members: list[str], k: int = 5) -> go.Figure:
    """The best k trials' layer maps stacked: one row block per trial, ranked like the best trial
    (highest fidelity first, then retention), labelled study/#number when trials carry their study."""
    best = sorted(_complete(trials), key=rank_key)[:k]
    z: list[list[float | None]] = []
    hover: list[list[str]] = []
    labels: list[str] = []
    for rank, t in enumerate(best):
        zz, hh = layer_map_matrix(Plan.from_dict(t["plan"]), members)
        z += zz
        name = f"{t['study_id']}/#{t['number']}" if t.get("study_id") is not None else f"#{t['number']}"
        hover += [[f"{name} ({100 * t['retention']:.1f}% at fidelity {t['fidelity']}) {h}" for h in row]
                  for row in hh]
        labels += [f"{name} {m}" for m in members]
    fig = go.Figure(go.Heatmap(z=z, y=labels, text=hover, hoverinfo="text", colorscale="Blues", zmin=0, zmax=1,
                               xgap=1, ygap=1))
    fig.update_layout(title=f"Top {len(best)} trials", xaxis_title="layer position",
                      height=150 + 22 * max(1, len(labels)), yaxis={"autorange": "reversed"},
                      margin={"l": 110, "r": 20, "t": 50, "b": 40})
    return fig


def op_codes(plan: Plan, members: list[str]) -> list[int]:
    """Per position: the member's index for a pick, len(members) for a merge, len(members)+1 for a drop."""
    out = []
    for op in plan.ops:
        if op.kind == "pick":
            out.append(members.index(op.member))
        elif op.kind == "merge":
            out.append(len(members))
        else:
            out.append(len(members) + 1)
    return out


def trials_over_time(trials: list[dict[str, Any]], members: list[str]) -> go.Figure:
    """Trial number x position, coloured by the op chosen: to see the search converge."""
    cats = [*members, MERGE, DROP]
    rows = sorted(trials, key=lambda t: t["number"])
    z = [op_codes(Plan.from_dict(t["plan"]), members) for t in rows]
    palette = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#9d755d"]
    colors = [palette[i % len(palette)] for i in range(len(members))] + ["#7f7f7f", "#ffffff"]
    n = len(cats)
    scale = []
    for i, c in enumerate(colors):  # a discrete colour scale: one band per category
        scale += [[i / n, c], [(i + 1) / n, c]]
    fig = go.Figure(go.Heatmap(
        z=z, y=[t["number"] for t in rows], colorscale=scale, zmin=-0.5, zmax=n - 0.5, xgap=1,
        customdata=[[cats[c] for c in row] for row in z], hovertemplate="trial %{y}, position %{x}: %{customdata}<extra></extra>",
        colorbar={"tickvals": list(range(n)), "ticktext": cats}))
    fig.update_layout(title="Trials over time", xaxis_title="layer position", yaxis_title="trial",
                      height=max(300, min(900, 12 * len(rows) + 120)), margin={"l": 60, "r": 20, "t": 50, "b": 40})
    return fig


# ----------------------------------------------------------------------------- study charts
def _complete(trials: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in trials if t.get("status") == "complete" and t.get("retention") is not None]


def top_fidelity(trials: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Complete trials at the highest fidelity the study reached: the only ones whose scores are comparable
    with the best trial, the tables and Compare (the same rule as gptailor.search.rank_key)."""
    done = _complete(trials)
    if not done:
        return []
    top = max(fidelity_rank(t["fidelity"]) for t in done)
    return [t for t in done if fidelity_rank(t["fidelity"]) == top]


def best_so_far(studies: dict[str, list[dict[str, Any]]], x: str = "number") -> go.Figure:
    """Best retention so far against trial number (or wall time, x='wall_s'), one line per study, from the
    trials at the study's top fidelity only; lower Hyperband rungs are faint points of their own."""
    fig = go.Figure()
    for name, trials in studies.items():
        top = top_fidelity(trials)
        fid = top[0]["fidelity"] if top else None
        best, xs, ys = -math.inf, [], []
        for t in sorted(top, key=lambda t: t[x] or 0):
            best = max(best, t["retention"])
            xs.append(t[x] if t[x] is not None else 0)
            ys.append(100 * best)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line={"shape": "hv"}, marker={"size": 4},
                                 name=f"{name} (fidelity {fid or 'full'})"))
        low = [t for t in _complete(trials) if t not in top]
        if low:
            fig.add_trace(go.Scatter(x=[t[x] or 0 for t in low], y=[100 * t["retention"] for t in low],
                                     mode="markers", opacity=0.3, marker={"size": 4},
                                     name=f"{name}: lower fidelities",
                                     text=[f"fidelity {t['fidelity']}" for t in low],
                                     hovertemplate="%{y:.1f}% at %{text}<extra></extra>"))
    fig.update_layout(title="Best retention so far (top fidelity; search split)",
                      xaxis_title="trial" if x == "number" else "wall time (s)",
                      yaxis_title="retention %", height=360, margin={"l": 60, "r": 20, "t": 50, "b": 40})
    return fig


def pareto(studies: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """Retention against parameter count, the trials at each study's top fidelity."""
    fig = go.Figure()
    studies = {name: top_fidelity(trials) for name, trials in studies.items()}
    for name, trials in studies.items():
        done = _complete(trials)
        fig.add_trace(go.Scatter(x=[t["params"] / 1e6 for t in done], y=[100 * t["retention"] for t in done],
                                 mode="markers", name=name, text=[t["plan_text"] for t in done],
                                 hovertemplate="%{y:.1f}%% at %{x:.2f}M<br>%{text}<extra></extra>"))
    front = pareto_front([t for ts in studies.values() for t in _complete(ts)])
    if front:
        fig.add_trace(go.Scatter(x=[t["params"] / 1e6 for t in front], y=[100 * t["retention"] for t in front],
                                 mode="lines", line={"shape": "hv", "dash": "dot", "color": "black"},
                                 name="Pareto front", hoverinfo="skip"))
    fig.update_layout(title="Retention vs size", xaxis_title="parameters (M)", yaxis_title="retention %",
                      height=360, margin={"l": 60, "r": 20, "t": 50, "b": 40})
    return fig


def pareto_front(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials no other trial beats on both size and retention, smallest first."""
    front, best = [], -math.inf
    for t in sorted(trials, key=lambda t: (t["params"], -t["retention"])):
        if t["retention"] > best:
            front.append(t)
            best = t["retention"]
    return front


def task_bars(rows: list[dict[str, Any]]) -> go.Figure:
    """Grouped bars: per task retention of each study's best plan (compare table rows)."""
    fig = go.Figure()
    tasks = list(rows[0]["task_retention"]) if rows else []
    for r in rows:
        fig.add_trace(go.Bar(name=f"{r['study_id']}: {r['name']}", x=tasks,
                             y=[None if r["task_retention"][t] is None else 100 * r["task_retention"][t] for t in tasks]))
    fig.update_layout(barmode="group", title="Retention per task (best plan, full fidelity)", yaxis_title="%",
                      height=360, margin={"l": 60, "r": 20, "t": 50, "b": 40})
    return fig


# ----------------------------------------------------------------------------- analysis
def heatmap(z, x, y, title: str, xaxis: str, yaxis: str, colorscale: str = "Viridis", zmin=None, zmax=None,
            reverse_y: bool = False) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale=colorscale, zmin=zmin, zmax=zmax, xgap=1, ygap=1,
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
                             "Block influence (1 - cos(in, out))", "position", "member", "Reds"),
        "angular": heatmap(a["angular"][member], pos, list(range(1, L)),
                           f"Angular distance d(l, l+n) of {member}", "start l", "block size n", "Viridis_r"),
        "cka_layers": heatmap(a["cka_layers"][member], pos, pos, f"Linear CKA between positions of {member}",
                              "position", "position", "Viridis", 0, 1, reverse_y=True),
        "cka_members": heatmap(a["cka_members"][position], members, members,
                               f"Linear CKA between members at position {position}", "member", "member",
                               "Viridis", 0, 1, reverse_y=True),
        "drift": heatmap([a["drift"][m] for m in members], pos, members,
                         "Weight drift ||W_m - W_base|| / ||W_base||", "position", "member", "Oranges"),
    }
