"""Study lifecycle: create, run in a background worker process, cancel, detect interruption, resume.

A study runs in its own process (``python -m db.worker``), never in the UI's thread: it writes each
trial in its own transaction as soon as it completes, and polls the database for a cancel request
between trials. A worker killed outright (SIGKILL, OOM killer, reboot) leaves its study marked
``running`` with a dead pid; ``reconcile`` turns that into ``interrupted``, and ``resume`` starts a
new worker that re-tells the stored trials to SMAC and goes on to the requested number.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gptailor import Evaluator, Family, FamilySpec, Plan, load_suite
from gptailor.baselines import HEURISTICS, calibration_texts, heuristic_plan
from gptailor.evaluate import References
from gptailor.search import Search, SearchSettings, TrialRecord, rank_key as _engine_rank_key
from gptailor.space import Budget

from .store import Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
BASELINES = (*HEURISTICS, "best_single")
METHODS = ("smac", "random", *BASELINES, "manual")
ACTIVE = ("created", "running", "cancelling")


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
                 evaluator: Evaluator | None = None) -> int:
    """Validate everything that can be validated up front, then store the study (status 'created')."""
    if method not in METHODS:
        raise StudyError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    settings = settings or SearchSettings()
    if method in ("smac", "random"):
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
    n_trials = settings.n_trials if method in ("smac", "random") else 0
    return store.create_study(family_name=ev.family.name, family_source=str(family_source),
                              family_spec=spec.to_dict(), family_info=info, method=method,
                              budget=budget.to_dict(), settings=s, n_trials=n_trials, name=name)


# ----------------------------------------------------------------------------- running
def run_study(store: Store, study_id: int, evaluator: Evaluator | None = None,
              on_trial: Callable[[TrialRecord], None] | None = None) -> str:
    """Run (or continue) a study in this process; returns its final status."""
    study = store.study(study_id)
    if study["status"] == "finished":
        return "finished"
    # Claim the study atomically: of two workers started for it, only one gets to run it.
    if not store.transition(study_id, ("created", "interrupted", "cancelled", "failed"), "running", pid=os.getpid()):
        if store.transition(study_id, ("cancelling",), "cancelled"):
            return "cancelled"  # cancelled before the worker got going
        raise StudyError(f"study {study_id} is {store.study(study_id)['status']} in another worker")
    try:
        ev = evaluator or load_engine(study["family_source"], study["settings"].get("suite"))
        budget = Budget.from_dict(study["budget"])
        previous = [TrialRecord.from_dict(t) for t in store.trials(study_id)]

        def record(rec: TrialRecord) -> None:
            store.record_trial(study_id, rec.to_dict())
            if on_trial:
                on_trial(rec)

        def cancelled() -> bool:
            return store.study(study_id)["status"] == "cancelling"

        method = study["method"]
        settings = SearchSettings.from_dict(study["settings"])
        refs, definition = study_references(store, study_id, ev, settings)
        if method in ("smac", "random"):
            heur = _heuristic_removals(ev, budget) if settings.initial_plans else {}
            result = Search(ev, budget, settings, on_trial=record, should_stop=cancelled, previous=previous,
                            heuristic_removals=heur, references=refs).run()
            status = "cancelled" if result.stopped == "cancelled" else "finished"
        elif method in BASELINES:
            status = _run_baseline(ev, budget, method, previous, record, cancelled, refs, definition)
        else:
            status = "finished"
        write_report(store, study_id, ev, definition)
        store.transition(study_id, ("running", "cancelling"), status)
        return status
    except KeyboardInterrupt:
        store.transition(study_id, ("running", "cancelling"), "cancelled", error="stopped by a signal")
        return "cancelled"
    except Exception as e:  # noqa: BLE001 - whatever broke, the study says so and stays readable
        store.transition(study_id, ("running", "cancelling"), "failed", error=f"{type(e).__name__}: {e}")
        raise


def study_references(store: Store, study_id: int, ev: Evaluator, settings: SearchSettings
                      ) -> tuple[References, str]:
    """The study's fixed references (every member on the whole search split) and retention definition:
    computed once and stored with the study, then reused as is (resume, reports)."""
    stored = store.study(study_id).get("refs")
    if stored:
        refs = References.from_dict(stored)
        ev.use_references(refs)
        return refs, stored["definition"]
    refs = ev.references("search")
    definition = refs.default_definition() if settings.retention == "auto" else settings.retention
    store.set_study_fields(study_id, refs={**refs.to_dict(), "definition": definition})
    return refs, definition


def report_of(ev: Evaluator, trial: dict[str, Any], definition: str) -> dict[str, Any]:
    """A study's final table: its best trial's plan re-scored on the whole held-out test split."""
    res = ev.evaluate(Plan.from_dict(trial["plan"]), None, split="test", definition=definition)
    return {"trial": trial["number"], "plan": res.plan, "split": "test", "fidelity": None,
            "definition": definition, "retention": res.retention, "retentions": res.retentions,
            "task_retentions": res.task_retentions, "scores": res.scores, "metrics": res.metrics,
            "details": res.details, "references": {t: vars(r) for t, r in res.references.items()},
            "kept_layers": res.kept_layers, "n_layers": res.n_layers, "params": res.params}


def write_report(store: Store, study_id: int, ev: Evaluator, definition: str) -> dict[str, Any] | None:
    best = best_trial(store.trials(study_id))
    if best is None:
        return None
    report = report_of(ev, best, definition)
    store.set_study_fields(study_id, report=report)
    return report


def _heuristic_removals(ev: Evaluator, budget: Budget) -> dict[str, list[int]]:
    n = budget.n_remove(ev.family)
    texts = calibration_texts(ev.suite)
    out = {}
    for h in HEURISTICS:
        plan = heuristic_plan(h, ev.family, n, texts, stitcher=ev.stitcher)
        out[h] = [i for i, op in enumerate(plan.ops) if op.kind == "drop"]
    return out


def _run_baseline(ev: Evaluator, budget: Budget, method: str, previous: list[TrialRecord],
                  record: Callable[[TrialRecord], None], cancelled: Callable[[], bool], refs: References,
                  definition: str) -> str:
    """Evaluate the heuristic's plan(s) on the whole search split; best_single tries every heuristic on
    every member (and picks on the search split, like a search)."""
    n = budget.n_remove(ev.family)
    texts = calibration_texts(ev.suite)
    todo = [(h, m) for m in ev.family.member_names for h in HEURISTICS if h != "laco"] \
        if method == "best_single" else [(method, "base")]
    done = {t.source for t in previous}
    number = len(previous)
    start = time.perf_counter()
    for h, m in todo:
        name = f"{h}:{m}"
        if name in done:
            continue
        if cancelled():
            return "cancelled"
        plan = heuristic_plan(h, ev.family, n, texts, member=m, stitcher=ev.stitcher)
        res = ev.evaluate(plan, None, split="search", references=refs, definition=definition)
        record(TrialRecord(number=number, plan=plan, fidelity=ev.suite.split_fidelity("search"), result=res,
                           wall_s=time.perf_counter() - start, source=name))
        number += 1
    return "finished"


# ----------------------------------------------------------------------------- background workers
def launch(store: Store, study_id: int, log_dir: str | os.PathLike | None = None) -> subprocess.Popen:
    """Start a worker process for the study; returns at once."""
    study = store.study(study_id)
    if study["status"] in ACTIVE and _alive(study["worker_pid"]):
        raise StudyError(f"study {study_id} already has a live worker (pid {study['worker_pid']}, "
                         f"{study['status']})")
    seed = int(study["settings"].get("seed", 0))
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = None
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(log_dir) / f"study-{study_id}.log", "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "db.worker", "--db", store.url, "--study", str(study_id)],
                                env=env, cwd=str(ROOT), stdout=log or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log is not None:
            log.close()  # the child has its own descriptor
    store.transition(study_id, ("created", "interrupted", "cancelled", "failed"), "created", pid=proc.pid)
    return proc


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def reconcile(store: Store) -> list[int]:
    """Mark studies whose worker died without saying so as 'interrupted'; returns their ids."""
    out = []
    for s in store.studies():
        if s["status"] in ACTIVE and s["worker_pid"] and not _alive(s["worker_pid"]):
            if store.transition(s["id"], ACTIVE, "interrupted",
                                error="the worker process ended unexpectedly; resume it"):
                out.append(s["id"])
    return out


def cancel(store: Store, study_id: int) -> None:
    """Ask the worker to stop after the current trial (or mark a study without a live worker cancelled)."""
    s = store.study(study_id)
    if _alive(s["worker_pid"]) and store.transition(study_id, ("running", "created"), "cancelling"):
        return
    store.transition(study_id, ACTIVE, "cancelled")


def check_resumable(store: Store, study_id: int) -> dict[str, Any]:
    """The study, if it can be resumed (not finished, no live worker); StudyError saying why not."""
    reconcile(store)
    s = store.study(study_id)
    if s["status"] == "finished":
        raise StudyError(f"study {study_id} is finished ({s['trials_done']} trials); nothing to resume")
    if s["status"] in ACTIVE and _alive(s["worker_pid"]):
        raise StudyError(f"study {study_id} is still running (pid {s['worker_pid']})")
    return s


def resume(store: Store, study_id: int, log_dir: str | os.PathLike | None = None) -> subprocess.Popen:
    check_resumable(store, study_id)
    return launch(store, study_id, log_dir)


def wait(store: Store, study_id: int, timeout: float = 600, poll: float = 0.5) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = store.study(study_id)
        if s["status"] in ("finished", "failed", "cancelled", "interrupted"):
            return s
        reconcile(store)
        time.sleep(poll)
    raise TimeoutError(f"study {study_id} still {store.study(study_id)['status']} after {timeout}s")


# ----------------------------------------------------------------------------- a capped number of workers
QUEUED = "queued"
_QUEUE_LOCK = threading.Lock()  # one process's launches are counted one at a time


def _busy(store: Store) -> int:
    """Studies holding a live worker right now (each one a process using CPU or GPU)."""
    return sum(1 for s in store.studies() if s["status"] in ACTIVE and _alive(s["worker_pid"]))


def launch_or_queue(store: Store, study_id: int, max_workers: int = 0,
                    log_dir: str | os.PathLike | None = None) -> str:
    """Start a worker for the study if fewer than ``max_workers`` run (0: no cap), else mark it 'queued'
    for ``start_queued``; returns 'started' or 'queued'. The stored seed is checked first: a worker
    cannot start with a PYTHONHASHSEED outside 0..2**32-1."""
    from gptailor.limits import SettingsError, whole

    try:
        whole("seed", store.study(study_id)["settings"].get("seed", 0))
    except SettingsError as e:
        raise StudyError(f"study {study_id}: {e}") from None
    with _QUEUE_LOCK:
        if max_workers and (_busy(store) >= max_workers or queue(store)):
            if store.transition(study_id, ("created", "interrupted", "cancelled", "failed"), QUEUED):
                return QUEUED
        launch(store, study_id, log_dir)
        return "started"


def queue(store: Store) -> list[int]:
    """Ids of the queued studies, first in line first."""
    return [s["id"] for s in store.studies() if s["status"] == QUEUED]


def start_queued(store: Store, max_workers: int = 0, log_dir: str | os.PathLike | None = None) -> list[int]:
    """Start queued studies, oldest first, while fewer than ``max_workers`` run; returns the ids started.

    Safe to call often and from several places (the app's timer and launch path): a study leaves the
    queue by one atomic status change, so no two callers start it twice."""
    started: list[int] = []
    with _QUEUE_LOCK:
        reconcile(store)
        free = (max_workers - _busy(store)) if max_workers else len(queue(store))
        for sid in queue(store)[:max(0, free)]:
            if store.transition(sid, (QUEUED,), "created"):
                launch(store, sid, log_dir)
                started.append(sid)
    return started


def withdraw(store: Store, study_id: int) -> None:
    """Cancel a study: a queued one leaves the queue at once, others go through ``cancel``."""
    if not store.transition(study_id, (QUEUED,), "cancelled"):
        cancel(store, study_id)


# ----------------------------------------------------------------------------- comparing
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


def rank_key(trial: dict[str, Any]) -> tuple[float, float, int]:
    """The engine's one ranking rule (gptailor.search.rank_key) over database rows."""
    return _engine_rank_key(trial["fidelity"], trial["retention"], trial.get("number", 0))


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [t for t in trials if t["status"] == "complete" and t["retention"] is not None]
    return min(done, key=rank_key) if done else None


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
        best = best_trial(trials)
        if best is None:
            continue
        key = engine_key(s)
        if key not in evaluators:
            evaluators[key] = load_engine(s["family_source"], s["settings"].get("suite"))
        rep = s.get("report")
        if not rep or rep.get("trial") != best["number"]:  # not written yet (running, or an older study)
            ev = evaluators[key]
            definition = (s.get("refs") or {}).get("definition") or ev.references("search").default_definition()
            rep = report_of(ev, best, definition)
        rows.append(CompareRow(s["id"], s["name"], s["method"], rep["plan"], rep["scores"],
                               rep["task_retentions"][rep["definition"]], rep["retention"], rep["kept_layers"],
                               rep["params"], len(trials), max((t["wall_s"] or 0) for t in trials),
                               rep["split"], rep["definition"], rep["retentions"]))
    return rows


def compare_table(rows: list[CompareRow]) -> str:
    if not rows:
        return "no studies with complete trials"
    tasks = list(rows[0].scores)
    defs = sorted({r.definition for r in rows})
    head = f"{'id':>3} {'method':<12}" + "".join(f"{t[:10]:>11}" for t in tasks) + \
        f"{'family':>9}{'base':>9}{'kept':>6}{'params':>9}{'trials':>7}{'wall s':>8}"
    lines = [f"best plan of each study (chosen on the search split), re-scored on the {rows[0].split} split; "
             f"per-task columns: {'/'.join(defs)} retention", head]
    for r in rows:
        cells = "".join(f"{'-' if r.task_retention.get(t) is None else f'{100 * r.task_retention[t]:.1f}%':>11}"
                        for t in tasks)
        both = r.retentions or {r.definition: r.retention}
        means = "".join(f"{'-' if both.get(d) is None else f'{100 * both[d]:.1f}%':>9}" for d in ("family", "base"))
        lines.append(f"{r.study_id:>3} {r.method:<12}{cells}{means}{r.kept_layers:>6}"
                     f"{r.params / 1e6:>8.2f}M{r.trials:>7}{r.wall_s:>8.1f}")
    return "\n".join(lines)


def terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


__all__ = ["StoreError", "StudyError", "create_study", "run_study", "launch", "reconcile", "cancel", "resume",
           "wait", "compare", "compare_table", "METHODS", "BASELINES", "launch_or_queue", "start_queued", "queue",
           "withdraw", "QUEUED"]
