"""Search spaces: ConfigSpace encodings of layer plans under a size budget.

Four encodings, each decoding every configuration to a valid plan that respects the budget:

- ``layerwise`` (ours): per position an op in {drop, base, <candidates>, merge}; a merge has one
  weight per member (members under 0.05 are left out) and a method, active only under the merge op
  (ConfigSpace conditions). A configuration that drops the wrong number of layers is *repaired*
  deterministically (extra drops restored from the shallowest up, missing drops taken from the
  deepest non-final layer down -- the usual "deep layers are redundant" prior) or *rejected* (the
  objective returns SMAC's crash cost), whichever ``constraint`` says.
- ``pick``: per position drop or one of a few sources' layers, no merges: small enough to enumerate, the
  space of the ground-truth benchmark (``bench/search_regret.py``) and of a pick-only ablation.
- ``paper`` (GPTailor's own): R removed positions; for every kept position a K-bit mask over the
  finetunes (none = base layer, one = pick it, several = task arithmetic base + s * sum(theta_j -
  base) of the selected ones, all read at the *same* source position) and one scale s.
- ``ranked``: for a random forest with a few hundred observations (issue 21): few, *unconditional*
  hyperparameters. Per position a float ``keep_i``: the plan drops the ``n_remove`` positions with the
  lowest values (ties by position), so every configuration is in budget and moving one value moves at
  most one drop. Per searched position a categorical ``src_i`` (a member, or ``all``) and a float
  ``mix_i``: up to ``MIX_PICK`` the position is ``src_i``'s layer (``all``: the linear merge of every
  member, equal weights); above it, a linear merge in which the base's share grows from 0 to 1.

In every space, a position where every finetune's layer is bit-for-bit the base's (``Family.shared_positions``)
offers only keep or drop: any pick or merge there is the base's layer, so it is not searched.
"""
from __future__ import annotations

import functools
import itertools
import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

from ConfigSpace import Categorical, ConfigurationSpace, EqualsCondition, Float, Integer
from ConfigSpace import Configuration

from gptailor.family.family import Family
from gptailor.merge import METHODS
from gptailor.plan import Op, Plan, PlanError

MIN_WEIGHT = 0.05
GRID = tuple(k / 20 for k in range(round(MIN_WEIGHT * 20), 21))  # merge weights a mutation draws: MIN_WEIGHT .. 1
MERGE_METHODS_SEARCHED = tuple(name for name, m in METHODS.items() if m.searchable)


class BudgetError(ValueError):
    """A budget the family cannot meet; raised before any work starts."""


@dataclass
class Budget:
    """How much to remove: a number of layers, or a maximum fraction of the parameters to keep."""

    remove_layers: int | None = None
    max_param_fraction: float | None = None
    remove_fraction: float | None = None  # of the layers, rounded to the nearest whole layer

    def n_remove(self, family: Family) -> int:
        """The number of positions to drop, checked against the family."""
        L = family.n_layers
        given = [x is not None for x in (self.remove_layers, self.max_param_fraction, self.remove_fraction)]
        if sum(given) != 1:
            raise BudgetError("give exactly one of remove_layers, remove_fraction or max_param_fraction")
        if self.remove_fraction is not None:
            if not 0 <= self.remove_fraction < 1:
                raise BudgetError(f"remove_fraction must be in [0, 1), got {self.remove_fraction}")
            n = int(round(self.remove_fraction * L))
        elif self.remove_layers is not None:
            n = int(self.remove_layers)
            if n < 0:
                raise BudgetError(f"cannot remove {n} layers; give a number from 0 to {L - 1}")
        else:
            f = float(self.max_param_fraction)
            if not 0 < f <= 1:
                raise BudgetError(f"max_param_fraction must be in (0, 1], got {f}")
            total, per = family.param_count(), family.layer_params()
            n = max(0, math.ceil((total - f * total) / per - 1e-9))
        if n >= L:
            raise BudgetError(f"budget removes {n} of {L} layers, which keeps none; remove at most {L - 1}")
        return n

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Budget":
        return cls(d.get("remove_layers"), d.get("max_param_fraction"), d.get("remove_fraction"))


