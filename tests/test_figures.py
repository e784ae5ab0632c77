"""Figure builders on fixed trials: the traces, cells, scores and labels are exactly what they should be."""
import math

from conftest import scored_trial
from gptailor import Plan
from ui import figures

MEMBERS = ["base", "math", "code"]


def trial(number, text, retention, fidelity=10, params=1e6, status="complete", study_id=None):
    """A stored trial (the engine's TrialRecord) scored ``retention`` under its definition."""
    return scored_trial(number, text, None if retention is None else {"family": retention}, fidelity, params,
                        status, study_id)


def cells(fig):
    """{trace name: sorted (row, position) cells} of a layer map's cell traces (bars on the first x axis)."""
    out = {}
    for tr in fig.data:
        if tr.type == "bar" and tr.xaxis in (None, "x") and tr.name != "retention":
            out[tr.name] = sorted((int(y), round(b + figures.CELL / 2)) for y, b in zip(tr.y, tr.base))
    return out


def test_one_trace_per_category_with_drop_its_own_grey_trace():
    plan = Plan.from_text("0:base 1:drop 2:merge(math=3,code=1) 3:code 4:drop")
    fig = figures.layer_map(plan, MEMBERS, score=0.7)
    got = cells(fig)
    assert got == {"base": [(0, 0)], "code": [(0, 3)], figures.MERGE_NAME: [(0, 2)], "drop": [(0, 1), (0, 4)]}
    drop = next(t for t in fig.data if t.name == "drop")
    assert set(drop.marker.color) == {figures.DROP_COLOR} and drop.showlegend is not False
    colours = figures.member_colors(MEMBERS)
    merge = next(t for t in fig.data if t.name == figures.MERGE_NAME)
    assert list(merge.marker.color) == [colours["math"]] and merge.marker.pattern.shape == "/"  # largest weight
    assert figures.DROP_COLOR not in colours.values()
    hover = {round(b + figures.CELL / 2): d[1] for t in fig.data if t.name != "retention"
             for b, d in zip(t.base, t.customdata)}
    assert hover[2].endswith("position 2: merge [linear] math 3 (75%), code 1 (25%)")
    assert hover[1].endswith("position 1: drop (layer removed)") and hover[0].endswith("position 0: pick base")


def test_score_beside_each_row_and_legend_outside():
    ts = [trial(0, "base drop", 0.5), trial(1, "math drop", 0.9), trial(2, "code merge(base=1,code=1)", 0.7)]
    fig = figures.top_k_layer_maps(ts, MEMBERS, k=3)
    score = next(t for t in fig.data if t.name == "retention")
    assert list(score.x) == [90.0, 70.0, 50.0] and list(score.text) == ["90.0%", "70.0%", "50.0%"]
    assert score.xaxis == "x2" and list(score.y) == [0, 1, 2]
    assert list(fig.layout.yaxis.ticktext) == ["#1", "#2", "#0"]  # one row per trial, best first
    assert cells(fig)["drop"] == [(0, 1), (2, 1)]  # drop cells of #1 (row 0) and #0 (row 2)
    leg = fig.layout.legend
    assert leg.orientation == "h" and leg.yref == "container" and leg.yanchor == "bottom"
    assert fig.layout.margin.b >= 80  # the legend band is below the plot, not over it


def test_top_k_ranks_higher_fidelity_first_like_the_best_trial():
    from gptailor.search.trials import incumbent

    ts = [trial(0, "base drop", 0.95, fidelity=4, study_id=1), trial(1, "math drop", 0.6, fidelity=200, study_id=2),
          trial(2, "code drop", 0.7, fidelity=200, study_id=2)]
    fig = figures.top_k_layer_maps(ts, MEMBERS, k=3, names={1: "smac-r1-s0", 2: "random-r1-s0"})
    assert list(fig.layout.yaxis.ticktext) == ["random-r1-s0 #2", "random-r1-s0 #1", "smac-r1-s0 #0"]
    score = next(t for t in fig.data if t.name == "retention")
    assert list(score.x) == [70.0, 60.0, 95.0] and [d[0] for d in score.customdata] == ["2:2", "2:1", "1:0"]
    assert incumbent(ts).number == 2  # the top row is the dashboard's best trial


def test_layer_choice_per_trial_is_in_trial_order_with_lower_rungs_faint():
    ts = [trial(1, "math drop merge(math=1,code=1) base", 0.9, fidelity=4),
          trial(0, "base base drop code", 0.8, fidelity=20)]
    fig = figures.layer_choice_per_trial(ts, MEMBERS, "smac-r1-s0")
    assert list(fig.layout.yaxis.ticktext) == ["#0", "#1"] and "Layer choice per trial" in fig.layout.title.text
    assert cells(fig) == {"base": [(0, 0), (0, 1), (1, 3)], "math": [(1, 0)], "code": [(0, 3)],
                          figures.MERGE_NAME: [(1, 2)], "drop": [(0, 2), (1, 1)]}
    score = next(t for t in fig.data if t.name == "retention")
    assert list(score.marker.color) == ["#3a3a3a", "#bdbdbd"]  # #1 scored at fidelity 4 < 20: faint


