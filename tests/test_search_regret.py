"""Ground truth by enumeration (bench/search_regret.py): the pick space, the table and its look-up evaluator.

A tiny real family (4 layers, base + two finetunes, the demo's task files with a few examples per task), a
space of a few dozen plans, every plan scored once: the look-ups must be what the real evaluator says, at any
fidelity and on both splits, and the regret curve must be what a hand computation over the trials gives."""
from __future__ import annotations

import itertools
import math
import os

import pytest

from bench.search_regret import LookupEvaluator, NotInTable, enumerate_table, load_table, regret_curve, \
    save_table, seeded, truth
from gptailor import Evaluator, Plan
from gptailor.eval.suite import load_suite
from gptailor.family.family import Family
from gptailor.plan import Op
from gptailor.search.optimizer import Search
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget, BudgetError, PickSpace

from conftest import make_tiny_family

os.environ.setdefault("PYTHONHASHSEED", "0")
SOURCES = ("base", "math")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny family, its real evaluator, and the enumerated table of 2 drops x {base, math} (24 plans),
    written and read back as the bench stores it."""
    from gptailor.builtin import demo

    d = tmp_path_factory.mktemp("regret")
    make_tiny_family(d, n_layers=4)
    demo.write_tasks(d, n_test=6)
    fam = Family.from_spec(d / "family.yaml")
    ev = Evaluator(fam, load_suite(d / "tasks/suite.yaml"), split="search")
    space = PickSpace(fam, 2, sources=SOURCES)
    save_table(enumerate_table(ev, space, log=lambda m: None), d / "table.json.gz")
    table = load_table(d / "table.json.gz")
    return fam, ev, LookupEvaluator(fam, ev.suite, table), space


def test_pick_space_lists_every_plan_once_and_round_trips(tiny):
    fam, _, _, space = tiny
    plans = list(space.plans())
    # independently: every 2-subset of 4 positions dropped, each kept position base or math
    assert len(plans) == space.size() == math.comb(4, 2) * 2 ** 2 == len({p.key() for p in plans})
    for p in plans:
        assert sum(op.kind == "drop" for op in p.ops) == 2
        assert {op.member for op in p.ops if op.kind == "pick"} <= set(SOURCES)
        assert space.decode(space.encode(p)).key() == p.key()
    keys = {p.key() for p in plans}
    for cfg in space.cs.sample_configuration(200):  # repair keeps every configuration inside the list
        assert space.decode(cfg).key() in keys
    merged = Plan((Op.drop(), Op.drop(), Op.merge({"base": 1.0, "math": 1.0}), Op.pick("base")), fam.name)
    assert space.encode(merged) is None
    assert space.encode(Plan.drop_positions(4, [0, 1], "code", fam.name)) is None  # not a source here
    assert PickSpace(fam, 1, sources=("code",)).size() == 4  # one source: the drop sets alone
    # position 3 alone free: 3 drop sets keep it (2 choices each), the 3 that drop it have 1 plan each
    narrow = PickSpace(fam, 2, sources=("base", "math"), free=[3])
    assert narrow.size() == len(list(narrow.plans())) == 3 * 2 + 3 * 1
    assert narrow.encode(Plan((Op.drop(), Op.drop(), Op.pick("math"), Op.pick("base")), fam.name)) is None
    with pytest.raises(Exception, match="unknown source"):
        PickSpace(fam, 2, sources=("nope",))


ACCURACY = {"exact_match", "acc", "acc_norm", "n", "stderr"}  # 0/1 per example: equal, bit for bit


def same(got, want, where: str = "") -> None:
    """Equal, bit for bit, on accuracy metrics and everything not a float; continuous values (log-likelihoods,
    perplexity and retentions made of them) to float precision: a split scored in other batches pads and
    blocks its matrix products differently, which moves the last bits of a log-likelihood."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, float) and where.rsplit(".", 1)[-1] not in ACCURACY:
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), where
    else:
        assert got == want, where


