"""Metrics in one registry, as lm-evaluation-harness's ``api/metrics.py`` keeps them.

Each metric says which task kind produces it, whether higher is better, how per-example values
aggregate into the task's score and how that score's standard error is computed. Everything that
asks "which metrics does this kind of task have", "is a larger value better" or "what is the stderr"
reads :data:`METRICS`, so a new metric is one :func:`register_metric` call.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

TASK_KINDS = ("exact_match", "multiple_choice", "perplexity")


def mean(values: Sequence[float]) -> float:
    """lm-eval's ``mean`` aggregation."""
    return sum(values) / len(values) if values else math.nan


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation over sqrt(n) (0 for a single value)."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def weighted_perplexity(loglik_and_tokens: Sequence[tuple[float, float]]) -> float:
    """lm-eval's ``weighted_perplexity`` (its ``word_perplexity`` aggregation), weighted by tokens:
    exp(-sum of log-likelihoods / sum of token counts), each example giving (loglikelihood, tokens)."""
    tokens = sum(t for _, t in loglik_and_tokens)
    return math.exp(-sum(ll for ll, _ in loglik_and_tokens) / max(1.0, tokens))


@dataclass(frozen=True)
class Metric:
    """One metric of one task kind, named as lm-eval names it."""

    name: str
    kind: str  # the task kind producing it (lm-eval's output_type: multiple_choice, generate_until, rolling)
    higher_is_better: bool
    aggregation: Callable[[Sequence[Any]], float]
    stderr: Callable[[Sequence[float]], float] | None = None  # None: no stderr is defined (perplexity)
    default: bool = False  # the kind's objective metric when a task names none
    continuous: bool = False  # the kind's low-noise proxy: a smooth score from the same forward (``--objective loglik``)
    to_goodness: Callable[[float], float] | None = None  # "higher is better, zero is worst" when not the value itself


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add a metric; a name is registered once."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    if metric.kind not in TASK_KINDS:
        raise ValueError(f"metric {metric.name!r}: unknown task kind {metric.kind!r}")
    METRICS[metric.name] = metric
    return metric


register_metric(Metric("acc", "multiple_choice", True, mean, mean_stderr, default=True))
register_metric(Metric("acc_norm", "multiple_choice", True, mean, mean_stderr))
register_metric(Metric("exact_match", "exact_match", True, mean, mean_stderr, default=True))
register_metric(Metric("perplexity", "perplexity", False, weighted_perplexity, None, default=True,
                       continuous=True))
# The continuous proxies of the accuracy metrics, from the same forward pass (issue #21). Their goodness is a
# probability in (0, 1], as 1 / perplexity is, so a retention against them stays a ratio to a reference member.
register_metric(Metric("loglik", "exact_match", True, mean, mean_stderr, continuous=True, to_goodness=math.exp))
register_metric(Metric("gold_prob", "multiple_choice", True, mean, mean_stderr, continuous=True))


def metrics_for(kind: str) -> tuple[str, ...]:
    """The metric names a task of ``kind`` may name as its accuracy metric, registration order (the
    continuous proxies are chosen by the search's ``objective``, not by the task)."""
    return tuple(m.name for m in METRICS.values() if m.kind == kind and (m.default or not m.continuous))


def default_metric(kind: str) -> str:
    """The metric a task of ``kind`` is searched on when it names none."""
    return next(m.name for m in METRICS.values() if m.kind == kind and m.default)


def get_metric(name_or_kind: str) -> Metric:
    """A metric by name; a task kind stands for its default metric."""
    if name_or_kind in METRICS:
        return METRICS[name_or_kind]
    if name_or_kind in TASK_KINDS:
        return METRICS[default_metric(name_or_kind)]
    raise KeyError(f"unknown metric {name_or_kind!r}; known: {', '.join(METRICS)}")


def continuous_metric(kind: str) -> str:
    """The low-noise proxy a task of ``kind`` is searched on with ``--objective loglik``: ``loglik`` (the
    target's mean per-token log-probability, exact match), ``gold_prob`` (the gold choice's probability among
    the choices, multiple choice), ``perplexity``."""
    return next(m.name for m in METRICS.values() if m.kind == kind and m.continuous)


def accuracy_metrics() -> tuple[str, ...]:
    """Metrics where larger is better and 1 is perfect: the columns of an lm-eval report."""
    return tuple(m.name for m in METRICS.values() if m.higher_is_better and not m.continuous)


def goodness(metric: str, value: float) -> float:
    """Higher is better, zero is worst: a higher-is-better metric as is, a lower-is-better one inverted.

    ``metric`` is a metric name or a task kind (its default metric)."""
    m = get_metric(metric)
    if not math.isfinite(value):
        return 0.0
    if m.to_goodness is not None:
        return m.to_goodness(value)
    if m.higher_is_better:
        return value
    return 0.0 if value <= 0 else 1.0 / value


def apply_filter(response: str, target: str, filt: dict[str, Any] | None) -> bool:
    """lm-eval-style post-processing of a generated answer, then exact match (or containment)."""
    if filt and filt.get("contains"):
        return target.strip() in response
    if filt and "regex" in filt:
        m = re.search(filt["regex"], response)
        response = (m.group(1) if m.groups() else m.group(0)) if m else "[invalid]"
    return response.strip() == target.strip()
