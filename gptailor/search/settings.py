"""What a search is asked to do (optimizer, trials, fidelities, seed, workers): one dataclass the UI, CLI and database share."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


from gptailor.eval.results import CHOICES, DEFAULT_OBJECTIVE, OBJECTIVES, STORED_OBJECTIVE
from gptailor.common.limits import SettingsError, seconds, whole

METHODS = ("smac", "random", "evolution")


def suggested_trials(n_layers: int) -> int:
    """Trials to give a search of a family ``n_layers`` deep: what the benchmarks needed to beat the seeded rules.

    Up to 12 layers (the demo's 8): the evolution reached the enumerated optimum by 25 trials, so 60 leave room.
    Deeper (the 30-layer smol families): 100 trials beat every rule at 4 of 30 removed but fell short at 6 and 8,
    where 200 did (docs/benchmarks.md, sessions 14-17); a deeper family has more plans, so no fewer.
    """
    return 60 if n_layers <= 12 else 200


@dataclass
class SearchSettings:
    method: str = "evolution"  # evolution (EvoPress-style; docs/searching.md says why the default) | smac | random
    facade: str = "multi_fidelity"  # multi_fidelity (Hyperband over examples per task) | hpo (full fidelity)
    space: str = "layerwise"  # layerwise | paper | ranked
    constraint: str = "repair"  # layerwise only: repair | reject
    n_trials: int = 100
    walltime_s: float | None = None
    min_fidelity: int = 8
    max_fidelity: int | None = None  # None: every example of the suite
    eta: int = 3
    seed: int = 0
    initial_plans: bool = True  # seed the initial design with heuristic plans (as the paper does)
    n_initial: int | None = None  # random configurations in the initial design (default: SMAC's choice, capped)
    n_workers: int = 1
    scheduler: str | None = None  # tcp://host:port of an existing Dask scheduler
    objectives: str = "retention"  # retention (1 - mean retention) | per_task (one objective per task, ParEGO)
    objective: str = DEFAULT_OBJECTIVE  # accuracy (each task's metric) | loglik (its continuous proxy) | kl (divergence to the references)
    retention: str = "auto"  # auto | family | base: gptailor.eval.results.applicable_definition decides
    owner: str | None = None  # unused since revision 0005 (an older app stored a session hash here; owners are studies.owner_hash)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSettings":
        known = set(cls.__dataclass_fields__)
        d = {"objective": STORED_OBJECTIVE, **d}  # a study stored before there was a choice ran on accuracy
        return cls(**{k: v for k, v in d.items() if k in known})

    def check(self) -> None:
        """Refuse settings no search can run with (SettingsError, a ValueError): the CLI and the app both
        come through here, so each range lives in ``limits`` once."""
        if self.method not in METHODS:
            raise SettingsError(f"unknown search method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.facade not in ("multi_fidelity", "hpo"):
            raise SettingsError("facade is 'multi_fidelity' or 'hpo'")
        if self.objectives not in ("retention", "per_task"):
            raise SettingsError("objectives is 'retention' or 'per_task'")
        if self.objective not in OBJECTIVES:
            raise SettingsError(f"objective is one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.retention not in CHOICES:
            raise SettingsError(f"retention is one of {', '.join(CHOICES)}; got {self.retention!r}")
        self.n_trials = whole("trials", self.n_trials)
        self.seed = whole("seed", self.seed)
        self.min_fidelity = whole("min fidelity", self.min_fidelity)
        if self.max_fidelity is not None:
            self.max_fidelity = whole("max fidelity", self.max_fidelity)
            if self.max_fidelity < self.min_fidelity:
                raise SettingsError(f"max fidelity ({self.max_fidelity}) is below min fidelity "
                                    f"({self.min_fidelity}); raise it or leave it empty for all examples")
        if self.walltime_s is not None:
            self.walltime_s = seconds("wall time", self.walltime_s)
        self.n_workers = whole("workers", self.n_workers)
        self.eta = whole("eta", self.eta)
        if self.n_initial is not None:
            self.n_initial = whole("initial configurations", self.n_initial)
