"""Metric definitions as lm-evaluation-harness has them: which direction is better, exact-match filters, stderr."""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any



if TYPE_CHECKING:
    pass


def goodness(kind: str, value: float) -> float:
    """Higher is better, zero is worst: accuracy as is, perplexity inverted."""
    if kind == "perplexity":
        return 0.0 if not math.isfinite(value) or value <= 0 else 1.0 / value
    return value if math.isfinite(value) else 0.0


def acc_stderr(p: float, n: int) -> float:
    """lm-eval's sample standard error of a mean of 0/1 outcomes."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def apply_filter(response: str, target: str, filt: dict[str, Any] | None) -> bool:
    """lm-eval-style post-processing of a generated answer, then exact match (or containment)."""
    if filt and filt.get("contains"):
        return target.strip() in response
    if filt and "regex" in filt:
        m = re.search(filt["regex"], response)
        response = (m.group(1) if m.groups() else m.group(0)) if m else "[invalid]"
    return response.strip() == target.strip()
