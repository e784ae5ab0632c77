"""Running a study in this process: create it, claim it, score its trials (a search or a baseline) with a
heartbeat beating, and write its test-split report. ``db.worker`` calls ``run_study`` in the background
process that ``db.workers.launch`` starts; a foreground ``search`` calls it directly.
"""
from __future__ import annotations

import errno
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gptailor import Evaluator, Family, FamilySpec, Plan, load_suite
from gptailor.search.baselines import BASELINES, HEURISTICS, SharedStates, calibration_ids
from gptailor.eval.noise import intervals, sizes_of
from gptailor.eval.results import EvalResult, References, applicable_definition
from gptailor.search.precompute import Precompute
from gptailor.common.progress import Phase, Progress
from gptailor.search.optimizer import Search
from gptailor.search.settings import METHODS as SEARCHES, SearchSettings
from gptailor.search.trials import TrialRecord, counted, incumbent
from gptailor.search.space import Budget

from .liveness import Heartbeat, Owner
from .settings import data_dir
from .store import ClaimLost, Store, StoreError

METHODS = (*SEARCHES, *BASELINES, "manual")


class StudyError(ValueError):
    pass


# ----------------------------------------------------------------------------- creation
def load_engine(family_source: str, suite: str | None = None, device: str | None = None) -> Evaluator:
    fam = Family.from_spec(family_source, device=device)
    path = suite or fam.spec.suite_path()
    if not path:
        raise StudyError(f"family {fam.name!r} names no task suite; pass a suite (suite.yaml)")
    return Evaluator(fam, load_suite(path))


def create_study(store: Store, family_source: str, method: str, budget: Budget,
                 settings: SearchSettings | None = None, suite: str | None = None, name: str | None = None,
                 evaluator: Evaluator | None = None, owner_hash: str | None = None,
                 client_key: str | None = None) -> int:
    """Validate everything that can be validated up front, then store the study (status 'created');
    ``owner_hash`` / ``client_key``: the app visitor who started it (``Store.create_study``)."""
    if method not in METHODS:
        raise StudyError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    settings = settings or SearchSettings()
    if method in SEARCHES:
        settings.method = method
    settings.check()
    ev = evaluator or load_engine(family_source, suite)
    n_remove = budget.n_remove(ev.family)  # BudgetError before anything is stored
    if Path(str(family_source)).exists():  # a worker started elsewhere must find the same files
        family_source = str(Path(str(family_source)).resolve())
    spec = FamilySpec.load(family_source)
    info = ev.family.info()
    s = settings.to_dict()
    s["suite"] = ev.suite.path
    s["n_remove"] = n_remove
    n_trials = settings.n_trials if method in SEARCHES else 0
    name = name or short_name(method, n_remove, settings.seed)
    return store.create_study(family_name=ev.family.name, family_source=str(family_source),
                              family_spec=spec.to_dict(), family_info=info, method=method,
                              budget=budget.to_dict(), settings=s, n_trials=n_trials, name=name,
                              owner_hash=owner_hash, client_key=client_key)


def short_name(method: str, n_remove: int, seed: int = 0) -> str:
    """The default study name: method, layers removed and (for searches) the seed, e.g. ``smac-r2-s0``.

    Short enough for a legend; the store adds ``-2``, ``-3``... when the family already has it."""
    return f"{method}-r{n_remove}-s{seed}" if method in SEARCHES else f"{method}-r{n_remove}"


# ----------------------------------------------------------------------------- running
class _Watched:
    """The evaluator, telling the database which plan it is about to score, so that a reader can record
    that trial as failed if this worker dies inside it. Everything else is the evaluator's own."""

    def __init__(self, inner: Evaluator, report: Callable[[Plan, int | None, str], None]) -> None:
        self._inner = inner
        self._report = report
        self.source = "search"  # a baseline sets the heuristic it is scoring

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def evaluate(self, plan: Plan, fidelity: int | None = None, *args: Any, **kwargs: Any):
        self._report(plan, fidelity, self.source)
        return self._inner.evaluate(plan, fidelity, *args, **kwargs)


