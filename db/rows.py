"""Database rows <-> engine objects: the one place a trial row becomes a ``TrialRecord`` and back.

The store hands out engine objects only; the UI, the CLI and the workers never see a row. Retention is
stored once: ``trials.retentions`` holds every definition's mean and per-task values, and
``trials.definition`` names the one that applies (what ``EvalResult.retention`` reads).
"""
from __future__ import annotations

from typing import Any

from gptailor.eval.noise import sizes_of
from gptailor.eval.results import CHOICES, DEFINITIONS, EvalResult, applicable_definition
from gptailor.plan import Plan, PlanError
from gptailor.search.trials import TrialRecord

from .models import TrialRow


def to_row(study_id: int, number: int, trial: TrialRecord) -> TrialRow:
    """A new row for ``trial`` (numbered ``number``) of study ``study_id``."""
    r = trial.result
    return TrialRow(study_id=study_id, number=number, plan=trial.plan.to_dict(), plan_text=trial.plan.to_text(),
                    config=trial.config, fidelity=trial.fidelity, scores=r.scores if r else {},
                    kept_layers=r.kept_layers if r else None, params=r.params if r else None,
                    stitch_s=r.stitch_s if r else None, score_s=r.score_s if r else None, wall_s=trial.wall_s,
                    status=trial.status, error=trial.error, source=trial.source or "search", budget=trial.budget,
                    split=r.split if r else None, cached=trial.cached,
                    retentions=stored_retentions(r) if r else None, definition=r.definition if r else None,
                    prefix_cache=r.extra.get("prefix_cache") if r else None)


PROXIES = "proxies"  # the key under ``trials.retentions`` holding the continuous objectives' values
SIZES = "sizes"  # ... and each task's example count, from which a trial's retention interval is computed


def stored_retentions(r: EvalResult) -> dict[str, dict[str, Any]]:
    """``{definition: {mean, tasks}}``: how a result's retentions are stored; the continuous objectives'
    (``EvalResult.proxies``) under ``proxies``, so a resumed ``--objective loglik`` study re-tells their costs."""
    out: dict[str, dict[str, Any]] = {d: {"mean": m, "tasks": r.task_retentions.get(d, {})}
                                      for d, m in r.retentions.items()}
    if r.proxies:
        out[PROXIES] = r.proxies
    sizes = sizes_of(r.details)
    if any(sizes.values()):
        out[SIZES] = sizes
    return out


def to_record(row: TrialRow) -> TrialRecord:
    """The engine's trial for a stored row (a row stores no metric names, references or details but each
    task's example count, ``details[task]["n"]``, as ``gptailor.eval.noise.sizes_of`` reads it)."""
    return TrialRecord(number=row.number, plan=_plan(row.plan, row.plan_text), fidelity=row.fidelity,
                       result=_result(row), status=row.status, error=row.error, config=row.config,
                       wall_s=row.wall_s or 0.0, source=row.source or "search", budget=row.budget,
                       cached=bool(row.cached), study_id=row.study_id)


def _result(row: TrialRow) -> EvalResult | None:
    if row.definition is None:  # failed, rejected, or cut short: nothing was scored
        return None
    proxies = dict((row.retentions or {}).get(PROXIES) or {})
    sizes = (row.retentions or {}).get(SIZES) or {}  # a row keeps no details but the example counts
    stored = {d: v for d, v in (row.retentions or {}).items() if d in DEFINITIONS}
    plan_text = row.plan_text or ""
    return EvalResult(plan=plan_text, fidelity=row.fidelity, scores=row.scores or {}, metrics={}, references={},
                      kept_layers=row.kept_layers or 0, n_layers=0, params=row.params or 0,
                      stitch_s=row.stitch_s or 0.0, score_s=row.score_s or 0.0, split=row.split or "all",
                      definition=row.definition, retentions={d: v["mean"] for d, v in stored.items()},
                      task_retentions={d: dict(v.get("tasks") or {}) for d, v in stored.items()},
                      extra={"prefix_cache": row.prefix_cache} if row.prefix_cache else {}, proxies=proxies,
                      details={t: {"n": n} for t, n in sizes.items()})


def _plan(stored: Any, text: str | None) -> Plan:
    """The stored plan; one that no longer parses (a hand-made or very old row) is an empty plan that
    keeps what was stored in ``meta`` rather than making every listing of its study fail."""
    try:
        return Plan.from_dict(stored)
    except (PlanError, KeyError, TypeError, ValueError):
        family = stored.get("family", "") if isinstance(stored, dict) else ""
        return Plan((), str(family), meta={"unreadable": stored, "text": text})


def mean_of(retentions: dict[str, Any] | None, definition: str | None) -> float | None:
    """A stored trial's mean retention under ``definition`` (None when it has none)."""
    entry = (retentions or {}).get(definition)
    return entry.get("mean") if isinstance(entry, dict) else None


def study_definition(study: dict[str, Any]) -> str:
    """The retention definition a stored study optimises, by the engine's one rule: the one fixed with its
    references (or its report's), else its setting, else ``family``."""
    fixed = (study.get("refs") or {}).get("definition") or (study.get("report") or {}).get("definition")
    setting = (study.get("settings") or {}).get("retention")
    return applicable_definition(fixed=fixed, setting=setting if setting in CHOICES else None)


def best_from(split: str | None, fidelity: int | None) -> str:
    """Where a study's best number comes from, the one rule every table labels it by: the best trial's own
    stored split and fidelity ('search split, fidelity 40'; a manual study's 'test split, fidelity 200').
    Searches and baselines pick on the search split; the Editor's manual studies score on the test split."""
    return f"{split or 'unknown'} split, fidelity {fidelity or 'full'}"


def split_columns(split: str | None, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A best trial's means filed under the split it was scored on: (search, test); the other is empty."""
    return ({}, dict(values)) if split == "test" else (dict(values), {})
