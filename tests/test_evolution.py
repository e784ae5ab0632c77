"""The EvoPress-style evolution (``method="evolution"``) on a real tiny family: budget-keeping mutations checked
move by move, successive halving read back from the stored trials, the seeded start, resume and stop."""
import math
import random

import pytest
from ConfigSpace import Configuration

from gptailor import Evaluator, Plan
from gptailor.eval.suite import load_suite
from gptailor.family.family import Family
from gptailor.search.evolution import halving_cost, merge, mutate, rungs, source, swap
from gptailor.common.progress import Progress
from gptailor.search.optimizer import Search
from gptailor.search.settings import METHODS, SearchSettings
from gptailor.search.space import MERGE_METHODS_SEARCHED, Budget, LayerwiseSpace, PaperSpace
from gptailor.search.trials import TrialRecord

from conftest import make_tiny_family

pytestmark = pytest.mark.filterwarnings("ignore:PYTHONHASHSEED is not set")  # evolution iterates no hashed sets

N = 14  # seeds (5 at fidelity 2, the best 2 at 6), one generation (3 at 2, the best at 6), 3 more at 2
SETTINGS = dict(method="evolution", min_fidelity=2, max_fidelity=6, eta=3, seed=0)


@pytest.fixture(scope="module")
def tiny_ev(tmp_path_factory):
    from gptailor.builtin import demo

    d = tmp_path_factory.mktemp("evolution")
    make_tiny_family(d, n_layers=6)
    demo.write_tasks(d, n_test=16)
    ev = Evaluator(Family.from_spec(d / "family.yaml"), load_suite(d / "tasks/suite.yaml"))
    ev.references("search")  # once for the module: every search below reuses them
    return ev


@pytest.fixture(scope="module")
def evo(tiny_ev):
    seen = []
    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(n_trials=N, **SETTINGS), on_trial=seen.append).run()
    return res, seen


# ----------------------------------------------------------------------------- the moves, on hand-made plans
def _changed(a: Plan, b: Plan) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a.ops, b.ops)) if x != y]


def test_each_mutation_keeps_the_budget_and_makes_exactly_its_move(tiny_ev):
    space = LayerwiseSpace(tiny_ev.family, 2)
    plan = Plan.from_text("math drop code base drop merge(base=.5,math=1)")
    for k in range(200):
        rng = random.Random(k)
        s = swap(plan, rng, space)
        i, j = _changed(plan, s)  # one drop became kept, one kept became drop, the kept op moved with it
        was_drop = i if plan.ops[i].kind == "drop" else j
        now_drop = j if was_drop == i else i
        assert plan.ops[now_drop].kind != "drop" and s.ops[now_drop].kind == "drop"
        assert s.ops[was_drop] == plan.ops[now_drop]
        src = source(plan, rng, space)
        (i,) = _changed(plan, src)
        assert src.ops[i].kind == "pick" and plan.ops[i].kind != "drop" and src.ops[i].member != plan.ops[i].member
        m = merge(plan, rng, space)
        (i,) = _changed(plan, m)
        op = m.ops[i]
        assert plan.ops[i].kind != "drop"
        if op.kind == "merge":
            assert len(op.members) >= 2 and op.method in MERGE_METHODS_SEARCHED
            assert all(0.05 <= w <= 1 and abs(w * 20 - round(w * 20)) < 1e-9 for _, w in op.weights)
        else:  # a two-member merge lost a member: that member's layer
            assert plan.ops[i].kind == "merge" and op.member in plan.ops[i].members
        for child in (s, src, m):
            assert sum(o.kind == "drop" for o in child.ops) == 2


@pytest.mark.parametrize("space_cls", [LayerwiseSpace, PaperSpace])
def test_mutate_stays_in_the_space_and_in_budget(tiny_ev, space_cls):
    fam = tiny_ev.family
    space = space_cls(fam, 2)
    rng = random.Random(0)
    plan = space.decode(space.encode(Plan.from_text("base math drop code drop base")))
    kinds = set()
    for _ in range(300):
        child = mutate(plan, rng, space)
        if child is None:
            continue
        child.validate(fam.member_names, fam.n_layers)
        assert sum(o.kind == "drop" for o in child.ops) == 2 and child.key() != plan.key()
        assert space.decode(space.encode(child)).key() == child.key()  # exactly what the space scores
        kinds |= {o.kind for o in child.ops}
        plan = child
    assert ("merge" in kinds) == (space_cls is LayerwiseSpace)  # merges only where the space has them


