"""Both retention definitions in every table: `family` and `base` side by side, the study's own marked.

The engine scores both for every trial (``EvalResult.retentions``, stored once as ``trials.retentions``);
the search optimises one of them, the study's *definition* (``db.rows.study_definition``, by the engine's
one rule ``gptailor.eval.results.applicable_definition``). Tables show both
numbers so a reader never has to guess which one a percentage is, and the objective's header says so.
"""
from __future__ import annotations

from typing import Any, Iterable

from db.rows import study_definition
from gptailor.eval.noise import Interval, retention_interval, sizes_of
from gptailor.eval.results import DEFINITIONS
from gptailor.search.trials import TrialRecord


def shared_definition(studies: Iterable[dict[str, Any]]) -> str | None:
    """The one definition every study in a table shares (what its header can mark), or None if they differ."""
    found = {study_definition(s) for s in studies}
    return found.pop() if len(found) == 1 else None


def marked(columns: list[str], objective: str | None) -> list[str]:
    """Column headers with the shared objective marked: 'family retention %' -> 'family retention %
    (objective)'. None (the rows' studies differ) leaves them as they are: a per-row column says."""
    if objective is None:
        return list(columns)
    return [f"{c} (objective)" if c.startswith(f"{objective} ") and "%" in c else c for c in columns]


def means(trial: TrialRecord) -> dict[str, float]:
    """Every definition's mean retention of a trial (empty when nothing was scored)."""
    return dict(trial.result.retentions) if trial.result else {}


def pct(value: float | None, digits: int = 1) -> float | None:
    """A retention as a table's percentage (None stays empty, never NaN)."""
    return None if value is None else round(100 * value, digits)


def pair(values: dict[str, float | None], digits: int = 1) -> list[float | None]:
    """Both definitions' percentages in the tables' column order (family, base)."""
    return [pct(values.get(d), digits) for d in DEFINITIONS]


def line(values: dict[str, float | None], objective: str | None) -> str:
    """'72.2% family (objective) · 95.1% base' for summaries and confirmations."""
    parts = [f"{'-' if values.get(d) is None else f'{100 * values[d]:.1f}%'} {d}"
             + (" (objective)" if d == objective else "") for d in DEFINITIONS]
    return " · ".join(parts)


def where(res) -> str:
    """'test split, 8 examples per task': which examples a result's numbers come from (its split and
    fidelity); a suite whose tasks differ in size says the range, e.g. '120-200 examples per task'."""
    sizes = sorted(set(sizes_of(res.details).values()) - {0})
    if not sizes:
        return f"{res.split} split, {res.fidelity or 'all'} examples per task"
    n = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    return f"{res.split} split, {n} examples per task"


def headline_interval(res, refs) -> Interval:
    """The 95% interval of a result's objective retention, by the rule Compare uses
    (``gptailor.eval.noise.retention_interval``: Wilson per task, added in quadrature)."""
    return retention_interval(res.scores, sizes_of(res.details), refs, res.definition)
