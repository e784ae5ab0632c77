"""References (each member's scores, fixed once per study) and an ``EvalResult``: scores, both retention definitions, noise."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any



if TYPE_CHECKING:
    pass
from gptailor.eval.metrics import goodness

DEFINITIONS = ("family", "base")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "References":
        return cls(**{k: d[k] for k in ("split", "kinds", "scores", "near_zero") if k in d})


@dataclass
class EvalResult:
    """Everything a trial records: per-task scores, retention, size and timings."""

    plan: str
    fidelity: int | None
    scores: dict[str, float]  # each task's objective metric
    metrics: dict[str, str]  # its name (lm-eval's: exact_match, acc, acc_norm, perplexity)
    task_retention: dict[str, float | None]  # under ``definition``
    references: dict[str, Reference]  # under ``definition``
    retention: float  # under ``definition``
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalResult":
        d = dict(d)
        d["references"] = {k: Reference(**v) if isinstance(v, dict) else v for k, v in d.get("references", {}).items()}
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
        if self.speed:
            from gptailor.eval.speed import describe

            lines.append(describe(self.speed))
        return "\n".join(lines)


def _pct(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:.1f}%"
