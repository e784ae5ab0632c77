"""Which objective predicts held-out accuracy best? (issue #21: "measure before choosing")

Over ``--plans`` random plans of the search space (``gptailor.search.space``, layerwise, at a fixed removal
budget, sampled by ConfigSpace with a fixed seed), each plan is scored at several fidelities (examples per
task) on the *search* split and once, in full, on the held-out *test* split. Printed: the Spearman rank
correlation (``scipy.stats.spearmanr``) of each objective's retention at each fidelity with held-out test
accuracy-retention, per retention definition: what DeepCAVE calls budget correlation. An objective that
ranks plans as the test accuracy does at few examples is what a search should be told.

Objectives: ``accuracy`` (each task's metric: exact match, acc, perplexity), ``loglik`` (its continuous
proxy from the same forward: the target's mean per-token log-probability, the gold choice's probability
among the choices, perplexity) and ``kl`` (exp(-mean KL per token) to each task's reference member, top-32;
against the references of the definition the study applies, shown under both). References are fixed once per split, on the whole split, as in a study.

    PYTHONHASHSEED=0 python -m bench.objective_correlation [--family demo] [--plans 200] [--remove 2]
        [--fidelities 8,24,full] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gptailor import Evaluator, Family, load_suite  # noqa: E402
from gptailor.eval.divergence import DEFAULT_TOPK  # noqa: E402
from gptailor.eval.results import DEFINITIONS, OBJECTIVES  # noqa: E402
from gptailor.search.space import LayerwiseSpace  # noqa: E402


def sample_plans(fam: Family, n_remove: int, n: int, seed: int) -> list:
    """``n`` distinct random plans of the layerwise space (repair keeps each within the budget)."""
    space = LayerwiseSpace(fam, n_remove, seed=seed)
    space.cs.seed(seed)
    plans, seen = [], set()
    for _ in range(50):
        for cfg in space.cs.sample_configuration(n):
            plan = space.decode(cfg)
            if plan.key() not in seen:
                seen.add(plan.key())
                plans.append(plan)
        if len(plans) >= n:
            break
    return plans[:n]


def fidelities(text: str, full: int) -> list[int]:
    """``8,24,full`` -> examples per task, each capped at the search split's size, in order, no repeats."""
    out = []
    for part in text.split(","):
        f = full if part.strip() == "full" else min(full, int(part))
        if f not in out:
            out.append(f)
    return out


def values(r, objectives=OBJECTIVES) -> dict[str, dict[str, float | None]]:
    """Each objective's retention under each definition; ``kl`` as exp(-mean KL), one value (against the
    references of the definition the study applies) shown under both."""
    out = {o: {d: r.objective_retention(o, d) for d in DEFINITIONS} for o in objectives if o != "kl"}
    if "kl" in objectives:
        kl = r.objective_retention("kl")
        out["kl"] = {d: kl for d in DEFINITIONS}
    return out


def score(ev: Evaluator, plans: list, fids: list[int], full_search: int) -> list[dict]:
    """Per plan: each objective's retention (both definitions) at each search fidelity, and the test split's."""
    t_ref = time.perf_counter()
    refs_s, refs_t = ev.references("search"), ev.references("test")
    print(f"  references (every member, both splits): {time.perf_counter() - t_ref:.0f} s", file=sys.stderr,
          flush=True)
    rows = []
    t0 = time.perf_counter()
    for i, plan in enumerate(plans):
        row = {"plan": plan.to_text(), "search": {}}
        for f in fids:
            r = ev.evaluate(plan, None if f == full_search else f, split="search", references=refs_s)
            row["search"][f] = values(r)
        r = ev.evaluate(plan, None, split="test", references=refs_t)
        row["test"] = values(r)
        rows.append(row)
        if (i + 1) % 20 == 0 or i + 1 == len(plans):
            el = time.perf_counter() - t0
            print(f"  {i + 1}/{len(plans)} plans scored, {el:.0f} s ({1e3 * el / (i + 1) / (len(fids) + 1):.0f} ms "
                  f"per evaluation)", file=sys.stderr, flush=True)
            if (i + 1) % 50 == 0 and i + 1 < len(plans):  # an interim table: a slow machine still leaves one
                print(table(correlations(rows, fids), len(rows), fids), file=sys.stderr, flush=True)
    return rows


def correlations(rows: list[dict], fids: list[int], objectives=OBJECTIVES) -> list[tuple[str, str, str, float, int]]:
    """(definition, objective, fidelity label, Spearman rho with test accuracy-retention, distinct values)."""
    from scipy.stats import spearmanr

    out = []
    for d in DEFINITIONS:
        truth = [r["test"]["accuracy"][d] for r in rows]
        for o in objectives:
            for f in fids:
                xs = [r["search"][f][o][d] for r in rows]
                out.append((d, o, f"search@{f}", float(spearmanr(xs, truth).statistic), len(set(xs))))
            xs = [r["test"][o][d] for r in rows]
            out.append((d, o, "test (full)", float(spearmanr(xs, truth).statistic), len(set(xs))))
    return out


def table(corr, n_plans: int, fids: list[int], objectives=OBJECTIVES) -> str:
    lines = [f"{'definition':<11}{'objective':<10}" + "".join(f"{'search@' + str(f):>12}" for f in fids)
             + f"{'test(full)':>12}   distinct values per column"]
    for d in DEFINITIONS:
        for o in objectives:
            cells = [c for c in corr if c[0] == d and c[1] == o]
            lines.append(f"{d:<11}{o:<10}" + "".join(f"{c[3]:>12.3f}" for c in cells)
                         + "   " + "/".join(str(c[4]) for c in cells))
    lines.append(f"Spearman rho with held-out test accuracy-retention over {n_plans} plans "
                 f"(test(full) accuracy = 1 by construction)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="demo")
    p.add_argument("--plans", type=int, default=200)
    p.add_argument("--remove", type=int, default=2, help="layers removed by every plan")
    p.add_argument("--fidelities", default="8,24,full", help="examples per task on the search split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every plan's retentions here")
    a = p.parse_args(argv)
    fam = Family.from_spec(a.family)
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()), split="search", kl_topk=DEFAULT_TOPK)
    full = ev.suite.split_fidelity("search")
    fids = fidelities(a.fidelities, full)
    plans = sample_plans(fam, a.remove, a.plans, a.seed)
    t0 = time.perf_counter()
    rows = score(ev, plans, fids, full)
    corr = correlations(rows, fids)
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores), family {a.family}, {len(plans)} plans removing {a.remove} of {fam.n_layers}, "
          f"search split full = {full} per task, {time.perf_counter() - t0:.0f} s")
    print(table(corr, len(plans), fids))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"family": a.family, "remove": a.remove, "fidelities": fids, "rows": rows,
                       "correlations": corr}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
