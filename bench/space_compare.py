"""SMAC on one family with each search space: best search-split retention at the top fidelity, and where
the trials went (seeded plans, cached repeats, SMAC's own proposals).

A quick check that a space works, not the verdict (the regret benchmark of #21 item 4 compares spaces against
ground truth): ``PYTHONHASHSEED=0 python -m bench.space_compare --spaces layerwise,ranked --seeds 0,1
--max-fidelity 30``.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

from gptailor.search.optimizer import Search
from gptailor.search.precompute import Precompute
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget


def where_trials_went(trials) -> dict[str, int]:
    """Counts of seeded trials, cached repeats and fresh SMAC proposals (a trial can be seeded and cached)."""
    return {"seeded": sum(t.source != "search" for t in trials), "cached": sum(bool(t.cached) for t in trials),
            "fresh_search": sum(t.source == "search" and not t.cached for t in trials)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="demo")
    ap.add_argument("--spaces", default="layerwise,ranked")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--remove", type=int, default=2)
    ap.add_argument("--min-fidelity", type=int, default=10)
    ap.add_argument("--max-fidelity", type=int, default=None)
    args = ap.parse_args()
    from db.runs import load_engine

    os.environ.setdefault("PYTHONHASHSEED", "0")
    warnings.simplefilter("ignore")
    ev = load_engine(args.family)
    n = Budget(remove_layers=args.remove).n_remove(ev.family)
    heur = Precompute(None).heuristic_removals(ev.family, n, ev.suite)
    refs = ev.references("search")
    print("| space | seed | hyperparameters | best retention (search, top fidelity) | seeded | cached | fresh SMAC | "
          "best is a seed | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for space in args.spaces.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            t0 = time.perf_counter()
            res = Search(ev, Budget(remove_layers=args.remove), SearchSettings(
                n_trials=args.trials, space=space, seed=seed, min_fidelity=args.min_fidelity,
                max_fidelity=args.max_fidelity), heuristic_removals=heur, references=refs).run()
            w, best = where_trials_went(res.trials), res.incumbent
            print(f"| {space} | {seed} | {res.space['hyperparameters']} | {best.retention:.3f} | {w['seeded']} | "
                  f"{w['cached']} | {w['fresh_search']} | {best.source} | {time.perf_counter() - t0:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
