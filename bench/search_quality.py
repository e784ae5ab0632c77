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
- each study lives in its own SQLite file.

    PYTHONHASHSEED=0 python -m bench.search_quality [--trials 200] [--seeds 0,1,2] [--methods smac,random]
    PYTHONHASHSEED=0 python -m bench.search_quality --methods smac,random,smac-noseed,random-noseed
    PYTHONHASHSEED=0 python -m bench.search_quality --family data/builtin/smol --remove 1,2,4,8 --trials 24
      (one budget per count, then retention vs size as a front per method, and "how small keeps 95%?";
      --baselines none runs the searches only, --workdir keeps references and heuristics for reruns)
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from db.runs import compare, create_study, engine_key, precompute, run_study  # noqa: E402
from db.store import Store  # noqa: E402
from gptailor import Evaluator, Family, Plan, load_suite  # noqa: E402
from gptailor.eval.noise import beyond_noise, combined_noise, retention_interval  # noqa: E402
from gptailor.eval.results import applicable_definition  # noqa: E402
from gptailor.search.settings import SearchSettings  # noqa: E402
from gptailor.search.space import Budget  # noqa: E402

HEURISTICS = ("last_n", "shortgpt", "angular", "laco", "best_single")
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean, standard deviation and the half-width of a 95% t-interval over seeds."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, 0.0, 0.0
    sd = statistics.stdev(xs)
    return m, sd, T95.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))


def run_one(args, ev, budget, method: str, seed: int, workdir: Path) -> dict:
    """One study in its own SQLite file; returns its test-split report and its timings."""
    store = Store(f"sqlite:///{workdir / f'{method}-seed{seed}.db'}")
    kind, _, variant = method.partition("-")  # smac-noseed: SMAC's own initial design, no heuristic plans
    settings = SearchSettings(n_trials=args.trials, min_fidelity=args.min_fidelity, seed=seed,
                              retention=args.retention, initial_plans=variant != "noseed")
    sid = create_study(store, args.family, kind, budget, settings, name=f"{method} s{seed}", evaluator=ev)
    t = time.perf_counter()
    run_study(store, sid, evaluator=ev)
    wall = time.perf_counter() - t
    trials = store.trials(sid)
    row = compare(store, [sid], evaluators={engine_key(store.study(sid)): ev})[0]
    evals = [x for x in trials if not x.cached]
    eval_s = sum(x.result.stitch_s + x.result.score_s for x in evals if x.result)
    return {"method": method, "seed": seed, "row": row, "wall": wall, "eval_s": eval_s, "n": len(trials),
            "scored": len(evals), "search_best": store.study(sid)["best_retention"]}


def sampling_se(rows: list, tasks: list[str], suite, test_refs, definition: str) -> float:
    """Standard error of a row's mean retention from the finite test split: the engine's rule
    (``gptailor.eval.noise``, Wilson per accuracy task), on the rows' mean scores."""
    scores = {t: statistics.fmean([r.scores[t] for r in rows]) for t in tasks}
    return retention_interval(scores, {x.name: x.split_size("test") for x in suite}, test_refs, definition).se


