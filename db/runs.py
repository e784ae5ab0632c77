"""Study lifecycle: create, run in a background worker process, cancel, detect interruption, resume.

A study runs in its own process (``python -m db.worker``), never in the UI's thread: it writes each
trial in its own transaction as soon as it completes, beats a heartbeat, and polls the database for
a cancel request between trials. A worker killed outright (SIGKILL, OOM killer, reboot) or hung
(stopped, swapped out, its host gone) stops beating; ``reconcile``, which any reader may call, turns
its study into ``interrupted`` (recording the trial it was inside as failed), and ``resume`` starts a
new worker that re-tells the stored trials to SMAC and goes on to the requested number. A cancel the
worker does not honour in time ends in SIGTERM, then SIGKILL.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from gptailor import Evaluator, Family, FamilySpec, Plan, load_suite
from gptailor.search.baselines import HEURISTICS, SharedStates, calibration_ids
from gptailor.eval.noise import Interval, combined_noise, intervals, sizes_of, verdict
from gptailor.eval.results import EvalResult, References, applicable_definition
from gptailor.search.precompute import Precompute
from gptailor.common.progress import Phase, Progress
from gptailor.search.optimizer import Search
from gptailor.search.settings import METHODS as SEARCHES, SearchSettings
from gptailor.search.trials import TrialRecord, counted, incumbent, size_front, smallest_keeping
from gptailor.search.space import Budget

from .liveness import Heartbeat, Owner, host_id, local_worker_dead, process_start
from .settings import data_dir, grace_s, heartbeat_s, stop_grace_s
from .models import utcnow
from .store import ACTIVE, ClaimLost, Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
BASELINES = (*HEURISTICS, "best_single")
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


FULL_BYTES = 1 << 20  # a disk with less free than this counts as full (SQLite, logs and caches need more)


def full_disk(store: Store) -> str | None:
    """A reader's diagnosis of a dead worker: the disk of the database, the data dir or the temp dir (what
    a worker writes) when it is full, in words, else None. Said when the worker could not say it itself
    (its database and log on that very disk)."""
    seen: set[int] = set()
    for folder in (store.path.parent if store.path else None, data_dir(create=False), Path(tempfile.gettempdir())):
        try:
            st = os.statvfs(folder) if folder is not None else None
            dev = os.stat(folder).st_dev if folder is not None else None
        except OSError:
            continue
        if st is None or dev in seen:
            continue
        seen.add(dev)
        free = st.f_bavail * st.f_frsize
        if free < FULL_BYTES:
            return (f"the disk holding {folder} is full ({free:,} bytes free), the likely cause: free some space, "
                    f"then resume it")
    return None


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
    every member (and picks on the search split, like a search). ``progress`` is told each heuristic
    computed and ends the baseline between plans when it asks to stop."""
    progress = progress or Progress()
    n = budget.n_remove(ev.family)
    texts = calibration_ids(ev.suite, ev.family.tokenizer)
    todo = [(h, m) for m in ev.family.member_names for h in HEURISTICS if h != "laco"] \
        if method == "best_single" else [(method, "base")]
    if run is not None:
        run.total = len(todo)  # a baseline's trials: one per (heuristic, member)
    cache = cache or Precompute(None)
    done = {t.source for t in previous if t.status == "complete"}  # a trial cut short is scored again
    number = len(previous)
    start = time.perf_counter()
    shared = SharedStates(ev.family, texts, ev.stitcher)  # one forward per member, shared by its heuristics
    for h, m in todo:
        name = f"{h}:{m}"
        if name in done:
            continue
        if progress.stop_requested():
            return "cancelled"
        step = Phase("heuristics", number, len(todo), f"{h} on {m}")
        plan, _ = cache.heuristic_plan(h, ev.family, n, ev.suite, member=m, stitcher=ev.stitcher, texts=texts,
                                       on_compute=lambda: progress.phase(step), states=shared.of(m))
        if isinstance(ev, _Watched):
            ev.source = name
        res = ev.evaluate(plan, None, split="search", references=refs, definition=definition)
        record(TrialRecord(number=number, plan=plan, fidelity=ev.suite.split_fidelity("search"), result=res,
                           wall_s=time.perf_counter() - start, source=name))
        number += 1
    return "finished"


