"""The EvoPress-style evolution (``method="evolution"``) on a real tiny family: budget-keeping mutations checked
move by move, successive halving read back from the stored trials, the seeded start, resume and stop."""
import math
import random

import pytest
from ConfigSpace import Configuration

from gptailor import Evaluator, Plan
from gptailor.eval.suite import load_suite
from gptailor.family.family import Family
from gptailor.search.evolution import Evolution, halving_cost, merge, mutate, source, swap
from gptailor.search.fidelity import fidelity_range, hyperband_budgets, rungs
from gptailor.common.progress import Progress
from gptailor.search.optimizer import Search
from gptailor.search.settings import METHODS, SearchSettings
from gptailor.search.space import MERGE_METHODS_SEARCHED, Budget, LayerwiseSpace, PaperSpace, PickSpace, RankedSpace
from gptailor.search.trials import TrialRecord

from conftest import make_tiny_family

pytestmark = pytest.mark.filterwarnings("ignore:PYTHONHASHSEED is not set")  # evolution iterates no hashed sets

N = 14  # seeds (5 at fidelity 2, the best 2 at 6), one generation (3 at 2, the best at 6), 3 more at 2
SETTINGS = dict(method="evolution", min_fidelity=2, max_fidelity=6, eta=3, seed=0, objective="accuracy")


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


SPACES_TRIED = {  # name -> (space, whether it has merges)
    "layerwise": (lambda fam: LayerwiseSpace(fam, 2), True),
    "paper": (lambda fam: PaperSpace(fam, 2), False),
    "pick": (lambda fam: PickSpace(fam, 2), False),
    "pick_fixed": (lambda fam: PickSpace(fam, 2, sources=("math", "base"), free=(1, 2, 3)), False),
    "ranked": (lambda fam: RankedSpace(fam, 2), True),
}


def _start(space) -> Plan:
    """A plan of the space with 2 drops: its first seed-like plan, written as the space writes it."""
    ops = ["drop" if i in (2, 4) else space.keeps(i)[-1] for i in range(space.L)]
    return space.decode(space.encode(Plan.from_text(" ".join(ops))))


def _inside(space, plan: Plan) -> bool:
    """The space's configuration for ``plan`` decodes to ``plan`` itself: it is exactly a plan of the space."""
    cfg = space.encode(plan)
    return cfg is not None and space.decode(cfg).key() == plan.key()


@pytest.mark.parametrize("name", sorted(SPACES_TRIED))
def test_each_move_stays_in_the_space_and_in_budget(tiny_ev, name):
    """Every single move, before the space writes it back, is a plan the space expresses: nothing falls back
    to the parent (a wasted trial) or is scored as something else."""
    fam = tiny_ev.family
    make, has_merges = SPACES_TRIED[name]
    space = make(fam)
    rng = random.Random(0)
    plan, kinds, moved = _start(space), set(), {k: 0 for k in ("swap", "source", "merge")}
    for _ in range(300):
        for kind, move in (("swap", swap), ("source", source), ("merge", merge)):
            child = move(plan, rng, space)
            if child is None:
                continue
            moved[kind] += 1
            assert space.contains(child), f"{kind} left the {name} space: {child.to_text()}"
            assert sum(o.kind == "drop" for o in child.ops) == 2
            if name == "pick_fixed":  # a fixed position keeps the first source's layer, whatever moved there
                assert all(o.kind == "drop" or o.member == "math" for i, o in enumerate(child.ops) if i not in (1, 2, 3))
        child = mutate(plan, rng, space)
        if child is None:
            continue
        child.validate(fam.member_names, fam.n_layers)
        assert sum(o.kind == "drop" for o in child.ops) == 2 and child.key() != plan.key()
        assert _inside(space, child)  # exactly what the space scores
        kinds |= {o.kind for o in child.ops}
        plan = child
    assert moved["swap"] and moved["source"] and bool(moved["merge"]) == has_merges
    assert ("merge" in kinds) == has_merges  # merges only where the space has them, and there they happen


def test_the_ranked_space_merges_are_its_own(tiny_ev):
    """The ranked space's merge menu: every source with several base shares, each written back exactly."""
    space = RankedSpace(tiny_ev.family, 2)
    assert all(space.merges_at(i) for i in range(space.L))
    shares = {}
    for op in space.merge_ops:
        assert op.kind == "merge" and op.method == "linear"
        plan = Plan.from_text("base drop base drop base base")
        plan = Plan(tuple(op if i == 2 else o for i, o in enumerate(plan.ops)), space.family.name)
        assert _inside(space, plan)
        w = op.weight_map
        src = "all" if len([m for m in w if m != "base"]) > 1 else next(m for m in w if m != "base")
        shares.setdefault(src, set()).add(round(w.get("base", 0.0) / sum(w.values()), 2))
    assert set(shares) == {"math", "code", "all"}
    assert all(len(v) >= 15 for v in shares.values())  # base shares 0.05 .. 0.95 on the 0.05 grid
    rng = random.Random(0)
    for op in space.merge_ops:
        assert space.merge_move(op, 1, rng) != op


@pytest.mark.parametrize("space_cls", [LayerwiseSpace, PickSpace, RankedSpace])
def test_shared_positions_are_never_given_another_source(tmp_path, space_cls):
    spec = make_tiny_family(tmp_path, n_layers=4, base_layers={"math": [1], "code": [1]})
    space = space_cls(Family.from_spec(spec), 1)
    assert space.shared == {1} and space.keeps(1) == ["base"] and not space.merges_at(1)
    plan = Plan.from_text("base base drop base")
    for k in range(100):
        for move in (source, merge):
            child = move(plan, random.Random(k), space)
            assert child is None or child.ops[1] == plan.ops[1]


