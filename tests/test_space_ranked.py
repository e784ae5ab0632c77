"""The ranked space: unconditional hyperparameters, every configuration in budget, seeds round-trip,
and one moved keep value moves at most one drop."""
import random

import pytest
from ConfigSpace import Configuration

from gptailor import Evaluator
from gptailor.eval.suite import load_suite
from gptailor.family.family import Family
from gptailor.search.optimizer import Search
from gptailor.search.seeds import seed_plans
from gptailor.search.settings import SearchSettings
from gptailor.search.space import SPACES, Budget, RankedSpace, make_space

from conftest import make_tiny_family


@pytest.fixture(scope="module")
def tiny_ev(tmp_path_factory):
    from gptailor.builtin import demo

    d = tmp_path_factory.mktemp("ranked")
    make_tiny_family(d, n_layers=6)
    demo.write_tasks(d, n_test=16)
    return Evaluator(Family.from_spec(d / "family.yaml"), load_suite(d / "tasks/suite.yaml"))


@pytest.fixture(scope="module")
def shared_family(tmp_path_factory):
    """Positions 0 and 1 are bit-identical to the base's in every finetune."""
    d = tmp_path_factory.mktemp("ranked_shared")
    make_tiny_family(d, n_layers=6, layers_only=True, base_layers={"math": [0, 1], "code": [0, 1]})
    return Family.from_spec(d / "family.yaml")


def lowest(values: list[float], n: int) -> set[int]:
    """Independent: i is dropped iff fewer than n positions come before it by (value, position)."""
    return {i for i, v in enumerate(values) if sum((w, j) < (v, i) for j, w in enumerate(values)) < n}


def keeps(space: RankedSpace, cfg) -> list[float]:
    return [float(cfg[f"keep_{i:03d}"]) for i in range(space.L)]


@pytest.mark.parametrize("n_remove", [0, 1, 2, 5])
def test_every_sampled_configuration_decodes_to_a_plan_in_budget(tiny_ev, n_remove):
    fam = tiny_ev.family
    space = RankedSpace(fam, n_remove, seed=1)
    for cfg in space.cs.sample_configuration(300):
        plan = space.decode(cfg)
        plan.validate(fam.member_names, fam.n_layers)
        gone = {i for i, op in enumerate(plan.ops) if op.kind == "drop"}
        assert gone == lowest(keeps(space, cfg), n_remove) and len(gone) == n_remove


def test_every_seed_plan_round_trips_or_is_outside_the_space(tiny_ev):
    fam = tiny_ev.family
    for n in (1, 2, 3):
        space = RankedSpace(fam, n)
        seeds = seed_plans(fam, n, {"last_n": list(range(fam.n_layers - 1 - n, fam.n_layers - 1))})
        inside = 0
        for name, plan in seeds.items():
            cfg = space.encode(plan)
            if name.endswith("+task_arithmetic_half"):  # task arithmetic is not in this space
                assert cfg is None
                continue
            assert cfg is not None, name
            assert space.decode(cfg).key() == plan.key(), name
            inside += 1
        assert inside == len(seeds) - sum(k.endswith("+task_arithmetic_half") for k in seeds) >= 4


def test_decode_encode_is_the_identity_on_the_space_s_plans(tiny_ev):
    space = RankedSpace(tiny_ev.family, 2, seed=4)
    kinds = set()
    for cfg in space.cs.sample_configuration(200):
        plan = space.decode(cfg)
        again = space.encode(plan)
        assert again is not None and space.decode(again) == plan
        kinds |= {op.kind if op.kind != "merge" else f"merge{len(op.weights)}" for op in plan.ops}
    assert {"drop", "pick", "merge2", "merge3"} <= kinds  # picks, two-member merges and "all" were all drawn


