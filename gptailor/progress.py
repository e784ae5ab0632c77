"""What a long job is doing, told through a plain callback: the engine knows nothing of who listens
(the database worker stores it for every page and the CLI, a notebook may print it).

A phase is one of ``PHASES``; ``done``/``total`` count its steps (members scored, heuristics computed,
trials) and ``cached`` says the result came from the precompute cache instead of being computed."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

PHASES = ("loading family", "references", "heuristics", "seeds", "trial", "report")


@dataclass
class Phase:
    phase: str
    done: int | None = None
    total: int | None = None
    detail: str = ""
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}


OnPhase = Callable[[Phase], None]


def quiet(_phase: Phase) -> None:
    """The default listener: nobody."""
