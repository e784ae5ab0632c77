"""Comparing studies: each study's best plan re-scored on the whole held-out test split, the rows against
the best by the engine's noise rule, and a family's size front ("how small can I go and keep X?").
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from gptailor import Evaluator, Suite, TaskError, load_suite
from gptailor.eval.noise import Interval, combined_noise, intervals, sizes_of, task_span, verdict
from gptailor.eval.results import applicable_definition
from gptailor.search.trials import incumbent, size_front, smallest_keeping

from .runs import load_engine, report_of
from .store import Store


@dataclass
class CompareRow:
    study_id: int
    name: str
    method: str
    plan: str
    scores: dict[str, float]
    task_retention: dict[str, float | None]
    retention: float
    kept_layers: int
    params: int
    trials: int
    wall_s: float
    split: str = "test"
    definition: str = "family"
    retentions: dict[str, float] | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)  # definition -> the 95% interval
    task_spans: dict[str, tuple[float, float] | None] = field(default_factory=dict)  # task -> its 95% interval

    @property
    def interval(self) -> Interval:
        """The objective's interval (a point with no noise where none is known)."""
        return self.intervals.get(self.definition) or Interval(self.retention, self.retention, self.retention, 0.0)


def against_best(rows: list[CompareRow]) -> dict[int, str]:
    """Each row against the best row (by its objective retention), pair by pair, by the engine's noise rule
    (``gptailor.eval.noise``): 'best', or '-3.6 (noise 1.2): worse by more than the noise' /
    '... within the noise'. One run per study: no seed spread, both rows' sampling errors."""
    if not rows:
        return {}
    top = max(rows, key=lambda r: r.retention)
    out = {}
    for r in rows:
        if r is top:
            out[r.study_id] = "best"
            continue
        diff = r.retention - top.retention
        noise = combined_noise(r.interval.se, top.interval.se)
        out[r.study_id] = f"{100 * diff:+.1f} (noise {100 * noise:.1f}): {verdict(diff, noise)}"
    return out


def engine_key(study: dict[str, Any]) -> str:
    """Which evaluator scores a study: its family source and task suite (the keys of compare's evaluators)."""
    return f"{study['family_source']}|{study['settings'].get('suite')}"


def compare(store: Store, study_ids: list[int] | None = None,
            evaluators: dict[str, Evaluator] | None = None) -> list[CompareRow]:
    """Every study's best plan (picked on the search split) re-scored on the whole held-out test split."""
    evaluators = evaluators if evaluators is not None else {}
    rows = []
    for s in store.studies():
        if study_ids and s["id"] not in study_ids:
            continue
        trials = store.trials(s["id"])
        best = incumbent(trials)
        if best is None:
            continue
        key = engine_key(s)
        if key not in evaluators:
            evaluators[key] = load_engine(s["family_source"], s["settings"].get("suite"))
        rep = s.get("report")
        stale = bool(rep) and split_changed(rep, held_out_sizes(evaluators[key].suite))
        if not rep or rep.get("trial") != best.number or stale:  # not written yet (running, or an older study)
            ev = evaluators[key]
            fixed = (s.get("refs") or {}).get("definition")
            definition = applicable_definition(fixed=fixed, setting=s["settings"].get("retention"),
                                               refs=lambda: ev.references("search"))
            rep = report_of(ev, best, definition)
            if stale:  # the suite's test split changed since: store the report every view reads
                store.set_study_fields(s["id"], report=rep)
        spans = rep.get("intervals") or _intervals_of(rep, evaluators[key])
        per_task = _task_spans(rep, {t.name: t.kind for t in evaluators[key].suite})
        rows.append(CompareRow(s["id"], s["name"], s["method"], rep["plan"], rep["scores"],
                               rep["task_retentions"][rep["definition"]], rep["retention"], rep["kept_layers"],
                               rep["params"], len(trials), max(t.wall_s for t in trials),
                               rep["split"], rep["definition"], rep["retentions"],
                               {d: Interval.from_dict(i) for d, i in spans.items()}, per_task))
    return rows


def split_changed(report: dict[str, Any], sizes: dict[str, int]) -> bool:
    """Whether a stored report was scored on another test split than the suite's today (a task grew a
    ``test_path``, or its file was edited): its per-task example counts are not ``sizes``, the split's."""
    return sizes_of(report.get("details") or {}) != sizes


def held_out_sizes(suite: Suite) -> dict[str, int]:
    """Each task's number of examples in the held-out test split."""
    return {t.name: t.split_size("test") for t in suite}


_SUITE_SIZES: dict[str, tuple[list[str], tuple, dict[str, int]]] = {}  # path -> (its files, their mtimes, sizes)


def _stamp(files: list[str]) -> tuple:
    return tuple(os.stat(f).st_mtime_ns if os.path.exists(f) else None for f in files)


def suite_test_sizes(path: str | None) -> dict[str, int] | None:
    """Each task's test-split size in the suite at ``path`` as its files are now: read again only when the
    suite file or a task's file changed (a view asks on every refresh). None where it cannot be read (no
    path stored, or the suite moved): then nobody can say the stored report is stale."""
    if not path:
        return None
    hit = _SUITE_SIZES.get(path)
    if hit is not None and _stamp(hit[0]) == hit[1]:
        return hit[2]
    try:
        suite = load_suite(path)
    except (TaskError, OSError):
        return None
    files = [suite.path or path, *(p for t in suite for p in (t.path, t.test_path) if p)]
    _SUITE_SIZES[path] = (files, _stamp(files), held_out_sizes(suite))
    return _SUITE_SIZES[path][2]


