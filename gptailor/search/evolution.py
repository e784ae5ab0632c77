"""EvoPress-style evolutionary search (Sieberling et al., ICML 2025): a (1 + lambda) evolution whose mutations
keep the budget, with offspring screened by successive halving on growing fidelities.

Each generation makes ``lambda`` offspring of the parent (the best plan so far at the top fidelity) by 1-3
mutations (``min`` of two uniform draws, as EvoPress does, so one mutation is the most likely), each of which
keeps the number of dropped layers and stays inside the search's space (each space says what a kept position
may be: ``PlanSpace.keeps``, ``merges_at``, ``merge_move``):

- ``swap``: a dropped and a kept position trade places (the kept op moves to the freed position);
- ``source``: a kept position takes its layer from another member the space offers there;
- ``merge`` (spaces with merges: ``layerwise``, ``ranked``): a kept position becomes one of the space's
  merges, or its merge changes (members, weights or method in ``layerwise``; source or base share in
  ``ranked``).

Offspring are scored on few examples per task first; the best ``1/eta`` go on to ``eta`` times more examples,
until one reaches the top fidelity, where it replaces the parent if it is at least as good (equal moves let
the search cross plateaus, such as every plan scoring 0). Generation 0 is SMAC's seeded start
(``Search._seeded_start``: heuristic removals crossed with merge settings), screened the same way, so its
best seed is the first parent. Every plan goes through the space (``encode`` then ``decode``), so it is what
SMAC would score for that configuration, and through the same ``Objective.train`` (cache by (plan key,
fidelity), costs, objective), and every trial is reported by SMAC's own recorder: trials, resume and the
dashboard do not know which optimizer ran. Plan keys de-duplicate: no plan is proposed twice.

Resume replays the run: the generator is seeded, so it proposes the same plans again, and a proposal that
matches a stored trial (plan key and fidelity, in order) takes that trial's score instead of being scored
and recorded again; the run then goes on until ``n_trials`` trials count.

Why not a library: pymoo, nevergrad and optuna's samplers mutate vectors (bit flips, Gaussian steps), which
change the number of dropped layers and leave repair to chance; the budget-preserving moves and the
successive halving fit in the ~200 lines below.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

from gptailor.plan import Op, Plan
from gptailor.search.fidelity import rungs
from gptailor.search.space import PlanSpace
from gptailor.eval.results import EvalResult
from gptailor.search.trials import CUT, counted

MAX_TRIES = 50  # mutations tried for one new offspring before the generation settles for fewer


# ----------------------------------------------------------------------------- mutations
# Every move draws from what the space offers (``PlanSpace.keeps``, ``merges_at``, ``merge_move``), so each
# stays inside it: a move the space could not express would be scored as something else, or not at all.
def swap(plan: Plan, rng: random.Random, space: PlanSpace) -> Plan | None:
    """A dropped and a kept position trade places: the kept op moves to the freed position (or, where the
    space does not offer that op there, such as a pick space's fixed positions, the space's first choice).
    Only a position the space lets a plan drop (``PlanSpace.droppable``) takes the drop."""
    ops = list(plan.ops)
    dropped = [i for i, op in enumerate(ops) if op.kind == "drop"]
    kept = [i for i, op in enumerate(ops) if op.kind != "drop" and i in space.droppable]
    if not dropped or not kept:
        return None
    i, j = rng.choice(dropped), rng.choice(kept)
    ops[i], ops[j] = ops[j], Op.drop()
    child = Plan(tuple(ops), plan.family)
    if space.contains(child):
        return child
    ops[i] = Op.pick(space.keeps(i)[0])
    return Plan(tuple(ops), plan.family)


def _member(op: Op) -> str | None:
    return op.member if op.kind == "pick" else None


def source(plan: Plan, rng: random.Random, space: PlanSpace) -> Plan | None:
    """A kept position takes its layer from another member the space offers there (a merge becomes a pick)."""
    where = [i for i, op in enumerate(plan.ops)
             if op.kind != "drop" and any(m != _member(op) for m in space.keeps(i))]
    if not where:
        return None
    i = rng.choice(where)
    ops = list(plan.ops)
    ops[i] = Op.pick(rng.choice([m for m in space.keeps(i) if m != _member(plan.ops[i])]))
    return Plan(tuple(ops), plan.family)


def merge(plan: Plan, rng: random.Random, space: PlanSpace) -> Plan | None:
    """A kept position becomes one of the space's merges, or its merge changes (``PlanSpace.merge_move``:
    members, weights or method in ``layerwise``, source or base share in ``ranked``)."""
    where = [i for i, op in enumerate(plan.ops) if op.kind != "drop" and space.merges_at(i)]
    if not where:
        return None
    i = rng.choice(where)
    ops = list(plan.ops)
    ops[i] = space.merge_move(plan.ops[i], i, rng)
    return Plan(tuple(ops), plan.family)


MUTATIONS = {"swap": swap, "source": source, "merge": merge}


def canonical(plan: Plan | None, space: PlanSpace) -> Plan | None:
    """The plan the space scores for it (``decode(encode(plan))``), or None when the space cannot express it."""
    if plan is None:
        return None
    cfg = space.encode(plan)
    return None if cfg is None else space.decode(cfg)


def mutate(plan: Plan, rng: random.Random, space: PlanSpace) -> Plan | None:
    """1-3 budget-keeping mutations (``min`` of two draws, so one is the most likely), in the space; None
    when they lead back to ``plan``. A move that leaves the space is a bug in it, and raises."""
    out = plan
    for _ in range(min(rng.randint(1, 3), rng.randint(1, 3))):
        kind = rng.choice(sorted(MUTATIONS))
        moved = MUTATIONS[kind](out, rng, space)
        if moved is None:  # no such move here (no drop, no other source, no merges)
            continue
        got = canonical(moved, space)
        if got is None:
            raise RuntimeError(f"the {kind} move left the {space.name} space: {moved.to_text()}")
        out = got
    return None if out.key() == plan.key() else out


def random_plan(space: PlanSpace, rng: random.Random) -> Plan:
    """A plan in budget: ``n_remove`` droppable positions dropped at random, every other a random choice of
    the space's."""
    gone = set(rng.sample(sorted(space.droppable), space.n_remove))
    ops = tuple(Op.drop() if i in gone else Op.pick(rng.choice(space.keeps(i))) for i in range(space.L))
    plan = canonical(Plan(ops, space.family.name), space)
    if plan is None:
        raise RuntimeError(f"a random plan of the {space.name} space is outside it: {Plan(ops, space.family.name).to_text()}")
    return plan


