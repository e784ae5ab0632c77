"""Both retention definitions in every table: `family` and `base` side by side, the study's own marked.

The engine scores both for every trial (``EvalResult.retentions``, stored as ``trials.retentions``); the
search optimises one of them, the study's *definition* (stored with its references). Tables show both
numbers so a reader never has to guess which one a percentage is, and the objective's header says so.
"""
from __future__ import annotations

from typing import Any, Iterable

from gptailor.eval.results import DEFINITIONS


def definition_of(study: dict[str, Any]) -> str:
    """The retention a study optimises: fixed with its references; else its report's; else its setting;
    else ``family`` (what a trial's ``retention`` meant before the definition was stored)."""
    refs = study.get("refs") or {}
    report = study.get("report") or {}
    setting = (study.get("settings") or {}).get("retention")
    return refs.get("definition") or report.get("definition") or (setting if setting in DEFINITIONS else "family")


def shared_definition(studies: Iterable[dict[str, Any]]) -> str | None:
    """The one definition every study in a table shares (what its header can mark), or None if they differ."""
    found = {definition_of(s) for s in studies}
    return found.pop() if len(found) == 1 else None


def marked(columns: list[str], objective: str | None) -> list[str]:
    """Column headers with the shared objective marked: 'family retention %' -> 'family retention %
    (objective)'. None (the rows' studies differ) leaves them as they are: a per-row column says."""
    if objective is None:
        return list(columns)
    return [f"{c} (objective)" if c.startswith(f"{objective} ") and "%" in c else c for c in columns]


def means(trial: dict[str, Any], definition: str | None) -> dict[str, float | None]:
    """Both definitions' mean retention of a stored trial; a trial stored before both were kept has only
    its objective's (``retention``) and None for the other."""
    stored = trial.get("retentions") or {}
    out = {d: stored[d].get("mean") if isinstance(stored.get(d), dict) else stored.get(d) for d in DEFINITIONS}
    if definition in out and out[definition] is None:
        out[definition] = trial.get("retention")
    return out


def task_values(trial: dict[str, Any], definition: str | None) -> dict[str, dict[str, float | None]]:
    """definition -> task -> retention of a stored trial (the objective's from ``task_retention`` if older)."""
    stored = trial.get("retentions") or {}
    out = {d: dict((stored.get(d) or {}).get("tasks") or {}) if isinstance(stored.get(d), dict) else {}
           for d in DEFINITIONS}
    if definition in out and not out[definition]:
        out[definition] = dict(trial.get("task_retention") or {})
    return out


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
