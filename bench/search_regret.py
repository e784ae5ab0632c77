"""Ground truth by enumeration (issue #21, item 4): are the seeds already optimal, or is the optimizer weak?

``enumerate``: on a ``pick`` space small enough to list (``gptailor.search.space.PickSpace``: per position drop
or one of a few sources' layers, no merges, a fixed number of drops), every plan is scored once on the whole
search split and the whole test split, through one ``Evaluator`` (its prefix-state cache reuses the shared
prefixes of consecutive plans). The table keeps each task's **per-example values** (``Evaluator.task_values``:
exact match and loglik, acc / acc_norm / gold_prob, perplexity's (log-likelihood, tokens) pairs) with the
references of both splits and the heuristics' removals: fidelity k is the split's first k examples, so the
first k values answer any fidelity a multi-fidelity method asks for, through the engine's own aggregation and
retention rule (``Evaluator.details_of`` and ``result_of``).

``run``: every method of ``gptailor.search.settings.METHODS`` runs through the real ``Search`` class on a
``LookupEvaluator`` that answers from the table (a plan outside it is an error), restricted to the table's
space and seeded the same way for every method; for each seed, the best-so-far (the project's one ranking
rule, ``trials.incumbent``, on what the method saw) is looked up at the full splits and its regret printed:
the optimum's retention minus the best-so-far's, on the search split (what the method optimises) and on the
held-out test split (the test optimum: selecting on the search split may cost there too). Median and
interquartile range per method at several trial counts, where the best seeded plan ranks in the table, and a
few real end-to-end runs (the real evaluator, few trials) whose scores must agree with the table.

    PYTHONHASHSEED=0 python -m bench.search_regret enumerate --family demo --sources base,math --remove 2
    PYTHONHASHSEED=0 python -m bench.search_regret enumerate --family /work/main/data/builtin/smol --sources best
    PYTHONHASHSEED=0 python -m bench.search_regret run bench/regret/demo-r2-base+math.json.gz --seeds 20 --trials 200

On a large family the space is restricted so it can be listed: ``--free`` positions take any source (elsewhere
the first source's layer), ``--drops`` are the only positions a plan may drop, and ``--merges`` adds the
seeds' fixed merges (``task_arithmetic_half``, ``linear_all``) to what a free position may take, so one table
holds the paper's ablation: ``run`` prints the best plan of drop sets alone, of picks, and of picks with
merges, and ``run --pick-only`` searches the table without its merges.

    python -m bench.search_regret enumerate --family data/builtin/smol-all --remove 4 --sources convert,reverse \
        --drops 12-18 --free 28-29 --merges task_arithmetic_half --threads 1

``--shard K/N`` enumerates one of N shards (every plan whose first drop is K modulo N: consecutive plans stay
together, so the prefix cache keeps its reuse); ``merge`` joins the N tables into one. ``correlate`` prints
the budget correlation of each objective with held-out accuracy over every plan of a table (what
``bench.objective_correlation`` measures on random plans, here on the whole enumerated space).

    python -m bench.search_regret enumerate --family data/builtin/smol --sources best --shard 0/2 --threads 1 &
    python -m bench.search_regret enumerate --family data/builtin/smol --sources best --shard 1/2 --threads 1
    python -m bench.search_regret merge bench/regret/smol-r2-convert-shard*of2.json.gz --out bench/regret/smol-r2-convert.json.gz
    python -m bench.search_regret correlate bench/regret/smol-r2-convert.json.gz --family data/builtin/smol

``extend-test``: when a suite's tasks gain held-out-only examples (a ``test_path``) after a table was
enumerated, ``run`` and ``correlate`` refuse the table (its test split is not the suite's); ``extend-test``
scores every plan on the new examples alone and appends them, keeping the search split and the old values.

    python -m bench.search_regret extend-test bench/regret/smol-r2-convert.json.gz --family data/builtin/smol --threads 1

It saves its work every 25 plans beside ``--out`` (``.partial``) and resumes from there when run again; with
``--shard K/N`` each process extends its shard into its own ``--out`` and ``merge-extended`` joins them. When
a core comes free, a running shard K/N can be spread over more: stop it just after a save, copy its
``.partial`` beside two new ``--out`` files and resume them as K/2N and K+N/2N (each keeps its share of the
plans done); ``merge-extended`` takes the finer shards beside the others.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gptailor import Evaluator, Family, Plan, load_suite  # noqa: E402
from bench.paired_noise import pick_examples  # noqa: E402
from gptailor.eval.noise import beyond_noise, retention_interval  # noqa: E402
from gptailor.eval.results import EvalResult, References, applicable_definition  # noqa: E402
from gptailor.plan import Op  # noqa: E402
from gptailor.search.optimizer import Search  # noqa: E402
from gptailor.search.precompute import Precompute  # noqa: E402
from gptailor.search.seeds import merge_settings, seed_plans  # noqa: E402
from gptailor.search.settings import METHODS, SearchSettings  # noqa: E402
from gptailor.search.space import Budget, PickSpace  # noqa: E402
from gptailor.search.trials import TrialRecord, incumbent, rank_key, scored  # noqa: E402
from gptailor.stitch import param_count  # noqa: E402

VERSION = 1
CHECKPOINTS = (10, 25, 50, 100, 200)


class NotInTable(KeyError):
    """A plan the table does not hold: the search left the enumerated space."""

    def __str__(self) -> str:
        return str(self.args[0])


# ----------------------------------------------------------------------------- the table
def best_member(refs: References, definition: str | None = None) -> str:
    """The member whose own model keeps most (mean retention on the references' split)."""
    d = applicable_definition(setting=definition, refs=refs)
    return max(refs.scores, key=lambda m: refs.retentions(refs.scores[m], refs.kinds)[0][d])


def resolve_sources(text: str, refs: References, members: list[str]) -> tuple[str, ...]:
    """``all``, ``best`` (the best single member alone: drop sets only) or a comma-separated list."""
    if text == "all":
        return tuple(members)
    if text == "best":
        return (best_member(refs),)
    return tuple(s.strip() for s in text.split(",") if s.strip())


def parse_positions(text: str | None, n_layers: int) -> list[int] | None:
    """``4-7`` or ``0,2,5`` -> positions; None for every position."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def named_merges(text: str | None, members: list[str]) -> dict[str, Op]:
    """``task_arithmetic_half,linear_all`` -> those merges of the seeded plans (``seeds.merge_settings``), by
    name: the fixed merges a pick space's free positions may take."""
    settings = merge_settings(members)
    known = [k for k, f in settings.items() if f(0).kind == "merge"]
    out = {}
    for name in (x.strip() for x in (text or "").split(",") if x.strip()):
        if name not in known:
            raise ValueError(f"--merges {name!r}: use the seeds' merges: {', '.join(known) or '(none: one member)'}")
        out[name] = settings[name](0)
    return out


def shard_of(plan: Plan, n_shards: int) -> int:
    """The shard a plan belongs to: its first dropped position modulo ``n_shards``. Plans with the same first
    drop are consecutive in ``PickSpace.plans`` and share their prefix up to the second drop, so a shard keeps
    the prefix cache's reuse; alternating first drops balance the shards (a late first drop is cheap)."""
    first = next(i for i, op in enumerate(plan.ops) if op.kind == "drop")
    return first % n_shards


def parse_shard(text: str | None) -> tuple[int, int]:
    """``2/4`` -> (2, 4): the third of four shards; None -> the one shard (0, 1)."""
    if not text:
        return 0, 1
    k, _, n = text.partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i, n_i = -1, 0
    if not 0 <= k_i < n_i:
        raise ValueError(f"--shard {text!r}: write K/N with 0 <= K < N, e.g. 0/2 and 1/2 for two processes")
    return k_i, n_i


def enumerate_table(ev: Evaluator, space: PickSpace, limit: int | None = None, log=print,
                    shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Every plan of ``space`` (of shard ``shard``: see ``shard_of``) scored once on both whole splits: per
    task, per metric, per-example values."""
    fam = ev.family
    t_ref = time.perf_counter()
    refs = {s: ev.references(s) for s in ("search", "test")}
    ref_s = time.perf_counter() - t_ref
    removals = Precompute(None).heuristic_removals(fam, space.n_remove, ev.suite, ev.stitcher)
    mine = [p for p in space.plans() if shard_of(p, shard[1]) == shard[0]]
    total = len(mine) if limit is None else min(limit, len(mine))
    log(f"{total} plans ({space.size()} in the space{'' if shard[1] == 1 else f', shard {shard[0]}/{shard[1]}'}), "
        f"references {ref_s:.0f} s")
    rows, t0 = [], time.perf_counter()
    for k, plan in enumerate(mine):
        if k == total:
            break
        model = ev.stitcher.build(plan)
        values = {s: ev.model_values(model, None, s, plan) for s in ("search", "test")}
        rows.append({"plan": plan.to_text(), "params": param_count(model), "values": values})
        if (k + 1) % 50 == 0 or k + 1 == total:
            el = time.perf_counter() - t0
            log(f"  {k + 1}/{total} plans, {el:.0f} s ({1e3 * el / (k + 1):.0f} ms per plan, both splits; "
                f"~{el / (k + 1) * (total - k - 1):.0f} s left)")
    elapsed = time.perf_counter() - t0
    return {"version": VERSION, "family": fam.name, "suite": ev.suite.name, "space": space.describe(),
            "sources": list(space.sources), "free": sorted(space.free), "droppable": sorted(space.droppable),
            "merges": {k: op.to_dict() for k, op in space.merges.items()}, "n_remove": space.n_remove,
            "complete": total == space.size(),
            "space_size": space.size(), "shard": list(shard), "shard_complete": total == len(mine),
            "references": {s: r.to_dict() for s, r in refs.items()}, "heuristic_removals": removals,
            "split_sizes": split_sizes(ev.suite),
            "plans": rows, "meta": {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                                    "machine": f"{platform.node()} ({os.cpu_count()} cores)",
                                    "enumerate_s": elapsed, "references_s": ref_s,
                                    "ms_per_plan": 1e3 * elapsed / max(1, total)}}


def save_table(table: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as fh:
        json.dump(table, fh, separators=(",", ":"))  # floats as repr: they read back bit for bit
    tmp.replace(path)


def merge_tables(tables: list[dict[str, Any]]) -> dict[str, Any]:
    """One table from the shards of one enumeration: the same family, suite, space and references (to the
    bit: the shards scored them on the same machine and code), each plan once; complete when every shard of
    the space is there."""
    first = tables[0]
    same = ("version", "family", "suite", "space", "sources", "free", "droppable", "merges", "n_remove", "references",
            "split_sizes")
    for t in tables[1:]:
        diff = [k for k in same if t.get(k) != first.get(k)]
        if diff:
            raise ValueError(f"the shards differ in {', '.join(diff)}: merge only the shards of one enumeration")
    shard = [t.get("shard", [0, 1]) for t in tables]  # a table enumerated before sharding is shard 0 of 1
    n = shard[0][1]
    got = sorted(k for k, _ in shard)
    if got != list(range(n)) or any(m != n for _, m in shard):
        raise ValueError(f"shards {got} of {n}: give every shard K/{n} of the enumeration, each once")
    if not all(t.get("shard_complete", t["complete"]) for t in tables):
        raise ValueError("a shard was enumerated with --limit: enumerate every shard whole")
    rows = [r for t in tables for r in t["plans"]]
    if len({r["plan"] for r in rows}) != len(rows):
        raise ValueError("a plan is in two shards: merge only the shards of one enumeration")
    meta = dict(first["meta"])
    meta["enumerate_s"] = sum(t["meta"]["enumerate_s"] for t in tables)
    meta["ms_per_plan"] = 1e3 * meta["enumerate_s"] / max(1, len(rows))
    meta["shards"] = n
    return {**first, "plans": rows, "shard": [0, 1], "shard_complete": True,
            "complete": len(rows) == first.get("space_size", len(rows))}


def load_table(path: str | os.PathLike) -> dict[str, Any]:
    with gzip.open(path, "rt") as fh:
        table = json.load(fh)
    if table.get("version") != VERSION:
        raise ValueError(f"{path}: table version {table.get('version')}, this bench reads {VERSION}; enumerate again")
    return table


def first_examples(values: dict[str, dict[str, list]], fidelity: int | None) -> dict[str, dict[str, list]]:
    """Each task's per-example values at ``fidelity``: the split's first examples, as the real evaluator
    scores them (``Task.subset``); all of them for None."""
    return {t: {m: (v if fidelity is None else v[:fidelity]) for m, v in ms.items()} for t, ms in values.items()}


class LookupEvaluator(Evaluator):
    """An ``Evaluator`` that answers ``evaluate`` from an enumerated table: the same ``EvalResult`` the real
    evaluator returns for the same plan and fidelity (the same aggregation and retention code on the same
    per-example values), in microseconds. A plan outside the table raises ``NotInTable``."""

    def __init__(self, family: Family, suite, table: dict[str, Any]) -> None:
        super().__init__(family, suite, split="search", prefix_cache=False)
        self.table = table
        self.rows = {Plan.from_text(r["plan"], family.name).key(): r for r in table["plans"]}
        for d in table["references"].values():
            self.use_references(References.from_dict(d))
        self.lookups = 0
        self.resample: tuple[str, dict[str, Any]] | None = None  # (split, task -> example indices): a bootstrap draw

    def space(self, seed: int = 0, merges: bool = True) -> PickSpace:
        """The table's space (its sources, free and droppable positions, merges and drop count), seeded for one
        search; ``merges=False``: its pick-only part (the paper's ablation, a subset of the table)."""
        return PickSpace(self.family, self.table["n_remove"], seed, sources=self.table["sources"],
                         free=self.table.get("free"), droppable=self.table.get("droppable"),
                         merges=self.table.get("merges") if merges else None)

    def values(self, plan: Plan, fidelity: int | None, split: str) -> tuple[dict[str, dict[str, list]], int]:
        row = self.rows.get(plan.key())
        if row is None:
            raise NotInTable(f"plan {plan.to_text()} is not in the table ({len(self.rows)} plans: "
                             f"{self.table['n_remove']} drops, sources {', '.join(self.table['sources'])}, free positions "
                             f"{self.table.get('free', 'all')}, droppable {self.table.get('droppable', 'all')}, "
                             f"merges {', '.join(self.table.get('merges') or {}) or 'none'}); "
                             f"restrict the search to the table's space (LookupEvaluator.space) or enumerate it")
        cut = first_examples(row["values"][split], fidelity)
        if self.resample is not None and self.resample[0] == split:
            cut = pick_examples(cut, self.resample[1])
        return cut, row["params"]

    def member_values(self, member: str, fidelity: int | None = None, split: str | None = None
                      ) -> dict[str, dict[str, list]]:
        """A member's per-example values from the table's (``members``, stored by ``bench.search_split_size
        members``) where it holds them; else its real model scored."""
        members = self.table.get("members")
        if members is None:
            return super().member_values(member, fidelity, split)
        return first_examples(members[member][split or self.split], fidelity)

    def references_from_members(self, split: str) -> References:
        """``split``'s references built from the table's member values by the references' own code
        (``ReferenceScoring.references``), not the stored ones: a re-partitioned split has none stored. Adopted
        only where the evaluator held none for ``split``."""
        stored = self._refs.pop(split, None)
        try:
            return self.references(split)
        finally:
            if stored is not None:
                self._refs[split] = stored

    def evaluate(self, plan: Plan, fidelity: int | None = None, split: str | None = None,
                 references: References | None = None, definition: str | None = None, speed=False) -> EvalResult:
        split = split or self.split
        refs = references or self.references(split)
        definition = applicable_definition(setting=definition or self.definition, refs=refs)
        values, params = self.values(plan, fidelity, split)
        self.lookups += 1
        return self.result_of(plan, fidelity, split, refs, definition, self.details_of(values), params)


# ----------------------------------------------------------------------------- ground truth and regret
def truth(ev: LookupEvaluator, definition: str, objective: str = "accuracy") -> dict[str, dict[str, float]]:
    """Every plan's retention on each whole split: plan key -> split -> retention. On the search split the
    ``objective``'s (what a search maximises), on the held-out test split accuracy's (what the report and a
    user judge a plan by, whatever objective chose it)."""
    out: dict[str, dict[str, float]] = {}
    for key, row in ev.rows.items():
        plan = Plan.from_text(row["plan"], ev.family.name)
        out[key] = {s: ev.evaluate(plan, None, s, definition=definition).objective_retention(
            objective if s == "search" else "accuracy", definition) for s in ("search", "test")}
    return out


def paired_difference(ev: LookupEvaluator, a: Plan, b: Plan, split: str, objective: str, definition: str,
                      draws: int = 400, seed: int = 0) -> tuple[float, float]:
    """Plan ``a``'s retention minus ``b``'s on the whole ``split`` (``objective``'s), and the sd of that
    difference over a paired bootstrap of the split's examples (one draw of each task's examples for both plans,
    as ``bench.paired_noise`` draws): whether a search's best beat a seed by more than the examples' noise."""
    def diff() -> float:
        return (ev.evaluate(a, None, split, definition=definition).objective_retention(objective, definition)
                - ev.evaluate(b, None, split, definition=definition).objective_retention(objective, definition))
    point = diff()
    sizes = ev.table["split_sizes"][split]
    rng = np.random.default_rng(seed)
    drawn = []
    try:
        for _ in range(draws):
            ev.resample = (split, {t: rng.integers(0, n, n) for t, n in sizes.items()})
            drawn.append(diff())
    finally:
        ev.resample = None
    return point, float(np.std(drawn))


def regret_curve(trials: list[TrialRecord], table: dict[str, dict[str, float]], split: str) -> list[float]:
    """After each trial, the optimum's retention on ``split`` minus the best-so-far's (``incumbent``: what the
    method saw, highest fidelity first), looked up at the whole split; NaN before a trial has a score."""
    best = max(v[split] for v in table.values())
    out = []
    for t in range(1, len(trials) + 1):
        inc = incumbent(trials[:t])
        out.append(math.nan if inc is None else best - table[inc.plan.key()][split])
    return out


def objective_incumbent(trials: list[TrialRecord], objective: str, definition: str) -> TrialRecord | None:
    """The trial a study would report if it ranked by the score it optimised (``objective``'s retention at the
    highest fidelity reached, the earliest on a tie) instead of the one ranking rule (``incumbent``: accuracy
    retention first, the proxy breaking ties): what the tables measure to decide between the two. The same
    ``rank_key``, with the objective's retention in place of accuracy's and no proxy."""
    return min(scored(trials), default=None,
               key=lambda t: rank_key(t.fidelity, t.result.objective_retention(objective, definition), t.number))


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(x for x in xs if not math.isnan(x))
    if not xs:
        return math.nan, math.nan, math.nan
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[1], q[0], q[2]


def ablation(ev: LookupEvaluator, gt: dict[str, dict[str, float]]) -> list[tuple[str, int, str, float, float, float]]:
    """The paper's ablation on one table: the best plan of each nested part of the space (drop sets alone on
    the first source; picks among the sources; picks and the table's merges), chosen on the search split:
    (part, plans, best plan, its search retention, its test retention, the part's best test retention)."""
    t = ev.table
    parts = {"drops only (first source)": PickSpace(ev.family, t["n_remove"], sources=t["sources"][:1],
                                                    droppable=t.get("droppable")),
             "picks": ev.space(merges=False)}
    if t.get("merges"):
        parts["picks and merges"] = ev.space()
    out = []
    for name, space in parts.items():
        keys = [p.key() for p in space.plans()]
        best = max(keys, key=lambda k: gt[k]["search"])
        out.append((name, len(keys), ev.rows[best]["plan"], gt[best]["search"], gt[best]["test"],
                    max(gt[k]["test"] for k in keys)))
    return out


def seeded(ev: LookupEvaluator, space: PickSpace) -> dict[str, Plan]:
    """The seeded plans a search of this space starts from (those the space can express), as it decodes them."""
    out = {}
    for name, plan in seed_plans(ev.family, space.n_remove, ev.table["heuristic_removals"]).items():
        cfg = space.encode(plan)
        if cfg is not None:
            out.setdefault(space.decode(cfg).key(), name)
    return {name: Plan.from_text(ev.rows[k]["plan"], ev.family.name) for k, name in out.items()}


def run_search(ev: Evaluator, space: PickSpace, method: str, seed: int, trials: int, args) -> list[TrialRecord]:
    settings = SearchSettings(method=method, n_trials=trials, min_fidelity=args.min_fidelity, seed=seed,
                              eta=args.eta, initial_plans=True, objective=args.objective, retention=args.retention)
    budget = Budget(remove_layers=space.n_remove)
    refs = References.from_dict(ev.table["references"]["search"]) if isinstance(ev, LookupEvaluator) else args.refs
    search = Search(ev, budget, settings, references=refs, space=space,
                    heuristic_removals=args.table["heuristic_removals"])
    return search.run().trials


# ----------------------------------------------------------------------------- commands
def cmd_enumerate(args) -> int:
    try:
        shard = parse_shard(args.shard)  # a bad --shard fails before minutes of references
    except ValueError as err:
        print(f"enumerate: {err}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # a shared, loaded machine: oversubscribed threads spin
    fam = Family.from_spec(args.family)
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()), split="search")
    refs = ev.references("search")
    sources = resolve_sources(args.sources, refs, fam.member_names)
    free = parse_positions(args.free, fam.n_layers)
    droppable = parse_positions(args.drops, fam.n_layers)
    try:
        merges = named_merges(args.merges, fam.member_names)
        space = PickSpace(fam, args.remove, sources=sources, free=free, droppable=droppable, merges=merges)
    except (ValueError, KeyError) as err:
        print(f"enumerate: {err}", file=sys.stderr)
        return 2
    tag = "" if free is None else f"-free{min(free)}-{max(free)}"
    tag += "" if droppable is None else f"-drops{min(droppable)}-{max(droppable)}"
    tag += "".join(f"+{m}" for m in merges)
    tag += "" if shard[1] == 1 else f"-shard{shard[0]}of{shard[1]}"
    out = Path(args.out) / f"{fam.name}-r{args.remove}-{'+'.join(sources)}{tag}.json.gz"
    print(f"family {fam.name}: {fam.n_layers} layers, members {', '.join(fam.member_names)}; space pick, "
          f"{args.remove} drops, sources {', '.join(sources)}: {space.size()} plans -> {out}", flush=True)
    table = enumerate_table(ev, space, args.limit, log=lambda m: print(m, file=sys.stderr, flush=True), shard=shard)
    save_table(table, out)
    m = table["meta"]
    print(f"{len(table['plans'])} plans in {m['enumerate_s']:.0f} s ({m['ms_per_plan']:.0f} ms per plan, both "
          f"splits), references {m['references_s']:.0f} s; {out.stat().st_size / 1e6:.2f} MB", flush=True)
    return 0


def split_sizes(suite, test_only: bool = True) -> dict[str, dict[str, int]]:
    """Each split's example count per task, as a table stores them; ``test_only=False``: the test split
    without the tasks' held-out-only examples (``test_path``), the splits of a table enumerated before them."""
    sizes = {s: {t.name: t.split_size(s) for t in suite} for s in ("search", "test")}
    if not test_only:
        sizes["test"] = {t.name: t.split_size("test") - t.n_test_only for t in suite}
    return sizes


def test_only_suite(suite):
    """The suite's held-out-only examples (each task's ``test_path``) as a suite of their own, each task's in
    the order its test split appends them (``Task.order`` shuffles them by a seed of their own, and a shuffle's
    permutation depends only on the length): what a table enumerated before the suite gained them lacks."""
    sub = copy.deepcopy(suite)
    for t in sub.tasks:
        t.examples = t.examples[t.n_main:]  # only the test-only ones: n_main 0, so all of them are the test split
        t._order = None
    sub.tasks = [t for t in sub.tasks if t.n_test_only]
    for full, part in zip([t for t in suite if t.n_test_only], sub.tasks):
        tail = [full.examples[i] for i in full.split_indices("test")[-full.n_test_only:]]
        if tail != part.subset(None, "test"):
            raise AssertionError(f"task {full.name}: the test-only examples are not in the test split's order")
    return sub


def extend_test(table: dict[str, Any], ev: Evaluator, log=print, shard: tuple[int, int] = (0, 1),
                save=None, every: int = 25) -> dict[str, Any]:
    """``table`` with its test split grown to the suite's today: every plan scored on the examples the suite's
    tasks gained through a ``test_path`` since the table was enumerated, appended to its test values (the
    search split and the old test values are kept as they are), and the test split's references scored anew.
    Refuses unless the table's test split is exactly the suite's without its test-only examples.

    ``shard`` K/N: only the plans of shard K (``shard_of``, one process per core); ``merge_extended`` then
    joins the N results. ``save(table)`` every ``every`` plans keeps the work so far (``meta.extending``
    lists the plans done), and a table saved so resumes where it stopped: hours of CPU survive a stop."""
    suite = ev.suite
    before = split_sizes(suite, test_only=False)
    if table["split_sizes"] != before:
        raise ValueError(f"the table's splits {table['split_sizes']} are not the suite's without its test-only "
                         f"examples ({before['test']} test): only a table enumerated before a task gained a "
                         f"test_path extends")
    sub = test_only_suite(suite)
    if not sub.tasks:
        raise ValueError(f"suite {suite.name!r} has no test-only examples (no task names a test_path): nothing to add")
    state = table["meta"].setdefault("extending", {"shard": list(shard), "done": [], "extend_s": 0.0})
    if state["shard"] != list(shard):
        refine_shard(state, shard, ev.family.name)
    t_ref = time.perf_counter()
    if "references" not in state:  # scored once: a resumed run keeps the same
        state["references"] = ev.references("test").to_dict()
    done = set(state["done"])
    mine = [r for r in table["plans"] if r["plan"] not in done
            and shard_of(Plan.from_text(r["plan"], ev.family.name), shard[1]) == shard[0]]
    log(f"{len(mine)} plans to extend ({len(done)} done before; {len(table['plans'])} in the table), "
        f"{sum(t.n_test_only for t in sub.tasks)} test-only examples "
        f"({', '.join(f'{t.name} {t.n_test_only}' for t in sub.tasks)}); references {time.perf_counter() - t_ref:.0f} s")
    part = Evaluator(ev.family, sub, split="test")
    t0 = last = time.perf_counter()
    for k, row in enumerate(mine):
        plan = Plan.from_text(row["plan"], ev.family.name)
        extra = part.model_values(part.stitcher.build(plan), None, "test", plan)
        for name, metrics in extra.items():
            for m, vals in metrics.items():
                row["values"]["test"][name][m] = row["values"]["test"][name][m] + vals
        state["done"].append(row["plan"])
        if (k + 1) % every == 0 or k + 1 == len(mine):
            now = time.perf_counter()
            state["extend_s"] += now - last
            last = now
            if save is not None:
                save(table)
            log(f"  {k + 1}/{len(mine)} plans, {now - t0:.0f} s (~{(now - t0) / (k + 1) * (len(mine) - k - 1):.0f} s left)")
    return finish_extension(table, suite, sub) if shard[1] == 1 else table


def refine_shard(state: dict[str, Any], shard: tuple[int, int], family: str) -> None:
    """A partial extension of shard K'/N' resumed as a finer shard K/N (N a multiple of N', K = K' mod N'):
    copies of one stopped run, one per core that came free, go on as K'/N' split N/N' ways. Each copy keeps,
    of the plans done so far, those of its own shard (their values travel with it to ``merge_extended``), and
    the time spent so far counts once, in the copy whose K is K'."""
    (old_k, old_n), (k, n) = state["shard"], shard
    if n % old_n or k % old_n != old_k:
        raise ValueError(f"this partial table extends shard {old_k}/{old_n}: resume it with --shard {old_k}/{old_n}, "
                         f"or split it with a finer shard K/N (N a multiple of {old_n}, K = {old_k} mod {old_n}: "
                         f"e.g. {old_k}/{2 * old_n} and {old_k + old_n}/{2 * old_n})")
    state["done"] = [p for p in state["done"] if shard_of(Plan.from_text(p, family), n) == k]
    state["extend_s"] = state["extend_s"] if k == old_k else 0.0
    state["shard"] = [k, n]


def finish_extension(table: dict[str, Any], suite, sub) -> dict[str, Any]:
    """Every plan extended: the grown test split's sizes and references become the table's."""
    state = table["meta"].pop("extending")
    table["references"]["test"] = state["references"]
    table["split_sizes"]["test"] = split_sizes(suite)["test"]
    table["meta"]["extended"] = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                                 "machine": f"{platform.node()} ({os.cpu_count()} cores)",
                                 "extend_s": state["extend_s"], "shards": state["shard"][1],
                                 "test_only": {t.name: t.n_test_only for t in sub.tasks}}
    return table


def merge_extended(tables: list[dict[str, Any]], suite) -> dict[str, Any]:
    """One grown table from the shards of one ``extend_test``: each plan's test values from the shard that
    extended it; refused unless the shards (K/N for every K, or some of them split finer: ``refine_shard``)
    extended every plan once, of one table and one scoring of the references."""
    states = [t["meta"].get("extending") for t in tables]
    if any(s is None for s in states):
        raise ValueError("give the shards of one extend-test --shard run (a finished table is not a shard)")
    names = [f"{s['shard'][0]}/{s['shard'][1]}" for s in states]
    if len(set(names)) != len(names):
        raise ValueError(f"shards {', '.join(sorted(names))}: give each shard once")
    if any(s["references"] != states[0]["references"] for s in states):
        raise ValueError("the shards scored different test references: extend them with the same code and suite")
    first = tables[0]
    by_plan = {}
    for t, s in zip(tables, states):
        rows = {r["plan"]: r for r in t["plans"]}
        for p in s["done"]:
            if p in by_plan:
                raise ValueError(f"plan {p} was extended by two shards ({', '.join(names)}): give the shards of "
                                 f"one extend-test, each K/N once")
            by_plan[p] = rows[p]
    missing = [r["plan"] for r in first["plans"] if r["plan"] not in by_plan]
    if missing or len(by_plan) != len(first["plans"]):
        raise ValueError(f"{len(missing)} plans not extended by any of the shards {', '.join(names)}: give every "
                         f"shard, and finish each (it resumes) first")
    merged = {**first, "plans": [by_plan[r["plan"]] for r in first["plans"]],
              "meta": {**first["meta"], "extending": {**states[0], "shard": [0, len(states)],
                                                      "extend_s": sum(s["extend_s"] for s in states)}}}
    return finish_extension(merged, suite, test_only_suite(suite))


def cmd_extend_test(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        shard = parse_shard(args.shard)
    except ValueError as err:
        print(f"extend-test: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or args.table_path)
    partial = out.with_name(out.name + ".partial")
    table = load_table(partial if partial.exists() else args.table_path)  # a stopped run resumes
    fam = Family.from_spec(args.family)
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()), split="test")
    try:
        table = extend_test(table, ev, log=lambda m: print(m, file=sys.stderr, flush=True), shard=shard,
                            save=lambda t: save_table(t, partial))
    except ValueError as err:
        print(f"extend-test: {err}", file=sys.stderr)
        return 2
    save_table(table, out)
    partial.unlink(missing_ok=True)
    if shard[1] > 1:
        print(f"shard {shard[0]}/{shard[1]} extended -> {out}; join the shards with merge-extended", flush=True)
    else:
        print(f"{len(table['plans'])} plans, test split now {table['split_sizes']['test']} -> {out} "
              f"({table['meta']['extended']['extend_s']:.0f} s)", flush=True)
    return 0


def cmd_merge_extended(args) -> int:
    fam = Family.from_spec(args.family)
    try:
        table = merge_extended([load_table(p) for p in args.shards], load_suite(fam.spec.suite_path()))
    except ValueError as err:
        print(f"merge-extended: {err}", file=sys.stderr)
        return 2
    save_table(table, Path(args.out))
    print(f"{len(table['plans'])} plans from {len(args.shards)} shards, test split now "
          f"{table['split_sizes']['test']} -> {args.out}")
    return 0


def check_splits(table: dict[str, Any], suite) -> str | None:
    """Why a table cannot answer for ``suite`` today (its splits differ), or None."""
    now = split_sizes(suite)
    if table["split_sizes"] == now:
        return None
    grown = table["split_sizes"] == split_sizes(suite, test_only=False)
    hint = ("the suite's tasks gained held-out-only examples (test_path) since: run 'extend-test' on the table"
            if grown else "enumerate it again")
    return f"the table was enumerated on splits {table['split_sizes']}, the suite's are {now} today; {hint}"


def cmd_merge(args) -> int:
    try:
        table = merge_tables([load_table(p) for p in args.shards])
    except ValueError as err:
        print(f"merge: {err}", file=sys.stderr)
        return 2
    save_table(table, Path(args.out))
    print(f"{len(table['plans'])} plans from {len(args.shards)} shards -> {args.out} "
          f"({'complete' if table['complete'] else 'NOT complete'})")
    return 0


def table_correlations(ev: LookupEvaluator, fidelities_text: str) -> tuple[list, str]:
    """Budget correlation over every plan of the table (``bench.objective_correlation``'s measure and helpers,
    from the stored per-example values): each objective's retention at each search fidelity against held-out
    test accuracy-retention. ``kl`` is not stored in a table, so ``accuracy`` and ``loglik`` only."""
    from bench.objective_correlation import correlations, fidelities, table, values

    objectives = ("accuracy", "loglik")
    refs = {s: ev.references(s) for s in ("search", "test")}
    full = ev.suite.split_fidelity("search")
    fids = fidelities(fidelities_text, full)
    rows = []
    for row in ev.rows.values():
        plan = Plan.from_text(row["plan"], ev.family.name)
        rows.append({"search": {f: values(ev.evaluate(plan, None if f == full else f, "search",
                                                      references=refs["search"]), objectives) for f in fids},
                     "test": values(ev.evaluate(plan, None, "test", references=refs["test"]), objectives)})
    corr = correlations(rows, fids, objectives)
    return corr, table(corr, len(rows), fids, objectives)


def cmd_correlate(args) -> int:
    table = load_table(args.table_path)
    fam = Family.from_spec(args.family)
    suite = load_suite(fam.spec.suite_path())
    why = check_splits(table, suite)
    if why:
        print(f"{args.table_path}: {why}", file=sys.stderr)
        return 2
    ev = LookupEvaluator(fam, suite, table)
    _, text = table_correlations(ev, args.fidelities)
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; table {args.table_path}: {len(ev.rows)} plans "
          f"({table['meta']['date']}), {table['n_remove']} drops, sources {', '.join(table['sources'])}")
    print(text)
    return 0


