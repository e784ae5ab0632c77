"""Does SMAC find better plans than random search and the pruning heuristics, for the same budget?

As a reviewer expects it, in one run:
- every method tunes on the suite's *search* split and is reported on the disjoint *test* split
  (each study's best plan re-scored on the whole test split);
- SMAC and random search get the same trial budget, the same seeded initial design (the heuristics'
  plans crossed with merge settings) and the same fidelities (Hyperband), so a difference is the
  optimizer's; each runs with several seeds, and every row gives mean, standard deviation and a 95%
  interval (t distribution) over seeds;
- every heuristic and best-single is a row (deterministic: one run, its own spread is zero; the
  noise of its test score is the task stderr, printed too);
- the optimizer's own overhead per trial is measured apart from evaluation, references and heuristics;
- each study lives in its own SQLite file;
- anytime curves from the same run: per method, the best so far by the search score the method saw (the
  ``--objective``), ranked as the study ranks its trials (``gptailor.search.trials.rank_key``: the highest
  fidelity first), against trials and against wall time, median [min, max] over seeds (``--json`` keeps
  every run's curves for plotting).

    PYTHONHASHSEED=0 python -m bench.search_quality [--trials 200] [--seeds 0,1,2] [--methods smac,random]
    PYTHONHASHSEED=0 python -m bench.search_quality --methods smac,random,smac-noseed,random-noseed
    PYTHONHASHSEED=0 python -m bench.search_quality --methods smac,random,evolution --objective loglik \
        --suite my/suite.yaml --max-fidelity 50 --json curves.json
    PYTHONHASHSEED=0 python -m bench.search_quality --family data/builtin/smol-all --methods evolution,evolution-pick
      (the paper's ablation: pick-only plans against picks with merges, the same seeds, budget and evaluator)
    PYTHONHASHSEED=0 python -m bench.search_quality --family data/builtin/smol --remove 1,2,4,8 --trials 24
      (one budget per count, then retention vs size as a front per method, and "how small keeps 95%?";
      --baselines none runs the searches only, --workdir keeps references and heuristics for reruns)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from db.compare import compare, engine_key  # noqa: E402
from db.runs import create_study, precompute, run_study  # noqa: E402
from db.store import Store  # noqa: E402
from gptailor import Evaluator, Family, Plan, load_suite  # noqa: E402
from gptailor.common.limits import SettingsError, whole  # noqa: E402
from gptailor.common.progress import Phase, Progress  # noqa: E402
from gptailor.eval.noise import beyond_noise, combined_noise, retention_interval, verdict as verdict_of  # noqa: E402
from gptailor.eval.results import DEFAULT_OBJECTIVE, OBJECTIVES, applicable_definition  # noqa: E402
from gptailor.search.baselines import BASELINES as HEURISTICS  # noqa: E402  (every baseline row; best_seed: the seeds)
from gptailor.search.settings import METHODS as SEARCHES, SearchSettings  # noqa: E402
from gptailor.search.space import Budget  # noqa: E402
from gptailor.search.trials import CUT, TrialRecord, fidelity_rank, rank_key  # noqa: E402

VARIANTS = ("", "noseed", "pick")  # -noseed: no heuristic plans in the initial design; -pick: the pick-only space
# (no merges: the paper's ablation, picks alone against picks with merges, the same seeds and budget)
FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)  # the anytime curves' points, as fractions of --trials and of the wall time
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean, standard deviation and the half-width of a 95% t-interval over seeds."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, 0.0, 0.0
    sd = statistics.stdev(xs)
    return m, sd, T95.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))


def show_progress(what: str) -> Progress:
    """A phase listener that prints, on stderr, each member as its references are scored (minutes on a real
    family) and each heuristic as its plan is computed; ``what`` names the split or budget."""
    def on_phase(p: Phase) -> None:
        if p.phase == "references":
            if p.cached:
                print(f"references ({what}): {p.detail} (cached)", file=sys.stderr, flush=True)
            elif p.done is not None and p.total and p.done < p.total:
                name = p.detail.removeprefix("scoring ")
                print(f"references ({what}): member {p.done + 1} of {p.total} ({name})", file=sys.stderr, flush=True)
        elif p.phase == "heuristics" and p.done is not None and p.total and p.done < p.total:
            print(f"heuristic seeds ({what}): {p.done + 1} of {p.total} ({p.detail})", file=sys.stderr, flush=True)
    return Progress(on_phase=on_phase)


# ----------------------------------------------------------------------------- anytime curves
@dataclass
class Point:
    """The best trial so far after ``trials`` trials (or at ``wall_s`` seconds), by the one ranking rule."""

    trials: int  # trials done (not counting cut ones), in the order the search numbered them
    wall_s: float  # seconds since the study started, when the last of them completed
    number: int | None  # the best-so-far trial (None: nothing scored yet)
    fidelity: int | None
    score: float | None  # the search score the method saw (SearchSettings.objective, as a retention)
    retention: float | None  # its accuracy retention (applicable definition), what the study reports on


def search_score(t: TrialRecord, objective: str) -> float | None:
    """The score the method optimised, as a retention (higher is better): accuracy or loglik retention, or
    exp(-KL); None for a trial without one (failed, rejected)."""
    if t.status != "complete" or t.result is None:
        return None
    return t.result.objective_retention(objective)


def best_so_far(trials: list[TrialRecord], objective: str, by: Callable[[TrialRecord], float]) -> list[Point]:
    """One point per trial, in the order ``by`` (trial number, or completion time): the best trial so far by
    ``gptailor.search.trials.rank_key`` (the highest fidelity first, then the score, then the proxy, then the earliest), so a
    plan scored on more examples replaces a better-looking one scored on fewer, as the study's incumbent does."""
    out: list[Point] = []
    best: tuple | None = None
    done = sorted((t for t in trials if t.status != CUT), key=by)
    for k, t in enumerate(done, 1):
        v = search_score(t, objective)
        if v is not None:
            key = rank_key(t.fidelity, v, t.number, tiebreak=t.result.tiebreak)
            if best is None or key < best[0]:
                best = (key, t, v)
        b = best[1] if best else None
        out.append(Point(k, t.wall_s, b.number if b else None, b.fidelity if b else None,
                         best[2] if best else None, b.result.retention if b else None))
    return out