# ----------------------------------------------------------------------------- background workers
WORKER = ("-m", "db.worker")


def launch(store: Store, study_id: int, log_dir: str | os.PathLike | None = None,
           worker: tuple[str, ...] = WORKER) -> subprocess.Popen:
    """Start a worker process for the study; returns at once.

    ``worker`` is the Python command line that runs it (tests pass a slowed-down one)."""
    if store.in_memory:
        raise StudyError(f"{store.url} is an in-memory database: a worker process cannot see it (and it is gone "
                         f"when this process ends); use a file, e.g. sqlite:////absolute/path/gptailor.db in "
                         f"--db or GPTAILOR_DB_URL")
    store.check_intact()  # a damaged database gets no worker writing into it
    study = store.study(study_id)
    if study["status"] in ACTIVE and worker_alive(study):
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
        proc = subprocess.Popen([sys.executable, *worker, "--db", store.url, "--study", str(study_id)],
                                env=env, cwd=str(ROOT), stdout=log or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log is not None:
            log.close()  # the child has its own descriptor
    store.launched(study_id, Owner(proc.pid, host_id(), process_start(proc.pid)))
    reap(proc)
    return proc


def reap(proc: subprocess.Popen) -> None:
    """Wait for the worker in a daemon thread, so that a long-lived launcher (the app) collects its exit
    status when it ends: no zombie process stays behind. A caller may still ``proc.wait()`` itself."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600} h {s % 3600 // 60:02d} m" if s >= 3600 else f"{s // 60} m {s % 60:02d} s" if s >= 60 \
        else f"{s} s"


def _steps(p: dict[str, Any], unit: str) -> str:
    done, total = p.get("done"), p.get("total")
    if total:
        return f"{done or 0} of {total} {unit}"
    return f"{done} {unit}" if done is not None else ""


def phase_text(p: dict[str, Any] | None) -> str:
    """What a worker says it is doing (``studies.progress``), in words; '' if it said nothing yet."""
    p = p or {}
    phase, detail, cached = p.get("phase"), p.get("detail") or "", p.get("cached")
    if phase == "launching":
        return "launching the worker"
    if phase == "starting":
        return "starting the worker (loading torch)"
    if phase == "loading family":
        return f"loading family {detail}".strip()
    if phase == "references":
        if cached:
            return f"references reused from the cache ({detail})" if detail else "references reused from the cache"
        return f"scoring references: {_steps(p, 'members')} ({detail})"
    if phase == "heuristics":
        if cached and p.get("done") == p.get("total"):
            return "heuristics reused from the cache"
        return f"computing heuristics: {_steps(p, 'done')} ({detail})" if p.get("done") != p.get("total") \
            else f"heuristics computed ({detail})"
    if phase == "seeds":
        return detail or "building the initial design"
    if phase == "trial":
        total = f" of {p['total']}" if p.get("total") else ""
        n = p.get("done", p.get("trial"))  # trials counted so far (a cut one is run again, not counted)
        top = p.get("max_fidelity")
        fid = f" at fidelity {p.get('fidelity')}" + (f"/{top}" if top else "") + " examples per task"
        eta = f" · ETA {_duration(p['eta_s'])}" if p.get("eta_s") is not None else ""
        return f"trial {int(n or 0) + 1}{total}{fid}{eta}"
    if phase == "between trials":
        return f"between trials (trial {int(p.get('last_trial') or 0) + 1} stored)"
    if phase == "report":
        return "re-scoring the best plan on the test split"
    if phase == "stopped":
        return "stopped"
    return str(phase or "")


def phase_line(s: dict[str, Any], now: datetime | None = None) -> str:
    """A study's status as one line for every page and the CLI: the phase of an active study (with a
    warning once its worker's heartbeat is late), or how it ended."""
    status = s["status"]
    if status == QUEUED:
        return "queued: waiting for a free worker"
    if status not in ACTIVE:
        return status + (f": {s['error']}" if s.get("error") else "")
    text = phase_text(s.get("progress")) or ("waiting for a worker" if not _launched(s) else "starting")
    if status == "cancelling":
        text = f"cancel requested; still {text}"
    last = s.get("heartbeat_at")
    if _launched(s) and last is not None:
        age = ((now or utcnow()) - last).total_seconds()
        if age > max(3 * heartbeat_s(), 10.0):
            text += (f" · ⚠ no heartbeat for {age:.0f} s: the worker may be stuck (declared interrupted after "
                     f"{grace_s():g} s)")
    return text


def _launched(s: dict[str, Any]) -> bool:
    """Whether a worker was ever started for an active study (a created, never launched one has none)."""
    return bool(s["worker_pid"] or s["heartbeat_at"])


def _owner(s: dict[str, Any]) -> Owner:
    return Owner(s["worker_pid"], s["worker_host"], s["worker_start"])


def dead_reason(s: dict[str, Any], now: datetime | None = None) -> str | None:
    """Why the study's worker counts as dead, or None while it may be alive.

    The heartbeat decides, wherever the worker runs: older than the grace period means dead. A pid is
    a fast path only here, on the worker's own host, for the very process that claimed the study."""
    if local_worker_dead(s["worker_pid"], s["worker_host"], s["worker_start"]):
        return f"the worker process (pid {s['worker_pid']}) ended unexpectedly"
    last = s["heartbeat_at"] or s["started_at"] or s["created_at"]
    age = ((now or utcnow()) - last).total_seconds()
    grace = grace_s()
    if age > grace:
        where = f"pid {s['worker_pid']}" + (f" on {s['worker_host'].split('/')[0]}" if s["worker_host"] else "")
        return (f"the worker ({where}) stopped responding: no heartbeat for {age:.0f} s "
                f"(grace {grace:g} s, GPTAILOR_GRACE_S)")
    return None


def worker_alive(s: dict[str, Any]) -> bool:
    """An active study's worker may still be running (launched, and not known to be dead)."""
    return _launched(s) and dead_reason(s) is None


def reconcile(store: Store) -> list[int]:
    """Mark studies whose worker died (or stopped beating) 'interrupted', or 'cancelled' if a cancel was
    asked; record the trial each was inside as failed; hard-stop cancelled workers that overstay their
    grace. Returns the ids of the studies it ended."""
    out = []
    now = utcnow()
    for s in store.studies():
        if s["status"] not in ACTIVE or not _launched(s):
            continue
        reason = dead_reason(s, now)
        if reason is None:
            if s["status"] == "cancelling":
                _escalate(s, now)
            continue
        if s["status"] == "cancelling":
            asked = s["cancel_requested_at"]
            forced = asked is not None and (now - asked).total_seconds() >= stop_grace_s()
            status, error = "cancelled", (f"cancelled; stopped by force: the worker had not stopped "
                                          f"{stop_grace_s():g} s after the cancel (GPTAILOR_STOP_GRACE_S)"
                                          if forced else f"cancelled; {reason}")
        else:
            disk = full_disk(store)
            status, error = "interrupted", f"{reason}; " + (disk or "resume it")
        if store.stop(s["id"], status, error, owner=_owner(s), heartbeat_seen=s["heartbeat_at"],
                      inflight_error="worker stopped responding during this trial"):
            out.append(s["id"])
    return out


def _signal(s: dict[str, Any], sig: int) -> bool:
    """Send ``sig`` to the study's worker and its process group, only if it is certainly that worker
    (this host, same process start time); True if sent."""
    if local_worker_dead(s["worker_pid"], s["worker_host"], s["worker_start"]) is not False:
        return False
    pid = s["worker_pid"]
    try:
        os.killpg(pid, sig)  # the background worker leads its own session: its children go too
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)  # a foreground run is not a group leader
        except (ProcessLookupError, PermissionError):
            return False
    return True


