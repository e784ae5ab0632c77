"""Which layer positions matter: fANOVA importance of each position's op over a study's trials.

Each position is one categorical hyperparameter whose value is the op chosen there (a member's name,
``merge`` or ``drop``); the objective is retention. fANOVA (Hutter et al. 2014, what SMAC's DeepCAVE
and optuna's importance use) fits a random forest and splits the objective's variance into the
share each position explains. We use optuna's ``FanovaImportanceEvaluator`` (scikit-learn forest)
rather than writing it again; the trials are handed to it as an in-memory optuna study.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gptailor.plan import Op, Plan, split_source

MERGE, DROP = "merge", "drop"
MIN_TRIALS = 4


class ImportanceError(ValueError):
    """Too few trials, or trials of different depths, to say which positions matter."""


def op_label(op: Op) -> str:
    """The categorical value of one position: the picked member, ``merge`` or ``drop``."""
    if op.kind == "pick":
        return split_source(op.member)[0]
    return MERGE if op.kind == "merge" else DROP


@dataclass
class PositionImportance:
    """fANOVA importance per position (sums to 1 over positions that varied; 0 where the op never
    changed) and, per position, the mean objective and count of trials for each op chosen there."""
    importance: list[float]
    marginals: list[dict[str, tuple[float, int]]] = field(default_factory=list)
    n_trials: int = 0

    def ranked(self) -> list[int]:
        """Positions, most important first."""
        return sorted(range(len(self.importance)), key=lambda i: -self.importance[i])


def marginals(plans: list[Plan], values: list[float]) -> list[dict[str, tuple[float, int]]]:
    """Per position: {op label: (mean value, trials)} over the trials that chose it."""
    out: list[dict[str, list[float]]] = [{} for _ in range(len(plans[0]))]
    for plan, v in zip(plans, values):
        for i, op in enumerate(plan.ops):
            out[i].setdefault(op_label(op), []).append(v)
    return [{k: (sum(vs) / len(vs), len(vs)) for k, vs in sorted(pos.items())} for pos in out]


def position_importance(plans: list[Plan], values: list[float], seed: int = 0,
                        n_trees: int = 64) -> PositionImportance:
    """fANOVA importance of each position's op for ``values`` (e.g. retention) over ``plans``."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    if len(plans) != len(values):
        raise ImportanceError(f"{len(plans)} plans but {len(values)} values")
    if len(plans) < MIN_TRIALS:
        raise ImportanceError(f"importance needs at least {MIN_TRIALS} complete trials, this study has {len(plans)}")
    depth = len(plans[0])
    if any(len(p) != depth for p in plans):
        raise ImportanceError("the trials' plans have different numbers of positions")
    labels = [[op_label(op) for op in p.ops] for p in plans]
    choices = [sorted({row[i] for row in labels}) for i in range(depth)]
    varied = [i for i in range(depth) if len(choices[i]) > 1]
    importance = [0.0] * depth
    if varied and len(set(values)) > 1:
        dists = {f"p{i}": CategoricalDistribution(choices[i]) for i in varied}
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize")
        study.add_trials([optuna.trial.create_trial(params={f"p{i}": row[i] for i in varied}, distributions=dists,
                                                    value=float(v)) for row, v in zip(labels, values)])
        got = get_param_importances(study, evaluator=FanovaImportanceEvaluator(n_trees=n_trees, seed=seed),
                                    normalize=True)
        for name, share in got.items():
            importance[int(name[1:])] = float(share)
    return PositionImportance(importance, marginals(plans, values), len(plans))
