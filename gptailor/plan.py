"""Layer plans: one op per layer position of the base (drop / pick / merge).

A plan is plain data with one canonical JSON form (what the database stores, what the editor
edits, what export writes) and a compact text form for hand editing::

    0:base 1:math 2:drop 3:merge(math=.6,code=.4) 4:merge[ties](math=.5,code=.5)

Like a mergekit config, a plan is declarative: it says *what* each position becomes, never how.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from gptailor.merge import METHODS

OpKind = Literal["drop", "pick", "merge"]
MAX_WEIGHT = 1e6  # larger merge weights overflow the merged tensors (NaN scores), whatever the method
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_SOURCE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*)(?:@(\d+))?$")


def split_source(name: str) -> tuple[str, int | None]:
    """A merge entry is ``member`` (the layer at the op's own position) or ``member@j`` (the member's
    layer j): the latter expresses LaCo-style collapse of consecutive layers into one."""
    m = _SOURCE.match(name)
    if not m:
        raise PlanError(f"{name!r} is not a merge source; write member or member@position")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


class PlanError(ValueError):
    """A plan that cannot be built; the message names the position and what to change."""


@dataclass(frozen=True)
class Op:
    """What one layer position becomes."""

    kind: OpKind
    member: str | None = None  # for pick
    weights: tuple[tuple[str, float], ...] = ()  # for merge, in the order given
    method: str = "linear"  # for merge
    density: float | None = None  # TIES, DARE: fraction of each task vector kept (None: the method's default)

    # -- constructors ---------------------------------------------------------------
    @staticmethod
    def drop() -> "Op":
        return Op("drop")

    @staticmethod
    def pick(member: str) -> "Op":
        return Op("pick", member=member)

    @staticmethod
    def merge(weights: dict[str, float] | Iterable[tuple[str, float]], method: str = "linear",
              density: float | None = None) -> "Op":
        items = tuple((str(k), float(v)) for k, v in (weights.items() if isinstance(weights, dict) else weights))
        return Op("merge", weights=items, method=method, density=density)

    # -- views ----------------------------------------------------------------------
    @property
    def kept(self) -> bool:
        return self.kind != "drop"

    @property
    def members(self) -> tuple[str, ...]:
        if self.kind == "pick":
            return (self.member,)  # type: ignore[return-value]
        return tuple(m for m, _ in self.weights)

    @property
    def weight_map(self) -> dict[str, float]:
        return dict(self.weights)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "drop":
            return {"op": "drop"}
        if self.kind == "pick":
            return {"op": "pick", "member": self.member}
        d: dict[str, Any] = {"op": "merge", "method": self.method, "weights": dict(self.weights)}
        if self.density is not None:
            d["density"] = self.density
        return d

    @staticmethod
    def from_dict(d: Any, position: int | None = None) -> "Op":
        where = f"position {position}: " if position is not None else ""
        if isinstance(d, str):  # shorthand: "drop" or a member name
            return Op.drop() if d == "drop" else Op.pick(d)
        if not isinstance(d, dict) or "op" not in d:
            raise PlanError(f"{where}expected an object with an 'op' key (drop, pick or merge), got {d!r}")
        kind = d["op"]
        if kind == "drop":
            return Op.drop()
        if kind == "pick":
            if not isinstance(d.get("member"), str):
                raise PlanError(f"{where}'pick' needs a 'member' name, got {d.get('member')!r}")
            return Op.pick(d["member"])
        if kind == "merge":
            w = d.get("weights")
            if not isinstance(w, dict) or not w:
                raise PlanError(f"{where}'merge' needs 'weights' as a non-empty object {{member: weight}}")
            method, density = d.get("method", "linear"), d.get("density")
            if not isinstance(method, str):
                raise PlanError(f"{where}merge 'method' must be a name ({', '.join(METHODS)}), got {method!r}")
            if density is not None and (isinstance(density, bool) or not isinstance(density, (int, float))):
                raise PlanError(f"{where}merge 'density' must be a number in (0, 1], got {density!r}")
            try:
                return Op.merge(w, method, density)
            except (TypeError, ValueError) as e:
                raise PlanError(f"{where}merge weights must be numbers: {e}") from None
        raise PlanError(f"{where}unknown op {kind!r}; use drop, pick or merge")

    def to_text(self) -> str:
        if self.kind == "drop":
            return "drop"
        if self.kind == "pick":
            return str(self.member)
        head = "merge" if self.method == "linear" else f"merge[{self.method}]"
        if self.density is not None:
            head = f"merge[{self.method},density={_num(self.density)}]"
        return head + "(" + ",".join(f"{m}={_num(w)}" for m, w in self.weights) + ")"


def _num(x: float) -> str:
    s = f"{x:.6g}"
    return s[1:] if s.startswith("0.") else s


_TOKEN = re.compile(r"\s*(?:(\d+)\s*:\s*)?(merge(?:\[[^\]]*\])?\([^)]*\)|[^\s]+)")


def _parse_op_text(text: str, position: int) -> Op:
    where = f"position {position}"
    if not text.startswith("merge"):
        if text == "drop":
            return Op.drop()
        if not _NAME.match(text):
            raise PlanError(f"{where}: {text!r} is not an op; write drop, a member name, or merge(a=.5,b=.5)")
        return Op.pick(text)
    m = re.fullmatch(r"merge(?:\[([^\]]*)\])?\(([^)]*)\)", text)
    if not m:
        raise PlanError(f"{where}: cannot read {text!r}; write e.g. merge(math=.6,code=.4) or merge[ties](a=.5,b=.5)")
    method, density = "linear", None
    if m.group(1):
        parts = [p.strip() for p in m.group(1).split(",") if p.strip()]
        method = parts[0]
        for extra in parts[1:]:
            key, _, val = extra.partition("=")
            if key.strip() != "density":
                raise PlanError(f"{where}: unknown merge option {key.strip()!r} (only density=...)")
            density = _float(val, where)
    weights = []
    for item in filter(None, (p.strip() for p in m.group(2).split(","))):
        name, eq, val = item.partition("=")
        if not eq:
            raise PlanError(f"{where}: merge entry {item!r} needs the form member=weight")
        weights.append((name.strip(), _float(val, where)))
    if not weights:
        raise PlanError(f"{where}: merge() lists no members")
    return Op.merge(weights, method, density)


def _looks_like(members: Sequence[str], n_layers: int) -> str:
    """What a plan looks like for this family, for messages about a text that is not one."""
    ms = list(members) or ["base"]
    other = ms[1] if len(ms) > 1 else ms[0]
    example = f"0:{ms[0]} 1:{other} 2:drop" + (f" 3:merge({ms[0]}=.5,{other}=.5)" if len(ms) > 1 else "")
    return (f"A plan is one op per layer, {n_layers} in all: drop, a member name, or merge(member=weight,...), "
            f"e.g. '{example} ...'")


def _float(s: str, where: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise PlanError(f"{where}: {s.strip()!r} is not a number") from None


@dataclass(frozen=True)
class Plan:
    """One op per layer position of the base, plus the family it is for."""

    ops: tuple[Op, ...]
    family: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))

    # -- views ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ops)

    @property
    def kept_positions(self) -> list[int]:
        return [i for i, op in enumerate(self.ops) if op.kept]

    @property
    def n_kept(self) -> int:
        return len(self.kept_positions)

    def key(self) -> str:
        """A canonical string: plans with equal keys build the same model (merge order ignored
        except for an ordered method such as slerp, whose direction matters)."""
        def canon(op: Op) -> Op:
            if op.kind != "merge" or (op.method in METHODS and METHODS[op.method].ordered):
                return op
            return Op.merge(sorted(op.weights), op.method, op.density)
        return " ".join(f"{i}:{canon(op).to_text()}" for i, op in enumerate(self.ops))

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def identity(cls, n_layers: int, member: str = "base", family: str = "") -> "Plan":
        """Every position picked from one member: that member's own model."""
        return cls(tuple(Op.pick(member) for _ in range(n_layers)), family)

    @classmethod
    def drop_positions(cls, n_layers: int, drop: Iterable[int], member: str = "base", family: str = "") -> "Plan":
        gone = set(drop)
        return cls(tuple(Op.drop() if i in gone else Op.pick(member) for i in range(n_layers)), family)

    # -- JSON -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "layers": [op.to_dict() for op in self.ops]}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> "Plan":
        if not isinstance(d, dict) or not isinstance(d.get("layers"), list):
            raise PlanError("a plan is an object with a 'layers' list (one op per position) and a 'family' name")
        return cls(tuple(Op.from_dict(o, i) for i, o in enumerate(d["layers"])), str(d.get("family", "")))

    @classmethod
    def from_json(cls, s: str) -> "Plan":
        try:
            return cls.from_dict(json.loads(s))
        except json.JSONDecodeError as e:
            raise PlanError(f"plan JSON is malformed: {e}") from None

    # -- text -----------------------------------------------------------------------
    def to_text(self) -> str:
        return " ".join(f"{i}:{op.to_text()}" for i, op in enumerate(self.ops))

    @classmethod
    def from_text(cls, text: str, family: str = "") -> "Plan":
        """Read ``0:base 1:math 2:drop 3:merge(math=.6,code=.4)``; indices are optional but checked."""
        ops: list[Op] = []
        pos, text = 0, text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or not m.group(2).strip():
                break
            index = len(ops)
            if m.group(1) is not None and int(m.group(1)) != index:
                raise PlanError(f"position {index}: entry is numbered {m.group(1)}; positions must be 0, 1, 2, ... in order")
            ops.append(_parse_op_text(m.group(2), index))
            pos = m.end()
        if not ops:
            raise PlanError("the plan text is empty; write one op per position, e.g. '0:base 1:drop 2:math'")
        return cls(tuple(ops), family)

    @classmethod
    def parse(cls, s: str, family: str = "") -> "Plan":
        """JSON or text, whichever ``s`` is."""
        s = s.strip()
        if s.startswith("{"):
            plan = cls.from_json(s)
            return plan if plan.family or not family else cls(plan.ops, family)
        return cls.from_text(s, family)

    # -- validation -----------------------------------------------------------------
    def validate(self, members: Sequence[str], n_layers: int, family: str | None = None) -> "Plan":
        """Check the plan against a family; raise PlanError naming the first wrong position."""
        if family and self.family and self.family != family:
            raise PlanError(f"plan is for family {self.family!r}, not {family!r}")
        known = set(members)
        shape = _looks_like(members, n_layers)
        for i, op in enumerate(self.ops):  # an unknown name is the first real problem, before the count
            for m in op.members:
                name, _ = split_source(m) if op.kind == "merge" else (m, None)
                if name not in known:
                    hint = "" if len(self.ops) == n_layers else f". {shape}"
                    raise PlanError(f"position {i}: unknown member {name!r}; the family has {', '.join(members)}{hint}")
        if len(self.ops) != n_layers:
            raise PlanError(f"plan has {len(self.ops)} position{'s' if len(self.ops) != 1 else ''} but the base has "
                            f"{n_layers} layers. {shape}")
        for i, op in enumerate(self.ops):
            for m in op.members:
                _, pos = split_source(m) if op.kind == "merge" else (m, None)
                if pos is not None and not 0 <= pos < n_layers:
                    raise PlanError(f"position {i}: source {m!r} names layer {pos}; the base has layers 0..{n_layers - 1}")
            if op.kind != "merge":
                continue
            method = METHODS.get(op.method)
            if method is None:
                raise PlanError(f"position {i}: unknown merge method {op.method!r}; use one of {', '.join(METHODS)}")
            if len(set(op.members)) != len(op.members):
                raise PlanError(f"position {i}: a member appears twice in the merge")
            for m, w in op.weights:
                if not math.isfinite(w) or w <= 0:
                    raise PlanError(f"position {i}: weight of {m!r} is {w}; merge weights must be positive numbers")
                if w > MAX_WEIGHT:
                    raise PlanError(f"position {i}: weight of {m!r} is {w:g}; merge weights must be at most "
                                    f"{MAX_WEIGHT:g} (they are normalized, so use e.g. .6 and .4)")
            problem = method.count_error(len(op.weights))
            if problem:
                raise PlanError(f"position {i}: {problem}")
            if op.density is not None and "density" not in method.defaults:
                raise PlanError(f"position {i}: {op.method} takes no density (only "
                                f"{', '.join(n for n, m in METHODS.items() if 'density' in m.defaults)} do)")
            if op.density is not None and not 0 < op.density <= 1:
                raise PlanError(f"position {i}: density must be in (0, 1], got {op.density}")
        if self.n_kept == 0:
            raise PlanError("the plan drops every layer; keep at least one position")
        return self