def at_trials(curve: list[Point], k: int) -> Point | None:
    """The curve after ``k`` trials (its last point when the run stopped short)."""
    return curve[min(k, len(curve)) - 1] if curve else None


def at_wall(curve: list[Point], seconds: float) -> Point | None:
    """The curve at ``seconds`` (by completion time): the last point completed by then, None before the first."""
    done = [p for p in curve if p.wall_s <= seconds]
    return done[-1] if done else None


def trial_points(n_trials: int) -> list[int]:
    """The trial counts the anytime table reads: FRACTIONS of --trials, at least 1, without repeats."""
    return sorted({max(1, math.ceil(f * n_trials)) for f in FRACTIONS})


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, minimum and maximum over seeds."""
    return statistics.median(values), min(values), max(values)


def cell(points: list[Point | None]) -> str:
    """'25.3 [24.1, 27.8] @33-100': median [min, max] over seeds of the best-so-far score (in %), and the
    fidelities those plans were scored at (examples per task; lowest-highest where the seeds differ); '(1/3)' when only some seeds had a score by then; '-' before
    anything was scored."""
    got = [p for p in points if p is not None and p.score is not None]
    if not got:
        return "-"
    m, lo, hi = spread([100 * p.score for p in got])
    fids = sorted({fidelity_rank(p.fidelity) for p in got})
    at = "-".join("all" if math.isinf(f) else f"{f:g}" for f in (fids[0], fids[-1])[:len(fids)])
    some = "" if len(got) == len(points) else f" ({len(got)}/{len(points)})"  # seeds with a score by then
    return (f"{m:.1f}" if len(got) == 1 else f"{m:.1f} [{lo:.1f}, {hi:.1f}]") + f" @{at}{some}"


def print_anytime(runs: list[dict], methods: list[str], n_trials: int, objective: str) -> None:
    """Per method, the best-so-far search score against trials and against wall time (median [min, max]
    over seeds), when each run reached its final best, and that plan's test-split retention."""
    what = "exp(-KL) to the references" if objective == "kl" else f"{objective} retention"
    print(f"anytime (search split): best so far by the search score ({what}, %), ranked as the study ranks "
          f"trials (highest fidelity first, then score); median [min, max] over seeds @ fidelity")
    ks = trial_points(n_trials)
    w = 26
    print(f"{'method':<18}" + "".join(f"{f'{k} trials':>{w}}" for k in ks))
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        print(f"{method:<18}" + "".join(f"{cell([at_trials(r['curve'], k) for r in rs]):>{w}}" for k in ks))
    longest = max((r["wall_curve"][-1].wall_s for r in runs if r["method"] in methods and r["wall_curve"]),
                  default=0.0)
    secs = [f * longest for f in FRACTIONS]
    digits = 0 if longest >= 20 else 1
    print(f"{'wall time':<18}" + "".join(f"{f'{s:.{digits}f} s':>{w}}" for s in secs))
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        print(f"{method:<18}" + "".join(f"{cell([at_wall(r['wall_curve'], s) for r in rs]):>{w}}" for s in secs))
    print("final best per run: the trial, when it completed, and the study's reported plan re-scored on the test "
          "split (the study reports its incumbent by accuracy retention)")
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        reached = [r["reached_s"] for r in rs if r["reached_s"] is not None]
        when = "-" if not reached else (f"{reached[0]:.0f} s" if len(reached) == 1 else
                                        "{:.0f} s [{:.0f}, {:.0f}]".format(*spread(reached)))
        tests = [100 * r["row"].retention for r in rs]
        test = f"{tests[0]:.1f}%" if len(tests) == 1 else "{:.1f}% [{:.1f}, {:.1f}]".format(*spread(tests))
        trials = ", ".join(f"#{r['curve'][-1].number}" if r["curve"] else "-" for r in rs)
        print(f"  {method:<16} reached at {when} (trials {trials}); test retention {test}")