def repair_drops(ops: list[Op], n_remove: int, restore: Callable[[int], Op],
                 droppable: frozenset[int] | None = None) -> list[Op]:
    """``ops`` with exactly ``n_remove`` drops, by the one repair rule: extra drops are restored (``restore``
    says as what) from the least removable up, missing ones taken in ``removal_preference`` order (among
    ``droppable`` positions only, where a space restricts them)."""
    pref = [i for i in removal_preference(len(ops)) if droppable is None or i in droppable]
    dropped = [i for i, op in enumerate(ops) if op.kind == "drop"]
    if len(dropped) > n_remove:
        for i in sorted(dropped, key=pref.index, reverse=True)[: len(dropped) - n_remove]:
            ops[i] = restore(i)
    elif len(dropped) < n_remove:
        for i in [p for p in pref if ops[p].kind != "drop"][: n_remove - len(dropped)]:
            ops[i] = Op.drop()
    return ops


def removal_preference(n_layers: int) -> list[int]:
    """Positions from most to least removable: deepest non-final first, the final and first layers last."""
    middle = list(range(n_layers - 2, 0, -1))
    return middle + ([n_layers - 1] if n_layers > 1 else []) + [0]


class PlanSpace:
    """A ConfigSpace over plans of one family; ``decode`` maps configurations to plans."""

    name = "abstract"

    def __init__(self, family: Family, n_remove: int, seed: int = 0) -> None:
        self.family = family
        self.L = family.n_layers
        self.members = family.member_names
        self.candidates = self.members[1:]
        self.n_remove = n_remove
        self.seed = seed
        # positions where every member's layer is the base's: only keep (base) or drop is offered there
        self.shared = frozenset(family.shared_positions()) if self.candidates else frozenset()
        self.cs = self._build()

    def _same_as_base(self, i: int, op: Op) -> bool:
        """Whether ``op`` at position ``i`` is the base's layer because every member's layer there is:
        a pick, or a merge of members at this position (not a LaCo-style merge reading other positions)."""
        return i in self.shared and op.kind != "drop" and not any("@" in m for m in op.members)

    def _build(self) -> ConfigurationSpace:
        raise NotImplementedError

    def decode(self, config: Configuration | dict) -> Plan:
        raise NotImplementedError

    def encode(self, plan: Plan) -> Configuration | None:
        """The configuration of a plan, or None if this space cannot express it."""
        raise NotImplementedError

    def valid(self, config: Configuration | dict) -> bool:
        """Whether a configuration meets the budget without repair."""
        return True

    # -- what a mutation may do (gptailor.search.evolution draws its moves from these) -------------
    @property
    def droppable(self) -> frozenset[int]:
        """The positions a plan of this space may drop (every position, unless a space restricts them)."""
        return frozenset(range(self.L))

    def keeps(self, i: int) -> list[str]:
        """The members whose layer a kept position ``i`` may be in this space (a pick), the first its
        default; the base's alone where every member's layer is the base's."""
        return [self.members[0]] if i in self.shared else list(self.members)

    def merges_at(self, i: int) -> bool:
        """Whether a kept position ``i`` may be a merge in this space (``merge_move`` draws one)."""
        return False

    def merge_move(self, op: Op, i: int, rng: random.Random) -> Op:
        """A merge for position ``i`` that this space expresses and that is not ``op``: a change of ``op``
        when it is one of the space's merges, else a new one. Only where ``merges_at(i)``."""
        raise PlanError(f"the {self.name} space has no merges to draw at position {i}")

    def contains(self, plan: Plan) -> bool:
        """Whether this space expresses ``plan``: it has a configuration for it (which decodes to ``plan``
        or, where the space writes the same model another way, to its canonical form)."""
        return self.encode(plan) is not None

    def options(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this space with ``make_space`` (a Dask worker does)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"space": self.name, "positions": self.L, "members": self.members, "n_remove": self.n_remove,
                "hyperparameters": len(list(self.cs.values())), "shared_positions": sorted(self.shared)}


