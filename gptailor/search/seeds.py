"""Plans placed in a search's initial design: heuristic removals, fixed patterns and each member's own layers."""
from __future__ import annotations

from typing import Callable


from gptailor.family.family import Family
from gptailor.plan import Op, Plan
from gptailor.search.space import removal_preference


# ----------------------------------------------------------------------------- heuristic seeds
def removal_patterns(L: int, n: int) -> dict[str, list[int]]:
    """Simple removal patterns for the initial design: deepest-first, middle-outward, alternating."""
    if n == 0:
        return {"none": []}
    pref = removal_preference(L)
    mid = L // 2
    outward = sorted(range(1, L - 1), key=lambda i: (abs(i - mid), i))
    alternating = list(range(L - 2, 0, -2)) + list(range(L - 3, 0, -2))
    return {"deepest_first": pref[:n], "middle_outward": (outward + [L - 1, 0])[:n],
            "alternating": (alternating + [L - 1, 0])[:n]}


def merge_settings(members: list[str]) -> dict[str, Callable[[int], Op]]:
    """What kept positions become in seeded plans: the base's layer, one finetune's, or a merge of all."""
    out: dict[str, Callable[[int], Op]] = {"base": lambda i: Op.pick("base")}
    cands = members[1:]
    for c in cands:  # each finetune alone: SMAC starts from every "prune one model" answer
        out[c] = (lambda m: (lambda i: Op.pick(m)))(c)
    if cands:
        out["linear_all"] = lambda i: Op.merge({m: 1.0 for m in members}, "linear")
        out["task_arithmetic_half"] = lambda i: Op.merge({m: 0.5 for m in cands}, "task_arithmetic") \
            if len(cands) > 1 else Op.pick(cands[0])
    return out


def seed_plans(family: Family, n_remove: int, heuristic_removals: dict[str, list[int]]) -> dict[str, Plan]:
    """Heuristic removal patterns crossed with merge settings, duplicates (same model) removed.

    Removal-major: every merge setting with the most trusted removal (the heuristics' first), then every
    setting with the next removal, and so on. A search screens only the first seeds (half its trials), so
    member-major order left the last members and the merges unscreened at tens of trials; this order gives
    each member and each merge a seed within the first ``len(merge_settings)``."""
    L = family.n_layers
    removals = {**heuristic_removals, **removal_patterns(L, n_remove)}
    settings = merge_settings(family.member_names)
    plans: dict[str, Plan] = {}
    seen: set[str] = set()
    for rname, gone in removals.items():
        dropped = set(gone)
        for mname, op_of in settings.items():  # within a removal, plain picks (base first) before merges
            plan = Plan(tuple(Op.drop() if i in dropped else op_of(i) for i in range(L)), family.name)
            if plan.key() not in seen:
                seen.add(plan.key())
                plans[f"{rname}+{mname}"] = plan
    return plans