def run_one(args, ev, budget, method: str, seed: int, workdir: Path) -> dict:
    """One study in its own SQLite file; returns its test-split report and its timings."""
    store = Store(f"sqlite:///{workdir / f'{method}-seed{seed}.db'}")
    kind, _, variant = method.partition("-")  # smac-noseed: SMAC's own initial design, no heuristic plans
    settings = SearchSettings(n_trials=args.trials, min_fidelity=args.min_fidelity, max_fidelity=args.max_fidelity,
                              seed=seed, retention=args.retention, initial_plans=variant != "noseed",
                              objective=args.objective, space="pick" if variant == "pick" else SearchSettings.space)
    name = f"{method} s{seed}"
    sid = finished_twin(store, name, kind, budget, settings, str(ev.suite.path))
    reused = sid is not None
    if reused:  # this very study finished in an earlier run in this --workdir: read it, don't redo it
        st = store.study(sid)
        wall = (st["finished_at"] - st["started_at"]).total_seconds()
    else:
        sid = create_study(store, args.family, kind, budget, settings, suite=args.suite, name=name, evaluator=ev)
        t = time.perf_counter()
        run_study(store, sid, evaluator=ev)
        wall = time.perf_counter() - t
    trials = store.trials(sid)
    row = compare(store, [sid], evaluators={engine_key(store.study(sid)): ev})[0]
    evals = [x for x in trials if not x.cached]
    eval_s = sum(x.result.stitch_s + x.result.score_s for x in evals if x.result)
    curve = best_so_far(trials, args.objective, by=lambda t: t.number)
    final = curve[-1] if curve else None
    reached = next((t.wall_s for t in trials if final and t.number == final.number), None)
    return {"method": method, "seed": seed, "row": row, "wall": wall, "eval_s": eval_s, "n": len(trials),
            "scored": len(evals), "search_best": store.study(sid)["best_retention"], "trials": trials,
            "curve": curve, "wall_curve": best_so_far(trials, args.objective, by=lambda t: (t.wall_s, t.number)),
            "reached_s": reached, "db": str(workdir / f"{method}-seed{seed}.db"), "stored": reused}


