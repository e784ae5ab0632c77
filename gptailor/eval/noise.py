"""How noisy a retention is, and whether two differ by more than the noise: the one rule the benchmark, the
database, the CLI and the UI share.

A task's score on ``n`` examples is a proportion with a binomial sampling error. Its interval is Wilson's
score interval, which stays honest at 0% and 100% (the plain ``sqrt(p(1-p)/n)`` says a 0 of 200 row has no
noise at all). A mean retention over tasks adds the tasks' errors in quadrature, each scaled by its
reference. Two numbers differ by more than the noise when ``|a - b| > 1.96 x`` their combined noise (seed
spread where several seeds ran, and both rows' sampling errors): ``bench/search_quality.py``'s rule.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gptailor.eval.metrics import get_metric
from gptailor.eval.results import DEFINITIONS, References

Z95 = 1.96  # the normal quantile of a two-sided 95% interval


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``p`` seen on ``n`` trials (``(p, p)`` when n is 0)."""
    if n <= 0:
        return p, p
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_se(p: float, n: int, z: float = Z95) -> float:
    """A proportion's standard error as the verdict uses it: Wilson's half-width over ``z`` (never 0 when
    n > 0, so a 0% or 100% row still carries the noise of its sample)."""
    lo, hi = wilson(p, n, z)
    return (hi - lo) / (2 * z)


@dataclass
class Interval:
    """A mean retention with its 95% interval and the standard error the verdict adds up."""

    value: float
    lo: float
    hi: float
    se: float

    def text(self) -> str:
        """'25.3 [21.0, 29.9]': the percentage and its 95% interval."""
        return f"{100 * self.value:.1f} [{100 * self.lo:.1f}, {100 * self.hi:.1f}]"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> Interval:
        return cls(d["value"], d["lo"], d["hi"], d["se"])


def task_span(retention: float, score: float, n: int, reference: float, kind: str,
              definition: str) -> tuple[float, float]:
    """One task's retention with its 95% interval, ``(lo, hi)``: the Wilson interval of its score over its
    ``n`` examples divided by its reference (capped at 100% under ``family``); a point for a perplexity task
    (no binomial error) or one without examples."""
    if not get_metric(kind).higher_is_better or n <= 0 or reference <= 0:
        return retention, retention
    lo, hi = wilson(score, n)
    cap = 1.0 if definition == "family" else math.inf  # family retention is capped at 100% per task
    return min(cap, lo / reference), min(cap, hi / reference)


def task_spans(scores: Mapping[str, float], sizes: Mapping[str, int], refs: References,
               definition: str) -> dict[str, tuple[float, float] | None]:
    """Every task's ``task_span`` under ``definition``; None for a task without a reference."""
    _means, tasks = refs.retentions(dict(scores), refs.kinds)
    return {t: None if r is None else task_span(r, scores[t], int(sizes.get(t) or 0),
                                                refs.reference(definition, t).value, refs.kinds[t], definition)
            for t, r in tasks[definition].items()}


def retention_interval(scores: Mapping[str, float], sizes: Mapping[str, int], refs: References,
                       definition: str) -> Interval:
    """The mean retention of ``scores`` (each task's objective score on ``sizes[task]`` examples) under
    ``definition``, with its 95% interval. Each accuracy task contributes its Wilson interval scaled by its
    reference; tasks without a reference are left out as the mean leaves them out; a perplexity task has no
    binomial error and adds none."""
    means, tasks = refs.retentions(dict(scores), refs.kinds)
    spans = task_spans(scores, sizes, refs, definition)
    valid = [t for t, span in spans.items() if span is not None]
    if not valid:
        return Interval(0.0, 0.0, 0.0, 0.0)
    down = up = var = 0.0
    for t in valid:
        r, (lo, hi), n = tasks[definition][t], spans[t], int(sizes.get(t) or 0)
        down += (r - lo) ** 2
        up += (hi - r) ** 2
        if get_metric(refs.kinds[t]).higher_is_better and n > 0:
            var += (proportion_se(scores[t], n) / refs.reference(definition, t).value) ** 2
    k = len(valid)
    mean = means[definition]
    return Interval(mean, max(0.0, mean - math.sqrt(down) / k), mean + math.sqrt(up) / k, math.sqrt(var) / k)


def intervals(scores: Mapping[str, float], sizes: Mapping[str, int], refs: References) -> dict[str, Interval]:
    """Both definitions' intervals of one result."""
    return {d: retention_interval(scores, sizes, refs, d) for d in DEFINITIONS}


def sizes_of(details: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Each task's example count from an ``EvalResult.details``."""
    return {t: int(d.get("n") or 0) for t, d in details.items()}


def combined_noise(se_a: float, se_b: float, sd_a: float = 0.0, n_a: int = 1, sd_b: float = 0.0,
                   n_b: int = 1) -> float:
    """The noise of a difference of two rows: each row's seed spread over its seed count (0 for one run)
    plus both rows' sampling errors, in quadrature."""
    return math.sqrt(sd_a ** 2 / max(1, n_a) + sd_b ** 2 / max(1, n_b) + se_a ** 2 + se_b ** 2)


def beyond_noise(diff: float, noise: float, z: float = Z95) -> bool:
    """Whether a difference is larger than the noise: ``|diff| > z x noise``."""
    return abs(diff) > z * noise


def verdict(diff: float, noise: float) -> str:
    """'better by more than the noise', 'worse by more than the noise' or 'within the noise'."""
    if not beyond_noise(diff, noise):
        return "within the noise"
    return f"{'better' if diff > 0 else 'worse'} by more than the noise"