class LayerwiseSpace(PlanSpace):
    name = "layerwise"

    def __init__(self, family: Family, n_remove: int, seed: int = 0, constraint: str = "repair",
                 merge: bool = True) -> None:
        if constraint not in ("repair", "reject"):
            raise ValueError("constraint is 'repair' or 'reject'")
        self.constraint = constraint
        self.merge = merge
        super().__init__(family, n_remove, seed)

    def options(self) -> dict[str, Any]:
        return {"constraint": self.constraint, "merge": self.merge}

    def _build(self) -> ConfigurationSpace:
        cs = ConfigurationSpace(seed=self.seed)
        ops = ["drop", *self.members] + (["merge"] if self.merge and len(self.members) > 1 else [])
        for i in range(self.L):
            here = ["drop", self.members[0]] if i in self.shared else ops
            op = Categorical(f"op_{i:03d}", here, default=self.members[0])
            cs.add(op)
            if "merge" not in here:
                continue
            method = Categorical(f"method_{i:03d}", list(MERGE_METHODS_SEARCHED), default="linear")
            weights = [Float(f"w_{i:03d}_{m}", (0.0, 1.0), default=0.5) for m in self.members]
            cs.add(method, *weights)
            cs.add(*[EqualsCondition(h, op, "merge") for h in (method, *weights)])
        return cs

    def _raw_ops(self, config) -> list[Op]:
        c = dict(config)
        out = []
        for i in range(self.L):
            kind = c[f"op_{i:03d}"]
            if kind == "drop":
                out.append(Op.drop())
            elif kind != "merge":
                out.append(Op.pick(kind))
            else:
                w = {m: c[f"w_{i:03d}_{m}"] for m in self.members}
                kept = {m: round(v, 4) for m, v in w.items() if v >= MIN_WEIGHT}
                method = c[f"method_{i:03d}"]
                if len(kept) == 0:
                    kept = {max(w, key=w.get): 1.0}
                if len(kept) == 1:  # a one-member merge is that member's layer (for every method here)
                    out.append(Op.pick(next(iter(kept))))
                else:
                    out.append(Op.merge(kept, method))
        return out

    def valid(self, config) -> bool:
        return sum(op.kind == "drop" for op in self._raw_ops(config)) == self.n_remove

    def merges_at(self, i: int) -> bool:
        return self.merge and len(self.members) > 1 and i not in self.shared

    def merge_move(self, op: Op, i: int, rng: random.Random) -> Op:
        """A new merge of two or more members, or one change of ``op``'s merge: one member's weight, one
        member, or its method; weights on the GRID, in [MIN_WEIGHT, 1], so the space encodes them (a
        two-member merge that loses a member is the other member's layer)."""
        if op.kind != "merge" or op.method not in MERGE_METHODS_SEARCHED:
            chosen = rng.sample(self.members, rng.randint(2, len(self.members)))
            return Op.merge({m: rng.choice(GRID) for m in sorted(chosen)}, rng.choice(MERGE_METHODS_SEARCHED))
        w, method = dict(op.weights), op.method
        move = rng.choice(["weight", "member", "method"] if len(MERGE_METHODS_SEARCHED) > 1 else ["weight", "member"])
        if move == "weight":  # another value on the grid, so the move always changes the plan
            m = rng.choice(sorted(w))
            w[m] = rng.choice([g for g in GRID if abs(g - w[m]) > 1e-9])
        elif move == "member":  # one member out, another in (or just out, when every member is in)
            out = [m for m in self.members if m not in w]
            w.pop(rng.choice(sorted(w)))
            if out:
                w[rng.choice(out)] = rng.choice(GRID)
        else:
            method = rng.choice([x for x in MERGE_METHODS_SEARCHED if x != op.method])
        return Op.merge(dict(sorted(w.items())), method) if len(w) > 1 else Op.pick(next(iter(w)))

    def decode(self, config) -> Plan:
        ops = repair_drops(self._raw_ops(config), self.n_remove, lambda i: Op.pick("base"))
        return Plan(tuple(ops), self.family.name)

    def encode(self, plan: Plan) -> Configuration | None:
        values: dict[str, Any] = {}
        for i, op in enumerate(plan.ops):
            if op.kind == "drop":
                values[f"op_{i:03d}"] = "drop"
            elif self._same_as_base(i, op):
                values[f"op_{i:03d}"] = self.members[0]
            elif op.kind == "pick":
                values[f"op_{i:03d}"] = op.member
            else:
                if not self.merge or op.method not in MERGE_METHODS_SEARCHED or op.density is not None \
                        or any("@" in m for m in op.members):
                    return None
                # a method that normalises its weights (linear, TIES) keeps the model when they are
                # rescaled into [0, 1]; for one that does not (task arithmetic) they must lie there already.
                total = max(w for _, w in op.weights) if METHODS[op.method].normalises else 1.0
                if any(w / total > 1.0 or w / total < MIN_WEIGHT for _, w in op.weights):
                    return None
                values[f"op_{i:03d}"] = "merge"
                values[f"method_{i:03d}"] = op.method
                for m in self.members:
                    values[f"w_{i:03d}_{m}"] = op.weight_map.get(m, 0.0) / total
        try:
            return Configuration(self.cs, values=values)
        except Exception:  # noqa: BLE001 - ConfigSpace raises several kinds for an illegal value
            return None