def test_lookup_answers_what_the_real_evaluator_says(tiny):
    fam, ev, lookup, space = tiny
    refs = {s: ev.references(s) for s in ("search", "test")}
    fields = ("scores", "retentions", "task_retentions", "details", "proxies", "params", "kept_layers", "definition",
              "fidelity", "split", "plan")
    accuracy_tasks = [t.name for t in ev.suite if t.kind != "perplexity"]
    for plan, fidelity, split in itertools.product(list(space.plans())[::5], (1, 3, None), ("search", "test")):
        real = ev.evaluate(plan, fidelity, split, references=refs[split]).to_dict()
        got = lookup.evaluate(plan, fidelity, split, references=refs[split]).to_dict()
        for f in fields:
            same(got[f], real[f], f"{plan.to_text()} @{fidelity} {split}: {f}")
        assert [got["scores"][t] for t in accuracy_tasks] == [real["scores"][t] for t in accuracy_tasks]
    assert lookup.lookups == 2 * 3 * len(list(space.plans())[::5])


def test_plan_outside_the_table_is_a_clear_error(tiny):
    fam, _, lookup, _ = tiny
    outside = Plan.drop_positions(4, [1, 2], "code", fam.name)
    with pytest.raises(NotInTable, match=r"is not in the table \(24 plans: 2 drops, sources base, math, free positions \[0, 1, 2, 3\], droppable "
                                         r"\[0, 1, 2, 3\], merges none\)"):
        lookup.evaluate(outside, None, "search")


def test_a_search_on_the_table_has_zero_regret_at_the_optimum_and_never_gets_worse(tiny):
    fam, _, lookup, _ = tiny
    refs = lookup.references("search")
    definition = refs.default_definition()
    gt = truth(lookup, definition)
    best = max(v["search"] for v in gt.values())
    for method in ("smac", "random"):  # full fidelity only: what the method saw is the table's value
        settings = SearchSettings(method=method, facade="hpo", n_trials=12, seed=1)
        trials = Search(lookup, Budget(remove_layers=2), settings, references=refs, space=lookup.space(1),
                        heuristic_removals=lookup.table["heuristic_removals"]).run().trials
        curve = regret_curve(trials, gt, "search")
        running = -math.inf  # by hand: the best retention seen so far, at the one fidelity
        for t, r in zip(trials, curve):
            running = max(running, t.result.retention)
            assert r == pytest.approx(best - running, abs=1e-12)
        assert all(b <= a for a, b in zip(curve, curve[1:]))
    optimum = next(k for k, v in gt.items() if v["search"] == best)
    plan = Plan.from_text(lookup.rows[optimum]["plan"], fam.name)
    from gptailor.search.trials import TrialRecord

    rec = TrialRecord(0, plan, None, lookup.evaluate(plan, None, "search", definition=definition))
    assert regret_curve([rec], gt, "search") == [0.0]
    assert seeded(lookup, lookup.space())  # the heuristics' drop sets on base and on math are in the space


def test_a_given_space_must_match_the_budget(tiny):
    _, _, lookup, _ = tiny
    with pytest.raises(BudgetError, match="removes 2 layers but the budget removes 1"):
        Search(lookup, Budget(remove_layers=1), SearchSettings(method="smac", n_trials=2), space=lookup.space())