def test_rungs_and_halving_cost_by_hand():
    assert rungs(2, 6, 3) == [2, 6]
    assert rungs(8, 100, 3) == [11, 33, 100]  # 100/9, 100/3, 100
    assert rungs(2, 8, 3) == [3, 8]  # 8/9 < 2: one step only
    assert rungs(4, 4, 3) == [4]
    assert rungs(1, 1000, 10) == [10, 100, 1000]  # SMAC's log(1000)/log(10) is just under 3: no rung at 1
    assert halving_cost(5, 2, 3) == 5 + 2 and halving_cost(9, 3, 3) == 9 + 3 + 1


RUNG_CASES = [(8, 100, 3), (2, 6, 3), (2, 8, 3), (2, 18, 3), (3, 81, 3), (5, 125, 5), (1, 1000, 10), (4, 100, 2),
              (7, 50, 4)]


@pytest.mark.parametrize("low, top, eta", RUNG_CASES)
def test_the_rungs_are_smac_s_hyperband_budgets(tmp_path, low, top, eta):
    """One rung rule: the budgets of SMAC's own Hyperband intensifier (its widest bracket), built as the
    search builds it, are ``hyperband_budgets`` exactly, and the evolution screens on their fidelities."""
    import smac
    from ConfigSpace import ConfigurationSpace, Float

    cs = ConfigurationSpace(seed=0)
    cs.add(Float("x", (0.0, 1.0)))
    scenario = smac.Scenario(cs, output_directory=tmp_path, deterministic=True, n_trials=10,
                             min_budget=low, max_budget=top)
    intensifier = smac.HyperbandFacade.get_intensifier(scenario, eta=eta)
    smac.HyperbandFacade(scenario, lambda config, seed=0, budget=None: 0.0, intensifier=intensifier,
                         overwrite=True, logging_level=40)
    intensifier.__post_init__()  # SMAC computes its brackets here (it does so when its loop starts)
    brackets = intensifier._budgets_in_stage
    assert hyperband_budgets(low, top, eta) == brackets[0]  # the widest bracket holds every rung
    assert all(set(b) <= set(brackets[0]) for b in brackets.values())
    assert rungs(low, top, eta) == [max(1, int(round(b))) for b in brackets[0]]
    assert (len(brackets[0]) > 1) == (fidelity_range(low, top, eta)[1] == "")  # no note while there are rungs


def test_the_evolution_screens_on_the_searchs_rungs(tiny_ev):
    s = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(n_trials=4, **{**SETTINGS, "max_fidelity": 16,
                                                                                  "min_fidelity": 1, "eta": 2}))
    assert Evolution(s, None, lambda r: 0.0).rungs == rungs(s.min_fidelity, s.max_fidelity, 2) == [1, 2, 4, 8, 16]


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


@pytest.mark.parametrize("name", ["layerwise", "pick", "pick_fixed", "ranked"])
def test_an_evolution_on_each_space_proposes_only_its_plans(tiny_ev, name):
    """A real search on each space: every trial's plan is one the space expresses exactly, in budget, and
    what its stored configuration decodes to; no plan is proposed twice. A move outside the space would raise
    (``mutate``), so a space whose menu (``keeps``, ``merges_at``, ``merge_move``) is wrong fails here."""
    space = SPACES_TRIED[name][0](tiny_ev.family)
    settings = SearchSettings(n_trials=10, **{**SETTINGS, "space": space.name})
    res = Search(tiny_ev, Budget(remove_layers=2), settings, space=space).run()
    assert len(res.trials) == 10 and all(t.status == "complete" for t in res.trials)
    for t in res.trials:
        assert _inside(space, t.plan) and sum(o.kind == "drop" for o in t.plan.ops) == 2
        assert space.decode(Configuration(space.cs, values=t.config)).key() == t.plan.key()
    low = [t.plan.key() for t in res.trials if t.fidelity == 2]
    assert len(low) == len(set(low))
    assert any(t.source == "search" for t in res.trials)  # the evolution got past its seeds


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
    """Raises for plans that keep a finetune's own layer at position 0, as an out-of-memory trial would."""

    def evaluate(self, plan, fidelity=None, **kw):
        if plan.ops[0].kind == "pick" and plan.ops[0].member != "base":
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().evaluate(plan, fidelity, **kw)


def test_a_failing_plan_is_stored_as_failed_ranks_last_and_the_evolution_goes_on(tiny_ev):
    ev = FailingEvaluator(tiny_ev.family, tiny_ev.suite)
    res = Search(ev, Budget(remove_layers=2), SearchSettings(n_trials=8, **SETTINGS),
                 references=tiny_ev.references("search")).run()
    assert len(res.trials) == 8
    # 8 trials screen 3 seeds (3 at fidelity 2, 1 at 6): the first removal with the base's layers, then with
    # each finetune's (removal-major order), so two fail, and the one that did not is the one sent up
    members = tiny_ev.family.member_names
    first = [(t.source, t.status, t.fidelity) for t in res.trials[:4]]
    assert first == [("deepest_first+base", "complete", 2), (f"deepest_first+{members[1]}", "failed", 2),
                     (f"deepest_first+{members[2]}", "failed", 2), ("deepest_first+base", "complete", 6)]
    failed = [t for t in res.trials if t.status == "failed"]
    assert failed and all("out of memory" in t.error and t.plan.ops[0].member in members[1:] for t in failed)
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
