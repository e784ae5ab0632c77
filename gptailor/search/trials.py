"""One evaluated plan (``TrialRecord``), the one ranking rule (``rank_key``) and the Pareto fronts over trials."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar


from gptailor.eval.results import EvalResult, References
from gptailor.plan import Plan
from gptailor.search.settings import SearchSettings
CRASH_COST = 1.0  # retention 0

T = TypeVar("T")


@dataclass
class TrialRecord:
    """One evaluated plan, as the search reports it (and the database stores it)."""

    number: int
    plan: Plan
    fidelity: int | None
    result: EvalResult | None
    status: str = "complete"  # complete | failed | rejected | cut (its worker stopped inside it: see CUT)
    error: str | None = None
    config: dict[str, Any] | None = None
    wall_s: float = 0.0
    source: str = "search"  # search | initial | heuristic name
    budget: float | None = None  # SMAC's budget exactly as asked (fidelity is the examples it maps to)
    cached: bool = False  # a repeated (plan, fidelity): served from an earlier result, not scored again
    study_id: int | None = None  # the study that stores it (set when read back from a store)

    @property
    def retention(self) -> float | None:
        return self.result.retention if self.result else None

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "plan": self.plan.to_dict(), "plan_text": self.plan.to_text(),
                "fidelity": self.fidelity, "result": self.result.to_dict() if self.result else None,
                "status": self.status, "error": self.error, "config": self.config, "wall_s": self.wall_s,
                "source": self.source, "budget": self.budget, "cached": self.cached, "study_id": self.study_id,
                "split": self.result.split if self.result else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialRecord":
        """From ``to_dict`` output (database rows become records in ``db.rows``, not here)."""
        result = EvalResult.from_dict(d["result"]) if d.get("result") else None
        return cls(number=d["number"], plan=Plan.from_dict(d["plan"]), fidelity=d.get("fidelity"),
                   result=result, status=d.get("status", "complete"), error=d.get("error"),
                   config=d.get("config"), wall_s=d.get("wall_s") or 0.0, source=d.get("source", "search"),
                   budget=d.get("budget"), cached=bool(d.get("cached")), study_id=d.get("study_id"))


@dataclass
class SearchResult:
    trials: list[TrialRecord]
    incumbent: TrialRecord | None
    settings: SearchSettings
    space: dict[str, Any] = field(default_factory=dict)
    stopped: str = "finished"  # finished | cancelled | walltime
    smac_overhead_s: float = 0.0  # wall time not spent evaluating
    pareto: list[TrialRecord] = field(default_factory=list)  # per-task objectives: the non-dominated plans
    references: References | None = None  # fixed for the study (full search split)
    setup_s: float = 0.0  # references before the first trial (not optimizer overhead)
    runhistory: list[tuple[dict, float | None, Any]] = field(default_factory=list)  # SMAC's (config, budget, cost)
    evaluations: int = 0  # trials actually scored (the rest were served from the cache)


# ----------------------------------------------------------------------------- the one best-trial rule
def fidelity_rank(fidelity: int | None) -> float:
    """A missing fidelity means the full suite: it ranks highest, everywhere."""
    return math.inf if fidelity is None else float(fidelity)


def rank_key(fidelity: int | None, retention: float, number: int = 0, *,
             tiebreak: float | None = None) -> tuple[float, float, float, int]:
    """Sort key, best first: the highest fidelity (low-fidelity scores are noisy), then retention, then the
    continuous proxy (``EvalResult.tiebreak``: equal accuracies are not equal plans; a trial without one
    ranks after those with one), and only then the earliest trial. The only ranking rule: the engine, the
    database, the dashboard and compare use it (``trial_rank`` for a record)."""
    return -fidelity_rank(fidelity), -retention, -(-math.inf if tiebreak is None else tiebreak), number


def trial_rank(t: "TrialRecord") -> tuple[float, float, float, int]:
    """``rank_key`` of a scored trial."""
    return rank_key(t.fidelity, t.result.retention, t.number, tiebreak=t.result.tiebreak)


CUT = "cut"  # a trial its worker never finished (killed, hung, stopped): stored, not counted, run again on resume


def counted(trials: Iterable[TrialRecord]) -> int:
    """How many trials count toward a study's ``n_trials``: all but the cut ones (the plan's own failures and
    rejections count, as SMAC counts them), so a resumed study reaches the number asked for."""
    return sum(1 for t in trials if t.status != CUT)


def scored(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The complete trials that have a score, in their order: the only ones any ranking or chart counts."""
    return [t for t in trials if t.status == "complete" and t.result is not None]


