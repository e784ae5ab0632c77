"""Paired noise: is a search's best plan better than a baseline's on the *same* held-out examples?

``bench.search_quality`` judges a difference against both rows' test-split sampling errors added as if the
rows had been scored on independent examples (and leaves perplexity's error out). Both plans are scored on the
same examples, so much of that error is shared and cancels in their difference. This re-scores the reported
plan of every study in a ``search_quality --workdir`` on the whole test split, example by example, and
resamples the examples with one draw for every plan (the paired bootstrap, Koehn 2004; every task, perplexity
too), which gives the noise of the difference itself; the seeds' spread is added as ``search_quality`` adds it.
It prints both verdicts, the paired one and ``search_quality``'s, and checks that each plan re-scored here
equals its study's stored test report.

    PYTHONHASHSEED=0 python -m bench.paired_noise --workdir /work/sq/smol-r4 --family data/builtin/smol --remove 4
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from gptailor import Evaluator, Family, Plan, load_suite
from gptailor.eval.noise import Z95, combined_noise, verdict
from gptailor.eval.results import References, applicable_definition


def study_plans(folder: Path, family: str) -> dict[str, list[tuple[int, Plan, float]]]:
    """Per method (the file name's ``<method>-seed<k>.db``), each finished study's (seed, reported plan, stored
    test retention)."""
    from db.store import Store

    out: dict[str, list[tuple[int, Plan, float]]] = {}
    for db in sorted(folder.glob("*-seed*.db")):
        method, _, seed = db.stem.rpartition("-seed")
        for st in Store(f"sqlite:///{db}").studies():
            if st["status"] == "finished" and st["report"]:
                out.setdefault(method, []).append((int(seed), Plan.from_text(st["report"]["plan"], family),
                                                   st["test_retention"]))
    return out


def pick_examples(values: dict[str, dict[str, list]], idx: dict[str, np.ndarray]) -> dict[str, dict[str, list]]:
    """Per-example ``values`` on the examples ``idx`` picks per task (one bootstrap draw); a metric that is
    not a per-example list passes as it is."""
    return {t: {m: ([v[i] for i in idx[t]] if isinstance(v, list) else v) for m, v in vs.items()}
            for t, vs in values.items()}


def retention_of(ev: Evaluator, values: dict[str, dict[str, list]], refs: References, definition: str,
                 idx: dict[str, np.ndarray] | None = None) -> float:
    """The mean retention of per-example ``values``, on the examples ``idx`` picks per task (all if None)."""
    if idx is not None:
        values = pick_examples(values, idx)
    scores = ev.objective_scores(ev.details_of(values))
    return refs.retentions(scores, refs.kinds)[0][definition]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="a bench.search_quality --workdir")
    ap.add_argument("--family", required=True)
    ap.add_argument("--suite", default=None)
    ap.add_argument("--remove", type=int, required=True, help="the budget (its remove<N> folder)")
    ap.add_argument("--retention", default="auto", choices=("auto", "family", "base"))
    ap.add_argument("--draws", type=int, default=2000)
    args = ap.parse_args(argv)
    folder = Path(args.workdir) / f"remove{args.remove}"
    if not folder.is_dir():
        ap.error(f"--workdir: no folder {folder}; run bench.search_quality --remove {args.remove} there first")
    from bench.search_quality import precompute, sampling_se  # the run's references cache; its rule
    from db.store import Store

    fam = Family.from_spec(args.family)
    ev = Evaluator(fam, load_suite(args.suite or fam.spec.suite_path()))
    cache = precompute(Store(f"sqlite:///{Path(args.workdir) / 'references.db'}"))
    definition = applicable_definition(setting=args.retention, refs=cache.references(ev, "search"))
    refs = cache.references(ev, "test")
    plans = study_plans(folder, fam.name)
    if not plans:
        ap.error(f"no finished study in {folder}")
    sizes = {t.name: t.split_size("test") for t in ev.suite}
    values: dict[str, list[dict]] = {}
    print(f"{fam.name}, {args.remove} of {fam.n_layers} removed, {definition} retention, test split "
          f"({', '.join(f'{t} {n}' for t, n in sizes.items())} examples); every reported plan re-scored per example")
    for method, rows in plans.items():
        for seed, plan, stored in rows:
            v = ev.model_values(ev.stitcher.build(plan), None, "test", plan)
            values.setdefault(method, []).append(v)
            here = retention_of(ev, v, refs, definition)
            ok = "equal" if stored is not None and abs(here - stored) < 1e-9 else \
                f"DIFFERS from the stored {stored}: right only if the suite's test split grew since (a test_path)"
            print(f"  {method} seed {seed}: {100 * here:.2f}% ({ok})", flush=True)
    rng = np.random.default_rng(0)
    n_of = {t: len(next(v for v in vs.values() if isinstance(v, list))) for t, vs in next(iter(values.values()))[0].items()}
    draws = {m: np.empty((args.draws, len(vs))) for m, vs in values.items()}
    for d in range(args.draws):  # one draw of examples per task, the same for every plan: the pairing
        idx = {t: rng.integers(0, n, n) for t, n in n_of.items()}
        for m, vs in values.items():
            draws[m][d] = [retention_of(ev, v, refs, definition, idx) for v in vs]
    point = {m: [retention_of(ev, v, refs, definition) for v in vs] for m, vs in values.items()}
    searches = [m for m in plans if m.split("-")[0] in ("evolution", "smac", "random")]
    baselines = [m for m in plans if m not in searches]
    print(f"differences (search mean - baseline), {args.draws} paired draws; paired noise = sd of the drawn "
          f"differences (+ the seeds' spread / seeds); unpaired = bench.search_quality's rule; both x {Z95:.2f}")
    for s in searches:
        for b in sorted(baselines, key=lambda b: -point[b][0]):
            diff = statistics.fmean(point[s]) - statistics.fmean(point[b])
            drawn = draws[s].mean(axis=1) - draws[b].mean(axis=1)
            sd_s = statistics.stdev(point[s]) if len(point[s]) > 1 else 0.0
            paired = math.sqrt(float(np.std(drawn, ddof=1)) ** 2 + sd_s ** 2 / len(point[s]))
            se = {m: sampling_se([ev.objective_scores(ev.details_of(v)) for v in values[m]], list(sizes), ev.suite,
                                 refs, definition) for m in (s, b)}
            unpaired = combined_noise(se[s], se[b], sd_s, len(point[s]))
            print(f"  {s} - {b}: {100 * diff:+.1f} pts; paired noise {100 * paired:.1f} -> "
                  f"{verdict(diff, paired)}; unpaired {100 * unpaired:.1f} -> {verdict(diff, unpaired)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
