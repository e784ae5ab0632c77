"""Figure builders on fixed trials: the matrices and labels are exactly what they should be."""
import math

from gptailor import Plan
from ui import figures

MEMBERS = ["base", "math", "code"]


def trial(number, text, retention, fidelity=10, params=1e6, status="complete"):
    plan = Plan.from_text(text)
    return {"number": number, "plan": plan.to_dict(), "plan_text": plan.to_text(), "retention": retention,
            "fidelity": fidelity, "params": params, "status": status, "wall_s": float(number)}


def test_layer_map_matrix_and_hover():
    plan = Plan.from_text("0:base 1:drop 2:merge(math=3,code=1) 3:code")
    z, hover = figures.layer_map_matrix(plan, MEMBERS)
    assert z == [[1.0, None, 0.0, 0.0],
                 [0.0, None, 0.75, 0.0],
                 [0.0, None, 0.25, 1.0]]
    assert hover[0][2] == "position 2: merge(math=3,code=1)" and hover[2][1] == "position 1: drop"
    fig = figures.layer_map(plan, MEMBERS)
    assert list(fig.data[0].y) == MEMBERS and list(fig.data[0].x) == [0, 1, 2, 3]
    assert [list(r) for r in fig.data[0].z] == z
    assert list(fig.data[1].x) == [1]  # the drop marker


def test_trials_over_time_codes():
    ts = [trial(1, "math drop merge(math=1,code=1) base", 0.9), trial(0, "base base drop code", 0.8)]
    fig = figures.trials_over_time(ts, MEMBERS)
    assert [list(r) for r in fig.data[0].z] == [[0, 0, 4, 2], [1, 4, 3, 0]]  # sorted by trial number
    assert list(fig.data[0].y) == [0, 1]
    assert list(fig.data[0].colorbar.ticktext) == ["base", "math", "code", "merge", "drop"]


def test_top_k_stacks_best_first():
    ts = [trial(0, "base drop", 0.5), trial(1, "math drop", 0.9), trial(2, "code drop", 0.7),
          trial(3, "base base", None, status="failed")]
    fig = figures.top_k_layer_maps(ts, MEMBERS, k=2)
    assert list(fig.data[0].y) == ["#1 base", "#1 math", "#1 code", "#2 base", "#2 math", "#2 code"]
    assert [list(r) for r in fig.data[0].z] == [[0, None], [1, None], [0, None], [0, None], [0, None], [1, None]]


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
    assert max(figures.pareto({"s": ts}).data[0].y) == 70.0


def test_pareto_front_keeps_only_undominated_trials():
    ts = [dict(trial(i, "base", r), params=p) for i, (r, p) in
          enumerate([(0.5, 10), (0.4, 8), (0.45, 10), (0.8, 12), (0.6, 12), (0.3, 9)])]
    assert [(t["params"], t["retention"]) for t in figures.pareto_front(ts)] == [(8, 0.4), (10, 0.5), (12, 0.8)]
    fig = figures.pareto({"s": ts})
    assert fig.data[-1].name == "Pareto front" and list(fig.data[-1].y) == [40.0, 50.0, 80.0]


def test_top_k_ranks_higher_fidelity_first_like_the_best_trial():
    from db.runs import best_trial

    ts = [dict(trial(0, "base drop", 0.95, fidelity=4), study_id=1),
          dict(trial(1, "math drop", 0.6, fidelity=200), study_id=2),
          dict(trial(2, "code drop", 0.7, fidelity=200), study_id=2)]
    fig = figures.top_k_layer_maps(ts, MEMBERS, k=3)
    assert list(fig.data[0].y)[::3] == ["2/#2 base", "2/#1 base", "1/#0 base"]
    assert best_trial(ts)["number"] == 2  # the top block is the dashboard's best trial