def finished_twin(store: Store, name: str, kind: str, budget: Budget, settings: SearchSettings,
                  suite: str) -> int | None:
    """The id of a finished study with this name, method, budget, settings and suite in ``store`` (an earlier
    run in the same --workdir), whose test-split report is written; None if there is none."""
    for st in store.studies():
        if (st["name"], st["method"], st["status"]) == (name, kind, "finished") and st["report"] \
                and st["budget"] == budget.to_dict() and SearchSettings.from_dict(st["settings"]) == settings \
                and str(st["settings"].get("suite")) == suite:
            return st["id"]
    return None


def sampling_se(scores: list[dict[str, float]], tasks: list[str], suite, test_refs, definition: str) -> float:
    """Standard error of a row's mean retention from the finite test split: the engine's rule
    (``gptailor.eval.noise``, Wilson per accuracy task), on the mean of the row's per-seed task scores."""
    mean = {t: statistics.fmean([s[t] for s in scores]) for t in tasks}
    return retention_interval(mean, {x.name: x.split_size("test") for x in suite}, test_refs, definition).se


def run_budget(args, ev, budget: Budget, methods: list[str], seeds: list[int], workdir: Path, definition: str,
               test_refs) -> tuple[dict[str, dict], list[dict]]:
    """Every method at one budget: the per-budget table, the anytime curves, the verdicts, the overhead;
    returns a summary per method and every run."""
    fam, suite = ev.family, ev.suite
    n = budget.n_remove(fam)
    bdir = workdir / f"remove{n}"
    bdir.mkdir(exist_ok=True)
    t0 = time.perf_counter()  # the studies below read these from the cache beside their SQLite files
    precompute(Store(f"sqlite:///{bdir / 'heuristics.db'}")).heuristic_removals(
        fam, n, suite, ev.stitcher, show_progress(f"removing {n}"))
    args.heuristic_s = time.perf_counter() - t0
    print(f"\n=== removing {n} of {fam.n_layers} layers ({100 * n / fam.n_layers:.1f}%); heuristic seeds "
          f"{args.heuristic_s:.1f}s (bounded: one base forward + at most 8 LaCo candidates; cached afterwards)",
          flush=True)
    runs: list[dict] = []
    for method in methods:
        for seed in seeds:
            r = run_one(args, ev, budget, method, seed, bdir)
            runs.append(r)
            print(f"  {method:<8} seed {seed}: test {100 * r['row'].retention:.1f}%  (search-split best "
                  f"{100 * (r['search_best'] or 0):.1f}%), {r['n']} trials ({r['scored']} scored) in {r['wall']:.0f}s"
                  + (" (a finished study of an earlier run in this --workdir, read back)" if r["stored"] else ""),
                  flush=True)
    t_h = time.perf_counter()
    for h in args.baselines:
        runs.append(run_one(args, ev, budget, h, 0, bdir))
    heur_s = time.perf_counter() - t_h

    print(f"held-out test split, {definition} retention (best plan of each study re-scored on the whole "
          f"test split); mean +- sd [95% interval] over seeds")
    tasks = list(runs[0]["row"].scores)
    print(f"{'method':<14}{'seeds':>6}{'retention':>12}{'sd':>7}{'95% CI':>17}"
          + "".join(f"{t[:10]:>11}" for t in tasks) + f"{'base-def.':>10}  best plan (first seed)")
    summary: dict[str, dict] = {}
    for method in [*methods, *args.baselines]:
        rs = [r for r in runs if r["method"] == method]
        vals = [r["row"].retention for r in rs]
        m, sd, hw = interval(vals)
        summary[method] = {"mean": m, "sd": sd, "hw": hw, "vals": vals, "rows": [r["row"] for r in rs]}
        per_task = [statistics.fmean([(r["row"].task_retention.get(t) or 0) for r in rs]) for t in tasks]
        base_def = statistics.fmean([(r["row"].retentions or {}).get("base", 0) for r in rs])
        print(f"{method:<14}{len(rs):>6}{100 * m:>11.1f}%{100 * sd:>6.1f}"
              f"{f'[{100 * (m - hw):.1f}, {100 * (m + hw):.1f}]':>17}"
              + "".join(f"{100 * v:>10.1f}%" for v in per_task) + f"{100 * base_def:>9.1f}%  {rs[0]['row'].plan}")
    for s_ in summary.values():
        s_["se"] = sampling_se([r.scores for r in s_["rows"]], tasks, suite, test_refs, definition)
    print_anytime(runs, methods, args.trials, args.objective)

    print("differences: larger than the noise only when |difference| > 1.96 x the combined noise of the two rows "
          "(seed spread and the test split's sampling error)")
    noises: dict[tuple[str, str], float] = {}
    for method in methods:
        a = summary[method]
        for other in [x for x in [*methods, *args.baselines] if x != method]:
            b = summary[other]
            noise = noises[method, other] = combined_noise(a["se"], b["se"], a["sd"], len(a["vals"]), b["sd"],
                                                           len(b["vals"]))
            verdict = "larger than the noise" if beyond_noise(a["mean"] - b["mean"], noise) else "within the noise"
            print(f"  {method} - {other}: {100 * (a['mean'] - b['mean']):+.1f} pts (noise sd {100 * noise:.1f})  "
                  f"{verdict}")
    if args.baselines:  # #21's bar: the best of every baseline row (each picked on the search split), held out
        bar = max(args.baselines, key=lambda b: summary[b]["mean"])
        b = summary[bar]
        for method in methods:
            a, noise = summary[method], noises[method, bar]
            print(f"  {method} against the best baseline row ({bar}, {100 * b['mean']:.1f}%): "
                  f"{100 * (a['mean'] - b['mean']):+.1f} pts (noise sd {100 * noise:.1f})  "
                  f"{verdict_of(a['mean'] - b['mean'], noise)}")
    print("optimizer overhead per trial (wall time minus evaluation; references and heuristics excluded)")
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        over = [(r["wall"] - r["eval_s"]) / r["n"] for r in rs]
        ev_per = [r["eval_s"] / max(1, r["scored"]) for r in rs]
        print(f"  {method:<8} {1e3 * statistics.fmean(over):.0f} ms overhead vs {1e3 * statistics.fmean(ev_per):.0f} ms "
              f"per scored trial; repeats served from the cache: "
              f"{sum(r['n'] - r['scored'] for r in rs)} of {sum(r['n'] for r in rs)} trials")
    print(f"  all heuristic baselines at this budget: {heur_s:.1f}s", flush=True)
    return summary, runs