def _escalate(s: dict[str, Any], now: datetime) -> None:
    """The hard stop: SIGTERM once a cancel has waited GPTAILOR_STOP_GRACE_S, SIGKILL a third later."""
    asked = s["cancel_requested_at"]
    if asked is None:
        return
    waited, grace = (now - asked).total_seconds(), stop_grace_s()
    if waited >= grace:
        _signal(s, signal.SIGKILL if waited >= grace * 4 / 3 else signal.SIGTERM)


def cancel(store: Store, study_id: int, wait: float | None = None) -> str:
    """Ask the worker to stop after the current trial (or mark a study without a live worker cancelled).

    With ``wait``, block up to that many seconds for it to stop, then stop it by force (SIGTERM, then
    SIGKILL) if it runs on this host. Without, ``reconcile`` (the UI's refresh, ``studies``) escalates
    once the cancel is GPTAILOR_STOP_GRACE_S old. Returns the study's status."""
    s = store.study(study_id)
    if not (worker_alive(s) and store.request_cancel(study_id)):
        store.transition(study_id, ACTIVE, "cancelled")
        return store.study(study_id)["status"]
    if wait is None:
        return "cancelling"
    deadline = time.time() + wait
    while time.time() < deadline and store.study(study_id)["status"] in ACTIVE:
        time.sleep(0.2)
    s = store.study(study_id)
    if s["status"] in ACTIVE and _signal(s, signal.SIGTERM):
        kill_at = time.time() + max(1.0, stop_grace_s() / 3)
        while time.time() < kill_at and store.study(study_id)["status"] in ACTIVE:
            time.sleep(0.2)
        s = store.study(study_id)
        if s["status"] in ACTIVE:
            _signal(s, signal.SIGKILL)
            for _ in range(50):
                if local_worker_dead(s["worker_pid"], s["worker_host"], s["worker_start"]):
                    store.stop(study_id, "cancelled", f"cancelled; stopped by force (SIGKILL): the worker had not "
                               f"stopped {wait:g} s after the cancel nor after SIGTERM", owner=_owner(s),
                               inflight_error="stopped by force during this trial")
                    break
                time.sleep(0.1)
    reconcile(store)
    return store.study(study_id)["status"]