def test_shards_merge_into_the_whole_table(tiny, tmp_path):
    """Two processes enumerate alternate first drops; merged, the table holds every plan once, with the
    values the one-process table has, and a missing or doubled shard is refused."""
    from bench.search_regret import merge_tables, shard_of

    fam, ev, lookup, space = tiny
    shards = [enumerate_table(ev, space, log=lambda m: None, shard=(k, 2)) for k in (0, 1)]
    for k, t in enumerate(shards):  # by hand: a plan's first dropped position decides its shard
        assert t["plans"] and all(next(i for i, op in enumerate(Plan.from_text(r["plan"], fam.name).ops)
                                       if op.kind == "drop") % 2 == k for r in t["plans"])
        assert not t["complete"] and t["shard_complete"]
    save_table(merge_tables(shards), tmp_path / "merged.json.gz")  # as the bench stores it
    merged = load_table(tmp_path / "merged.json.gz")
    assert merged["complete"] and len(merged["plans"]) == space.size()
    whole = {r["plan"]: r for r in lookup.table["plans"]}
    for r in merged["plans"]:
        same(r["values"], whole[r["plan"]]["values"], r["plan"])
        assert r["params"] == whole[r["plan"]]["params"]
    with pytest.raises(ValueError, match=r"shards \[0\] of 2"):
        merge_tables(shards[:1])
    with pytest.raises(ValueError, match=r"shards \[0, 0\] of 2"):
        merge_tables([shards[0], shards[0]])
    partial = enumerate_table(ev, space, limit=1, log=lambda m: None, shard=(1, 2))
    with pytest.raises(ValueError, match="enumerated with --limit"):
        merge_tables([shards[0], partial])
    assert shard_of(Plan.drop_positions(4, [1, 3], "base", fam.name), 2) == 1


def test_budget_correlation_over_the_table(tiny):
    """`correlate`: Spearman rho of each objective's search-split retention with held-out accuracy-retention,
    per definition, against the same rho computed from `truth` (the regret's own table) with scipy."""
    from scipy.stats import spearmanr

    from bench.search_regret import table_correlations

    _, _, lookup, _ = tiny
    corr, text = table_correlations(lookup, "2,full")
    full = max(lookup.table["split_sizes"]["search"].values())
    got = {(d, o, f): rho for d, o, f, rho, _ in corr}
    for d in ("family", "base"):
        test_acc = truth(lookup, d, "accuracy")
        for o in ("accuracy", "loglik"):
            gt = truth(lookup, d, o)
            keys = sorted(gt)
            want = spearmanr([gt[k]["search"] for k in keys], [test_acc[k]["test"] for k in keys]).statistic
            assert got[(d, o, f"search@{full}")] == pytest.approx(want, abs=1e-12)
            assert all(gt[k]["test"] == test_acc[k]["test"] for k in keys)  # held out: accuracy, whatever chose
        assert got[(d, "accuracy", "test (full)")] == pytest.approx(1.0)
    assert f"over {len(lookup.rows)} plans" in text and "kl" not in text.split("\n")[1]


def test_a_bad_shard_is_refused_before_any_work(monkeypatch):
    from bench.search_regret import main, parse_shard

    # CI may set its own hash seed: main() in-process must answer, not re-execute (and so replace) the caller
    monkeypatch.setenv("PYTHONHASHSEED", "1")

    assert parse_shard("1/3") == (1, 3) and parse_shard(None) == (0, 1)
    assert main(["enumerate", "--family", "/nonexistent/family.yaml", "--shard", "2/2"]) == 2  # before loading


TA = Op.merge({"math": 0.5, "code": 0.5}, "task_arithmetic")


def restricted(fam, seed: int = 0, merges: bool = True) -> PickSpace:
    """One drop at position 1 or 2; positions 2 and 3 may be base, math or (with merges) the fixed merge."""
    return PickSpace(fam, 1, seed, sources=SOURCES, free=[2, 3], droppable=[1, 2],
                     merges={"ta": TA.to_dict()} if merges else None)


