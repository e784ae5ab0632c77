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

    PYTHONHASHSEED=0 python bench/search_quality.py [--trials 200] [--seeds 0,1,2] [--methods smac,random]
    PYTHONHASHSEED=0 python bench/search_quality.py --methods smac,random,smac-noseed,random-noseed
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.runs import _heuristic_removals, compare, create_study, engine_key, run_study  # noqa: E402
from db.store import Store  # noqa: E402
from gptailor import Evaluator, Family, Plan, load_suite  # noqa: E402
from gptailor.search import SearchSettings  # noqa: E402
from gptailor.space import Budget  # noqa: E402

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
    evals = [x for x in trials if not x["cached"]]
    eval_s = sum((x["stitch_s"] or 0) + (x["score_s"] or 0) for x in evals)
    if kind in ("smac", "random") and variant != "noseed":  # the heuristic seeds are computed inside run_study: not the optimizer's
        wall -= args.heuristic_s
    return {"method": method, "seed": seed, "row": row, "wall": wall, "eval_s": eval_s, "n": len(trials),
            "scored": len(evals), "search_best": store.study(sid)["best_retention"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="demo")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="smac,random",
                    help="searches to run with every seed: smac, random, and smac-noseed / random-noseed (without "
                         "the heuristic plans in the initial design: seeds then vary the whole run)")
    ap.add_argument("--remove-fraction", type=float, default=0.25)
    ap.add_argument("--min-fidelity", type=int, default=10)
    ap.add_argument("--retention", default="auto", choices=("auto", "family", "base"))
    args = ap.parse_args()
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})

    fam = Family.from_spec(args.family)
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()))
    budget = Budget(remove_fraction=args.remove_fraction)
    n = budget.n_remove(fam)
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="gptailor-bench-"))
    t0 = time.perf_counter()
    refs = ev.references("search")
    ref_s = time.perf_counter() - t0
    definition = refs.default_definition() if args.retention == "auto" else args.retention
    t0 = time.perf_counter()
    _heuristic_removals(ev, budget)
    args.heuristic_s = time.perf_counter() - t0
    suite = ev.suite
    print(f"family {fam.name}: {fam.n_layers} layers, removing {n}; {args.trials} trials per search, seeds {seeds}; "
          f"suite {suite.name}: search split {suite.split_fidelity('search')} / test split "
          f"{suite.split_fidelity('test')} examples per task; retention definition {definition}; "
          f"one SQLite file per study under {workdir}; references (every member, search split) {ref_s:.1f}s")
    base = ev.evaluate(Plan.identity(fam.n_layers, family=fam.name), None, split="test", definition=definition)
    print("base on the test split: " + ", ".join(
        f"{t} {v:.3f} (stderr {base.details[t].get('stderr', 0):.3f})" for t, v in base.scores.items())
        + f"; retention {100 * base.retention:.1f}% ({definition})")

    runs: list[dict] = []
    for method in args.methods.split(","):
        for seed in seeds:
            r = run_one(args, ev, budget, method, seed, workdir)
            runs.append(r)
            print(f"  {method:<8} seed {seed}: test {100 * r['row'].retention:.1f}%  (search-split best "
                  f"{100 * (r['search_best'] or 0):.1f}%), {r['n']} trials ({r['scored']} scored) in {r['wall']:.0f}s",
                  flush=True)
    t_h = time.perf_counter()
    for h in HEURISTICS:
        runs.append(run_one(args, ev, budget, h, 0, workdir))
    heur_s = time.perf_counter() - t_h

    print(f"\nheld-out test split, {definition} retention (best plan of each study re-scored on the whole "
          f"test split); mean +- sd [95% interval] over seeds")
    tasks = list(runs[0]["row"].scores)
    print(f"{'method':<12}{'seeds':>6}{'retention':>12}{'sd':>7}{'95% CI':>17}" + "".join(f"{t[:10]:>11}" for t in tasks)
          + f"{'base-def.':>10}")
    summary = {}
    for method in [*args.methods.split(","), *HEURISTICS]:
        rs = [r for r in runs if r["method"] == method]
        vals = [r["row"].retention for r in rs]
        m, sd, hw = interval(vals)
        summary[method] = (m, sd, hw, vals)
        per_task = [statistics.fmean([(r["row"].task_retention.get(t) or 0) for r in rs]) for t in tasks]
        base_def = statistics.fmean([(r["row"].retentions or {}).get("base", 0) for r in rs])
        print(f"{method:<12}{len(rs):>6}{100 * m:>11.1f}%{100 * sd:>6.1f}"
              f"{f'[{100 * (m - hw):.1f}, {100 * (m + hw):.1f}]':>17}"
              + "".join(f"{100 * v:>10.1f}%" for v in per_task) + f"{100 * base_def:>9.1f}%")
    test_refs = ev.references("test")
    kinds = {t.name: t.kind for t in suite}

    def sampling_se(method: str) -> float:
        """Standard error of a row's mean retention from the finite test split (binomial per accuracy task)."""
        rs = [r["row"] for r in runs if r["method"] == method]
        var = 0.0
        for t in tasks:
            ref = test_refs.reference(definition, t).value
            if kinds[t] == "perplexity" or ref <= 0:
                continue
            p = statistics.fmean([r.scores[t] for r in rs])
            n_t = next(x for x in suite if x.name == t).split_size("test")
            var += (p * (1 - p) / max(1, n_t - 1)) / ref ** 2
        return math.sqrt(var) / len(tasks)

    print("\ndifferences: larger than the noise only when |difference| > 1.96 x the combined noise of the two rows "
          "(seed spread and the test split's sampling error)")
    for method in args.methods.split(","):
        m, sd, _, vals = summary[method]
        for other in [x for x in [*args.methods.split(","), *HEURISTICS] if x != method]:
            m2, sd2, _, vals2 = summary[other]
            noise = math.sqrt(sd ** 2 / len(vals) + sd2 ** 2 / len(vals2) + sampling_se(method) ** 2
                              + sampling_se(other) ** 2)
            verdict = "larger than the noise" if abs(m - m2) > 1.96 * noise else "within the noise"
            print(f"  {method} - {other}: {100 * (m - m2):+.1f} pts (noise sd {100 * noise:.1f})  {verdict}")
    print("\noptimizer overhead per trial (wall time minus evaluation; references and heuristics excluded)")
    for method in args.methods.split(","):
        rs = [r for r in runs if r["method"] == method]
        over = [(r["wall"] - r["eval_s"]) / r["n"] for r in rs]
        ev_per = [r["eval_s"] / max(1, r["scored"]) for r in rs]
        print(f"  {method:<8} {1e3 * statistics.fmean(over):.0f} ms overhead vs {1e3 * statistics.fmean(ev_per):.0f} ms "
              f"per scored trial; repeats served from the cache: "
              f"{sum(r['n'] - r['scored'] for r in rs)} of {sum(r['n'] for r in rs)} trials")
    print(f"  references (once per study, not overhead): {ref_s:.1f}s; all heuristic baselines: {heur_s:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
