"""fANOVA position importance on synthetic trials whose retention depends on known positions only."""
import random

import pytest

from gptailor import Op, Plan
from gptailor.analysis.importance import ImportanceError, marginals, op_label, position_importance

CHOICES = [Op.pick("base"), Op.pick("math"), Op.drop(), Op.merge({"base": 1, "math": 1})]


def synthetic(n: int, depth: int, score, seed: int = 0) -> tuple[list[Plan], list[float]]:
    rng = random.Random(seed)
    plans = [Plan(tuple(rng.choice(CHOICES) for _ in range(depth))) for _ in range(n)]
    return plans, [score(p) + 0.01 * rng.random() for p in plans]


def test_the_one_position_that_matters_comes_out_on_top():
    plans, values = synthetic(60, 8, lambda p: 0.9 if op_label(p.ops[5]) == "math" else 0.3)
    imp = position_importance(plans, values)
    assert imp.ranked()[0] == 5 and imp.importance[5] > 0.8
    assert abs(sum(imp.importance) - 1) < 1e-6 and imp.n_trials == 60


def test_two_positions_in_the_order_of_their_effect():
    def score(p):
        return 0.5 * (op_label(p.ops[1]) != "drop") + 0.15 * (op_label(p.ops[6]) == "base")
    imp = position_importance(*synthetic(80, 8, score, seed=1))
    assert imp.ranked()[:2] == [1, 6]


def test_marginals_are_means_per_op_per_position():
    plans = [Plan.from_text(t) for t in ("base drop", "math drop", "base base", "merge(base=1,math=1) drop")]
    m = marginals(plans, [0.2, 0.4, 0.6, 1.0])
    assert m[0] == {"base": (0.4, 2), "math": (0.4, 1), "merge": (1.0, 1)}
    assert m[1] == {"base": (0.6, 1), "drop": (pytest.approx(1.6 / 3), 3)}


def test_a_position_that_never_changed_has_no_importance_and_too_few_trials_is_refused():
    plans = [Plan.from_text(t) for t in ("base base drop", "base math drop", "base drop drop", "base base drop",
                                         "base math drop")]
    imp = position_importance(plans, [0.5, 0.9, 0.1, 0.52, 0.88])
    assert imp.importance[0] == 0 and imp.importance[2] == 0 and imp.importance[1] == pytest.approx(1)
    with pytest.raises(ImportanceError, match="at least 4 complete trials, this study has 2"):
        position_importance(plans[:2], [0.5, 0.9])