def test_droppable_positions_and_fixed_merges_list_every_plan_and_every_method_stays_inside(tiny):
    """The restricted pick space of the smol-all ablation: drops only where allowed, fixed merges beside the
    picks at free positions. The list is checked against an independent enumeration; every configuration,
    every evolution mutation and every search's proposal must land in it (a look-up table built from it raises
    on any other plan); each part's best plan of the ablation is the best a real evaluation gives."""
    from bench.search_regret import ablation, named_merges
    from gptailor.search.evolution import mutate, random_plan

    fam, ev, _, _ = tiny
    space = restricted(fam)
    want = set()  # by hand: position 0 always base; 1 base or dropped; 2 and 3 free (base, math, ta)
    choices = [Op.pick("base"), Op.pick("math"), TA]
    for gone in (1, 2):
        for a, b in itertools.product(choices, repeat=2):
            ops = [Op.pick("base"), Op.pick("base"), a, b]
            ops[gone] = Op.drop()
            want.add(Plan(tuple(ops), fam.name).key())
    plans = list(space.plans())
    assert {p.key() for p in plans} == {k for k in want} and len(plans) == space.size() == 3 * 3 + 3 == len(want)
    for p in plans:
        assert space.decode(space.encode(p)).key() == p.key()
    for cfg in space.cs.sample_configuration(200):  # repair drops only where a plan may
        assert space.decode(cfg).key() in want
    assert space.encode(Plan((Op.drop(), Op.pick("base"), Op.pick("base"), Op.pick("base")), fam.name)) is None
    other = Op.merge({"math": 0.4, "code": 0.5}, "task_arithmetic")
    assert space.encode(Plan((Op.pick("base"), Op.drop(), other, Op.pick("base")), fam.name)) is None
    reordered = Op.merge({"code": 0.5, "math": 0.5}, "task_arithmetic")  # the same merge, members reordered
    assert space.encode(Plan((Op.pick("base"), Op.drop(), reordered, Op.pick("base")), fam.name)) is not None

    import random

    rng, seen, plan = random.Random(0), set(), random_plan(space, random.Random(1))
    for _ in range(300):
        plan = mutate(plan, rng, space) or plan
        seen.add(plan.key())
    assert seen <= want and any("merge" in k for k in seen) and {k.split()[1] for k in seen} >= {"1:drop", "1:base"}

    table = enumerate_table(ev, space, log=lambda m: None)
    assert table["droppable"] == [1, 2] and table["merges"] == {"ta": TA.to_dict()}
    lookup = LookupEvaluator(fam, ev.suite, table)
    refs = lookup.references("search")
    for method in ("evolution", "random", "smac"):  # a proposal outside the table would raise NotInTable
        settings = SearchSettings(method=method, n_trials=10, seed=2, min_fidelity=2, initial_plans=True)
        trials = Search(lookup, Budget(remove_layers=1), settings, references=refs, space=lookup.space(2),
                        heuristic_removals=table["heuristic_removals"]).run().trials
        assert trials and {t.plan.key() for t in trials} <= want
    gt = truth(lookup, refs.default_definition())
    parts = {name: (n, plan, s_ret) for name, n, plan, s_ret, *_ in ablation(lookup, gt)}
    assert [v[0] for v in parts.values()] == [2, 6, 12]  # drop sets alone; 2 + 4 pick plans; all 12
    real = {p.key(): ev.evaluate(p, None, "search").retention for p in plans}  # the real evaluator, not the table
    for name, keep in (("drops only (first source)", lambda k: "math" not in k and "merge" not in k),
                       ("picks", lambda k: "merge" not in k), ("picks and merges", lambda k: True)):
        best = max((k for k in real if keep(k)), key=real.get)
        assert parts[name][2] == pytest.approx(real[best], abs=1e-9)
        assert Plan.from_text(parts[name][1], fam.name).key() == best
    assert named_merges("task_arithmetic_half", fam.member_names)["task_arithmetic_half"].kind == "merge"
    with pytest.raises(ValueError, match="use the seeds' merges: linear_all, task_arithmetic_half"):
        named_merges("nope", fam.member_names)