def test_best_so_far_is_a_running_max():
    ts = [trial(0, "base", 0.5), trial(1, "base", 0.4), trial(2, "base", None, status="failed"),
          trial(3, "base", 0.8)]
    fig = figures.best_so_far({"s": ts})
    assert list(fig.data[0].x) == [0, 1, 3]
    assert [round(y, 6) for y in fig.data[0].y] == [50.0, 50.0, 80.0]
    fig = figures.pareto({"s": ts})
    assert list(fig.data[0].y) == [50.0, 40.0, 80.0] and not any(math.isnan(x) for x in fig.data[0].x)


def test_a_lucky_low_fidelity_trial_does_not_set_the_curve():
    """Best-so-far and Pareto use the study's top fidelity only (the number the tables show); lower rungs
    are drawn as their own faint series."""
    ts = [trial(0, "base", 0.95, fidelity=8), trial(1, "base", 0.6, fidelity=100), trial(2, "base", 0.7, fidelity=100),
          trial(3, "base", 0.99, fidelity=33)]
    fig = figures.best_so_far({"s": ts})
    assert [round(y, 6) for y in fig.data[0].y] == [60.0, 70.0] and "fidelity 100" in fig.data[0].name
    assert fig.data[1].name == "s: lower fidelities" and sorted(fig.data[1].y) == [95.0, 99.0]
    assert fig.data[1].opacity < 1 and fig.data[1].legendgroup == fig.data[0].legendgroup
    assert max(figures.pareto({"s": ts}).data[0].y) == 70.0


def test_pareto_front_spans_every_study_and_budget():
    a = [trial(i, "base", r, params=p, study_id=1) for i, (r, p) in enumerate([(0.5, 10), (0.45, 10), (0.6, 12)])]
    b = [trial(i, "base", r, params=p, study_id=2) for i, (r, p) in enumerate([(0.4, 8), (0.8, 12), (0.3, 9)])]
    assert [(t.result.params, t.retention) for t in figures.pareto_front(a + b)] == [(8, 0.4), (10, 0.5), (12, 0.8)]
    fig = figures.pareto({"smac-r2-s0": a, "last_n-r4": b})
    assert [t.name for t in fig.data] == ["smac-r2-s0", "last_n-r4", "Pareto front (all studies)"]
    assert list(fig.data[-1].y) == [40.0, 50.0, 80.0] and fig.data[1].customdata[1][0] == "2:1"


def test_importance_and_marginal_figures():
    fig = figures.importance_bars([0.1, 0.7, 0.2], "Which positions matter")
    assert list(fig.data[0].y) == [10.0, 70.0, 20.0]
    fig = figures.marginal_map([{"base": (0.5, 2), "drop": (0.25, 1)}, {"math": (0.75, 3)}], MEMBERS)
    assert list(fig.data[0].y) == ["base", "math", "drop"]
    assert [list(r) for r in fig.data[0].z] == [[50.0, None], [None, 75.0], [25.0, None]]


def test_task_scores_table():
    scores = {"math": 0.5, "ppl": 12.0}
    t = scored_trial(0, "base", {"family": 0.8}, scores=scores, task_retentions={"family": {"math": 0.8, "ppl": None}})
    assert figures.task_scores(t) == [["math", 0.5, 80.0, None], ["ppl", 12.0, None, None]]
    t = scored_trial(0, "base", {"family": 0.8, "base": 1.25}, scores=scores,
                     task_retentions={"family": {"math": 0.8, "ppl": None}, "base": {"math": 1.25, "ppl": 0.5}})
    assert figures.task_scores(t) == [["math", 0.5, 80.0, 125.0], ["ppl", 12.0, None, 50.0]]
    assert figures.task_scores(scored_trial(1, "base", None, status="failed")) == []


def test_many_rows_stay_readable():
    ts = [trial(i, "base drop", 0.5 + i / 1000) for i in range(200)]
    fig = figures.layer_choice_per_trial(ts, MEMBERS)
    assert fig.layout.height <= 1200 and list(fig.layout.yaxis.tickvals)[:3] == [0, 3, 6]
    assert figures.row_height(5) == (30, 1) and figures.row_height(40) == (22, 1)


def test_figures_need_no_database():
    """A plotting module reads engine objects only: importing it loads no ``db`` module (nor its workers)."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, ui.figures; print(sorted(m for m in sys.modules if m == 'db' or m.startswith('db.')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