def compact(plan_text: str) -> str:
    """A plan's text without the positions that keep the run's most common op: what sets it apart."""
    ops = [x.split(":", 1) for x in plan_text.split()]
    common = max({op for _, op in ops}, key=lambda op: sum(o == op for _, o in ops))
    return " ".join(f"{i}:{op}" for i, op in ops if op != common) + f" (else {common})"


def fmt(q: tuple[float, float, float]) -> str:
    med, lo, hi = q
    return "   n/a" if math.isnan(med) else f"{100 * med:5.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def cmd_run(args) -> int:
    table = args.table = load_table(args.table_path)
    if not table["complete"]:
        print(f"{args.table_path}: a partial table ({len(table['plans'])} plans): a search would leave it; "
              f"enumerate it whole (without --limit)", file=sys.stderr)
        return 2
    fam = Family.from_spec(args.family)
    suite = load_suite(fam.spec.suite_path())
    why = check_splits(table, suite)
    if why:
        print(f"{args.table_path}: {why}", file=sys.stderr)
        return 2
    ev = LookupEvaluator(fam, suite, table)
    refs = ev.references("search")
    definition = applicable_definition(setting=args.retention, refs=refs)
    space = ev.space()
    gt = truth(ev, definition, args.objective)
    order = {s: sorted(gt, key=lambda k: -gt[k][s]) for s in ("search", "test")}
    opt = {s: gt[order[s][0]][s] for s in ("search", "test")}
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()} ({os.cpu_count()} cores); table "
          f"{args.table_path}: {len(gt)} plans ({table['meta']['date']}, {table['meta']['enumerate_s']:.0f} s"
          f"{'; test split extended ' + table['meta']['extended']['date'] if 'extended' in table['meta'] else ''}); "
          f"{definition} retention: of {args.objective} on the search split, of accuracy on the test split")
    print(f"optimum on the search split: {100 * opt['search']:.1f}% ({ev.rows[order['search'][0]]['plan']}), "
          f"its test {100 * gt[order['search'][0]]['test']:.1f}%; optimum on the test split {100 * opt['test']:.1f}% "
          f"({ev.rows[order['test'][0]]['plan']})")
    for s in ("search", "test"):  # how large a regret is against the sampling noise of one plan's retention
        plan = Plan.from_text(ev.rows[order[s][0]]["plan"], fam.name)
        noise = retention_interval(ev.evaluate(plan, None, s, definition=definition).scores,
                                   table["split_sizes"][s], ev.references(s), definition)
        print(f"  the {s} optimum's sampling noise ({s} split): se {100 * noise.se:.1f} points")
    seeds = seeded(ev, space)
    print(f"seeded plans in this space: {len(seeds)}")
    ranked_seeds = sorted(seeds.items(), key=lambda kv: -gt[kv[1].key()]["search"])
    if ranked_seeds and ranked_seeds[0][1].key() != order["search"][0]:  # does the search optimum beat the seed?
        best = Plan.from_text(ev.rows[order["search"][0]]["plan"], fam.name)
        for s, obj in (("search", args.objective), ("test", "accuracy")):
            d, sd = paired_difference(ev, best, ranked_seeds[0][1], s, obj, definition)
            print(f"  the search optimum minus the best seed ({ranked_seeds[0][0]}) on the {s} split: {100 * d:+.1f} "
                  f"points, paired sd {100 * sd:.1f} ({'beyond' if beyond_noise(d, sd) else 'within'} the noise)")
    for name, plan in ranked_seeds[: args.show_seeds]:
        k = plan.key()
        print(f"  {name:<32} search {100 * gt[k]['search']:5.1f}% (rank {order['search'].index(k) + 1}/{len(gt)}, "
              f"regret {100 * (opt['search'] - gt[k]['search']):.1f})  test {100 * gt[k]['test']:5.1f}% "
              f"(rank {order['test'].index(k) + 1}, regret {100 * (opt['test'] - gt[k]['test']):.1f})")
    print("the best plan of each part of the space (chosen on the search split; the paper's ablation):")
    for name, n, plan_text, s_ret, t_ret, t_best in ablation(ev, gt):
        print(f"  {name:<26} {n:>5} plans: search {100 * s_ret:5.1f}%, its test {100 * t_ret:5.1f}% "
              f"(the part's test optimum {100 * t_best:.1f}%)  {compact(plan_text)}")
    seeds_list = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    curves: dict[str, dict[str, list[list[float]]]] = {}
    methods = args.methods.split(",") if args.methods else list(METHODS)
    for method in methods:
        curves[method] = {"search": [], "test": [], "by_objective": []}
        t0 = time.perf_counter()
        found = 0
        for seed in seeds_list:
            trials = run_search(ev, ev.space(seed, merges=not args.pick_only), method, seed, args.trials, args)
            for s in ("search", "test"):
                curves[method][s].append(regret_curve(trials, gt, s))
            found += curves[method]["search"][-1][-1] == 0
            alt = objective_incumbent(trials, args.objective, definition)
            curves[method]["by_objective"].append(math.nan if alt is None else opt["test"] - gt[alt.plan.key()]["test"])
            print(f"  {method} seed {seed}: {len(trials)} trials, final regret search "
                  f"{100 * curves[method]['search'][-1][-1]:.1f} / test {100 * curves[method]['test'][-1][-1]:.1f} "
                  f"({time.perf_counter() - t0:.0f} s so far)", file=sys.stderr, flush=True)
        print(f"{method}: {len(seeds_list)} seeds x {args.trials} trials in {time.perf_counter() - t0:.0f} s; "
              f"found the search optimum in {found}/{len(seeds_list)}", flush=True)
    marks = [c for c in CHECKPOINTS if c <= args.trials]
    for s in ("search", "test"):
        print(f"\nregret on the {s} split (retention points: optimum minus best-so-far), median [IQR] over "
              f"{len(seeds_list)} seeds")
        print(f"{'method':<12}" + "".join(f"{f'{c} trials':>22}" for c in marks))
        for method in methods:
            cells = [fmt(quartiles([cv[c - 1] if len(cv) >= c else cv[-1] for cv in curves[method][s]])) for c in marks]
            print(f"{method:<12}" + "".join(f"{x:>22}" for x in cells))
    if args.objective != "accuracy":
        print(f"\nheld-out test regret of the plan reported after {args.trials} trials, median [IQR]: by the ranking "
              f"rule (accuracy first) against by the objective ({args.objective}) it optimised")
        for method in methods:
            print(f"{method:<12}{fmt(quartiles([cv[-1] for cv in curves[method]['test']])):>22}"
                  f"{fmt(quartiles(curves[method]['by_objective'])):>22}")
    if args.real:
        check_real(args, fam, suite, ev)
    return 0