def run_study(store: Store, study_id: int, evaluator: Evaluator | None = None,
              on_trial: Callable[[TrialRecord], None] | None = None,
              on_lost: Callable[[], None] | None = None) -> str:
    """Run (or continue) a study in this process; returns its final status.

    While it runs, a heartbeat thread keeps ``studies.heartbeat_at`` fresh and ``studies.progress``
    names the trial being evaluated. If a reader declares this worker dead (or another takes the
    study over) it stops without writing anything more, calls ``on_lost`` and returns 'interrupted'."""
    store.check_intact()  # nothing written into a damaged database (a foreground resume comes here directly)
    study = store.study(study_id)
    if study["status"] == "finished":
        return "finished"
    me = Owner.me()
    # Claim the study atomically: of two workers started for it, only one gets to run it.
    if not store.claim(study_id, me):
        if store.transition(study_id, ("cancelling",), "cancelled"):
            return "cancelled"  # cancelled before the worker got going
        raise StudyError(f"study {study_id} is {store.study(study_id)['status']} in another worker")
    lost = threading.Event()

    def lose() -> None:
        lost.set()
        if on_lost is not None:
            on_lost()

    with Heartbeat(store, study_id, me, on_lost=lose) as hb:
        return _run_claimed(store, study, me, evaluator, on_trial, lost, hb)


def precompute(store: Store) -> Precompute:
    """The content-keyed cache of references and heuristic plans, shared by every study on a database:
    ``cache/`` beside a SQLite file, else ``<GPTAILOR_DATA_DIR>/cache``."""
    path = store._sqlite_path()
    root = path.parent if path is not None else data_dir(create=False)
    return Precompute(root / "cache")


def _store_progress(store: Store, study_id: int, me: Owner, progress: dict[str, Any]) -> None:
    try:
        store.set_progress(study_id, progress, me)
    except StoreError as e:  # a busy database must not fail the work itself; the next report retries
        print(f"study {study_id}: progress not stored: {e}", file=sys.stderr, flush=True)


@dataclass
class _StudyRun(Progress):
    """One claimed study being run by this worker, and what it tells the database as it goes: each phase,
    the trial in flight (with an ETA), each trial recorded. Plain fields instead of closures over list
    cells, so the run's state can be read in one place.

    It is the engine's ``Progress`` listener for the study: ``phase`` stores the phase line, and a stop is
    asked for when this worker lost its claim or the study is 'cancelling' (read from the database, so
    only between trials and plans: a tick does nothing; a trial outliving the stop grace gets SIGTERM)."""

    store: Store
    study: dict[str, Any]
    me: Owner
    lost: threading.Event
    on_trial: Callable[[TrialRecord], None] | None = None
    start: float = field(default_factory=time.perf_counter)
    first_trial: float | None = None  # when this run's first trial began (for the ETA)
    recorded: int = 0  # trials this run recorded
    total: int = 0  # trials the study asks for (a baseline: its plans)
    previous: list[TrialRecord] = field(default_factory=list)  # trials stored before this run
    space: Any = None  # the search's plan space, to store the in-flight trial's configuration
    seed_names: dict[str, str] = field(default_factory=dict)  # plan key -> the seed's label, as the search records it
    ev: Evaluator | None = None
    top_fidelity: int | None = None  # the study's top rung

    @property
    def study_id(self) -> int:
        return self.study["id"]

    def phase(self, p: Phase) -> None:
        """Every phase before and between trials, stored so each page and `studies` can say it."""
        _store_progress(self.store, self.study_id, self.me, {**p.to_dict(), "wall_s": time.perf_counter() - self.start})

    def report(self, plan: Plan, fidelity: int | None, source: str) -> None:
        """The trial about to be scored: stored first, so a reader can record it as failed if this dies."""
        now = time.perf_counter()
        if self.first_trial is None:
            self.first_trial = now
        number = len(self.previous) + self.recorded  # the number the search gives this trial
        done = counted(self.previous) + self.recorded  # what counts toward the total (no cut trials)
        eta = None
        if self.recorded and self.total > done:
            eta = (now - self.first_trial) / self.recorded * (self.total - done)
        if source == "search":  # the label the search will record (a seed plan's name), so a cut trial keeps it
            source = self.seed_names.get(plan.key(), source)
        _store_progress(self.store, self.study_id, self.me, {
            "phase": "trial", "trial": number, "done": done, "total": self.total or None,
            "plan": plan.to_text(), "plan_json": plan.to_dict(), "config": _config_of(self.space, plan),
            "fidelity": self.ev.suite.split_fidelity("search") if fidelity is None else fidelity,
            "max_fidelity": self.top_fidelity, "source": source, "eta_s": eta, "wall_s": now - self.start})

    def record(self, rec: TrialRecord) -> None:
        self.store.record_trial(self.study_id, rec, owner=self.me)
        self.recorded += 1
        if self.on_trial:
            self.on_trial(rec)

    def tick(self, what: str = "", done: int | None = None, total: int | None = None) -> None:
        """Nothing: the stop check reads the study's row, too costly for every batch."""

    def stop_requested(self) -> bool:
        return self.lost.is_set() or self.store.study(self.study_id)["status"] == "cancelling"

    def run_method(self) -> str:
        """Run the study's search or baseline to its end (or its cancel); returns the status it reached."""
        study, ev = self.study, self.ev
        budget = Budget.from_dict(study["budget"])
        method = study["method"]
        settings = SearchSettings.from_dict(study["settings"])
        watched = _Watched(ev, self.report)
        refs, definition = study_references(self.store, self.study_id, ev, settings, self)
        if method in SEARCHES:
            heur = precompute(self.store).heuristic_removals(ev.family, budget.n_remove(ev.family), ev.suite,
                                                            ev.stitcher, self) if settings.initial_plans else {}
            search = Search(watched, budget, settings, on_trial=self.record, previous=self.previous,
                            heuristic_removals=heur, references=refs, progress=self)
            self.space, self.seed_names = search.space, search.seed_names  # seed names filled as SMAC is built
            status = "cancelled" if search.run().stopped == "cancelled" else "finished"
        elif method in BASELINES:
            status = _run_baseline(watched, budget, method, self.previous, self.record, refs, definition, self,
                                   self, precompute(self.store))
        else:
            status = "finished"
        # A cancel means stop now: the test-split report (a full re-scoring of the best plan, which outlived the
        # stop grace and ended 'stopped by a signal') is left to a resume, which runs it at its end.
        if not self.lost.is_set() and status != "cancelled":
            self.phase(Phase("report", detail="re-scoring the best plan on the test split"))
            write_report(self.store, self.study_id, ev, definition)
        return status