class PaperSpace(PlanSpace):
    """The encoding of the GPTailor paper (removed positions + per-layer finetune masks + one scale)."""

    name = "paper"

    def _build(self) -> ConfigurationSpace:
        cs = ConfigurationSpace(seed=self.seed)
        for j in range(self.n_remove):
            cs.add(Integer(f"remove_{j:03d}", (0, self.L - 1), default=removal_preference(self.L)[j]))
        for i in range(self.L):
            if i in self.shared:
                continue  # every finetune's layer is the base's here: no mask to choose
            for k in self.candidates:
                cs.add(Categorical(f"mask_{i:03d}_{k}", [0, 1], default=0))
        if self.candidates and len(self.shared) < self.L:
            cs.add(Float("scale", (MIN_WEIGHT, 1.0), default=0.5))
        return cs

    def removed(self, config) -> list[int]:
        """R distinct positions: a repeated position moves to the next free one (wrapping)."""
        c = dict(config)
        taken: list[int] = []
        for j in range(self.n_remove):
            p = int(c[f"remove_{j:03d}"])
            while p in taken:
                p = (p + 1) % self.L
            taken.append(p)
        return taken

    def valid(self, config) -> bool:
        c = dict(config)
        return len({c[f"remove_{j:03d}"] for j in range(self.n_remove)}) == self.n_remove

    def decode(self, config) -> Plan:
        c = dict(config)
        gone = set(self.removed(config))
        s = round(float(c.get("scale", 1.0)), 4)
        ops = []
        for i in range(self.L):
            if i in gone:
                ops.append(Op.drop())
                continue
            chosen = [] if i in self.shared else [k for k in self.candidates if int(c[f"mask_{i:03d}_{k}"]) == 1]
            if not chosen:
                ops.append(Op.pick("base"))
            elif len(chosen) == 1:
                ops.append(Op.pick(chosen[0]))
            else:
                ops.append(Op.merge({k: s for k in chosen}, "task_arithmetic"))
        return Plan(tuple(ops), self.family.name)

    def encode(self, plan: Plan) -> Configuration | None:
        dropped = [i for i, op in enumerate(plan.ops) if op.kind == "drop"]
        if len(dropped) != self.n_remove:
            return None
        values: dict[str, Any] = {f"remove_{j:03d}": p for j, p in enumerate(dropped)}
        scale = None
        for i, op in enumerate(plan.ops):
            chosen: set[str] = set()
            if op.kind == "drop" or self._same_as_base(i, op):
                pass  # a shared position has no masks; its pick or merge is the base's layer
            elif op.kind == "pick" and op.member != "base":
                chosen = {op.member}
            elif op.kind == "merge":
                ws = {w for _, w in op.weights}
                if op.method != "task_arithmetic" or "base" in op.members or len(ws) != 1:
                    return None
                if scale is not None and scale != ws.pop():
                    return None
                scale = op.weights[0][1]
                chosen = set(op.members)
            for k in self.candidates if i not in self.shared else ():
                values[f"mask_{i:03d}_{k}"] = int(k in chosen)
        if self.candidates and len(self.shared) < self.L:
            values["scale"] = min(1.0, max(MIN_WEIGHT, scale if scale is not None else 0.5))
        try:
            return Configuration(self.cs, values=values)
        except Exception:  # noqa: BLE001
            return None