def test_a_two_member_merge_s_base_share_is_mix_above_the_pick_threshold(tiny_ev):
    space = RankedSpace(tiny_ev.family, 1)
    cfg = dict(space.cs.get_default_configuration())
    cfg.update({"src_002": "math", "mix_002": 0.5 + 0.5 * 0.2, "src_003": "all", "mix_003": 0.3,
                "src_001": "code", "mix_001": 0.49})
    plan = space.decode(Configuration(space.cs, values=cfg))
    # base share 0.2 against math 0.8: scaled so the largest weight is 1
    assert plan.ops[2].weight_map == {"base": 0.25, "math": 1.0} and plan.ops[2].method == "linear"
    assert plan.ops[3].weight_map == {"base": 1.0, "math": 1.0, "code": 1.0}  # "all", below the threshold
    assert plan.ops[1].kind == "pick" and plan.ops[1].member == "code"


def test_moving_one_keep_value_moves_at_most_one_drop(tiny_ev):
    space = RankedSpace(tiny_ev.family, 2, seed=2)
    rng = random.Random(0)
    moved = 0
    for cfg in space.cs.sample_configuration(200):
        values = dict(cfg)
        i = rng.randrange(space.L)
        before = set(space.dropped(values))
        values[f"keep_{i:03d}"] = rng.random()
        after = set(space.dropped(values))
        assert len(before - after) == len(after - before) <= 1
        moved += before != after
    assert moved > 0


def test_hyperparameters_are_unconditional_and_counted_in_describe(tiny_ev, shared_family):
    for fam, shared in ((tiny_ev.family, set()), (shared_family, {0, 1})):
        space = RankedSpace(fam, 2)
        d = space.describe()
        assert not space.cs.conditions and not space.cs.forbidden_clauses
        names = [h.name for h in space.cs.values()]
        searched = fam.n_layers - len(shared)
        assert set(d["shared_positions"]) == shared
        assert d["hyperparameters"] == len(names) == fam.n_layers + 2 * searched == d["keep"] + d["src"] + d["mix"]
        assert d["conditional"] == 0
        assert not any(n in names for i in shared for n in (f"src_{i:03d}", f"mix_{i:03d}"))


def test_shared_positions_take_the_base_s_layer_and_seeds_still_encode(shared_family):
    space = RankedSpace(shared_family, 2)
    for name, plan in seed_plans(shared_family, 2, {}).items():
        cfg = space.encode(plan)
        if name.endswith("+task_arithmetic_half"):
            continue
        assert cfg is not None, name
        got = space.decode(cfg)
        for i, (a, b) in enumerate(zip(got.ops, plan.ops)):
            assert a == b if i not in (0, 1) or b.kind == "drop" else a.kind == "pick" and a.member == "base"


def test_the_cli_and_make_space_offer_the_ranked_space(tiny_ev):
    import argparse

    from db.cli import register

    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="cmd"))
    search = ap._subparsers._group_actions[0].choices["search"]
    choices = next(a.choices for a in search._actions if "--space" in a.option_strings)
    assert list(choices) == list(SPACES) and "ranked" in SPACES
    assert isinstance(make_space("ranked", tiny_ev.family, 2), RankedSpace)


def test_a_short_smac_search_on_the_ranked_space_records_trials(tiny_ev):
    seen = []
    res = Search(tiny_ev, Budget(remove_layers=2), SearchSettings(method="smac", n_trials=10, space="ranked", min_fidelity=2,
                                                                  max_fidelity=8, seed=0), on_trial=seen.append).run()
    assert len(res.trials) == 10 and seen == res.trials and res.space["space"] == "ranked"
    assert all(t.status == "complete" and t.plan.n_kept == 4 for t in res.trials)
    assert any(t.source != "search" for t in res.trials) and any(t.source == "search" for t in res.trials)
    space = res.trials and make_space("ranked", tiny_ev.family, 2)
    for t in res.trials:  # every stored configuration is the space's and decodes to the stored plan
        assert space.decode(Configuration(space.cs, values=t.config)) == t.plan