def _run_claimed(store: Store, study: dict[str, Any], me: Owner, evaluator: Evaluator | None,
                 on_trial: Callable[[TrialRecord], None] | None, lost: threading.Event, hb: Heartbeat) -> str:
    study_id = study["id"]
    run = _StudyRun(store, study, me, lost, on_trial)
    try:
        if evaluator is None:
            run.phase(Phase("loading family", detail=str(study["family"])))
        run.ev = evaluator or load_engine(study["family_source"], study["settings"].get("suite"))
        run.previous = store.trials(study_id)
        run.total = int(study["n_trials"] or 0)
        full = run.ev.suite.split_fidelity("search")
        run.top_fidelity = min(study["settings"].get("max_fidelity") or full, full)
        status = run.run_method()
        hb.quiet()
        if lost.is_set():
            return "interrupted"
        store.transition(study_id, ("running", "cancelling"), status, owner=me)
        return status
    except ClaimLost:
        return "interrupted"
    except KeyboardInterrupt:
        hb.quiet()
        if lost.is_set():
            return "interrupted"
        store.stop(study_id, "cancelled", "stopped by a signal", owner=me,
                   inflight_error="stopped by a signal during this trial")
        return "cancelled"
    except Exception as e:  # noqa: BLE001 - whatever broke, the study says so and stays readable
        hb.quiet()
        if not lost.is_set():
            why = died_of(store, e)
            store.stop(study_id, "failed", why, owner=me, inflight_error=why)
        raise