def test_shared_positions_are_never_given_another_source(tmp_path):
    spec = make_tiny_family(tmp_path, n_layers=4, base_layers={"math": [1], "code": [1]})
    space = LayerwiseSpace(Family.from_spec(spec), 1)
    assert space.shared == {1}
    plan = Plan.from_text("base base drop base")
    for k in range(100):
        for move in (source, merge):
            assert move(plan, random.Random(k), space).ops[1] == plan.ops[1]


def test_rungs_and_halving_cost_by_hand():
    assert rungs(2, 6, 3) == [2, 6]
    assert rungs(8, 100, 3) == [11, 33, 100]  # 100/9, 100/3, 100
    assert rungs(2, 8, 3) == [3, 8]  # 8/9 < 2: one step only
    assert rungs(4, 4, 3) == [4]
    assert halving_cost(5, 2, 3) == 5 + 2 and halving_cost(9, 3, 3) == 9 + 3 + 1


# ----------------------------------------------------------------------------- the search
def test_evolution_is_a_search_method():
    assert "evolution" in METHODS
    SearchSettings(method="evolution").check()


def test_every_trial_is_in_budget_recorded_and_resumable(tiny_ev, evo):
    res, seen = evo
    assert len(res.trials) == N and seen == res.trials and [t.number for t in res.trials] == list(range(N))
    space = LayerwiseSpace(tiny_ev.family, 2)
    for t in res.trials:
        assert t.status == "complete" and t.plan.n_kept == 4 and not t.cached
        assert t.budget == float(t.fidelity) and t.fidelity in (2, 6)
        assert space.decode(Configuration(space.cs, values=t.config)).key() == t.plan.key()
    keys = [t.plan.key() for t in res.trials if t.fidelity == 2]
    assert len(keys) == len(set(keys))  # no plan proposed twice
    assert res.evaluations == N


def _batches(trials):
    """Runs of trials at one fidelity, in order."""
    out = []
    for t in trials:
        if out and out[-1][0].fidelity == t.fidelity:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def test_successive_halving_sends_only_the_best_third_up(evo):
    res, _ = evo
    batches = _batches(res.trials)
    assert [(b[0].fidelity, len(b)) for b in batches] == [(2, 5), (6, 2), (2, 3), (6, 1), (2, 3)]
    for low, high in zip(batches[0::2], batches[1::2]):
        best = sorted(low, key=lambda t: (-t.result.retention, t.number))[: math.ceil(len(low) / 3)]
        assert {t.plan.key() for t in high} == {t.plan.key() for t in best}


def test_seeded_start_and_the_best_is_at_least_the_best_seed(evo):
    res, _ = evo
    seeds = [t for t in res.trials if t.source != "search"]
    assert len(seeds) == 7 and all(t.number < 7 for t in seeds)
    top_seeds = [t.retention for t in seeds if t.fidelity == 6]
    assert res.incumbent.fidelity == 6 and res.incumbent.retention >= max(top_seeds)
    # the first generation's offspring are new plans, none of them the parent (the best seed at the top)
    parent = max((t for t in seeds if t.fidelity == 6), key=lambda t: (t.retention, -t.number)).plan
    seed_keys = {t.plan.key() for t in seeds}
    for child in res.trials[7:10]:
        assert child.source == "search" and child.plan.key() != parent.key() and child.plan.key() not in seed_keys