def check_resumable(store: Store, study_id: int) -> dict[str, Any]:
    """The study, if it can be resumed (not finished, no live worker); StudyError saying why not."""
    reconcile(store)
    s = store.study(study_id)
    if s["status"] == "finished":
        raise StudyError(f"study {study_id} is finished ({s['trials_done']} trials); nothing to resume")
    if s["status"] in ACTIVE and worker_alive(s):
        raise StudyError(f"study {study_id} is still running (pid {s['worker_pid']}); cancel it first")
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


def running(store: Store) -> list[int]:
    """Ids of the studies holding a live worker right now (each one a process using CPU or GPU)."""
    return [s["id"] for s in store.studies() if s["status"] in ACTIVE and worker_alive(s)]


def _busy(store: Store) -> int:
    return len(running(store))


def launch_or_queue(store: Store, study_id: int, max_workers: int = 0,
                    log_dir: str | os.PathLike | None = None) -> str:
    """Start a worker for the study if fewer than ``max_workers`` run (0: no cap), else mark it 'queued'
    for ``start_queued``; returns 'started' or 'queued'. The stored seed is checked first: a worker
    cannot start with a PYTHONHASHSEED outside 0..2**32-1."""
    from gptailor.common.limits import SettingsError, whole

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
    intervals: dict[str, Interval] = field(default_factory=dict)  # definition -> the 95% interval

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
        if not rep or rep.get("trial") != best.number:  # not written yet (running, or an older study)
            ev = evaluators[key]
            fixed = (s.get("refs") or {}).get("definition")
            definition = applicable_definition(fixed=fixed, setting=s["settings"].get("retention"),
                                               refs=lambda: ev.references("search"))
            rep = report_of(ev, best, definition)
        spans = rep.get("intervals") or _intervals_of(rep, evaluators[key])
        rows.append(CompareRow(s["id"], s["name"], s["method"], rep["plan"], rep["scores"],
                               rep["task_retentions"][rep["definition"]], rep["retention"], rep["kept_layers"],
                               rep["params"], len(trials), max(t.wall_s for t in trials),
                               rep["split"], rep["definition"], rep["retentions"],
                               {d: Interval.from_dict(i) for d, i in spans.items()}))
    return rows


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


def terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


__all__ = ["StoreError", "StudyError", "create_study", "run_study", "launch", "reconcile", "cancel", "resume",
           "wait", "compare", "compare_table", "against_best", "retention_text",
           "METHODS", "BASELINES", "launch_or_queue", "start_queued", "queue",
           "withdraw", "QUEUED", "family_rows", "front_table", "running"]