def ranked(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The scored trials, best first by ``rank_key``."""
    return sorted(scored(trials), key=trial_rank)


def incumbent(trials: Iterable[TrialRecord]) -> TrialRecord | None:
    """The best complete trial at the highest fidelity any complete trial reached."""
    best = ranked(trials)
    return best[0] if best else None


def pareto_front(trials: Iterable[TrialRecord], tasks: list[str]) -> list[TrialRecord]:
    """Complete trials at the highest fidelity that no other such trial beats on every task."""
    done = scored(trials)
    if not done:
        return []
    top = max(fidelity_rank(t.fidelity) for t in done)
    pts = [t for t in done if fidelity_rank(t.fidelity) == top]
    vec = {id(t): [t.result.task_retention.get(k) or 0.0 for k in tasks] for t in pts}

    def dominated(a: TrialRecord) -> bool:
        va = vec[id(a)]
        return any(all(x >= y for x, y in zip(vec[id(b)], va)) and vec[id(b)] != va for b in pts)
    front, seen = [], set()
    for t in pts:
        if not dominated(t) and t.plan.key() not in seen:
            seen.add(t.plan.key())
            front.append(t)
    return front


def size_front(items: Iterable[T], size: Callable[[T], float], score: Callable[[T], float]) -> list[T]:
    """Items no other item beats on both size (smaller) and score (higher), smallest first: retention
    against parameters across budgets and studies (the dashboard's front, the CLI's ``front``)."""
    front: list[T] = []
    best = -math.inf
    for it in sorted(items, key=lambda i: (size(i), -score(i))):
        if score(it) > best:
            front.append(it)
            best = score(it)
    return front


def smallest_keeping(items: Iterable[T], threshold: float, size: Callable[[T], float],
                     score: Callable[[T], float]) -> T | None:
    """"How small can I go and keep ``threshold``?": the smallest item whose score reaches it (on the front)."""
    ok = [i for i in size_front(items, size, score) if score(i) >= threshold]
    return ok[0] if ok else None


@dataclass
class BudgetCorrelation:
    """How well a lower fidelity ranks plans as the top one does (DeepCAVE's "budget correlation")."""

    fidelity: int
    top: int
    rho: float | None  # Spearman's rank correlation; None with fewer than 3 plans or a constant column
    n: int  # plans scored at both fidelities

    def text(self) -> str:
        rho = "n/a" if self.rho is None else f"{self.rho:+.2f}"
        return f"{self.fidelity} → {self.top} examples: ρ = {rho} (n = {self.n})"


def budget_correlation(trials: Iterable[TrialRecord], objective: str = "accuracy") -> list[BudgetCorrelation]:
    """For each lower fidelity of a study, Spearman's rho of the ``objective``'s value (the retention, or
    exp(-KL)) there against the same plans' at the study's top fidelity, over plans scored at both. A low
    rho says the low rungs mostly rank noise: Hyperband's promotions are then close to random."""
    from scipy.stats import spearmanr

    at: dict[int, dict[str, float]] = {}
    for t in scored(trials):
        if t.fidelity is None or t.cached:
            continue
        v = t.result.objective_retention(objective)
        if v is not None:
            at.setdefault(t.fidelity, {})[t.plan.key()] = v
    if len(at) < 2:
        return []
    top = max(at)
    out = []
    for f in sorted(k for k in at if k != top):
        both = [k for k in at[f] if k in at[top]]
        xs, ys = [at[f][k] for k in both], [at[top][k] for k in both]
        rho = None
        if len(both) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:
            rho = float(spearmanr(xs, ys).statistic)
        out.append(BudgetCorrelation(f, top, rho, len(both)))
    return out
