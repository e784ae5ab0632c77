import math
import os
import subprocess
import sys

import pytest
from ConfigSpace import Configuration

from gptailor import Evaluator, Plan
from gptailor.common.progress import Progress
from gptailor.search.fidelity import fidelity_range
from gptailor.search.optimizer import Search
from gptailor.search.settings import SearchSettings
from gptailor.search.trials import TrialRecord, incumbent
from gptailor.search.seeds import seed_plans
from gptailor.search.space import Budget, BudgetError, LayerwiseSpace, PaperSpace
from gptailor.eval.suite import load_suite

from conftest import make_tiny_family


@pytest.fixture(scope="module")
def tiny_ev(tmp_path_factory):
    from gptailor.builtin import demo
    from gptailor.family.family import Family

    d = tmp_path_factory.mktemp("search")
    make_tiny_family(d, n_layers=6)
    demo.write_tasks(d, n_test=16)
    return Evaluator(Family.from_spec(d / "family.yaml"), load_suite(d / "tasks/suite.yaml"))


@pytest.mark.parametrize("budget,msg", [
    (Budget(remove_layers=6), "removes 6 of 6 layers, which keeps none"),
    (Budget(remove_layers=-1), "cannot remove -1"),
    (Budget(max_param_fraction=0.0), "must be in \\(0, 1\\]"),
    (Budget(max_param_fraction=0.01), "keeps none"),
    (Budget(), "exactly one of"),
    (Budget(remove_layers=1, remove_fraction=0.2), "exactly one of"),
])
def test_impossible_budgets_fail_before_any_work(tiny_ev, budget, msg):
    with pytest.raises(BudgetError, match=msg):
        Search(tiny_ev, budget, SearchSettings(method="smac", n_trials=2))


def test_budget_forms(tiny_ev):
    fam = tiny_ev.family
    assert Budget(remove_fraction=0.25).n_remove(fam) == 2  # round(1.5) -> 2
    n = Budget(max_param_fraction=0.7).n_remove(fam)
    assert fam.param_count(6 - n) <= 0.7 * fam.param_count() < fam.param_count(6 - n + 1)


@pytest.mark.parametrize("space_cls", [LayerwiseSpace, PaperSpace])
def test_every_sampled_configuration_decodes_to_a_valid_plan_in_budget(tiny_ev, space_cls):
    fam = tiny_ev.family
    space = space_cls(fam, 2, seed=3)
    for cfg in space.cs.sample_configuration(300):
        plan = space.decode(cfg)
        plan.validate(fam.member_names, fam.n_layers)
        assert sum(op.kind == "drop" for op in plan.ops) == 2


def test_layerwise_repair_and_reject(tiny_ev):
    space = LayerwiseSpace(tiny_ev.family, 2)
    cfg = space.encode(Plan.from_text("drop drop drop base math base"))
    assert cfg is not None and not space.valid(cfg)
    # too many drops: the least removable (shallowest) extra drop is restored as a base layer
    assert space.decode(cfg).to_text() == "0:base 1:drop 2:drop 3:base 4:math 5:base"
    cfg = space.encode(Plan.from_text("base math base base base base"))
    # too few: the deepest non-final positions go first
    assert space.decode(cfg).to_text() == "0:base 1:math 2:base 3:drop 4:drop 5:base"
    ok = space.encode(Plan.from_text("base drop merge(math=1,code=.5) base drop base"))
    assert space.valid(ok) and space.decode(ok).key() == Plan.from_text("base drop merge(math=1,code=.5) base drop base").key()


def test_layerwise_space_searches_the_registry_s_searchable_methods_only(tiny_ev):
    """DARE is not searched: its random drop makes a one-member merge differ from a pick (the space's
    decoding), it would add choices to every existing study's space, and density is not searched."""
    space = LayerwiseSpace(tiny_ev.family, 2)
    assert list(space.cs["method_001"].choices) == ["linear", "task_arithmetic", "ties"]
    for method in ("dare_ties", "dare_linear"):
        assert space.encode(Plan.from_text(f"base drop merge[{method}](math=1,code=.5) base drop base")) is None
    assert space.encode(Plan.from_text("base drop merge[ties](math=1,code=.5) base drop base")) is not None