def died_of(store: Store, e: BaseException) -> str:
    """Why a worker stops on an exception, as the study's error: a full disk (ENOSPC, a file over its size
    limit, or the database saying so) named with the disk and what to do, else the exception itself."""
    if isinstance(e, StoreError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        where = e.filename or (store.path.parent if store.path else "the data folder")
        return (f"the disk holding {where} is full ({e.strerror}); free some space, then resume the study: "
                f"the trials stored so far are intact")
    return f"{type(e).__name__}: {e}"


def study_references(store: Store, study_id: int, ev: Evaluator, settings: SearchSettings,
                     progress: Progress | None = None) -> tuple[References, str]:
    """The study's fixed references (every member on the whole search split) and retention definition:
    taken from the precompute cache when this family and suite were scored before, stored with the
    study, then reused as is (resume, reports). ``progress`` is told where they came from."""
    stored = store.study(study_id).get("refs")
    if stored:
        refs = References.from_dict(stored)
        ev.use_references(refs)
        (progress or Progress()).phase(Phase("references", detail="stored with the study", cached=True))
        return refs, stored["definition"]
    refs = precompute(store).references(ev, "search", progress)
    definition = applicable_definition(setting=settings.retention, refs=refs)
    store.set_study_fields(study_id, refs={**refs.to_dict(), "definition": definition})
    return refs, definition


def report_of(ev: Evaluator, trial: TrialRecord, definition: str) -> dict[str, Any]:
    """A study's final table: its best trial's plan re-scored on the whole held-out test split."""
    res = ev.evaluate(trial.plan, None, split="test", definition=definition)
    return report_from(res, trial.number, ev.references("test"))


def report_from(res: EvalResult, number: int, refs: References) -> dict[str, Any]:
    """The stored report of a result scored on the whole test split (``refs``: that split's references),
    with both definitions' 95% intervals (``gptailor.eval.noise``)."""
    spans = intervals(res.scores, sizes_of(res.details), refs)
    return {"trial": number, "plan": res.plan, "split": res.split, "fidelity": None,
            "definition": res.definition, "retention": res.retention, "retentions": res.retentions,
            "task_retentions": res.task_retentions, "scores": res.scores, "metrics": res.metrics,
            "details": res.details, "references": {t: vars(r) for t, r in res.references.items()},
            "kept_layers": res.kept_layers, "n_layers": res.n_layers, "params": res.params,
            "intervals": {d: i.to_dict() for d, i in spans.items()}, "proxies": res.proxies}


def write_report(store: Store, study_id: int, ev: Evaluator, definition: str) -> dict[str, Any] | None:
    best = incumbent(store.trials(study_id))
    if best is None:
        return None
    report = report_of(ev, best, definition)
    store.set_study_fields(study_id, report=report)
    return report


def _config_of(space: Any, plan: Plan) -> dict[str, Any] | None:
    """A configuration of the search space for the plan (so a resumed SMAC is told the failed trial)."""
    try:
        cfg = space.encode(plan) if space is not None else None
    except Exception:  # noqa: BLE001 - without it the failed trial is stored, just not re-told
        return None
    return None if cfg is None else {k: v.item() if hasattr(v, "item") else v for k, v in dict(cfg).items()}


def _run_baseline(ev: Evaluator, budget: Budget, method: str, previous: list[TrialRecord],
                  record: Callable[[TrialRecord], None], refs: References, definition: str,
                  progress: Progress | None = None, run: "_StudyRun | None" = None,
                  cache: Precompute | None = None) -> str:
    """Evaluate the heuristic's plan(s) on the whole search split; best_single tries every heuristic on
    every member, best_seed every plan a search is seeded with (``seed_plans``: each removal crossed with
    each member and merge), both picking on the search split like a search: the rules a search must beat.
    ``progress`` is told each plan computed and ends the baseline between plans when it asks to stop."""
    progress = progress or Progress()
    n = budget.n_remove(ev.family)
    cache = cache or Precompute(None)
    texts = calibration_ids(ev.suite, ev.family.tokenizer)
    shared = SharedStates(ev.family, texts, ev.stitcher)  # one forward per member, shared by its heuristics
    todo = _baseline_plans(ev, n, method, cache, texts, shared, progress)
    if run is not None:
        run.total = len(todo)  # a baseline's trials: one per plan
    done = {t.source for t in previous if t.status == "complete"}  # a trial cut short is scored again
    number = len(previous)
    start = time.perf_counter()
    for k, (name, plan_of) in enumerate(todo):
        if name in done:
            continue
        if progress.stop_requested():
            return "cancelled"
        plan = plan_of(lambda: progress.phase(Phase("heuristics", k, len(todo), name.replace(":", " on "))))
        if isinstance(ev, _Watched):
            ev.source = name
        res = ev.evaluate(plan, None, split="search", references=refs, definition=definition)
        record(TrialRecord(number=number, plan=plan, fidelity=ev.suite.split_fidelity("search"), result=res,
                           wall_s=time.perf_counter() - start, source=name))
        number += 1
    return "finished"


def _baseline_plans(ev: Evaluator, n: int, method: str, cache: Precompute, texts, shared: SharedStates,
                    progress: Progress) -> list[tuple[str, Callable[[Callable[[], None]], Plan]]]:
    """A baseline's (source name, plan maker) pairs, in scoring order; a maker computes its heuristic
    (cached) only when reached, telling ``on_compute`` first."""
    if method == "best_seed":
        from gptailor.search.seeds import seed_plans

        removals = cache.heuristic_removals(ev.family, n, ev.suite, ev.stitcher, progress)
        return [(name, lambda _on, p=plan: p) for name, plan in seed_plans(ev.family, n, removals).items()]
    pairs = [(h, m) for m in ev.family.member_names for h in HEURISTICS if h != "laco"] \
        if method == "best_single" else [(method, "base")]

    def maker(h: str, m: str):
        return lambda on_compute: cache.heuristic_plan(h, ev.family, n, ev.suite, member=m, stitcher=ev.stitcher,
                                                       texts=texts, on_compute=on_compute, states=shared.of(m))[0]
    return [(f"{h}:{m}", maker(h, m)) for h, m in pairs]


__all__ = ["StudyError", "create_study", "run_study", "load_engine", "short_name", "precompute", "died_of",
           "study_references", "report_of", "report_from", "write_report", "METHODS", "BASELINES"]
