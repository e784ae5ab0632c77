"""Does SMAC find better plans than random search and the pruning heuristics, for the same budget?

On the demo family with a quarter of the layers removed, in one run: SMAC (multi-fidelity, layerwise
space with repair), the same with the reject constraint, SMAC on the paper's encoding, random search
(same space, budget, evaluator and trial count) and every heuristic baseline. Each is a real study
in a fresh SQLite file; then the compare table (every study's best plan re-evaluated at full
fidelity), SMAC's margin over the best heuristic and over random, and SMAC's overhead per trial
against evaluation time per trial. Target (issue #3): SMAC beats every heuristic and random, with
retention >= 95 % of the base.

    PYTHONHASHSEED=0 python bench/search_quality.py [--trials 200] [--variants smac,random,...]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.runs import compare, compare_table, create_study, engine_key, run_study  # noqa: E402
from db.store import Store  # noqa: E402
from gptailor import Evaluator, Family, load_suite  # noqa: E402
from gptailor.search import SearchSettings  # noqa: E402
from gptailor.space import Budget  # noqa: E402

VARIANTS = {
    "smac": dict(method="smac", space="layerwise", constraint="repair"),
    "smac_reject": dict(method="smac", space="layerwise", constraint="reject"),
    "smac_paper": dict(method="smac", space="paper"),
    "random": dict(method="random", space="layerwise", constraint="repair"),
}
HEURISTICS = ("last_n", "shortgpt", "angular", "laco", "best_single")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="demo")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--remove-fraction", type=float, default=0.25)
    ap.add_argument("--min-fidelity", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: a fresh temporary SQLite file)")
    args = ap.parse_args()
    if os.environ.get("PYTHONHASHSEED") != str(args.seed):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": str(args.seed)})

    fam = Family.from_spec(args.family)
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()))
    budget = Budget(remove_fraction=args.remove_fraction)
    n = budget.n_remove(fam)
    url = args.db or f"sqlite:///{tempfile.mkdtemp(prefix='gptailor-bench-')}/bench.db"
    store = Store(url)
    print(f"family {fam.name}: {fam.n_layers} layers, removing {n}; {args.trials} trials per search; "
          f"suite {ev.suite.name} ({', '.join(ev.suite.names)}), full fidelity {ev.suite.max_fidelity}; db {url}")
    timing = {}
    for name in args.variants.split(","):
        v = VARIANTS[name]
        settings = SearchSettings(n_trials=args.trials, min_fidelity=args.min_fidelity, seed=args.seed,
                                  **{k: x for k, x in v.items()})
        sid = create_study(store, args.family, v["method"], budget, settings, name=name, evaluator=ev)
        t = time.perf_counter()
        run_study(store, sid, evaluator=ev)
        wall = time.perf_counter() - t
        trials = store.trials(sid)
        eval_s = sum((x["stitch_s"] or 0) + (x["score_s"] or 0) for x in trials)
        timing[name] = (wall, eval_s, len(trials))
        print(f"  {name:<12} {len(trials)} trials in {wall:.0f}s (evaluation {eval_s:.0f}s)", flush=True)
    for h in HEURISTICS:
        sid = create_study(store, args.family, h, budget, SearchSettings(seed=args.seed), name=h, evaluator=ev)
        run_study(store, sid, evaluator=ev)
    rows = compare(store, evaluators={engine_key(s): ev for s in store.studies()})  # one evaluator for all
    base = ev.evaluate(__import__("gptailor").Plan.identity(fam.n_layers, family=fam.name))
    print(f"\nbase model: retention {100 * base.retention:.1f}% (by definition), scores "
          + ", ".join(f"{t}={v:.3f}" for t, v in base.scores.items()))
    print("\ncompare (best plan of each study, re-evaluated at full fidelity):")
    print(compare_table(rows))
    for r in rows:
        print(f"  {r.name:<12} {r.plan}")
    by = {r.name: r for r in rows}
    heur = [by[h] for h in HEURISTICS if h in by]
    best_h = max(heur, key=lambda r: r.retention) if heur else None
    print("\nratios")
    for name in args.variants.split(","):
        if name not in by or name == "random":
            continue
        r = by[name]
        line = f"  {name:<12} retention {100 * r.retention:.1f}%"
        if best_h:
            line += f"; vs best heuristic ({best_h.name}) {100 * (r.retention - best_h.retention):+.1f} pts"
        if "random" in by:
            line += f"; vs random {100 * (r.retention - by['random'].retention):+.1f} pts"
        beats = all(r.retention > h.retention for h in heur) and ("random" not in by or r.retention > by["random"].retention)
        print(line + f"; beats all: {'yes' if beats else 'NO'}; >= 95%: {'yes' if r.retention >= 0.95 else 'NO'}")
    for name, (wall, eval_s, k) in timing.items():
        over = max(0.0, wall - eval_s)
        print(f"  {name:<12} per trial: SMAC/bookkeeping overhead {1e3 * over / k:.0f} ms vs evaluation "
              f"{1e3 * eval_s / k:.0f} ms (overhead/evaluation {over / max(eval_s, 1e-9):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