def test_paper_space_same_source_position_task_arithmetic(tiny_ev):
    space = PaperSpace(tiny_ev.family, 2)
    values = {"remove_000": 1, "remove_001": 1, "scale": 0.4}  # repeated position moves to the next free one
    for i in range(6):
        values[f"mask_{i:03d}_math"] = int(i in (0, 3))
        values[f"mask_{i:03d}_code"] = int(i in (3, 4))
    plan = space.decode(Configuration(space.cs, values=values))
    assert plan.to_text() == "0:math 1:drop 2:drop 3:merge[task_arithmetic](code=.4,math=.4) 4:code 5:base"
    assert space.decode(space.encode(plan)) == plan


def test_seed_plans_are_distinct_and_in_budget(tiny_ev):
    plans = seed_plans(tiny_ev.family, 2, {"last_n": [3, 4]})
    keys = [p.key() for p in plans.values()]
    assert len(keys) == len(set(keys)) >= 6
    assert all(p.n_kept == 4 for p in plans.values())
    # removal-major: the heuristic's removal with every member and both merges first, so a search that
    # screens only the first few seeds still tries each member and each merge
    members = tiny_ev.family.member_names
    settings = [*members, "linear_all", "task_arithmetic_half"]
    assert list(plans)[: len(settings)] == [f"last_n+{m}" for m in settings]
    first = plans["last_n+linear_all"]
    assert [op.kind for op in first.ops].count("drop") == 2 and first.ops[3].kind == first.ops[4].kind == "drop"
    assert first.ops[0].kind == "merge" and {m for m, _ in first.ops[0].weights} == set(members)


def test_smac_multi_fidelity_search_records_every_trial(tiny_ev):
    seen = []
    s = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=10, min_fidelity=3, max_fidelity=16, seed=0),
               on_trial=seen.append)
    res = s.run()
    assert len(res.trials) == 10 and seen == res.trials
    assert [t.number for t in res.trials] == list(range(10))
    fids = {t.fidelity for t in res.trials}
    assert min(fids) < 16 and 16 in fids  # Hyperband used several fidelities, up to the full one
    assert all(t.plan.n_kept == 4 for t in res.trials)
    assert any(t.source != "search" for t in res.trials)  # heuristic seeds were evaluated
    assert res.incumbent is incumbent(res.trials) and res.incumbent.fidelity == 16
    assert res.incumbent.retention == max(t.retention for t in res.trials if t.fidelity == 16)
    rec = TrialRecord.from_dict(res.trials[0].to_dict())
    assert rec.plan == res.trials[0].plan and rec.retention == res.trials[0].retention


def test_seeds_take_at_most_half_the_trials_best_first(tiny_ev):
    s = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=12, min_fidelity=2, max_fidelity=8, seed=0,
                                                                n_initial=2))
    res = s.run()
    seeded = {t.plan.key() for t in res.trials if t.source != "search"}
    assert 1 <= len(seeded) <= len(s.seed_names) == 12 // 2 - 2  # only the design's seeds are labelled as seeds
    order = list(seed_plans(tiny_ev.family, 2, {}))  # the cap keeps the first (the base's) seeds
    assert set(s.seed_names.values()) == set(order[:4])


class CountingSpace(LayerwiseSpace):
    """The layerwise space, counting its decodes (a real space: only the count is added)."""

    decoded = 0

    def decode(self, config):
        self.decoded += 1
        return super().decode(config)


@pytest.mark.parametrize("method", ["smac", "random", "evolution"])
def test_each_seed_is_decoded_once_for_the_initial_design(tiny_ev, tmp_path, method):
    """The seeded start decodes each seed once: SMAC's design, its seed labels and the evolution's
    generation 0 all use that plan (no second decode of the design to label it)."""
    from gptailor.search.evolution import Evolution
    from gptailor.search.optimizer import _Recorder

    space = CountingSpace(tiny_ev.family, 2)
    settings = SearchSettings(method=method, n_trials=12, min_fidelity=2, max_fidelity=8, seed=0, n_initial=2)
    s = Search(tiny_ev, Budget(remove_layers=2), settings, space=space)
    encodable = [p for p in seed_plans(tiny_ev.family, 2, {}).values() if space.encode(p) is not None]
    s.recorder = _Recorder(s)
    if method == "evolution":
        plans = Evolution(s, None, lambda r: 0.0)._seeds()
        assert [p.key() for p in plans] == [k for k in s.seed_names][: len(plans)]
    else:
        s._facade(s._scenario(str(tmp_path)), lambda config, seed=0, budget=None: 0.0, None)
        assert len(s.seed_names) == 12 // 2 - 2  # the design's seeds, labelled
    assert space.decoded == len(encodable)  # one decode per seed the space expresses