def test_the_plan_a_study_would_report_by_its_objective(tiny):
    """`objective_incumbent`: among a loglik search's trials at the highest fidelity, the one whose plan has the
    best loglik retention on the whole search split, by the table's own truth (every trial here is at the whole
    split); the ranking rule's incumbent is the best by accuracy there instead."""
    from bench.search_regret import objective_incumbent
    from gptailor.search.trials import incumbent

    fam, _, lookup, _ = tiny
    refs = lookup.references("search")
    definition = refs.default_definition()
    by_loglik, by_accuracy = truth(lookup, definition, "loglik"), truth(lookup, definition, "accuracy")
    settings = SearchSettings(method="random", facade="hpo", n_trials=12, seed=3, objective="loglik")
    trials = Search(lookup, Budget(remove_layers=2), settings, references=refs, space=lookup.space(3),
                    heuristic_removals=lookup.table["heuristic_removals"]).run().trials
    alt = objective_incumbent(trials, "loglik", definition)
    assert by_loglik[alt.plan.key()]["search"] == max(by_loglik[t.plan.key()]["search"] for t in trials)
    assert by_accuracy[incumbent(trials).plan.key()]["search"] == max(by_accuracy[t.plan.key()]["search"] for t in trials)
    assert alt.plan.key() != incumbent(trials).plan.key()  # with this seed the two rules disagree
    assert objective_incumbent([], "loglik", definition) is None


def test_a_table_grows_with_its_suites_test_only_examples(tiny, tmp_path):
    """A table enumerated before the suite's tasks gained a ``test_path`` is refused by ``run`` (its test split
    is not the suite's any more) until ``extend-test`` scores every plan on the new examples: then the look-ups
    on the grown test split are what the real evaluator says on the grown suite, and the search split's are
    unchanged. A table of another suite is refused, not patched."""
    import copy
    import json

    import yaml

    from bench.search_regret import check_splits, extend_test, merge_extended, shard_of
    from gptailor.builtin import demo

    fam, ev, lookup, space = tiny
    d, more = tmp_path / "fam", tmp_path / "more"
    make_tiny_family(d, n_layers=4)
    demo.write_tasks(d, n_test=6)  # the tiny fixture's family and suite, bit for bit
    demo.write_tasks(more, n_test=4, seed=7)  # other examples of the same kinds
    suite = yaml.safe_load((d / "tasks/suite.yaml").read_text())
    for t in suite["tasks"]:
        if t["name"] in ("math", "facts", "chat_ppl"):  # one task of each kind but one stays as it was
            rows = (more / "tasks" / t["path"]).read_text().splitlines()[:3]
            (d / "tasks" / f"{t['name']}_test.jsonl").write_text("\n".join(rows) + "\n")
            t["test_path"] = f"{t['name']}_test.jsonl"
    (d / "tasks/suite.yaml").write_text(yaml.safe_dump(suite))
    grown_fam = Family.from_spec(d / "family.yaml")
    grown = Evaluator(grown_fam, load_suite(d / "tasks/suite.yaml"), split="test")

    table = copy.deepcopy(lookup.table)
    why = check_splits(table, grown.suite)
    assert why is not None and "run 'extend-test' on the table" in why
    extended = extend_test(copy.deepcopy(table), grown, log=lambda m: None)
    assert check_splits(extended, grown.suite) is None
    assert json.dumps(extended["plans"][0]["values"]["search"]) == json.dumps(table["plans"][0]["values"]["search"])
    after = LookupEvaluator(grown_fam, grown.suite, extended)
    refs = grown.references("test")
    for plan in list(space.plans())[::7]:
        real = grown.evaluate(plan, None, "test", references=refs).to_dict()
        got = after.evaluate(plan, None, "test", references=refs).to_dict()
        for f in ("scores", "retentions", "task_retentions", "details"):
            same(got[f], real[f], f"{plan.to_text()}: {f}")
        assert got["details"]["math"]["n"] == lookup.evaluate(plan, None, "test").details["math"]["n"] + 3
    with pytest.raises(ValueError, match="only a table enumerated before a task gained a test_path extends"):
        extend_test(copy.deepcopy(extended), grown, log=lambda m: None)  # already grown: not twice

    # in two shards, one of them stopped after its first save and resumed from what it saved: the same table
    class Stop(Exception):
        pass

    saved = {}

    def stop_after_saving(t):
        saved["t"] = copy.deepcopy(t)
        raise Stop

    with pytest.raises(Stop):
        extend_test(copy.deepcopy(table), grown, log=lambda m: None, shard=(0, 2), save=stop_after_saving, every=3)
    assert len(saved["t"]["meta"]["extending"]["done"]) == 3
    with pytest.raises(ValueError, match="resume it with --shard 0/2"):
        extend_test(copy.deepcopy(saved["t"]), grown, log=lambda m: None, shard=(1, 2))
    with pytest.raises(ValueError, match="or split it with a finer shard K/N"):
        extend_test(copy.deepcopy(saved["t"]), grown, log=lambda m: None, shard=(1, 4))  # 1 is not 0 mod 2
    # the stopped shard 0/2 spread over two processes (0/4 and 2/4), each resuming a copy of what it saved
    quarters = [extend_test(copy.deepcopy(saved["t"]), grown, log=lambda m: None, shard=(k, 4)) for k in (0, 2)]
    assert [len(q["meta"]["extending"]["done"]) for q in quarters] == [
        sum(shard_of(p, 4) == k for p in space.plans()) for k in (0, 2)]
    first = extend_test(saved["t"], grown, log=lambda m: None, shard=(0, 2))
    second = extend_test(copy.deepcopy(table), grown, log=lambda m: None, shard=(1, 2))
    with pytest.raises(ValueError, match="extended by two shards"):
        merge_extended([first, second, quarters[0]], grown.suite)
    finer = merge_extended([quarters[1], second, quarters[0]], grown.suite)
    assert json.dumps(finer["plans"]) == json.dumps(extended["plans"])
    assert finer["references"] == extended["references"] and finer["split_sizes"] == extended["split_sizes"]
    with pytest.raises(ValueError, match="not extended by any of the shards 0/2, 1/2"):
        merge_extended([first, first | {"meta": {**first["meta"], "extending": {**first["meta"]["extending"],
                                                                               "shard": [1, 2], "done": []}}}],
                       grown.suite)
    merged = merge_extended([second, first], grown.suite)
    assert json.dumps(merged["plans"]) == json.dumps(extended["plans"])
    assert merged["split_sizes"] == extended["split_sizes"] and merged["references"] == extended["references"]
    assert check_splits(merged, grown.suite) is None and "extending" not in merged["meta"]


