"""How many search examples does a search need before its best plan beats its seeds held out?

On smol's enumerated drop sets the evolution finds the search split's optimum, and that optimum trails the
seeded ShortGPT plan held out (a winner's curse: the search split's 100 / 100 / 32 / 30 / 20 examples cannot
rank the top of the space). This measures the cure directly, with look-ups only: an enumerated table's test
split is re-partitioned, a seeded share ``--fractions`` of each task's held-out examples joining the search
split (after its own examples, so every lower fidelity keeps its examples) and the rest staying held out; on
each re-partition every method searches the table again and is scored on what is still held out. Several
partitions per share (``--partitions``) and seeds per method give the spread.

Retention divides by the references, and the references of a re-partitioned split need each member's own
per-example values, which a table does not hold: ``members`` scores them once with the real evaluator
(minutes) and stores them in the table (``members``); the look-up evaluator then builds every split's
references from them through the same code as a real study (and ``members`` checks that they give the
table's stored references back).

    PYTHONHASHSEED=0 OMP_NUM_THREADS=1 python -m bench.search_split_size members bench/regret/smol-r2-convert.json.gz \
        --family data/builtin/smol --threads 1
    PYTHONHASHSEED=0 OMP_NUM_THREADS=1 python -m bench.search_split_size run bench/regret/smol-r2-convert.json.gz \
        --family data/builtin/smol --fractions 0,0.25,0.5,0.75 --partitions 5 --seeds 20 --methods evolution,random
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.paired_noise import pick_examples  # noqa: E402
from bench.search_regret import LookupEvaluator, check_splits, fmt, load_table, paired_difference, \
    quartiles, regret_curve, run_search, save_table, seeded, truth  # noqa: E402
from gptailor.search.trials import incumbent  # noqa: E402
from gptailor import Evaluator, Family, Plan, load_suite  # noqa: E402
from gptailor.eval.noise import beyond_noise, retention_interval  # noqa: E402
from gptailor.eval.results import applicable_definition  # noqa: E402
from gptailor.eval.suite import Suite  # noqa: E402

SPLITS = ("search", "test")


# ----------------------------------------------------------------------------- the members' own values
def member_values(ev: Evaluator) -> dict[str, dict[str, dict[str, dict[str, list]]]]:
    """Every member's per-example values on both whole splits (member -> split -> task -> metric -> values):
    what the references aggregate (``ReferenceScoring.member_values``)."""
    return {m: {s: ev.member_values(m, None, s) for s in SPLITS} for m in ev.family.member_names}


def reference_mismatch(table: dict[str, Any], lookup: LookupEvaluator, rel_tol: float = 1e-5,
                       abs_tol: float = 1e-6) -> str | None:
    """Where the references built from the table's member values differ from the table's stored ones (which
    the real evaluator computed when the table was enumerated or extended); None when they agree. Accuracies
    (means of 0/1 values) must agree exactly: values in another order would move them by 1/n. A continuous
    value (log-likelihood, perplexity) agrees to ``rel_tol`` or ``abs_tol``: scored in other batches, a
    forward's matrix products round differently (measured on smol: 1.1e-6 relative on a log-likelihood of
    -0.07; 5e-8 absolute on one of -0.0009, a member sure of its answers)."""
    for s in SPLITS:
        stored = table["references"][s]
        built = lookup.references_from_members(s).to_dict()
        for part in ("scores", "proxy"):
            for m, tasks in stored[part].items():
                for t, want in tasks.items():
                    got = built[part][m][t]
                    exact = part == "scores" and stored["kinds"][t] != "perplexity"
                    if not math.isclose(got, want, rel_tol=1e-12 if exact else rel_tol,
                                        abs_tol=1e-12 if exact else abs_tol):
                        return f"{s} split, {part} of {m} on {t}: {got!r} from the member values, {want!r} stored"
    return None


# ----------------------------------------------------------------------------- a re-partitioned table
def partition(sizes: dict[str, int], fraction: float, seed: int) -> dict[str, tuple[list[int], list[int]]]:
    """Per task, which held-out examples join the search split and which stay held out (indices into the test
    split, each list in the split's order): a seeded draw of ``round(fraction * n)`` of each task's ``n``,
    leaving at least one held out."""
    if not 0 <= fraction < 1:
        raise ValueError(f"a fraction of the held-out examples is at least 0 and below 1, got {fraction}")
    rng = np.random.default_rng(seed)
    out = {}
    for task, n in sizes.items():
        moved = min(int(round(fraction * n)), n - 1)
        drawn = rng.permutation(n)
        out[task] = (sorted(int(i) for i in drawn[:moved]), sorted(int(i) for i in drawn[moved:]))
    return out


def _moved(values: dict[str, dict[str, dict[str, list]]], parts: dict[str, tuple[list[int], list[int]]]
           ) -> dict[str, dict[str, dict[str, list]]]:
    """One row's (or member's) split -> task -> metric -> values, re-partitioned by ``parts``."""
    joining = pick_examples(values["test"], {t: p[0] for t, p in parts.items()})
    return {"search": {t: {m: v + joining[t][m] for m, v in ms.items()} for t, ms in values["search"].items()},
            "test": pick_examples(values["test"], {t: p[1] for t, p in parts.items()})}


def resplit(table: dict[str, Any], fraction: float, seed: int) -> dict[str, Any]:
    """A copy of ``table`` whose search split gained a seeded ``fraction`` of each task's held-out examples
    (appended after its own, so a lower fidelity's examples stay the same) and whose test split keeps the
    rest; every plan's and member's values moved alike, the references left to be built from the members'."""
    if "members" not in table:
        raise ValueError("the table holds no member values: run 'python -m bench.search_split_size members' on it "
                         "first (it scores each member once and stores them)")
    parts = partition(table["split_sizes"]["test"], fraction, seed)
    out = {k: v for k, v in table.items() if k not in ("plans", "members", "references", "split_sizes")}
    out["plans"] = [{**r, "values": _moved(r["values"], parts)} for r in table["plans"]]
    out["members"] = {m: _moved(v, parts) for m, v in table["members"].items()}
    out["split_sizes"] = {"search": {t: n + len(parts[t][0]) for t, n in table["split_sizes"]["search"].items()},
                          "test": {t: len(parts[t][1]) for t in table["split_sizes"]["test"]}}
    out["references"] = {}
    out["resplit"] = {"fraction": fraction, "seed": seed}
    return out


@dataclass
class TableSuite(Suite):
    """The suite with a table's split sizes: what a search's top fidelity is read from (``split_fidelity``)
    when the table's splits are not the suite's own (a re-partitioned table)."""

    sizes: dict[str, dict[str, int]] = field(default_factory=dict)

    def split_fidelity(self, split: str = "all") -> int:
        return max(self.sizes[split].values())


def lookup_of(fam: Family, suite: Suite, table: dict[str, Any]) -> LookupEvaluator:
    """The look-up evaluator of a (re-partitioned) table, its references built from the members' values."""
    ev = LookupEvaluator(fam, TableSuite(suite.name, suite.tasks, suite.path, sizes=table["split_sizes"]), table)
    if not table["references"]:  # none stored: built from the members' values; stored for run_search's reads
        table["references"] = {s: ev.references(s).to_dict() for s in SPLITS}
    return ev


# ----------------------------------------------------------------------------- one re-partition searched
@dataclass
class Outcome:
    """One re-partition: the held-out regret (points) of the best seed, of each method's reported plan per
    seed, and whether the search optimum beat the best seed by more than the noise on the search split."""

    fraction: float
    partition: int
    sizes: dict[str, dict[str, int]]
    test_se: float
    seed_regret: float
    optimum_vs_seed: tuple[float, float]  # search split: the search optimum minus the best seed, paired sd
    regret: dict[str, list[float]]  # method -> held-out regret after the trials, per seed
    beats_seed: dict[str, int]  # method -> seeds whose reported plan is better than the best seed held out
    z: dict[str, list[float]]  # method -> per seed, its reported plan minus the best seed on the search split,
    # over the paired sd of that difference (0 where it reports the seed): what a noise-aware report reads
    wall_s: float = 0.0


def search_partition(fam: Family, suite: Suite, table: dict[str, Any], fraction: float, part: int,
                     methods: list[str], seeds: list[int], args) -> Outcome:
    t0 = time.perf_counter()
    t = resplit(table, fraction, part)
    ev = lookup_of(fam, suite, t)
    refs = ev.references("search")
    definition = applicable_definition(setting=args.retention, refs=refs)
    gt = truth(ev, definition, args.objective)
    best_test = max(v["test"] for v in gt.values())
    top = max(gt, key=lambda k: gt[k]["test"])
    plan = Plan.from_text(ev.rows[top]["plan"], fam.name)
    se = retention_interval(ev.evaluate(plan, None, "test", definition=definition).scores,
                            t["split_sizes"]["test"], ev.references("test"), definition).se
    seeds_in = seeded(ev, ev.space())
    best_seed = max(seeds_in.values(), key=lambda p: gt[p.key()]["search"])
    optimum = Plan.from_text(ev.rows[max(gt, key=lambda k: gt[k]["search"])]["plan"], fam.name)
    versus = paired_difference(ev, optimum, best_seed, "search", args.objective, definition, draws=args.draws)
    args.table = t  # run_search reads the heuristics' removals from the table it searches
    regret: dict[str, list[float]] = {}
    beats: dict[str, int] = {}
    zs: dict[str, list[float]] = {}
    paired: dict[str, float] = {}  # plan key -> z against the best seed (the same plan is often reported again)
    for method in methods:
        regret[method], beats[method], zs[method] = [], 0, []
        for seed in seeds:
            trials = run_search(ev, ev.space(seed), method, seed, args.trials, args)
            r = regret_curve(trials, gt, "test")[-1]
            regret[method].append(r)
            beats[method] += best_test - r > gt[best_seed.key()]["test"] + 1e-12
            reported = incumbent(trials).plan
            if reported.key() not in paired:
                d, sd = paired_difference(ev, reported, best_seed, "search", args.objective, definition,
                                          draws=args.draws)
                paired[reported.key()] = d / sd if sd > 0 else 0.0
            zs[method].append(paired[reported.key()])
    return Outcome(fraction, part, t["split_sizes"], se, best_test - gt[best_seed.key()]["test"], versus,
                   regret, beats, zs, time.perf_counter() - t0)


def keep_seed_regret(o: Outcome, method: str, z: float) -> list[float]:
    """Per seed, the held-out regret of a noise-aware report: the method's plan where it beat the best seed by
    more than ``z`` paired sd on the search split, else the best seed."""
    return [r if zz > z else o.seed_regret for r, zz in zip(o.regret[method], o.z[method])]


def describe(o: Outcome, methods: list[str], n_seeds: int) -> str:
    d, sd = o.optimum_vs_seed
    cells = "  ".join(f"{m} {fmt(quartiles(o.regret[m]))} (beats the seed {o.beats_seed[m]}/{n_seeds})" for m in methods)
    return (f"  fraction {o.fraction:.2f} partition {o.partition}: search {sum(o.sizes['search'].values())} / held out "
            f"{sum(o.sizes['test'].values())} examples, held-out se {100 * o.test_se:.1f}; best seed's regret "
            f"{100 * o.seed_regret:.1f}; search optimum - seed on the search split {100 * d:+.1f} (paired sd "
            f"{100 * sd:.1f}, {'beyond' if beyond_noise(d, sd) else 'within'}); {cells}  [{o.wall_s:.0f} s]")


def mean_sd(xs: list[float]) -> str:
    """Retention points: the mean and the sd over partitions (0 for one)."""
    return f"{100 * statistics.fmean(xs):.1f} ± {100 * (statistics.stdev(xs) if len(xs) > 1 else 0.0):.1f}"


def summary(outcomes: list[Outcome], methods: list[str], zs: list[float]) -> list[str]:
    """Per fraction, over its partitions: the mean held-out regret of the seed and of each method (each
    partition's median over seeds), with the sd over partitions, and the share of seeds that beat the seed;
    then each method's under a noise-aware report at each of ``zs``."""
    lines = [f"{'fraction':>8} {'search ex.':>10} {'held out':>9} {'se':>5} {'best seed':>12} "
             + "".join(f"{m + ' regret':>18}{'beats seed':>11}" for m in methods)
             + "".join(f"{f'{m[:4]} keep z{z:g}':>16}" for m in methods for z in zs)]
    for f in sorted({o.fraction for o in outcomes}):
        rows = [o for o in outcomes if o.fraction == f]
        line = (f"{f:>8.2f} {sum(rows[0].sizes['search'].values()):>10} {sum(rows[0].sizes['test'].values()):>9} "
                f"{100 * statistics.fmean(o.test_se for o in rows):>5.1f} {mean_sd([o.seed_regret for o in rows]):>12} ")
        for m in methods:
            won = sum(o.beats_seed[m] for o in rows)
            total = sum(len(o.regret[m]) for o in rows)
            line += f"{mean_sd([statistics.median(o.regret[m]) for o in rows]):>18}{f'{won}/{total}':>11}"
        for m in methods:
            for z in zs:
                line += f"{mean_sd([statistics.median(keep_seed_regret(o, m, z)) for o in rows]):>16}"
        lines.append(line)
    return lines


# ----------------------------------------------------------------------------- commands
def load(args) -> tuple[Family, Suite, dict[str, Any]]:
    table = load_table(args.table_path)
    fam = Family.from_spec(args.family)
    path = args.suite or fam.spec.suite_path()
    if path is None:
        raise SystemExit(f"family {fam.name!r} names no suite: give the table's with --suite")
    suite = load_suite(path)
    why = check_splits(table, suite)
    if why:
        raise SystemExit(f"{args.table_path}: {why}")
    return fam, suite, table


def cmd_members(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    fam, suite, table = load(args)
    t0 = time.perf_counter()
    table["members"] = member_values(Evaluator(fam, suite, split="search"))
    elapsed = time.perf_counter() - t0
    why = reference_mismatch(table, LookupEvaluator(fam, suite, table))
    if why:
        print(f"the members' values do not give the table's references back ({why}): not stored", file=sys.stderr)
        return 1
    table["meta"]["members"] = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                                "machine": f"{platform.node()} ({os.cpu_count()} cores)", "members_s": elapsed}
    save_table(table, Path(args.table_path))
    print(f"{len(table['members'])} members scored on both splits in {elapsed:.0f} s; their references match the "
          f"table's; stored in {args.table_path}")
    return 0


def cmd_run(args) -> int:
    fam, suite, table = load(args)
    methods = args.methods.split(",")
    seeds = list(range(args.seeds))
    fractions = [float(f) for f in args.fractions.split(",")]
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()} ({os.cpu_count()} cores); table "
          f"{args.table_path} ({len(table['plans'])} plans); {args.trials} trials, {len(seeds)} seeds per method, "
          f"objective {args.objective}, min fidelity {args.min_fidelity}; held-out regret in retention points "
          f"(accuracy, the test optimum of each partition minus the reported plan's), median [IQR] over seeds",
          flush=True)
    outcomes = []
    for f in fractions:
        for part in range(1 if f == 0 else args.partitions):
            o = search_partition(fam, suite, table, f, part, methods, seeds, args)
            outcomes.append(o)
            print(describe(o, methods, len(seeds)), flush=True)
    print(f"\nper fraction: mean ± sd over partitions of the held-out regret (each partition's median over seeds); "
          f"'beats seed': seeds whose reported plan is better than the best seed held out")
    print(f"'keep zZ': the method's plan only where it beat the best seed by more than Z paired sd on the search "
          f"split, else the seed")
    print("\n".join(summary(outcomes, methods, [float(z) for z in args.keep_seed_z.split(",")])))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("members", help="score each member's per-example values on both splits, store them in the table")
    m.add_argument("table_path")
    m.add_argument("--family", default="demo")
    m.add_argument("--suite", default=None, help="the table's suite (default: the family's)")
    m.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    r = sub.add_parser("run", help="search re-partitioned tables: held-out regret against the search split's size")
    r.add_argument("table_path")
    r.add_argument("--family", default="demo")
    r.add_argument("--suite", default=None, help="the table's suite (default: the family's)")
    r.add_argument("--fractions", default="0,0.25,0.5,0.75", help="shares of each task's held-out examples that "
                   "join the search split, comma-separated")
    r.add_argument("--partitions", type=int, default=5, help="seeded re-partitions per fraction (one for 0)")
    r.add_argument("--seeds", type=int, default=20)
    r.add_argument("--trials", type=int, default=200)
    r.add_argument("--methods", default="evolution,random")
    r.add_argument("--min-fidelity", type=int, default=10)
    r.add_argument("--eta", type=int, default=3)
    r.add_argument("--objective", default="loglik", choices=("accuracy", "loglik"))
    r.add_argument("--retention", default="auto", choices=("auto", "family", "base"))
    r.add_argument("--draws", type=int, default=200, help="paired bootstrap draws for the seed comparison")
    r.add_argument("--keep-seed-z", default="1,1.645,1.96", help="thresholds of the noise-aware report rows")
    a = p.parse_args(argv)
    return {"members": cmd_members, "run": cmd_run}[a.cmd](a)


if __name__ == "__main__":
    from bench import rerun_with_fixed_hash_seed

    rerun_with_fixed_hash_seed("bench.search_split_size")
    sys.exit(main())