@pytest.mark.parametrize("low, top, eta, want, says", [
    (8, 100, 3, 8, ""),  # 8 * 3 <= 100: Hyperband has rungs between 8 and 100
    (8, 16, 3, 5, "single rung"),  # 16 / 3 < 8: lowered to 16 // 3 = 5, two rungs
    (12, 20, 2, 10, "single rung"),  # 12 * 2 > 20: 20 // 2
    (4, 5, 3, 5, "too few"),  # 5 // 3 = 1 example per task is no rung: all at 5, said
    (8, 8, 3, 8, ""),  # min = max asked for: one fidelity on purpose, nothing to say
])
def test_a_minimum_fidelity_above_a_third_of_the_top_is_lowered_and_said(low, top, eta, want, says):
    got, note = fidelity_range(low, top, eta)
    assert got == want and (says in note if says else note == "")


def test_eta_below_two_is_refused_with_the_reason():
    """eta 1 would keep every trial at every rung (no cut) and give the evaluator's batches no edges."""
    from gptailor.common.limits import SettingsError

    with pytest.raises(SettingsError, match="eta must be a whole number from 2 to 100, got 1"):
        SearchSettings(eta=1).check()
    two = SearchSettings(eta=2)
    two.check()  # 2, the smallest factor that cuts, is accepted
    assert two.eta == 2


def test_random_search_runs_on_smac_s_fidelity_rungs(tiny_ev):
    """A baseline gets the same help: random search's trials use Hyperband's rungs as SMAC's do."""
    fids = {}
    for method in ("smac", "random"):
        res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method=method, n_trials=16, min_fidelity=2,
                                                                      max_fidelity=18, seed=0)).run()
        fids[method] = {t.fidelity for t in res.trials}
    assert fids["random"] == fids["smac"] == {2, 6, 18}  # 18 / 3^k for k = 2, 1, 0


def test_random_search_and_reject_constraint(tiny_ev):
    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="random", n_trials=6, seed=1,
                                                                   constraint="reject", min_fidelity=8,
                                                                   max_fidelity=8)).run()
    assert len(res.trials) == 6 and all(t.fidelity == 8 for t in res.trials)
    for t in res.trials:
        if t.status == "rejected":
            assert t.result is None and "wrong number of layers" in t.error
        else:
            assert t.plan.n_kept == 4


class FailingEvaluator(Evaluator):
    """Raises for plans that keep a merge at position 0, as an out-of-memory trial would."""

    def evaluate(self, plan, fidelity=None, **kw):
        if plan.ops[0].kind == "merge":
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().evaluate(plan, fidelity, **kw)


def test_a_failing_trial_is_stored_as_failed_and_the_search_goes_on(tiny_ev):
    ev = FailingEvaluator(tiny_ev.family, tiny_ev.suite)
    res = Search(ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=10, min_fidelity=4, max_fidelity=16)).run()
    failed = [t for t in res.trials if t.status == "failed"]
    assert failed and all("out of memory" in t.error for t in failed)
    assert len(res.trials) == 10 and any(t.status == "complete" for t in res.trials)


def test_resume_retells_previous_trials_and_stops_at_n_trials(tiny_ev):
    first = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=5, max_fidelity=8, min_fidelity=2)).run()
    stored = [TrialRecord.from_dict(t.to_dict()) for t in first.trials]
    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=9, max_fidelity=8, min_fidelity=2),
                 previous=stored).run()
    assert len(res.trials) == 9 and [t.number for t in res.trials] == list(range(9))
    assert res.trials[:5] == stored


def test_cancel_stops_after_the_current_trial(tiny_ev):
    seen = []
    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=50, max_fidelity=8, min_fidelity=2),
                 on_trial=seen.append, progress=Progress(should_stop=lambda: len(seen) >= 3)).run()
    assert res.stopped == "cancelled" and len(res.trials) == 3


SEED_SCRIPT = """
import sys
sys.path[:0] = {paths!r}
from gptailor import Evaluator, load_suite
from gptailor.family.family import Family
from gptailor.search.optimizer import Search
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget
ev = Evaluator(Family.from_spec({spec!r}), load_suite({suite!r}))
res = Search(ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=8, min_fidelity=2, max_fidelity=8, seed=7)).run()
print("|".join(t.plan.to_text() + "@" + str(t.fidelity) for t in res.trials))
"""


