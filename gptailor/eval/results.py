"""References (each member's scores, fixed once per study) and an ``EvalResult``: scores, both retention definitions, noise."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from gptailor.eval.metrics import goodness

DEFINITIONS = ("family", "base")
# what a search minimises: 1 - retention of each task's accuracy metric, or of its continuous proxy; or the
# mean KL divergence to each task's reference member (gptailor.eval.divergence)
OBJECTIVES = ("accuracy", "loglik", "kl")
DEFAULT_OBJECTIVE = "loglik"  # what a new search optimises (docs/searching.md, "Defaults, and why": measured)
STORED_OBJECTIVE = "accuracy"  # what a study stored before its settings named an objective was searched on
AUTO = "auto"  # a setting that defers to the references' default
CHOICES = (AUTO, *DEFINITIONS)  # what a user may ask for
LEGACY = "family"  # what a stored ``retention`` meant before the definition was stored with it


@dataclass
class Reference:
    member: str  # whose score normalizes this task under a definition ("none" if nobody scores)
    value: float


@dataclass
class References:
    """Every member's scores at the full ``split``: what retention is normalised by, fixed once per study."""

    split: str
    kinds: dict[str, str]
    scores: dict[str, dict[str, float]]  # member -> task -> score
    near_zero: float = 0.05
    # ``--objective loglik``: each member's continuous proxy per task (member -> task -> value) and its name
    # per task (``loglik``, ``gold_prob``, ``perplexity``; a filtered exact-match task keeps ``exact_match``)
    proxy: dict[str, dict[str, float]] | None = None
    proxy_metrics: dict[str, str] | None = None

    def for_proxy(self) -> "References | None":
        """The references of the continuous objective: the same members' proxy values, each task's "kind"
        being its proxy metric (``goodness`` reads either). Every positive proxy is usable, as perplexity is:
        a continuous score has no "cannot do it at all" floor. None when no proxy values were kept."""
        if self.proxy is None or self.proxy_metrics is None:
            return None
        return References(self.split, dict(self.proxy_metrics), self.proxy, 0.0)

    def reference(self, definition: str, task: str) -> Reference:
        kind = self.kinds[task]
        if definition == "base":
            v = self.scores["base"][task]
            usable = goodness(kind, v) > 0 and (kind == "perplexity" or goodness(kind, v) >= self.near_zero)
            return Reference("base" if usable else "none", v)
        best = max(self.scores, key=lambda m: goodness(kind, self.scores[m][task]))
        v = self.scores[best][task]
        return Reference(best if goodness(kind, v) > 0 else "none", v)

    def table(self, definition: str) -> dict[str, Reference]:
        return {t: self.reference(definition, t) for t in self.kinds}

    def default_definition(self) -> str:
        """``family`` when a finetune holds a skill the base lacks (best >= 2x the base), else ``base``."""
        for t, kind in self.kinds.items():
            best = self.reference("family", t)
            if best.member not in ("base", "none") and \
                    goodness(kind, best.value) >= 2 * goodness(kind, self.scores["base"][t]):
                return "family"
        return "base"

    def retention(self, definition: str, kind: str, task: str, score: float) -> float | None:
        ref = self.reference(definition, task)
        g_ref = goodness(kind, ref.value)
        if ref.member == "none" or g_ref <= 0:
            return None
        r = goodness(kind, score) / g_ref
        return min(1.0, r) if definition == "family" else r

    def retentions(self, scores: dict[str, float], kinds: dict[str, str]) \
            -> tuple[dict[str, float], dict[str, dict[str, float | None]]]:
        """Every definition's (mean, per-task) retention of ``scores``: the mean is over the tasks that have
        a reference under that definition (0.0 when none has)."""
        tasks = {d: {n: self.retention(d, kinds[n], n, v) for n, v in scores.items()} for d in DEFINITIONS}
        means = {}
        for d, rets in tasks.items():
            valid = [r for r in rets.values() if r is not None]
            means[d] = sum(valid) / len(valid) if valid else 0.0
        return means, tasks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "References":
        return cls(**{k: d[k] for k in ("split", "kinds", "scores", "near_zero", "proxy", "proxy_metrics") if k in d})


def applicable_definition(*, fixed: str | None = None, setting: str | None = None,
                          refs: "References | Callable[[], References] | None" = None) -> str:
    """Which retention definition applies: the one rule the engine, the database, the UI and the CLI call.

    First one already ``fixed`` (stored with a study's references or report, or a result's own); then an
    explicit ``setting`` (``family``/``base``; ``auto`` or None defers); then the references' default
    (``family`` where a finetune holds a skill the base lacks; ``refs`` may be a callable, called only
    when needed, since scoring references is costly); else ``family``, what a stored retention meant
    before the definition was stored with it."""
    if fixed in DEFINITIONS:
        return fixed
    if setting in DEFINITIONS:
        return setting
    if setting not in (None, AUTO):
        raise ValueError(f"retention definition is one of {', '.join(CHOICES)}, got {setting!r}")
    if refs is not None:
        return (refs() if callable(refs) else refs).default_definition()
    return LEGACY


def tiebreak_proxy(proxies: dict[str, dict[str, Any]], definition: str) -> float | None:
    """The continuous score that breaks a tie in accuracy retention (0/1 accuracy on tens of examples ties
    often, and every plan ties at 0 when a budget breaks every skill): the ``loglik`` proxy's retention under
    ``definition``, else exp(-KL) to the references, else None (a result stored before either was scored).
    One rule, for a result and for a stored row (``db.store``)."""
    value = ((proxies.get("loglik") or {}).get("retentions") or {}).get(definition)
    if value is not None:
        return value
    kl = proxies.get("kl") or {}
    return math.exp(-kl["mean"]) if kl.get("mean") is not None else None