def print_fronts(fronts: dict[int, dict[str, dict]], methods: list[str], n_layers: int, keep: float,
                 baselines: tuple[str, ...] = HEURISTICS) -> None:
    """Retention (test split) against layers removed, one row per method: the front each method traces."""
    budgets = sorted(fronts)
    print(f"\n=== retention vs size per method (test split, mean +- sd over seeds; {n_layers} layers)")
    print(f"{'method':<14}" + "".join(f"{f'-{n} ({100 * n / n_layers:.0f}%)':>18}" for n in budgets))
    for method in [*methods, *baselines]:
        cells = [f"{100 * fronts[n][method]['mean']:.1f} +- {100 * fronts[n][method]['sd']:.1f}" for n in budgets]
        print(f"{method:<14}" + "".join(f"{c:>18}" for c in cells))
    print(f"smallest size keeping >= {100 * keep:.0f}% (family's best per task), per method:")
    for method in [*methods, *baselines]:
        ok = [n for n in budgets if fronts[n][method]["mean"] >= keep]
        print(f"  {method:<12} " + (f"{max(ok)} of {n_layers} layers removed" if ok else "none of the budgets tried"))
    print("does each search's front dominate every other method's by more than the noise, at every budget?")
    for method in methods:
        if not [x for x in [*methods, *baselines] if x != method]:
            print(f"  {method:<8} no other method in this run to compare with")
            continue
        verdicts = []
        for n in budgets:
            a = fronts[n][method]
            worse = []
            for other in [x for x in [*methods, *baselines] if x != method]:
                b = fronts[n][other]
                noise = combined_noise(a["se"], b["se"], a["sd"], len(a["vals"]), b["sd"], len(b["vals"]))
                if a["mean"] - b["mean"] <= 0 or not beyond_noise(a["mean"] - b["mean"], noise):
                    worse.append(other)
            verdicts.append(f"-{n}: " + ("yes" if not worse else "no (not above " + ", ".join(worse) + ")"))
        print(f"  {method:<8} " + "; ".join(verdicts))