class PickSpace(PlanSpace):
    """Plans small enough to list: per position drop or one of ``sources``' layers, ``n_remove`` drops.

    Small enough to enumerate when the sources are few (``plans``), so a search restricted to it can be
    scored against ground truth (``bench/search_regret.py``): one source is "which layers to drop from that
    member", every member is the pick-only space of the paper's ablation. Three optional restrictions keep a
    space listable on a large family: ``free`` positions (elsewhere a kept layer is the first source's),
    ``droppable`` positions (the only ones a plan may drop) and ``merges``, a few fixed merges by name (for
    example the seeds' ``task_arithmetic_half``) that a free position may take besides the sources' layers:
    picks against picks with merges, on one table. A shared position offers drop or the base's layer (any
    member's is the same). A configuration with the wrong number of drops is repaired as in ``layerwise``
    (among the droppable positions), so every configuration decodes to one of ``plans()``."""

    name = "pick"

    def __init__(self, family: Family, n_remove: int, seed: int = 0, sources: tuple[str, ...] | list[str] | None = None,
                 free: tuple[int, ...] | list[int] | None = None, droppable: tuple[int, ...] | list[int] | None = None,
                 merges: dict[str, Op | dict] | None = None) -> None:
        sources = tuple(sources or family.member_names)
        unknown = [m for m in sources if m not in family.member_names]
        if unknown or not sources:
            raise PlanError(f"pick space: unknown source(s) {', '.join(unknown) or '(none given)'}; "
                            f"use members of {family.name!r}: {', '.join(family.member_names)}")
        self.sources = sources
        L = family.n_layers
        # ``free``: the positions that may take any source; elsewhere a kept layer is the first source's (a
        # smaller space to enumerate). None: every position.
        self.free = frozenset(range(L) if free is None else free)
        if not self.free <= set(range(L)):
            raise PlanError(f"pick space: free positions must lie in 0..{L - 1}, got {sorted(self.free)}")
        self._droppable = frozenset(range(L) if droppable is None else droppable)
        if not self._droppable <= set(range(L)) or len(self._droppable) < n_remove:
            raise PlanError(f"pick space: droppable positions must lie in 0..{L - 1} and number at least the "
                            f"{n_remove} to remove, got {sorted(self._droppable)}")
        self.merges = {str(k): (v if isinstance(v, Op) else Op.from_dict(v)) for k, v in (merges or {}).items()}
        clash = [k for k, op in self.merges.items() if op.kind != "merge" or k in (*family.member_names, "drop")]
        bad = [m for op in self.merges.values() for m in op.members if m not in family.member_names]
        if clash or bad:
            raise PlanError(f"pick space: merges must be merge ops of members, named unlike a member or 'drop' "
                            f"(got {', '.join(clash) or 'unknown member(s) ' + ', '.join(bad)})")
        self._merge_keys = {self._merge_key(op): k for k, op in self.merges.items()}
        super().__init__(family, n_remove, seed)

    @staticmethod
    def _merge_key(op: Op) -> str:
        return Plan((op,)).key()  # merge order ignored, as plans compare

    @property
    def droppable(self) -> frozenset[int]:
        return self._droppable

    def options(self) -> dict[str, Any]:
        return {"sources": list(self.sources), "free": sorted(self.free), "droppable": sorted(self._droppable),
                "merges": {k: op.to_dict() for k, op in self.merges.items()}}

    def keeps(self, i: int) -> list[str]:
        """The members position ``i`` may keep: ``sources`` where free, else the first source's; only the
        base's where every member's layer is the base's."""
        if i in self.shared:
            return ["base"]
        return list(self.sources) if i in self.free else [self.sources[0]]

    def choices(self, i: int) -> list[str]:
        """What a kept position ``i`` may be, by name: ``keeps(i)``, then the merges where free."""
        return self.keeps(i) + (list(self.merges) if self.merges_at(i) else [])

    def op_of(self, name: str) -> Op:
        return self.merges[name] if name in self.merges else Op.pick(name)

    def merges_at(self, i: int) -> bool:
        return bool(self.merges) and i in self.free and i not in self.shared

    def merge_move(self, op: Op, i: int, rng: random.Random) -> Op:
        """Another of the space's merges, or, when ``op`` is the only one, the position's first source."""
        others = [k for k, m in self.merges.items() if self._merge_key(m) != self._merge_key(op)]
        return self.merges[rng.choice(others)] if others else Op.pick(self.keeps(i)[0])

    def _build(self) -> ConfigurationSpace:
        cs = ConfigurationSpace(seed=self.seed)
        for i in range(self.L):
            keep = self.choices(i)
            cs.add(Categorical(f"op_{i:03d}", (["drop"] if i in self._droppable else []) + keep, default=keep[0]))
        return cs

    def decode(self, config) -> Plan:
        c = dict(config)
        ops = [Op.drop() if c[f"op_{i:03d}"] == "drop" else self.op_of(c[f"op_{i:03d}"]) for i in range(self.L)]
        ops = repair_drops(ops, self.n_remove, lambda i: Op.pick(self.keeps(i)[0]),  # the first source's layer
                           self._droppable)
        return Plan(tuple(ops), self.family.name)

    def valid(self, config) -> bool:
        return sum(v == "drop" for k, v in dict(config).items() if k.startswith("op_")) == self.n_remove

    def encode(self, plan: Plan) -> Configuration | None:
        values: dict[str, Any] = {}
        for i, op in enumerate(plan.ops):
            if op.kind == "drop":
                values[f"op_{i:03d}"] = "drop"
            elif self._same_as_base(i, op):
                values[f"op_{i:03d}"] = "base"
            elif op.kind == "pick" and op.member in self.sources:
                values[f"op_{i:03d}"] = op.member
            elif op.kind == "merge" and self._merge_key(op) in self._merge_keys:
                values[f"op_{i:03d}"] = self._merge_keys[self._merge_key(op)]
            else:
                return None  # another merge, or a member this space does not offer
        try:
            return Configuration(self.cs, values=values)
        except Exception:  # noqa: BLE001 - ConfigSpace raises several kinds for an illegal value
            return None

    def size(self) -> int:
        """How many plans ``plans`` yields."""
        return sum(math.prod(len(self.choices(i)) for i in range(self.L) if i not in gone)
                   for gone in itertools.combinations(sorted(self._droppable), self.n_remove))

    def plans(self) -> Iterator[Plan]:
        """Every plan of the space, each once, as ``decode`` writes it; consecutive plans share long
        prefixes (drop sets in order, then sources), which the prefix-state cache turns into saved forwards."""
        for gone in itertools.combinations(sorted(self._droppable), self.n_remove):
            kept = [i for i in range(self.L) if i not in gone]
            for picks in itertools.product(*(self.choices(i) for i in kept)):
                chosen = dict(zip(kept, picks))
                yield Plan(tuple(self.op_of(chosen[i]) if i in chosen else Op.drop() for i in range(self.L)),
                           self.family.name)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.options()}