@dataclass
class EvalResult:
    """Everything a trial records: per-task scores, retention under each definition, size and timings.

    Retention is stored once, per definition (``retentions``, ``task_retentions``); ``retention`` and
    ``task_retention`` read the applicable ``definition``'s."""

    plan: str
    fidelity: int | None
    scores: dict[str, float]  # each task's objective metric
    metrics: dict[str, str]  # its name (lm-eval's: exact_match, acc, acc_norm, perplexity)
    references: dict[str, Reference]  # under ``definition``
    kept_layers: int
    n_layers: int
    params: int
    stitch_s: float
    score_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    split: str = "all"
    definition: str = "family"
    retentions: dict[str, float] = field(default_factory=dict)  # both definitions' means
    task_retentions: dict[str, dict[str, float | None]] = field(default_factory=dict)  # definition -> task -> r
    details: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> every metric, n, stderr
    speed: dict[str, Any] | None = None  # measured prefill/decode tokens/s vs the base's (gptailor.eval.speed.compare)
    # ``kl``: {scores (task -> mean KL per token), mean, topk, reference (task -> member)} (gptailor.eval.divergence)
    # continuous objectives (``loglik``): {objective: {metrics, scores, retentions, task_retentions}}, the same
    # shape as the accuracy fields above, retention against the references' proxy values
    proxies: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def retention(self) -> float:
        """The mean retention under the applicable definition."""
        return self.retentions[self.definition]

    @property
    def task_retention(self) -> dict[str, float | None]:
        """Each task's retention under the applicable definition."""
        return self.task_retentions.get(self.definition, {})

    @property
    def tiebreak(self) -> float | None:
        """What breaks a tie in ``retention`` (``tiebreak_proxy``)."""
        return tiebreak_proxy(self.proxies, self.definition)

    def objective_retention(self, objective: str = "accuracy", definition: str | None = None) -> float | None:
        """The mean retention a search with ``objective`` minimises 1 - of (the applicable definition by
        default); None when this result holds no values of that objective."""
        definition = definition or self.definition
        if objective == "accuracy":
            return self.retentions.get(definition)
        if objective == "kl":  # exp(-KL): 1 at the references, against this result's own definition only
            kl = self.proxies.get("kl") or {}
            return math.exp(-kl["mean"]) if kl.get("mean") is not None and definition == self.definition else None
        return (self.proxies.get(objective) or {}).get("retentions", {}).get(definition)

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus the applicable definition's ``retention`` and ``task_retention`` for readers of
        ``eval --json`` (``from_dict`` takes them from ``retentions`` again)."""
        return {**asdict(self), "retention": self.retention, "task_retention": self.task_retention}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalResult":
        """From ``to_dict`` output; one written before retention was stored once (a flat ``retention`` and
        ``task_retention`` under ``definition``) moves them into that definition's entries."""
        d = dict(d)
        d["references"] = {k: Reference(**v) if isinstance(v, dict) else v for k, v in d.get("references", {}).items()}
        definition = d.setdefault("definition", LEGACY)
        if d.get("retention") is not None:
            d["retentions"] = {definition: d["retention"], **(d.get("retentions") or {})}
        if d.get("task_retention"):
            d["task_retentions"] = {definition: d["task_retention"], **(d.get("task_retentions") or {})}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def table(self) -> str:
        """A plain-text table for terminals and logs: both retention definitions, the split, the stderr."""
        other = [d for d in DEFINITIONS if d != self.definition and d in self.task_retentions]
        head = f"{'task':<16}{'metric':<12}{'score':>10}{'stderr':>9}{'reference':>22}{'retention':>11}"
        head += "".join(f"{'(' + d + ')':>11}" for d in other)
        lines = [head]
        for t, v in self.scores.items():
            ref = self.references[t]
            r = self.task_retention[t]
            se = self.details.get(t, {}).get("stderr")
            line = (f"{t:<16}{self.metrics[t]:<12}{v:>10.4f}{'-' if se is None else f'{se:.4f}':>9}"
                    f"{f'{ref.value:.4f} ({ref.member})':>22}{_pct(r):>11}")
            line += "".join(f"{_pct(self.task_retentions[d].get(t)):>11}" for d in other)
            lines.append(line)
        both = ", ".join(f"{d} {100 * self.retentions[d]:.1f}%" for d in DEFINITIONS if d in self.retentions)
        lines.append(f"retention {100 * self.retention:.1f}% ({self.definition}; {both})  split {self.split}, "
                     f"fidelity {self.fidelity or 'full'}  kept {self.kept_layers}/{self.n_layers} layers  "
                     f"params {self.params / 1e6:.2f}M  stitch {self.stitch_s * 1e3:.0f} ms  "
                     f"score {self.score_s * 1e3:.0f} ms")
        for name, p in self.proxies.items():
            if name == "kl":
                cells = ", ".join(f"{t} {v:.4f} (to {p['reference'][t]})" for t, v in p["scores"].items())
                lines.append(f"KL to the references (top-{p['topk']}) {p['mean']:.4f} nats/token  ({cells})")
                continue
            cells = ", ".join(f"{t} {p['metrics'][t]} {v:.4f}" for t, v in p["scores"].items())
            rets = ", ".join(f"{d} {100 * p['retentions'][d]:.1f}%" for d in DEFINITIONS if d in p["retentions"])
            lines.append(f"{name} retention {rets}  ({cells})")
        if self.speed:
            from gptailor.eval.speed import describe

            lines.append(describe(self.speed))
        return "\n".join(lines)


def _pct(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:.1f}%"