def check_methods(ap: argparse.ArgumentParser, text: str) -> list[str]:
    """The --methods list, each a search (smac, random, evolution), a search-noseed or a search-pick; else exit 2
    naming it."""
    methods = [m for m in text.split(",") if m]
    for m in methods:
        kind, _, variant = m.partition("-")
        if kind not in SEARCHES or variant not in VARIANTS:
            ap.error(f"--methods: unknown method {m!r}; use {', '.join(SEARCHES)}, each optionally with -noseed "
                     f"or -pick (e.g. evolution-noseed, evolution-pick)")
    if not methods:
        ap.error("--methods: name at least one search (smac, random, evolution)")
    return methods


def curves_json(runs_by_budget: dict[int, list[dict]], args: argparse.Namespace) -> dict:
    """Every run's trials and curves, for plotting: {settings, budgets: {layers removed: [run, ...]}}."""
    def run_dict(r: dict) -> dict:
        return {"method": r["method"], "seed": r["seed"], "db": r["db"], "wall_s": r["wall"],
                "test_retention": r["row"].retention, "test_plan": r["row"].plan, "reached_s": r["reached_s"],
                "trials": [{"number": t.number, "wall_s": t.wall_s, "fidelity": t.fidelity, "status": t.status,
                            "source": t.source, "score": search_score(t, args.objective),
                            "retention": t.result.retention if t.result else None} for t in r["trials"]],
                "curve": [asdict(p) for p in r["curve"]], "wall_curve": [asdict(p) for p in r["wall_curve"]]}
    settings = {k: v for k, v in vars(args).items() if k not in ("heuristic_s",)}
    return {"settings": {**settings, "baselines": list(args.baselines)},
            "budgets": {str(n): [run_dict(r) for r in rs] for n, rs in runs_by_budget.items()}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="demo")
    ap.add_argument("--suite", default=None, help="a task suite (suite.yaml) instead of the family's own")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="smac,random",
                    help="searches to run with every seed: smac, random, evolution, and smac-noseed / random-noseed / "
                         "evolution-noseed (without the heuristic plans in the initial design: seeds then vary the "
                         "whole run), and smac-pick / random-pick / evolution-pick (pick-only plans, no merges: the "
                         "paper's ablation)")
    ap.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=OBJECTIVES,
                    help="what every search optimises (SearchSettings.objective); the reports stay accuracy retention")
    ap.add_argument("--remove-fraction", type=float, default=0.25)
    ap.add_argument("--remove", default=None,
                    help="layers to remove, comma-separated (1,2,4,8): one budget each, and a retention-vs-size "
                         "front per method at the end (overrides --remove-fraction)")
    ap.add_argument("--keep", type=float, default=0.95, help="with --remove: the retention to ask 'how small?' for")
    ap.add_argument("--min-fidelity", type=int, default=10)
    ap.add_argument("--max-fidelity", type=int, default=None,
                    help="examples per task at the top rung (default: the whole search split)")
    ap.add_argument("--workdir", default=None, help="folder for the studies' SQLite files and the references/"
                    "heuristics cache (default: a new temporary folder); a rerun there reuses the cache")
    ap.add_argument("--retention", default="auto", choices=("auto", "family", "base"))
    ap.add_argument("--baselines", default=",".join(HEURISTICS),
                    help="heuristic rows to run at every budget (comma-separated; 'none' for the searches only)")
    ap.add_argument("--json", default=None, help="write every run's trials and anytime curves to this file")
    args = ap.parse_args(argv)
    args.baselines = () if args.baselines == "none" else tuple(args.baselines.split(","))
    if set(args.baselines) - set(HEURISTICS):
        ap.error(f"--baselines: choose from {', '.join(HEURISTICS)} (or none)")
    methods = check_methods(ap, args.methods)
    if args.max_fidelity is not None and args.max_fidelity < args.min_fidelity:
        ap.error(f"--max-fidelity ({args.max_fidelity}) is below --min-fidelity ({args.min_fidelity}); raise it "
                 f"or leave it out for the whole search split")
    try:  # the ranges every study checks, refused here before minutes of references
        SearchSettings(n_trials=args.trials, min_fidelity=args.min_fidelity, max_fidelity=args.max_fidelity,
                       objective=args.objective).check()
        seeds = [whole("seed", x) for x in args.seeds.split(",")]
    except SettingsError as e:
        ap.error(str(e))
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        ap.error(f"--json: no folder {Path(args.json).resolve().parent}; create it or write the curves elsewhere")
    if args.suite is not None and not Path(args.suite).is_file():
        ap.error(f"--suite: no file {args.suite}; pass a task suite (suite.yaml)")

    fam = Family.from_spec(args.family)
    suite_path = args.suite or fam.spec.suite_path()
    if not suite_path:
        ap.error(f"family {fam.name!r} names no task suite; pass --suite path/to/suite.yaml")
    ev = Evaluator(fam, load_suite(suite_path))
    budgets = [Budget(remove_layers=int(x)) for x in args.remove.split(",")] if args.remove \
        else [Budget(remove_fraction=args.remove_fraction)]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gptailor-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = precompute(Store(f"sqlite:///{workdir / 'references.db'}"))  # a rerun in --workdir reuses them
    t0 = time.perf_counter()
    refs = cache.references(ev, "search", show_progress("search split"))
    ref_s = time.perf_counter() - t0
    definition = applicable_definition(setting=args.retention, refs=refs)
    suite = ev.suite
    print(f"family {fam.name}: {fam.n_layers} layers, removing {[b.n_remove(fam) for b in budgets]}; {args.trials} "
          f"trials per search, seeds {seeds}, objective {args.objective}; suite {suite.name}: search split "
          f"{suite.split_fidelity('search')} / test split {suite.split_fidelity('test')} examples per task, fidelities "
          f"{args.min_fidelity} to {args.max_fidelity or 'the whole split'}; retention definition {definition}; "
          f"one SQLite file per study under {workdir}; references (every member, search split) {ref_s:.1f}s")
    test_refs = cache.references(ev, "test", show_progress("test split"))
    base = ev.evaluate(Plan.identity(fam.n_layers, family=fam.name), None, split="test", definition=definition)
    print("base on the test split: " + ", ".join(
        f"{t} {v:.3f} (stderr {base.details[t].get('stderr', 0):.3f})" for t, v in base.scores.items())
        + f"; retention {100 * base.retention:.1f}% ({definition})", flush=True)
    fronts, runs = {}, {}
    for b in budgets:
        n = b.n_remove(fam)
        fronts[n], runs[n] = run_budget(args, ev, b, methods, seeds, workdir, definition, test_refs)
    if len(fronts) > 1:
        print_fronts(fronts, methods, fam.n_layers, args.keep, args.baselines)
    if args.json:
        Path(args.json).write_text(json.dumps(curves_json(runs, args), indent=1))
        print(f"\ncurves of every run: {args.json}")
    print(f"\nreferences (once, not overhead): {ref_s:.1f}s")
    return 0


if __name__ == "__main__":
    from bench import rerun_with_fixed_hash_seed

    rerun_with_fixed_hash_seed("bench.search_quality")
    raise SystemExit(main())