MIX_PICK = 0.5  # mix_i at or below this: a plain pick of src_i (half of the random draws)
ALL = "all"  # src_i: every member (a linear merge)


class RankedSpace(PlanSpace):
    """Drops as ranks of per-position floats, sources as one categorical and one float per position:
    every hyperparameter is always active and every configuration meets the budget."""

    name = "ranked"

    def __init__(self, family: Family, n_remove: int, seed: int = 0, merge: bool = True) -> None:
        self.merge = merge
        super().__init__(family, n_remove, seed)

    @property
    def searched(self) -> list[int]:
        """Positions with a source to choose: not shared, and the family has finetunes."""
        return [i for i in range(self.L) if i not in self.shared] if self.candidates else []

    @property
    def sources(self) -> list[str]:
        return [*self.members, ALL] if self.merge and len(self.members) > 2 else list(self.members)

    def merges_at(self, i: int) -> bool:
        return i in self.searched and bool(self.merge_ops)

    def merge_move(self, op: Op, i: int, rng: random.Random) -> Op:
        """Another of the space's merges (``merge_ops``): its sources and base shares are few."""
        return rng.choice([m for m in self.merge_ops if m != op])

    @functools.cached_property
    def merge_ops(self) -> list[Op]:
        """Every merge a searched position can be, with the base's share on a 0.05 grid: ``src_i`` with
        ``mix_i`` at 0 (``all``) and at ``MIX_PICK + (1 - MIX_PICK) * k / 20``; only those the space
        writes back exactly (``encode`` refuses a weight that rounds differently)."""
        out: list[Op] = []
        for src in self.sources if self.merge else ():
            for mix in (0.0, *(MIX_PICK + (1.0 - MIX_PICK) * k / 20 for k in range(21))):
                op = self._op(src, mix)
                got = self._source_of(op) if op.kind == "merge" else None
                if got is not None and self._op(*got) == op and op not in out:
                    out.append(op)
        return out

    def _build(self) -> ConfigurationSpace:
        cs = ConfigurationSpace(seed=self.seed)
        defaults = self._keeps(removal_preference(self.L)[: self.n_remove])  # deepest-first drops
        cs.add(*[Float(f"keep_{i:03d}", (0.0, 1.0), default=defaults[i]) for i in range(self.L)])
        for i in self.searched:
            cs.add(Categorical(f"src_{i:03d}", self.sources, default=self.members[0]))
            if self.merge:
                cs.add(Float(f"mix_{i:03d}", (0.0, 1.0), default=0.0))
        return cs

    def _keeps(self, dropped: list[int]) -> list[float]:
        """keep values that drop exactly ``dropped``: drops below 0.5, kept above, each group ordered
        by removal preference (so a one-value move from a seed swaps its likeliest pair)."""
        pref = removal_preference(self.L)
        gone = sorted(dropped, key=pref.index)
        kept = [p for p in pref if p not in set(dropped)]
        out = [0.0] * self.L
        for k, p in enumerate(gone):
            out[p] = 0.5 * (k + 0.5) / len(gone)
        for k, p in enumerate(kept):
            out[p] = 0.5 + 0.5 * (k + 0.5) / len(kept)
        return out

    def dropped(self, config: Configuration | dict) -> list[int]:
        """The ``n_remove`` positions with the lowest keep value, ties broken by position."""
        c = dict(config)
        order = sorted(range(self.L), key=lambda i: (float(c[f"keep_{i:03d}"]), i))
        return sorted(order[: self.n_remove])

    def _op(self, src: str, mix: float) -> Op:
        """Position's op from its source and mix: a pick up to MIX_PICK, then a linear merge whose base
        share b runs 0 -> 1 (weights scaled so the largest is 1; a share under MIN_WEIGHT is left out)."""
        if mix <= MIX_PICK:
            return Op.merge({m: 1.0 for m in self.members}, "linear") if src == ALL else Op.pick(src)
        b = (mix - MIX_PICK) / (1.0 - MIX_PICK)
        others = self.candidates if src == ALL else [] if src == self.members[0] else [src]
        if not others or b > 1.0 - MIN_WEIGHT:
            return Op.pick(self.members[0])
        each = (1.0 - b) / len(others)
        if b < MIN_WEIGHT:
            return Op.pick(others[0]) if len(others) == 1 else Op.merge({m: 1.0 for m in others}, "linear")
        top = max(b, each)
        return Op.merge({self.members[0]: round(b / top, 4), **{m: round(each / top, 4) for m in others}}, "linear")

    def decode(self, config) -> Plan:
        c = dict(config)
        gone = set(self.dropped(c))
        ops = []
        for i in range(self.L):
            if i in gone:
                ops.append(Op.drop())
            elif i not in self.searched:
                ops.append(Op.pick(self.members[0]))
            else:
                ops.append(self._op(c[f"src_{i:03d}"], float(c[f"mix_{i:03d}"]) if self.merge else 0.0))
        return Plan(tuple(ops), self.family.name)

    def _source_of(self, op: Op) -> tuple[str, float] | None:
        """(src, mix) for a kept op, or None when this space cannot express it."""
        if op.kind == "pick":
            return op.member, 0.0
        if not self.merge or op.method != "linear" or op.density is not None or any("@" in m for m in op.members):
            return None
        w, base = op.weight_map, self.members[0]
        others = [m for m in w if m != base]
        if set(w) == set(self.members) and len(set(w.values())) == 1 and ALL in self.sources:
            return ALL, 0.0  # every member, equal weights
        if ALL in self.sources and base not in w and set(w) == set(self.candidates) and len(set(w.values())) == 1:
            return ALL, MIX_PICK + 0.5 * MIN_WEIGHT * (1.0 - MIX_PICK)  # the finetunes alone: base share below MIN_WEIGHT
        if not others or len({w[m] for m in others}) != 1 or base not in w:
            return None
        src = others[0] if len(others) == 1 else ALL
        if src == ALL and (ALL not in self.sources or set(others) != set(self.candidates)):
            return None
        total = w[base] + sum(w[m] for m in others)
        b = w[base] / total
        if not MIN_WEIGHT <= b <= 1.0 - MIN_WEIGHT:
            return None
        return src, MIX_PICK + b * (1.0 - MIX_PICK)

    def encode(self, plan: Plan) -> Configuration | None:
        gone = [i for i, op in enumerate(plan.ops) if op.kind == "drop"]
        if len(gone) != self.n_remove or len(plan.ops) != self.L:
            return None
        values: dict[str, Any] = {f"keep_{i:03d}": v for i, v in enumerate(self._keeps(gone))}
        for i, op in enumerate(plan.ops):
            if op.kind == "drop":
                continue
            if i not in self.searched:
                if not (op.kind == "pick" and op.member == self.members[0]) and not self._same_as_base(i, op):
                    return None
                continue
            got = self._source_of(op)
            if got is None:
                return None
            values[f"src_{i:03d}"] = got[0]
            if self.merge:
                values[f"mix_{i:03d}"] = got[1]
        for i in self.searched:  # a dropped position's source is irrelevant: the defaults
            values.setdefault(f"src_{i:03d}", self.members[0])
            if self.merge:
                values.setdefault(f"mix_{i:03d}", 0.0)
        try:
            cfg = Configuration(self.cs, values=values)
        except Exception:  # noqa: BLE001
            return None
        same = Plan(tuple(op if op.kind == "drop" or i in self.searched else Op.pick(self.members[0])
                          for i, op in enumerate(plan.ops)), plan.family)  # shared positions: the base's layer
        return cfg if self.decode(cfg).key() == same.key() else None  # not a weight that rounds differently

    def describe(self) -> dict[str, Any]:
        n = len(self.searched)
        return {**super().describe(), "keep": self.L, "src": n, "mix": n if self.merge else 0,
                "conditional": 0, "sources": self.sources}


SPACES = {"layerwise": LayerwiseSpace, "paper": PaperSpace, "pick": PickSpace, "ranked": RankedSpace}


def make_space(name: str, family: Family, n_remove: int, seed: int = 0, **kw) -> PlanSpace:
    if name not in SPACES:
        raise PlanError(f"unknown search space {name!r}; use one of {', '.join(SPACES)}")
    return SPACES[name](family, n_remove, seed, **kw)