def check_real(args, fam: Family, suite, lookup: LookupEvaluator) -> None:
    """A few real searches (real evaluator, prefix cache on): every trial's scores against the table's."""
    real = Evaluator(fam, suite, split="search")
    args.refs = real_refs = References.from_dict(lookup.table["references"]["search"])
    real.use_references(real_refs)
    print(f"\nreal end-to-end runs ({args.real_trials} trials each), scores against the table:")
    for spec in args.real.split(","):
        method, seed = spec.split(":")
        t0 = time.perf_counter()
        trials = run_search(real, lookup.space(int(seed)), method, int(seed), args.real_trials, args)
        worst_score = worst_ret = 0.0
        same_acc = 0
        done = [t for t in trials if t.result is not None]
        for t in done:
            want = lookup.evaluate(t.plan, t.fidelity, "search", references=real_refs, definition=t.result.definition)
            worst_score = max(worst_score, max(abs(want.scores[k] - v) for k, v in t.result.scores.items()))
            worst_ret = max(worst_ret, abs(want.retention - t.result.retention))
            same_acc += want.scores == t.result.scores
        print(f"  {method} seed {seed}: {len(done)} trials in {time.perf_counter() - t0:.0f} s; scores identical in "
              f"{same_acc}/{len(done)}; largest |difference|: score {worst_score:.2e}, retention {worst_ret:.2e}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("enumerate", help="score every plan of a pick space on both splits and store the table")
    e.add_argument("--family", default="demo")
    e.add_argument("--remove", type=int, default=2)
    e.add_argument("--sources", default="all", help="all, best (the best single member: drop sets only), or "
                   "members, comma-separated (base,math)")
    e.add_argument("--drops", default=None, help="the only positions a plan may drop (12-18 or 3,5,9); "
                   "default every position")
    e.add_argument("--merges", default=None, help="seeded merges a free position may also take, comma-separated "
                   "(task_arithmetic_half, linear_all): picks against picks with merges on one table")
    e.add_argument("--free", default=None, help="positions that may take any source (4-7 or 0,2,5); elsewhere "
                   "the first source's layer (default: every position)")
    e.add_argument("--out", default="bench/regret")
    e.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    e.add_argument("--limit", type=int, default=None, help="only the first N plans (to time one; not runnable)")
    e.add_argument("--shard", default=None, help="K/N: only the plans of shard K of N (one process per core; "
                   "then 'merge' the N tables)")
    c = sub.add_parser("correlate", help="budget correlation of each objective with held-out accuracy, "
                       "over every plan of the table")
    c.add_argument("table_path")
    c.add_argument("--family", default="demo")
    c.add_argument("--fidelities", default="8,24,full", help="examples per task on the search split")
    m = sub.add_parser("merge", help="one table from the shards of an enumeration")
    m.add_argument("shards", nargs="+")
    m.add_argument("--out", required=True)
    r = sub.add_parser("run", help="every method against the table: regret against trials")
    r.add_argument("table_path")
    r.add_argument("--family", default="demo")
    r.add_argument("--seeds", type=int, default=20)
    r.add_argument("--seed-list", default=None, help="explicit seeds, comma-separated (overrides --seeds)")
    r.add_argument("--trials", type=int, default=200)
    r.add_argument("--methods", default=None, help="comma-separated (default: every method of "
                   "gptailor.search.settings.METHODS)")
    r.add_argument("--pick-only", action="store_true", help="search the table's space without its merges "
                   "(the ablation's searches; regret still against the whole table's optimum)")
    r.add_argument("--min-fidelity", type=int, default=8)
    r.add_argument("--eta", type=int, default=3)
    r.add_argument("--objective", default="accuracy", choices=("accuracy", "loglik"))
    r.add_argument("--retention", default="auto", choices=("auto", "family", "base"))
    r.add_argument("--show-seeds", type=int, default=5, help="the best N seeded plans to list")
    r.add_argument("--real", default="smac:0,random:0", help="method:seed real runs to check against the table "
                   "('' for none)")
    r.add_argument("--real-trials", type=int, default=12)
    x = sub.add_parser("extend-test", help="score a table's plans on the held-out-only examples (test_path) its "
                       "suite gained since it was enumerated, and append them to its test split")
    x.add_argument("table_path")
    x.add_argument("--family", default="demo")
    x.add_argument("--out", default=None, help="where to write the grown table (default: over the table)")
    x.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    x.add_argument("--shard", default=None, help="K/N: only the plans of shard K of N (one process per core, "
                   "each with its own --out; then merge-extended). A stopped K/N run's .partial, copied beside a new "
                   "--out, resumes as a finer shard K/2N or K+N/2N: one shard spread over the cores that came free")
    me = sub.add_parser("merge-extended", help="one grown table from the shards of an extend-test")
    me.add_argument("shards", nargs="+")
    me.add_argument("--family", default="demo")
    me.add_argument("--out", required=True)
    a = p.parse_args(argv)
    return {"enumerate": cmd_enumerate, "merge": cmd_merge, "correlate": cmd_correlate, "run": cmd_run,
            "extend-test": cmd_extend_test, "merge-extended": cmd_merge_extended}[a.cmd](a)


if __name__ == "__main__":
    from bench import rerun_with_fixed_hash_seed

    rerun_with_fixed_hash_seed("bench.search_regret")
    sys.exit(main())
