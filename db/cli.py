"""``python -m db``: the app's whole command line, the engine's commands (info, eval, export, chat) plus the
study commands (search, baseline, resume, cancel, studies, sweep, front, compare).

The study commands need the database, so they live here and hand themselves to the engine's command line
(``gptailor.cli.main(extra=...)``); the engine never imports the app, and ``python -m gptailor`` (or the
installed ``gptailor`` script) stays the engine's command line alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

MODULE = "db"  # this package runs as the command line: python -m db
PROG = f"python -m {MODULE}"


def _budget(args):
    from gptailor.search.space import Budget

    if args.max_param_fraction is not None:
        return Budget(max_param_fraction=args.max_param_fraction)
    if args.remove_layers is not None:
        return Budget(remove_layers=args.remove_layers)
    return Budget(remove_fraction=args.remove_fraction)


def _fixed_hash_seed(argv: list[str], seed: int) -> None:
    """SMAC repeats a seed exactly only with PYTHONHASHSEED fixed: re-run ourselves with it set."""
    if os.environ.get("PYTHONHASHSEED") == str(seed):
        return
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", MODULE, *argv], env)


def _progress(total: int | None, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="trial", file=sys.stderr, disable=None)
    best = [None]

    def on_trial(rec) -> None:
        if rec.retention is not None and (best[0] is None or rec.retention > best[0]):
            best[0] = rec.retention
        bar.set_postfix_str(f"best {100 * best[0]:.1f}%" if best[0] is not None else "")
        bar.update(1)
    return bar, on_trial


def _writer(args):
    """The store a command will write to, checked first: a damaged database (``Store.check_intact``), or an
    in-memory one for a background worker, is refused in a second, before the family loads and before
    anything is stored."""
    from .runs import StudyError
    from .store import Store

    store = Store(args.db)
    if args.background and store.in_memory:
        raise StudyError(f"{store.url} is an in-memory database: a background worker cannot see it; use a file, "
                         f"e.g. sqlite:////absolute/path/gptailor.db in --db or GPTAILOR_DB_URL")
    store.check_intact()
    return store


def _log_dir(store) -> str:
    """Worker logs: ``logs/`` beside a SQLite file, else under the data dir (as the app keeps them);
    never a folder named after the URL."""
    from .settings import data_dir

    return str((store.path.parent if store.path is not None else data_dir(create=False)) / "logs")


def _check_slot(args, store) -> None:
    """``--background`` obeys GPTAILOR_MAX_WORKERS, as the app does: with every worker slot taken (or
    studies already waiting), refuse before anything is stored, unless ``--queue`` asks to wait in line."""
    from .runs import StudyError
    from .workers import queue, reconcile, running
    from .settings import max_workers

    cap = max_workers()
    if not (args.background and cap) or args.queue:
        return
    reconcile(store)
    busy, waiting = running(store), queue(store)
    if len(busy) >= cap or waiting:
        line = f" and {len(waiting)} wait in the queue" if waiting else ""
        raise StudyError(f"{len(busy)} of {cap} worker slots are taken (GPTAILOR_MAX_WORKERS; running: studies "
                         f"{', '.join(map(str, busy)) or '-'}){line}; wait for one to end, or add --queue to start "
                         f"this one when a slot frees")


def _run(args, store, study_id: int, total: int | None) -> int:
    from .runs import run_study
    from .status import QUEUED
    from .workers import launch_or_queue, queue, running
    from .settings import max_workers

    if args.background:
        cap = max_workers()
        if launch_or_queue(store, study_id, cap, log_dir=_log_dir(store)) == QUEUED:
            line = queue(store)
            print(f"study {study_id} queued (#{line.index(study_id) + 1 if study_id in line else 1} in line): "
                  f"{len(running(store))} of {cap} worker slots are taken (GPTAILOR_MAX_WORKERS); it starts when "
                  f"one frees (started by the app, or by `{PROG} studies`)")
            return 0
        s = store.study(study_id)
        print(f"study {study_id} started in the background (pid {s['worker_pid']}); follow it with "
              f"`{PROG} studies`")
        return 0
    done = len(store.trials(study_id))
    bar, on_trial = _progress(total, f"study {study_id}")
    bar.update(done)
    try:
        status = run_study(store, study_id, on_trial=on_trial)
    finally:
        bar.close()
    s = store.study(study_id)
    best, test = s["best_retention"], s["test_retention"]
    refs = s.get("refs") or {}
    print(f"study {study_id} {status}: {s['trials_done']} trials, best retention "
          f"{'-' if best is None else f'{100 * best:.1f}%'} (search split), "
          f"{'-' if test is None else f'{100 * test:.1f}%'} on the held-out test split "
          f"({refs.get('definition', '?')} retention)")
    if refs:
        from gptailor.eval.results import References

        r = References.from_dict(refs)
        print("references (fixed for the study, full search split): " + ", ".join(
            f"{t} {x.value:.3f} ({x.member})" for t, x in r.table(refs["definition"]).items()))
    from gptailor.search.trials import incumbent, pareto_front

    recs = store.trials(study_id)
    b = incumbent(recs)
    if b:
        print(f"best plan: {b.plan.to_text()}")
    if s["settings"].get("objectives") == "per_task":
        tasks = [k for k, v in (b.result.task_retention if b else {}).items() if v is not None]
        front = pareto_front(recs, tasks)
        print(f"Pareto set ({len(front)} plans, per-task retention {', '.join(tasks)}):")
        for t in front:
            vals = " ".join(f"{100 * (t.result.task_retention.get(k) or 0):6.1f}%" for k in tasks)
            print(f"  #{t.number:<4} {vals}  {t.plan.to_text()}")
    return 0 if status in ("finished", "cancelled") else 1


def cmd_search(args) -> int:
    from gptailor.search.settings import SearchSettings

    from .runs import create_study

    settings = SearchSettings(method=args.method, facade=args.facade, space=args.space, constraint=args.constraint,
                              n_trials=args.trials, walltime_s=args.walltime, min_fidelity=args.min_fidelity,
                              max_fidelity=args.max_fidelity, seed=args.seed,
                              initial_plans=not args.no_initial_plans, n_workers=args.workers,
                              scheduler=args.scheduler, objectives=args.objectives, objective=args.objective,
                              retention=args.retention)
    settings.check()  # before re-running ourselves with the seed, and before anything is stored
    if not args.background:
        _fixed_hash_seed(args.argv, args.seed)
    store = _writer(args)
    _check_slot(args, store)
    sid = create_study(store, args.family, args.method, _budget(args), settings, args.suite, args.name)
    return _run(args, store, sid, args.trials)


def cmd_baseline(args) -> int:
    from gptailor.search.settings import SearchSettings

    from .runs import create_study

    store = _writer(args)
    _check_slot(args, store)
    sid = create_study(store, args.family, args.method, _budget(args), SearchSettings(seed=args.seed),
                       args.suite, args.name)
    return _run(args, store, sid, None)


def cmd_resume(args) -> int:
    from gptailor.common.limits import whole

    from .runs import StudyError
    from .workers import check_resumable

    store = _writer(args)
    s = check_resumable(store, args.study)
    if s["status"] == "queued":
        raise StudyError(f"study {args.study} is queued in the app; it starts when a worker slot frees")
    seed = whole("seed", s["settings"].get("seed", 0))  # a stored seed the worker could not start with
    _check_slot(args, store)
    if not args.background:
        _fixed_hash_seed(args.argv, seed)
    return _run(args, store, args.study, s["n_trials"] or None)


def cmd_cancel(args) -> int:
    from .workers import cancel, withdraw
    from .store import Store

    store = Store(args.db)
    if store.study(args.study)["status"] == "queued":
        withdraw(store, args.study)  # a queued study leaves the queue at once
        status = store.study(args.study)["status"]
    else:
        status = cancel(store, args.study, wait=args.wait)
    print(f"study {args.study}: {status}")
    return 0


def _both(means: dict | None) -> tuple[str, str]:
    """A study's (family, base) retention cells: each definition's mean, '-' where none is stored."""
    from gptailor.eval.results import DEFINITIONS

    out = ["-" if (means or {}).get(d) is None else f"{100 * means[d]:.1f}%" for d in DEFINITIONS]
    return out[0], out[1]


def cmd_studies(args) -> int:
    from gptailor.eval.prefix import describe_prefix

    from .rows import study_definition
    from .status import QUEUED, phase_line
    from .workers import reconcile, start_queued
    from .settings import max_workers
    from .store import ACTIVE, Store, StoreError

    store = Store(args.db)
    if args.rename:
        sid, name = args.rename
        try:
            sid = int(sid)
        except ValueError:
            raise StoreError(f"--rename takes a study id and a name, got {sid!r} as the id") from None
        print(f"study {sid} is now named {store.rename_study(sid, name)!r}")
        return 0
    reconcile(store)
    start_queued(store, max_workers(), log_dir=_log_dir(store))  # as the app's refresh: free slots take the queue
    rows = store.studies()
    if args.json:
        print(json.dumps([{**r, "phase_line": phase_line(r)} for r in rows], default=str, indent=2))
        return 0
    from .compare import stale_report

    print(f"{'':>48}{'search split':^18}{'test split':^18}")
    print(f"{'id':>3}  {'method':<12}{'family':<10}{'status':<12}{'trials':>9}"
          f"{'family':>9}{'base':>9}{'family':>9}{'base':>9}{'objective':>11}  name")
    stale = False
    for s in rows:
        definition = study_definition(s) if s["trials_done"] else "-"  # nothing scored yet: nothing to label
        search = _both(s.get("best_retentions"))
        old = stale_report(s)  # scored on an older test split: not today's number
        stale = stale or old
        test = ("stale", "stale") if old else _both((s.get("report") or {}).get("retentions"))
        target = f"{s['trials_done']}/{s['n_trials']}" if s["n_trials"] else str(s["trials_done"])
        print(f"{s['id']:>3}  {s['method']:<12}{s['family']:<10}{s['status']:<12}{target:>9}"
              + "".join(f"{v:>9}" for v in (*search, *test)) + f"{definition:>11}  {s['name']}")
        if s["status"] in (*ACTIVE, QUEUED):  # what its worker is doing now (or that it went quiet)
            print(f"{'':>5}now: {phase_line(s)}")
        if s.get("prefix_cache"):
            print(f"{'':>5}prefix cache: {describe_prefix(s['prefix_cache'])}")
    if stale:
        print("stale: the report was scored on an older test split (the suite's files changed since); "
              "'compare' re-scores it on today's")
    return 0


def cmd_compare(args) -> int:
    from dataclasses import asdict

    from .compare import against_best, compare, compare_table
    from .store import Store

    rows = compare(Store(args.db), args.studies or None)
    if args.json:
        vs = against_best(rows)
        print(json.dumps([{**asdict(r), "vs_best": vs[r.study_id]} for r in rows], indent=2))
    else:
        print(compare_table(rows))
    return 0


def _family_name(source: str) -> str:
    from gptailor import FamilySpec

    return FamilySpec.load(source).name


def cmd_front(args) -> int:
    from .compare import family_rows, front_table
    from .store import Store

    print(front_table(family_rows(Store(args.db), _family_name(args.family)), args.keep))
    return 0


def cmd_sweep(args) -> int:
    """One study per budget (same method, trials and seed), then the front across them."""
    from gptailor.search.settings import SearchSettings
    from gptailor.search.space import Budget

    from .compare import family_rows, front_table
    from .runs import create_study
    from .workers import launch_or_queue
    from .settings import max_workers

    from gptailor.search.settings import METHODS as SEARCHES

    search = args.method in SEARCHES
    settings = (SearchSettings(method=args.method, n_trials=args.trials, min_fidelity=args.min_fidelity,
                               max_fidelity=args.max_fidelity, seed=args.seed, retention=args.retention)
                if search else SearchSettings(seed=args.seed, retention=args.retention))
    settings.check()
    if not args.background:
        _fixed_hash_seed(args.argv, args.seed)
    store = _writer(args)
    ids = [create_study(store, args.family, args.method, Budget(remove_layers=r), settings, args.suite)
           for r in args.remove]  # every budget checked and stored before any runs
    for sid, r in zip(ids, args.remove):
        if args.background:
            how = launch_or_queue(store, sid, max_workers(), log_dir=_log_dir(store))
            print(f"study {sid} ({args.method}, {r} layers removed) {how} in the background")
        else:
            print(f"-- {r} layers removed (study {sid})")
            _run(args, store, sid, args.trials if search else None)
    if args.background:
        print(f"follow them with `{PROG} studies`; then `{PROG} front --family {args.family}`")
        return 0
    print()
    print(front_table(family_rows(store, _family_name(args.family)), args.keep))
    return 0


def _removals(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give layer counts separated by commas, e.g. 1,2,4,8") from None
    if not vals or any(v < 1 for v in vals) or len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct layer counts >= 1, e.g. 1,2,4,8")
    return vals


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v <= 10:
        raise argparse.ArgumentTypeError(f"{text!r}: give a retention as a fraction, e.g. 0.95 for 95%")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    from gptailor.eval.results import AUTO, CHOICES, DEFAULT_OBJECTIVE, OBJECTIVES
    from gptailor.search.baselines import BASELINES
    from gptailor.search.settings import METHODS as SEARCHES, SearchSettings
    from gptailor.search.space import SPACES
    from gptailor.common.limits import arg, arg_seconds

    def common(sp, budget: bool = True):
        sp.add_argument("--db", default=None, help="SQLAlchemy URL (default: GPTAILOR_DB_URL or data/gptailor.db)")
        if budget:
            sp.add_argument("--family", "-f", default="demo")
            sp.add_argument("--suite", default=None, help="suite.yaml (default: the family's)")
            g = sp.add_mutually_exclusive_group()
            g.add_argument("--remove-layers", "-r", type=arg("layers to remove"), default=None, help="layers to remove")
            g.add_argument("--max-param-fraction", type=float, default=None,
                           help="keep at most this fraction of the parameters")
            g.add_argument("--remove-fraction", type=float, default=0.25,
                           help="fraction of the layers to remove (default 0.25, the paper's setting)")
            sp.add_argument("--name", default=None)
            sp.add_argument("--seed", type=arg("seed"), default=0)
        sp.add_argument("--background", action="store_true", help="run in a worker process and return")
        sp.add_argument("--queue", action="store_true",
                        help="with --background: when GPTAILOR_MAX_WORKERS studies run already, wait in the queue "
                             "(started by the app or by `studies`) instead of being refused")

    sp = sub.add_parser("search", help="search for a plan under a budget (evolution, SMAC or random), stored as a study")
    common(sp)
    sp.add_argument("--method", choices=list(SEARCHES), default=SearchSettings.method,
                    help="evolution (the default; EvoPress-style: budget-keeping mutations of the best plans, "
                         "offspring screened by successive halving), smac (Bayesian optimisation) or random")
    sp.add_argument("--facade", choices=["multi_fidelity", "hpo"], default="multi_fidelity")
    sp.add_argument("--space", choices=list(SPACES), default="layerwise",
                    help="layerwise (per position an op, conditional merge weights), paper (the paper's masks), or "
                         "ranked (unconditional: a keep value per position ranks the drops, a source and a mix)")
    sp.add_argument("--constraint", choices=["repair", "reject"], default="repair")
    sp.add_argument("--trials", "-n", type=arg("trials"), default=100,
                    help="trials (100; on a family deeper than 12 layers give about 200: "
                         "gptailor.search.settings.suggested_trials, docs/searching.md)")
    sp.add_argument("--walltime", type=arg_seconds("wall time"), default=None, help="seconds")
    sp.add_argument("--min-fidelity", type=arg("min fidelity"), default=8, help="examples per task at the lowest fidelity")
    sp.add_argument("--max-fidelity", type=arg("max fidelity"), default=None, help="examples per task at full fidelity (default all)")
    sp.add_argument("--no-initial-plans", action="store_true", help="do not seed SMAC with heuristic plans")
    sp.add_argument("--workers", type=arg("workers"), default=1, help="parallel trials through SMAC's Dask support")
    sp.add_argument("--scheduler", default=None, help="tcp://host:port of an existing Dask scheduler")
    sp.add_argument("--objectives", choices=["retention", "per_task"], default="retention",
                    help="per_task: one objective per task (ParEGO), Pareto set reported")
    sp.add_argument("--objective", choices=OBJECTIVES, default=DEFAULT_OBJECTIVE,
                    help="retention of what the optimizer is told: accuracy (each task's metric) or loglik (its "
                         "continuous proxy from the same forward: less noise on few examples); every trial "
                         "records both")
    sp.add_argument("--retention", choices=CHOICES, default=AUTO,
                    help="retention definition (auto: family where a finetune holds a skill the base lacks)")
    sp.set_defaults(func=cmd_search)

    sp = sub.add_parser("baseline", help="a heuristic pruning baseline, stored as a study")
    common(sp)
    sp.add_argument("--method", "-m", choices=BASELINES, required=True,
                    help="a heuristic on the base; best_single: every heuristic on every member; best_seed: "
                         "every plan a search is seeded with (the best of each on the search split is reported)")
    sp.set_defaults(func=cmd_baseline)

    sp = sub.add_parser("resume", help="continue an interrupted or cancelled study")
    common(sp, budget=False)
    sp.add_argument("study", type=int)
    sp.set_defaults(func=cmd_resume)

    sp = sub.add_parser("cancel", help="stop a running study after its current trial")
    common(sp, budget=False)
    sp.add_argument("study", type=int)
    sp.add_argument("--wait", type=arg_seconds("wait"), default=None, metavar="SECONDS",
                    help="wait this long for the worker to stop, then stop it by force (SIGTERM, then SIGKILL; "
                         "only a worker on this host). Without it the cancel is asked for and the command returns; "
                         "a reader (the UI, `studies`) forces it after GPTAILOR_STOP_GRACE_S")
    sp.set_defaults(func=cmd_cancel)

    sp = sub.add_parser("studies", help="list studies with status and best retention")
    sp.add_argument("--db", default=None)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--rename", nargs=2, metavar=("ID", "NAME"), default=None,
                    help="give study ID a new short name (unique within its family)")
    sp.set_defaults(func=cmd_studies)

    sp = sub.add_parser("sweep", help="one study per budget (layers removed), then retention vs size across them")
    common(sp, budget=False)
    sp.add_argument("--family", "-f", default="demo")
    sp.add_argument("--suite", default=None, help="suite.yaml (default: the family's)")
    sp.add_argument("--remove", type=_removals, required=True, help="layer counts to remove, e.g. 1,2,4,8")
    sp.add_argument("--method", choices=[*SEARCHES, *BASELINES],
                    default=SearchSettings.method)
    sp.add_argument("--trials", "-n", type=arg("trials"), default=100,
                    help="trials per budget (searches; about 200 on a family deeper than 12 layers: "
                         "gptailor.search.settings.suggested_trials)")
    sp.add_argument("--min-fidelity", type=arg("min fidelity"), default=8)
    sp.add_argument("--max-fidelity", type=arg("max fidelity"), default=None)
    sp.add_argument("--seed", type=arg("seed"), default=0)
    sp.add_argument("--retention", choices=CHOICES, default=AUTO)
    sp.add_argument("--keep", type=_fraction, default=0.95, help="answer: the smallest plan keeping this retention")
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("front", help="retention vs size across every study of a family; the smallest keeping --keep")
    sp.add_argument("--db", default=None)
    sp.add_argument("--family", "-f", default="demo")
    sp.add_argument("--keep", type=_fraction, default=0.95, help="retention to keep (default 0.95)")
    sp.set_defaults(func=cmd_front)

    sp = sub.add_parser("compare", help="every study's best plan re-evaluated at full fidelity")
    sp.add_argument("--db", default=None)
    sp.add_argument("studies", type=int, nargs="*")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_compare)


def errors() -> tuple[type[Exception], ...]:
    from gptailor.search.space import BudgetError

    from gptailor.common.limits import SettingsError
    from .runs import StudyError
    from .store import StoreError

    return (StudyError, StoreError, BudgetError, SettingsError)


def main(argv: list[str] | None = None) -> int:
    from gptailor.cli import main as engine_main

    return engine_main(argv, extra=[sys.modules[__name__]], prog=PROG)