def test_the_paired_difference_of_two_plans(tiny):
    """``paired_difference``: the point difference is the real evaluator's (each plan scored from scratch on the
    whole split); a plan against itself differs by 0 in every draw; swapping the plans flips the sign and keeps
    the noise; the bootstrap leaves the look-ups as they were."""
    from bench.search_regret import paired_difference

    fam, ev, lookup, space = tiny
    plans = list(space.plans())
    a, b = plans[0], plans[-1]
    before = lookup.evaluate(a, None, "search").to_dict()
    for split, objective in (("search", "accuracy"), ("test", "accuracy"), ("search", "loglik")):
        real = Evaluator(fam, ev.suite, split=split)
        want = (real.evaluate(a, None, split, definition="family").objective_retention(objective, "family")
                - real.evaluate(b, None, split, definition="family").objective_retention(objective, "family"))
        d, sd = paired_difference(lookup, a, b, split, objective, "family", draws=50)
        assert abs(d - want) < 1e-6 and sd > 0
        assert paired_difference(lookup, a, a, split, objective, "family", draws=50) == (0.0, 0.0)
        d2, sd2 = paired_difference(lookup, b, a, split, objective, "family", draws=50)
        assert d2 == -d and abs(sd2 - sd) < 1e-12
    assert lookup.resample is None
    assert lookup.evaluate(a, None, "search").to_dict() == before  # no draw left behind