def run_budget(args, ev, budget: Budget, methods: list[str], seeds: list[int], workdir: Path, definition: str,
               test_refs) -> dict[str, dict]:
    """Every method at one budget: the per-budget table, the verdicts, the overhead; returns a summary."""
    fam, suite = ev.family, ev.suite
    n = budget.n_remove(fam)
    bdir = workdir / f"remove{n}"
    bdir.mkdir(exist_ok=True)
    t0 = time.perf_counter()  # the studies below read these from the cache beside their SQLite files
    precompute(Store(f"sqlite:///{bdir / 'heuristics.db'}")).heuristic_removals(fam, n, suite, ev.stitcher)
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
                  f"{100 * (r['search_best'] or 0):.1f}%), {r['n']} trials ({r['scored']} scored) in {r['wall']:.0f}s",
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
        s_["se"] = sampling_se(s_["rows"], tasks, suite, test_refs, definition)

    print("differences: larger than the noise only when |difference| > 1.96 x the combined noise of the two rows "
          "(seed spread and the test split's sampling error)")
    for method in methods:
        a = summary[method]
        for other in [x for x in [*methods, *args.baselines] if x != method]:
            b = summary[other]
            noise = combined_noise(a["se"], b["se"], a["sd"], len(a["vals"]), b["sd"], len(b["vals"]))
            verdict = "larger than the noise" if beyond_noise(a["mean"] - b["mean"], noise) else "within the noise"
            print(f"  {method} - {other}: {100 * (a['mean'] - b['mean']):+.1f} pts (noise sd {100 * noise:.1f})  "
                  f"{verdict}")
    print("optimizer overhead per trial (wall time minus evaluation; references and heuristics excluded)")
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        over = [(r["wall"] - r["eval_s"]) / r["n"] for r in rs]
        ev_per = [r["eval_s"] / max(1, r["scored"]) for r in rs]
        print(f"  {method:<8} {1e3 * statistics.fmean(over):.0f} ms overhead vs {1e3 * statistics.fmean(ev_per):.0f} ms "
              f"per scored trial; repeats served from the cache: "
              f"{sum(r['n'] - r['scored'] for r in rs)} of {sum(r['n'] for r in rs)} trials")
    print(f"  all heuristic baselines at this budget: {heur_s:.1f}s", flush=True)
    return summary


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="demo")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="smac,random",
                    help="searches to run with every seed: smac, random, evolution, and smac-noseed / random-noseed (without "
                         "the heuristic plans in the initial design: seeds then vary the whole run)")
    ap.add_argument("--remove-fraction", type=float, default=0.25)
    ap.add_argument("--remove", default=None,
                    help="layers to remove, comma-separated (1,2,4,8): one budget each, and a retention-vs-size "
                         "front per method at the end (overrides --remove-fraction)")
    ap.add_argument("--keep", type=float, default=0.95, help="with --remove: the retention to ask 'how small?' for")
    ap.add_argument("--min-fidelity", type=int, default=10)
    ap.add_argument("--workdir", default=None, help="folder for the studies' SQLite files and the references/"
                    "heuristics cache (default: a new temporary folder); a rerun there reuses the cache")
    ap.add_argument("--retention", default="auto", choices=("auto", "family", "base"))
    ap.add_argument("--baselines", default=",".join(HEURISTICS),
                    help="heuristic rows to run at every budget (comma-separated; 'none' for the searches only)")
    args = ap.parse_args()
    args.baselines = () if args.baselines == "none" else tuple(args.baselines.split(","))
    if set(args.baselines) - set(HEURISTICS):
        ap.error(f"--baselines: choose from {', '.join(HEURISTICS)} (or none)")
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, "-m", "bench.search_quality", *sys.argv[1:]],
                  {**os.environ, "PYTHONHASHSEED": "0"})

    fam = Family.from_spec(args.family)
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()))
    budgets = [Budget(remove_layers=int(x)) for x in args.remove.split(",")] if args.remove \
        else [Budget(remove_fraction=args.remove_fraction)]
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gptailor-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = precompute(Store(f"sqlite:///{workdir / 'references.db'}"))  # a rerun in --workdir reuses them
    t0 = time.perf_counter()
    refs = cache.references(ev, "search")
    ref_s = time.perf_counter() - t0
    definition = applicable_definition(setting=args.retention, refs=refs)
    suite = ev.suite
    print(f"family {fam.name}: {fam.n_layers} layers, removing {[b.n_remove(fam) for b in budgets]}; {args.trials} "
          f"trials per search, seeds {seeds}; suite {suite.name}: search split {suite.split_fidelity('search')} / "
          f"test split {suite.split_fidelity('test')} examples per task; retention definition {definition}; "
          f"one SQLite file per study under {workdir}; references (every member, search split) {ref_s:.1f}s")
    test_refs = cache.references(ev, "test")
    base = ev.evaluate(Plan.identity(fam.n_layers, family=fam.name), None, split="test", definition=definition)
    print("base on the test split: " + ", ".join(
        f"{t} {v:.3f} (stderr {base.details[t].get('stderr', 0):.3f})" for t, v in base.scores.items())
        + f"; retention {100 * base.retention:.1f}% ({definition})", flush=True)
    fronts = {b.n_remove(fam): run_budget(args, ev, b, methods, seeds, workdir, definition, test_refs)
              for b in budgets}
    if len(fronts) > 1:
        print_fronts(fronts, methods, fam.n_layers, args.keep, args.baselines)
    print(f"\nreferences (once, not overhead): {ref_s:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