def test_same_seed_repeats_exactly_with_fixed_hash_seed(tiny_ev):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = SEED_SCRIPT.format(paths=[root], spec=tiny_ev.family.spec.root + "/family.yaml",
                                suite=tiny_ev.suite.path)
    outs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONHASHSEED": "0"}) for _ in range(2)]
    assert outs[0].returncode == 0, outs[0].stderr[-2000:]
    assert outs[0].stdout == outs[1].stdout and outs[0].stdout.count("|") == 7


def test_per_task_objectives_with_parego_report_a_pareto_set(tiny_ev):
    from gptailor.search.trials import pareto_front

    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=8, min_fidelity=8, max_fidelity=8,
                                                                   objectives="per_task")).run()
    assert len(res.trials) == 8 and res.pareto
    tasks = res.trials and [t for t in tiny_ev.suite.names
                            if res.references.reference(res.trials[0].result.definition, t).member != "none"]
    assert res.pareto == pareto_front(res.trials, tasks)
    front = [[p.result.task_retention[k] or 0 for k in tasks] for p in res.pareto]
    for t in res.trials:
        if t.status == "complete" and t.fidelity == 8 and t not in res.pareto:
            v = [t.result.task_retention[k] or 0 for k in tasks]
            assert any(all(a >= b for a, b in zip(f, v)) for f in front)  # everything else is dominated


def test_parallel_trials_on_dask_workers(tiny_ev):
    """Two trials at a time through SMAC's Dask runner (a local cluster); the client is closed after."""
    seen = []
    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=6, min_fidelity=4, max_fidelity=8,
                                                                   n_workers=2), on_trial=seen.append).run()
    assert len(res.trials) == 6 == len(seen)
    assert all(t.status == "complete" and t.plan.n_kept == 4 for t in res.trials)


def test_size_front_and_smallest_keeping_by_brute_force():
    # Independent check: an item is on the front iff no other item is at most as large and scores more
    # (or is strictly smaller and scores the same).
    import random

    from gptailor.search.trials import size_front, smallest_keeping

    rng = random.Random(4)
    items = [(rng.randint(1, 20), round(rng.random(), 2)) for _ in range(60)]
    front = size_front(items, size=lambda i: i[0], score=lambda i: i[1])
    brute = {i for i in items if not any((j[0] <= i[0] and j[1] > i[1]) or (j[0] < i[0] and j[1] >= i[1])
                                         for j in items)}
    assert set(front) == brute and [i[0] for i in front] == sorted(i[0] for i in front)
    for keep in (0.5, 0.9, 0.99, 1.5):
        ok = [i for i in items if i[1] >= keep]
        want = min(ok, key=lambda i: (i[0], -i[1])) if ok else None
        assert smallest_keeping(items, keep, size=lambda i: i[0], score=lambda i: i[1]) == want


def _ranks(xs: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank (what Spearman's rho correlates)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def test_budget_correlation_is_spearman_of_each_rung_against_the_top(tiny_ev):
    from gptailor.search.trials import budget_correlation

    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=40, min_fidelity=2, max_fidelity=18,
                                                                  seed=0, objective="loglik")).run()
    got = {b.fidelity: b for b in budget_correlation(res.trials, "loglik")}
    assert set(got) == {2, 6} and all(b.top == 18 for b in got.values())
    by = {}
    for t in res.trials:
        if t.status == "complete" and not t.cached:
            by.setdefault(t.fidelity, {})[t.plan.key()] = t.result.proxies["loglik"]["retentions"][t.result.definition]
    checked = 0
    for f, b in got.items():
        both = [k for k in by[f] if k in by[18]]
        assert b.n == len(both) >= 1
        if b.rho is None:
            assert len(both) < 3 or len({by[f][k] for k in both}) == 1 or len({by[18][k] for k in both}) == 1
            continue
        checked += 1
        rx, ry = _ranks([by[f][k] for k in both]), _ranks([by[18][k] for k in both])
        mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
        cov = sum((a - mx) * (c - my) for a, c in zip(rx, ry))
        want = cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((c - my) ** 2 for c in ry))
        assert b.rho == pytest.approx(want, abs=1e-9)
    assert checked >= 1 and "→ 18 examples: ρ = " in got[6].text()
