"""How many layers can a skill lose? Per-layer ablation of each finetune's own skill, then the best case.

Why the smol family's search results look the way they do: a search can only keep what *some* plan at the
budget keeps. For every member ``m`` with a skill task ``t`` (the task whose reference is ``m``):

1. single-layer ablation: ``m`` with one position dropped, scored on ``t`` (search split) -- which layers
   the skill can lose at all;
2. the most forgiving removal at each budget: drop the ``n`` positions whose single ablation hurt ``t``
   least (ranked on the search split), scored on the held-out **test** split: roughly an upper bound on
   what a pick-only plan removing ``n`` layers keeps of that skill (a greedy, not an exhaustive, bound).

    PYTHONHASHSEED=0 python -m bench.skill_fragility --family data/builtin/smol [--remove 1,2,4,8]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gptailor import Evaluator, Family, Plan, load_suite  # noqa: E402

METRIC = {"exact_match": "exact_match", "multiple_choice": "acc"}


def score(ev: Evaluator, plan: Plan, task, split: str) -> float:
    model = ev.stitcher.build(plan)
    return ev.task_metrics(model, task, None, split)[METRIC[task.kind]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="data/builtin/smol")
    ap.add_argument("--remove", default="1,2,4,8")
    args = ap.parse_args()
    fam = Family.from_spec(args.family)
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()))
    L, budgets = fam.n_layers, [int(x) for x in args.remove.split(",")]
    t0 = time.perf_counter()
    skills = []  # (member, task): the member that is best on a task the base cannot do
    for task in ev.suite:
        if task.kind not in METRIC:
            continue
        full = {m: score(ev, Plan.identity(L, m, fam.name), task, "search") for m in fam.member_names}
        best = max(full, key=full.get)
        if best != "base" and full["base"] < 0.5 * full[best]:
            skills.append((best, task, full[best]))
    print(f"family {fam.name}: {L} layers; skills (member, task, its score on the search split): "
          + ", ".join(f"{m}/{t.name} {100 * s:.1f}%" for m, t, s in skills), flush=True)
    print("\n1. one position dropped: the member's own skill on the search split, % of the unchanged member's")
    header = "".join(f"{i:>5}" for i in range(L))
    print(f"{'member/task':<22}{header}")
    ranked = {}
    for m, task, full in skills:
        rel = []
        for i in range(L):
            rel.append(score(ev, Plan.drop_positions(L, [i], m, fam.name), task, "search") / full)
        ranked[m] = sorted(range(L), key=lambda i: (-rel[i], -i))
        print(f"{m + '/' + task.name:<22}" + "".join(f"{100 * r:>5.0f}" for r in rel), flush=True)
        print(f"{'':<22}positions keeping >= 90%: {[i for i in range(L) if rel[i] >= 0.9]}", flush=True)
    print("\n2. the n least harmful single drops together: the skill's own score on the held-out test split "
          "(full: the member unchanged)")
    print(f"{'member/task':<22}{'full':>8}" + "".join(f"{f'-{n}':>8}" for n in budgets) + "   drops at the largest")
    for m, task, _ in skills:
        full_test = score(ev, Plan.identity(L, m, fam.name), task, "test")
        cells = []
        for n in budgets:
            cells.append(score(ev, Plan.drop_positions(L, ranked[m][:n], m, fam.name), task, "test"))
        print(f"{m + '/' + task.name:<22}{100 * full_test:>7.1f}%" + "".join(f"{100 * c:>7.1f}%" for c in cells)
              + f"   {sorted(ranked[m][:budgets[-1]])}", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
