"""The noise rule (gptailor.eval.noise): Wilson intervals checked against their closed forms and a published
value, a 0% row that still carries noise, the verdict the benchmark and Compare share, the split rule of
a study's best number, and the best-as-ranked line that may go down when the fidelity rises."""
import math

import pytest
from test_figures import trial

from db.rows import best_from, split_columns
from db.compare import CompareRow, against_best
from gptailor.eval.noise import (
    Interval,
    beyond_noise,
    combined_noise,
    proportion_se,
    retention_interval,
    verdict,
    wilson,
)
from gptailor.eval.results import References


def test_wilson_matches_its_closed_form_and_a_published_value():
    lo, hi = wilson(0.0, 100)
    assert lo == 0.0 and hi == pytest.approx(1.96 ** 2 / (100 + 1.96 ** 2))  # x = 0: [0, z^2 / (n + z^2)]
    lo, hi = wilson(1.0, 50)
    assert hi == 1.0 and lo == pytest.approx(50 / (50 + 1.96 ** 2))
    assert wilson(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # Wilson (1927) / Newcombe (1998) table
    assert proportion_se(0.0, 100) > 0  # the plain sqrt(p(1-p)/n) would say 0: no noise at all
    assert proportion_se(0.5, 10_000) == pytest.approx(math.sqrt(0.25 / 10_000), rel=1e-3)  # large n: the usual


def refs() -> References:
    return References("test", {"a": "multiple_choice", "b": "multiple_choice"},
                      {"base": {"a": 0.5, "b": 0.4}, "math": {"a": 0.25, "b": 0.8}})


def test_one_task_interval_is_wilson_scaled_by_the_reference():
    r = References("test", {"a": "multiple_choice"}, {"base": {"a": 0.5}})
    i = retention_interval({"a": 0.3}, {"a": 200}, r, "base")
    lo, hi = wilson(0.3, 200)
    assert (i.value, i.lo, i.hi) == pytest.approx((0.6, lo / 0.5, hi / 0.5))
    assert i.se == pytest.approx(proportion_se(0.3, 200) / 0.5)
    zero = retention_interval({"a": 0.0}, {"a": 200}, r, "base")
    assert zero.value == 0.0 and zero.lo == 0.0 and zero.hi == pytest.approx(wilson(0.0, 200)[1] / 0.5)
    assert zero.se > 0 and zero.text() == f"0.0 [0.0, {100 * wilson(0.0, 200)[1] / 0.5:.1f}]"


def test_mean_interval_adds_the_tasks_in_quadrature():
    i = retention_interval({"a": 0.4, "b": 0.2}, {"a": 100, "b": 400}, refs(), "family")
    # family: each task over its best member (a: base 0.5, b: math 0.8), capped at 100%
    assert i.value == pytest.approx((0.4 / 0.5 + 0.2 / 0.8) / 2)
    se = math.sqrt((proportion_se(0.4, 100) / 0.5) ** 2 + (proportion_se(0.2, 400) / 0.8) ** 2) / 2
    assert i.se == pytest.approx(se)
    assert i.lo < i.value < i.hi


def test_the_verdict_is_the_benchmarks_rule():
    assert combined_noise(0.03, 0.04) == pytest.approx(0.05)
    assert combined_noise(0.0, 0.0, 0.1, 4, 0.2, 1) == pytest.approx(math.sqrt(0.01 / 4 + 0.04))
    assert beyond_noise(0.0981, 0.05) and not beyond_noise(0.0979, 0.05)  # 1.96 x 0.05 = 0.098
    assert verdict(-0.2, 0.05) == "worse by more than the noise"
    assert verdict(0.2, 0.05) == "better by more than the noise"
    assert verdict(0.05, 0.05) == "within the noise"


def row(sid: int, retention: float, se: float) -> CompareRow:
    return CompareRow(sid, f"s{sid}", "random", "", {}, {}, retention, 4, 1, 5, 10.0, "test", "family",
                      {"family": retention}, {"family": Interval(retention, retention - 2 * se, retention + 2 * se, se)})


def test_compare_says_pair_by_pair_against_the_best_whether_it_is_noise():
    rows = [row(1, 0.253, 0.02), row(2, 0.250, 0.02), row(3, 0.10, 0.02)]
    vs = against_best(rows)
    assert vs[1] == "best"
    assert vs[2].startswith("-0.3 (noise 2.8)") and vs[2].endswith("within the noise")
    assert vs[3].startswith("-15.3 (noise") and vs[3].endswith("worse by more than the noise")


def test_a_best_number_is_filed_under_the_split_it_was_scored_on():
    assert best_from("search", 40) == "search split, fidelity 40"
    assert best_from("test", None) == "test split, fidelity full"
    assert split_columns("test", {"family": 0.2}) == ({}, {"family": 0.2})  # a manual study: test columns
    assert split_columns("search", {"family": 0.2}) == ({"family": 0.2}, {})


def test_the_best_as_ranked_goes_down_when_the_fidelity_rises_and_the_chart_says_so():
    from ui import figures

    ts = [trial(0, "base", 0.3, fidelity=10), trial(1, "base", 0.5, fidelity=10), trial(2, "base", 0.4, fidelity=30),
          trial(3, "base", 0.45, fidelity=30)]
    assert [(t.number, b.number) for t, b in figures.incumbents(ts)] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    fig = figures.best_so_far({"s": ts})
    dashed = next(t for t in fig.data if t.name == "s: best as ranked (fidelity first)")
    assert [round(y, 6) for y in dashed.y] == [30.0, 50.0, 40.0, 45.0]  # down from 50 to 40: fidelity 10 -> 30
    marks = [a.text for a in fig.layout.annotations]
    assert marks == ["fidelity 10 → 30"] and fig.layout.shapes[0].x0 == 2
    assert "fidelity first" in fig.layout.title.subtitle.text
    one = figures.best_so_far({"s": ts[:2]})  # a single fidelity: the solid line says it all
    assert not any("as ranked" in (t.name or "") for t in one.data) and not one.layout.annotations
