"""The metric registry agrees with lm-evaluation-harness's own registry and aggregations."""
import math
import random

import pytest
from lm_eval.api import metrics as lm_metrics
from lm_eval.api import registry as lm_registry

from gptailor.eval.metrics import (METRICS, Metric, default_metric, get_metric, goodness, metrics_for,
                                   register_metric)
from gptailor.eval.tasks import Task, TaskError, _apply_options


@pytest.mark.parametrize("name", ["acc", "acc_norm", "exact_match", "perplexity"])
def test_direction_matches_lm_eval(name):
    assert METRICS[name].higher_is_better == lm_registry.is_higher_better(name)


def test_aggregations_and_stderr_match_lm_eval():
    rng = random.Random(3)
    hits = [float(rng.random() < 0.3) for _ in range(57)]
    for name in ("acc", "acc_norm", "exact_match"):
        assert METRICS[name].aggregation(hits) == pytest.approx(lm_metrics.mean(hits), abs=1e-12)
        want = lm_metrics.stderr_for_metric(lm_metrics.mean, bootstrap_iters=1)(hits)  # closed form for mean
        assert METRICS[name].stderr(hits) == pytest.approx(want, rel=1e-12)
    pairs = [(-rng.uniform(5, 40), rng.randint(3, 20)) for _ in range(11)]
    assert METRICS["perplexity"].aggregation(pairs) == pytest.approx(lm_metrics.weighted_perplexity(pairs), rel=1e-12)
    assert METRICS["perplexity"].stderr is None


def test_kinds_defaults_and_goodness():
    assert metrics_for("multiple_choice") == ("acc", "acc_norm")
    assert [default_metric(k) for k in ("multiple_choice", "exact_match", "perplexity")] == \
        ["acc", "exact_match", "perplexity"]
    assert get_metric("perplexity") is METRICS["perplexity"] and get_metric("multiple_choice").name == "acc"
    assert goodness("acc", 0.25) == 0.25 and goodness("perplexity", 4.0) == 0.25
    assert goodness("perplexity", math.inf) == 0.0 and goodness("exact_match", math.nan) == 0.0
    with pytest.raises(KeyError, match="unknown metric 'bleu'"):
        get_metric("bleu")


def test_a_registered_metric_is_accepted_by_tasks():
    """One register_metric call is all a new metric needs: tasks of its kind accept it by name."""
    task = Task("t", "multiple_choice", [{"context": q, "choices": ["a", "b"], "answer": 0} for q in "xy"])
    with pytest.raises(TaskError, match="metric 'acc_mutual' is not one of acc, acc_norm"):
        _apply_options(task, {"metric": "acc_mutual"}, "t")
    register_metric(Metric("acc_mutual", "multiple_choice", True, lm_metrics.mean))
    try:
        _apply_options(task, {"metric": "acc_mutual"}, "t")
        assert task.objective_metric == "acc_mutual"
    finally:
        del METRICS["acc_mutual"]
    with pytest.raises(ValueError, match="already registered"):
        register_metric(Metric("acc", "multiple_choice", True, lm_metrics.mean))