def halving_cost(n: int, n_rungs: int, eta: int) -> int:
    """Trials successive halving spends on ``n`` candidates over ``n_rungs`` rungs."""
    total = 0
    for _ in range(n_rungs):
        total += n
        n = math.ceil(n / eta)
    return total


# ----------------------------------------------------------------------------- the loop
@dataclass
class _Scored:
    plan: Plan
    cost: float


class Evolution:
    """One evolutionary run inside a ``Search`` (its space, settings, trials, recorder and stop rules),
    scoring through its ``Objective``; ``costs`` is the optimizer's ``costs_of`` for this study (passed in,
    so this module does not import the optimizer that dispatches to it)."""

    def __init__(self, search: Any, objective: Any, costs: Callable[[EvalResult | None], float | list[float]],
                 client: Any = None) -> None:
        self.s, self.objective, self.costs, self.client = search, objective, costs, client
        st = search.settings
        self.eta = st.eta  # at least 2 (limits): the same rungs the evaluator's batches are cut at (Search)
        multi = st.facade == "multi_fidelity"
        self.rungs = rungs(search.min_fidelity, search.max_fidelity, self.eta) if multi else [search.max_fidelity]
        self.lam = self.eta ** max(1, len(self.rungs) - 1)
        self.rng = random.Random(st.seed)
        self.seen: set[str] = set()
        # stored trials to replay (resume): (plan key, fidelity) -> the trials, in order
        self.stored: dict[tuple[str, int | None], list] = {}
        for t in search.previous:
            if t.status != CUT:
                self.stored.setdefault((t.plan.key(), t.fidelity), []).append(t)
        self.runhistory: list[tuple[dict, float | None, Any]] = []
        self.done = False

    # -- evaluation -------------------------------------------------------------------
    def _full(self) -> bool:
        s = self.s
        if self.done or counted(s.trials) >= s.settings.n_trials or s._should_stop():
            self.done = True
        elif s.settings.walltime_s and s._elapsed() >= s.settings.walltime_s:
            s._stopped, self.done = "walltime", True
        return self.done

    def _cost(self, result: EvalResult | None, status: str) -> float:
        """The scalar cost a trial ranks by (per-task costs, ParEGO's case under SMAC, are averaged)."""
        c = self.costs(result if status == "complete" else None)
        return float(sum(c) / len(c)) if isinstance(c, list) else float(c)

    def _record(self, cfg, budget: float, extra: dict[str, Any]) -> float:
        """SMAC's recorder stores the trial (numbering, cache, on_trial); returns its scalar cost."""
        self.s.recorder.on_tell(SimpleNamespace(config=cfg, budget=budget), SimpleNamespace(additional_info=extra))
        t = self.s.trials[-1]
        cost = self._cost(t.result, t.status)
        self.runhistory.append((t.config, budget, cost))
        return cost

    def _train(self, cfg, budget: float) -> dict[str, Any]:
        try:
            return self.objective.train(cfg, seed=self.s.settings.seed, budget=budget)[1]
        except Exception as e:  # noqa: BLE001 - a failing plan is a failed trial, as under SMAC
            return {"error": f"{type(e).__name__}: {e}"}

    def score(self, plans: list[Plan], fidelity: int) -> list[_Scored]:
        """Score ``plans`` at ``fidelity`` (stored trials first, then Dask or in turn), in their order,
        stopping between evaluations when the study is full, cancelled or out of time."""
        out: list[_Scored] = []
        budget = float(fidelity)
        todo: list[tuple[Plan, Any]] = []
        for plan in plans:
            old = self.stored.get((plan.key(), fidelity))
            if old:  # resume: this proposal was scored before the interruption
                t = old.pop(0)
                out.append(_Scored(plan, self._cost(t.result, t.status)))
            else:
                todo.append((plan, self.s.space.encode(plan)))
        if self.client is not None and todo and not self._full():
            room = self.s.settings.n_trials - counted(self.s.trials)
            futures = [self.client.submit(self.objective.train, cfg, self.s.settings.seed, budget, pure=False)
                       for _, cfg in todo[:room]]
            for (plan, cfg), fut in zip(todo, futures):
                if self._full():
                    fut.cancel()
                    continue
                try:
                    extra = fut.result()[1]
                except Exception as e:  # noqa: BLE001
                    extra = {"error": f"{type(e).__name__}: {e}"}
                out.append(_Scored(plan, self._record(cfg, budget, extra)))
            return out
        for plan, cfg in todo:
            if self._full():
                break
            out.append(_Scored(plan, self._record(cfg, budget, self._train(cfg, budget))))
        return out

    def halve(self, plans: list[Plan]) -> list[_Scored]:
        """Successive halving: all at the lowest rung, the best ``1/eta`` on to the next; the top rung's scores."""
        scored: list[_Scored] = []
        for k, fidelity in enumerate(self.rungs):
            if k:
                best = sorted(range(len(scored)), key=lambda j: (scored[j].cost, j))
                plans = [scored[j].plan for j in sorted(best[: math.ceil(len(scored) / self.eta)])]
            scored = self.score(plans, fidelity)
            if self.done or not scored:
                return scored if k == len(self.rungs) - 1 else []
        return scored

    # -- generations ------------------------------------------------------------------
    def _seeds(self) -> list[Plan]:
        """Generation 0: SMAC's seeded start (as many as half the trials can screen), else random plans."""
        s = self.s
        plans = [seed.plan for seed in s._seeded_start()]
        n = len(plans)
        while n > 1 and halving_cost(n, len(self.rungs), self.eta) > max(s.settings.n_trials // 2, self.lam):
            n -= 1
        plans, keys = plans[:n], {p.key() for p in plans[:n]}
        for _ in range(MAX_TRIES * self.lam if not plans else 0):  # no seeds: lambda distinct random plans
            p = random_plan(s.space, self.rng)
            if p.key() not in keys:
                keys.add(p.key())
                plans.append(p)
            if len(plans) == self.lam:
                break
        return plans

    def offspring(self, parent: Plan) -> list[Plan]:
        """Up to ``lambda`` new plans (never proposed before), each a mutation of the parent."""
        out: list[Plan] = []
        for _ in range(self.lam):
            for _ in range(MAX_TRIES):
                child = mutate(parent, self.rng, self.s.space)
                if child is not None and child.key() not in self.seen:
                    self.seen.add(child.key())
                    out.append(child)
                    break
        return out

    def run(self) -> list[tuple[dict, float | None, Any]]:
        """Generations until the study is full, stopped or out of time; returns (config, budget, cost) rows."""
        seeds = self._seeds()
        self.seen.update(p.key() for p in seeds)
        parent: _Scored | None = None
        generation = seeds
        while generation and not self.done:
            top = self.halve(generation)
            best = min(top, key=lambda x: x.cost, default=None)
            if best is not None and (parent is None or best.cost <= parent.cost):
                parent = best
            if parent is None or self._full():
                break
            generation = self.offspring(parent.plan)
        self.parent = parent
        return self.runhistory