def test_same_seed_repeats_and_resume_continues_without_rescoring(tiny_ev, evo):
    res, _ = evo
    first = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(n_trials=N, **SETTINGS)).run()
    cut = 9
    stored = [TrialRecord.from_dict(t.to_dict()) for t in first.trials[:cut]]
    assert [(t.plan.key(), t.fidelity, t.retention) for t in first.trials] == \
        [(t.plan.key(), t.fidelity, t.retention) for t in res.trials]  # the same seed: the same run
    again = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(n_trials=N, **SETTINGS), previous=stored).run()
    assert again.trials[:cut] == stored and again.evaluations == N - cut  # the stored ones are not scored again
    assert [(t.number, t.plan.key(), t.fidelity) for t in again.trials] == \
        [(t.number, t.plan.key(), t.fidelity) for t in res.trials]  # and it goes on as the whole run did


def test_should_stop_stops_between_evaluations(tiny_ev):
    seen = []
    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(n_trials=50, **SETTINGS),
                 on_trial=seen.append, progress=Progress(should_stop=lambda: len(seen) >= 3)).run()
    assert res.stopped == "cancelled" and len(res.trials) == 3


def test_parallel_offspring_on_dask_workers(tiny_ev):
    """A rung's plans go to a local Dask cluster together and come back in their order."""
    seen = []
    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(n_trials=6, n_workers=2, **SETTINGS),
                 on_trial=seen.append).run()
    assert len(res.trials) == 6 == len(seen) and res.evaluations == 6
    assert all(t.status == "complete" and t.plan.n_kept == 4 for t in res.trials)
    assert [t.fidelity for t in res.trials] == [2, 2, 6, 2, 2, 2]


class FailingEvaluator(Evaluator):
    """Raises for plans that drop position 4, as an out-of-memory trial would."""

    def evaluate(self, plan, fidelity=None, **kw):
        if plan.ops[4].kind == "drop":
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().evaluate(plan, fidelity, **kw)


def test_a_failing_plan_is_stored_as_failed_ranks_last_and_the_evolution_goes_on(tiny_ev):
    ev = FailingEvaluator(tiny_ev.family, tiny_ev.suite)
    res = Search(ev, Budget(remove_layers=2), SearchSettings(n_trials=8, **SETTINGS),
                 references=tiny_ev.references("search")).run()
    assert len(res.trials) == 8
    # 8 trials screen 3 seeds (3 at fidelity 2, 1 at 6): deepest-first drops 3 and 4, middle-outward 2 and 3,
    # alternating 2 and 4, so two fail, and the one that did not is the one sent up
    first = [(t.source, t.status, t.fidelity) for t in res.trials[:4]]
    assert first == [("deepest_first+base", "failed", 2), ("middle_outward+base", "complete", 2),
                     ("alternating+base", "failed", 2), ("middle_outward+base", "complete", 6)]
    failed = [t for t in res.trials if t.status == "failed"]
    assert all("out of memory" in t.error and t.plan.ops[4].kind == "drop" for t in failed)
    assert all(t.source == "search" for t in res.trials[4:])  # and the evolution went on


def test_an_evolution_study_runs_through_the_database(tiny_ev, tmp_path):
    """The study path the CLI, the app's worker and the benchmark share: every trial stored with its plan,
    configuration and fidelity, the heuristics' plans among the seeds."""
    from db.runs import create_study, run_study
    from db.store import Store

    store = Store(f"sqlite:///{tmp_path / 'evo.db'}")
    sid = create_study(store, tiny_ev.family.spec.root + "/family.yaml", "evolution", Budget(remove_layers=2),
                       SearchSettings(n_trials=5, min_fidelity=2, max_fidelity=6), tiny_ev.suite.path,
                       evaluator=tiny_ev)
    assert run_study(store, sid, evaluator=tiny_ev) == "finished"
    study, trials = store.study(sid), store.trials(sid)
    assert study["method"] == "evolution" and study["name"] == "evolution-r2-s0"
    assert len(trials) == 5 and all(t.status == "complete" and t.plan.n_kept == 4 for t in trials)
    space = LayerwiseSpace(tiny_ev.family, 2)
    assert all(space.decode(Configuration(space.cs, values=t.config)).key() == t.plan.key() for t in trials)
    assert [t.fidelity for t in trials] == [2, 2, 6, 2, 2]
    assert trials[0].source not in ("search", "initial")  # a heuristic's or a pattern's name