def current_report(study: dict[str, Any], best_trial: int | None = None) -> dict[str, Any] | None:
    """The study's stored held-out report where it still stands: of its best trial (``best_trial``, when
    given) and scored on its suite's test split as the suite's files are today; None otherwise, where
    Compare re-scores it. What the studies list and the Dashboard show, so neither mixes test splits."""
    rep = study.get("report")
    if not rep or (best_trial is not None and rep.get("trial") != best_trial):
        return None
    sizes = suite_test_sizes((study.get("settings") or {}).get("suite"))
    return None if sizes is not None and split_changed(rep, sizes) else rep


def stale_report(study: dict[str, Any]) -> bool:
    """Whether the study has a stored report that its suite's test split has since outgrown."""
    return bool(study.get("report")) and current_report(study) is None


def _task_spans(rep: dict[str, Any], kinds: dict[str, str]) -> dict[str, tuple[float, float] | None]:
    """Each task's retention interval in a report (its scores, example counts and references: no scoring)."""
    sizes, refs, d = sizes_of(rep.get("details") or {}), rep.get("references") or {}, rep["definition"]
    return {t: None if r is None or t not in refs or t not in kinds else
            task_span(r, rep["scores"][t], sizes.get(t, 0), refs[t]["value"], kinds[t], d)
            for t, r in rep["task_retentions"][d].items()}


def _intervals_of(rep: dict[str, Any], ev: Evaluator) -> dict[str, dict[str, float]]:
    """A report written before reports carried intervals: its intervals from its stored scores and example
    counts against the test split's references."""
    spans = intervals(rep["scores"], sizes_of(rep.get("details") or {}), ev.references("test"))
    return {d: i.to_dict() for d, i in spans.items()}


def compare_table(rows: list[CompareRow]) -> str:
    if not rows:
        return "no studies with complete trials"
    tasks = list(rows[0].scores)
    defs = sorted({r.definition for r in rows})
    vs = against_best(rows)
    head = f"{'id':>3} {'method':<12}" + "".join(f"{t[:10]:>11}" for t in tasks) + \
        f"{'family [95%]':>21}{'base [95%]':>21}{'kept':>6}{'params':>9}{'trials':>7}{'wall s':>8}  vs the best"
    lines = [f"best plan of each study (chosen on the search split), re-scored on the {rows[0].split} split "
             f"(all of it); per-task columns: {'/'.join(defs)} retention; [95% interval]; vs the best: larger than the noise "
             f"when |difference| > 1.96 x the combined noise", head]
    for r in rows:
        cells = "".join(f"{'-' if r.task_retention.get(t) is None else f'{100 * r.task_retention[t]:.1f}%':>11}"
                        for t in tasks)
        means = "".join(f"{retention_text(r, d):>21}" for d in ("family", "base"))
        lines.append(f"{r.study_id:>3} {r.method:<12}{cells}{means}{r.kept_layers:>6}"
                     f"{r.params / 1e6:>8.2f}M{r.trials:>7}{r.wall_s:>8.1f}  {vs[r.study_id]}")
    return "\n".join(lines)


def retention_text(r: CompareRow, definition: str) -> str:
    """'25.3 [21.0, 29.9]' (the 95% interval), or the bare percentage where no interval is known."""
    if definition in r.intervals:
        return r.intervals[definition].text()
    value = (r.retentions or {r.definition: r.retention}).get(definition)
    return "-" if value is None else f"{100 * value:.1f}"


def family_rows(store: Store, family: str, evaluators: dict[str, Evaluator] | None = None) -> list[CompareRow]:
    """Every study of ``family`` (by name) with its best plan re-scored on the test split."""
    ids = [s["id"] for s in store.studies() if s["family"] == family]
    return compare(store, ids, evaluators) if ids else []


def front_table(rows: list[CompareRow], keep: float) -> str:
    """Retention against size across every study and budget of a family (test split), the front marked,
    and the answer to "how small can I go and keep ``keep``?"."""
    if not rows:
        return "no studies with complete trials on this family"
    front = size_front(rows, size=lambda r: r.params, score=lambda r: r.retention)
    on = {id(r) for r in front}
    lines = [f"every study's best plan, re-scored on the {rows[0].split} split ({rows[0].definition} retention); "
             f"* = on the front (nothing smaller keeps more)",
             f"{'':2}{'id':>3} {'name':<18}{'method':<12}{'kept':>6}{'params':>10}{'retention':>11}"]
    for r in sorted(rows, key=lambda r: (r.params, -r.retention)):
        lines.append(f"{'*' if id(r) in on else ' ':2}{r.study_id:>3} {r.name[:17]:<18}{r.method:<12}{r.kept_layers:>6}"
                     f"{r.params / 1e6:>9.2f}M{100 * r.retention:>10.1f}%")
    best = smallest_keeping(rows, keep, size=lambda r: r.params, score=lambda r: r.retention)
    if best is None:
        top = max(rows, key=lambda r: r.retention)
        lines.append(f"no study keeps {100 * keep:.0f}%: the best is {100 * top.retention:.1f}% (study {top.study_id}, "
                     f"{top.kept_layers} layers); try a smaller budget (fewer layers removed)")
    else:
        lines.append(f"smallest keeping >= {100 * keep:.0f}%: study {best.study_id} ({best.name}), {best.kept_layers} "
                     f"layers, {best.params / 1e6:.2f}M params, {100 * best.retention:.1f}%: {best.plan}")
    return "\n".join(lines)


__all__ = ["CompareRow", "against_best", "engine_key", "compare", "compare_table", "retention_text",
           "family_rows", "front_table"]
