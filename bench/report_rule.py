"""Which trial should a loglik study report? The ranking rule's against the objective's, held out.

A study ranks its trials by the one rule (``gptailor.search.trials.rank_key``: accuracy retention at the highest
fidelity first, the continuous proxy breaking ties). A study that optimised ``loglik`` could instead report the
trial with the best objective retention at the highest fidelity (``bench.search_regret.objective_incumbent``).
On enumerated tables the second was never worse (``bench.search_regret run`` prints both); this asks the same of
real searches: for every finished study in ``bench.search_quality`` workdirs it re-scores both trials' plans on
the whole held-out test split and prints the paired difference per workdir (the same examples for both plans,
so the seeds' spread of the difference is the noise that matters).

    PYTHONHASHSEED=0 OMP_NUM_THREADS=1 python -m bench.report_rule /work/sq/smol-r4 /work/sq/smol-r6
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench.search_regret import objective_incumbent
from db.compare import compare, engine_key
from db.runs import report_of
from db.store import Store
from gptailor.search.settings import METHODS
from gptailor.search.trials import incumbent


def both_reports(db: Path, evaluators: dict) -> list[tuple[str, int, float, int, float]]:
    """Per finished search (not a heuristic baseline) in ``db`` that optimised a continuous objective: (name, rule's trial, its test retention,
    objective's trial, its test retention). The rule's side is ``db.compare``'s row (its stored report when it
    is of that trial), which also loads the study's evaluator into ``evaluators`` and names its definition."""
    out = []
    store = Store(f"sqlite:///{db}")
    for s in store.studies():
        objective = s["settings"].get("objective", "accuracy")
        if s["status"] != "finished" or objective == "accuracy" or s["method"] not in METHODS:  # searches only
            continue
        trials = store.trials(s["id"])
        row = compare(store, [s["id"]], evaluators)[0]
        a, b = incumbent(trials), objective_incumbent(trials, objective, row.definition)
        rb = row.retention if b.plan.key() == a.plan.key() else \
            report_of(evaluators[engine_key(s)], b, row.definition)["retention"]
        out.append((s["name"], a.number, row.retention, b.number, rb))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdirs", nargs="+", help="bench.search_quality --workdir folders")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    evaluators: dict = {}
    pooled: list[float] = []
    print("held-out test retention (%) of the plan each study reports: by the ranking rule (accuracy first) and "
          "by its objective")
    for w in args.workdirs:
        diffs = []
        for db in sorted(Path(w).glob("remove*/*-seed*.db")):
            for name, na, ra, nb, rb in both_reports(db, evaluators):
                diffs.append(rb - ra)
                print(f"  {db.parent.name}/{db.name} {name}: rule #{na} {100 * ra:.1f}  objective #{nb} {100 * rb:.1f}"
                      f"  {100 * (rb - ra):+.1f}", flush=True)
        if diffs:
            pooled += diffs
            sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            print(f"{w}: objective - rule {100 * statistics.fmean(diffs):+.1f} pts (sd {100 * sd:.1f}, "
                  f"{len(diffs)} studies, {sum(d != 0 for d in diffs)} report another plan)", flush=True)
    if len(pooled) > 1:
        m, sd = statistics.fmean(pooled), statistics.stdev(pooled)
        print(f"pooled: {100 * m:+.2f} pts, se {100 * sd / len(pooled) ** 0.5:.2f} ({len(pooled)} studies)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
