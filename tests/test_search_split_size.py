"""How large a search split a search needs (bench/search_split_size.py): the members' values, a re-partitioned
table, and searches on it.

The tiny real family and table of ``test_search_regret``: a re-partitioned table's look-ups must be what the real
evaluator says on a suite split the same way (its own forwards, its own references), at any fidelity, and
``run`` must print a row per fraction."""
from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest

from bench.search_regret import LookupEvaluator
from bench.search_split_size import lookup_of, main, member_values, partition, reference_mismatch, resplit
from gptailor import Evaluator
from gptailor.eval.suite import Suite
from gptailor.eval.tasks import Task
from gptailor.search.optimizer import Search
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget

from conftest import make_tiny_family
from test_search_regret import same, tiny  # noqa: F401  (the module's fixture: the tiny family and its table)


@pytest.fixture(scope="module")
def with_members(tiny):  # noqa: F811
    fam, ev, lookup, space = tiny
    table = copy.deepcopy(lookup.table)
    table["members"] = member_values(ev)
    return fam, ev, table, space


@dataclasses.dataclass
class FixedSplit(Task):
    """A task whose splits are given lists of example indices (the real evaluator reads them through
    ``split_indices``): the independent side of the comparison."""

    splits: dict = dataclasses.field(default_factory=dict)

    def split_indices(self, split: str = "all") -> list[int]:
        return self.splits["search"] + self.splits["test"] if split == "all" else self.splits[split]


def split_like(suite: Suite, parts: dict) -> Suite:
    """The suite with each task's test split re-partitioned as ``parts`` says, written out as tasks of their own."""
    tasks = []
    for t in suite:
        search, test = t.split_indices("search"), t.split_indices("test")
        moved, kept = parts[t.name]
        order = search + [test[i] for i in moved] + [test[i] for i in kept]
        fields = {f.name: getattr(t, f.name) for f in dataclasses.fields(Task) if f.init and f.name != "examples"}
        n = len(search) + len(moved)
        tasks.append(FixedSplit(**fields, examples=[t.examples[i] for i in order],
                                splits={"search": list(range(n)), "test": list(range(n, len(order)))}))
    return Suite(suite.name, tasks, suite.path)


def test_member_values_give_the_references_back(with_members):
    """The members' per-example values, aggregated by the references' own code, are the references the real
    evaluator computed from its own forwards; a value changed is named."""
    fam, ev, table, _ = with_members
    lookup = LookupEvaluator(fam, ev.suite, table)
    assert reference_mismatch(table, lookup) is None
    for s in ("search", "test"):
        same(lookup.references_from_members(s).to_dict(), ev.references(s).to_dict(), s)
    bad = copy.deepcopy(table)
    bad["members"]["math"]["test"]["math"]["exact_match"][0] = 1 - bad["members"]["math"]["test"]["math"]["exact_match"][0]
    why = reference_mismatch(bad, LookupEvaluator(fam, ev.suite, bad))
    assert why is not None and why.startswith("test split, scores of math on math")


def test_a_partition_is_seeded_disjoint_and_leaves_one_held_out():
    sizes = {"a": 10, "b": 3, "c": 1}
    p = partition(sizes, 0.5, seed=4)
    assert p == partition(sizes, 0.5, seed=4) and p != partition(sizes, 0.5, seed=5)
    for t, n in sizes.items():
        moved, kept = p[t]
        assert sorted(moved + kept) == list(range(n)) and moved == sorted(moved) and kept == sorted(kept)
    assert [len(p[t][0]) for t in sizes] == [5, 2, 0]  # round(0.5 * 3) = 2; one example is never moved
    assert [len(x[0]) for x in partition(sizes, 0.0, 1).values()] == [0, 0, 0]
    with pytest.raises(ValueError, match="at least 0 and below 1"):
        partition(sizes, 1.0, 0)


def test_a_resplit_table_answers_what_the_real_evaluator_says_on_that_split(with_members):
    """Half of each task's held-out examples moved to the search split: every look-up (both splits, a low and
    the full fidelity, both retentions and proxies) and both splits' references are the real evaluator's on a
    suite split the same way; fraction 0 gives the table's own results back."""
    fam, ev, table, space = with_members
    t = resplit(table, 0.5, seed=2)
    lookup = lookup_of(fam, ev.suite, t)
    real = Evaluator(fam, split_like(ev.suite, partition(table["split_sizes"]["test"], 0.5, 2)), split="search")
    for s in ("search", "test"):
        same(lookup.references(s).to_dict(), real.references(s).to_dict(), f"references {s}")
        assert t["split_sizes"][s] == {task.name: task.split_size(s) for task in real.suite}
    assert sum(t["split_sizes"]["search"].values()) > sum(table["split_sizes"]["search"].values())
    fields = ("scores", "retentions", "task_retentions", "details", "proxies")
    for plan, fidelity, s in itertools.product(list(space.plans())[::6], (2, None), ("search", "test")):
        got = lookup.evaluate(plan, fidelity, s).to_dict()
        want = real.evaluate(plan, fidelity, s).to_dict()
        for f in fields:
            same(got[f], want[f], f"{plan.to_text()} @{fidelity} {s}: {f}")
    unmoved = lookup_of(fam, ev.suite, resplit(table, 0.0, seed=9))
    original = LookupEvaluator(fam, ev.suite, table)
    for plan, s in itertools.product(list(space.plans())[::5], ("search", "test")):
        same(unmoved.evaluate(plan, None, s).to_dict(), original.evaluate(plan, None, s).to_dict(), s)


def test_a_search_on_a_resplit_table_reaches_its_larger_top_fidelity(with_members):
    fam, ev, table, _ = with_members
    t = resplit(table, 0.5, seed=0)
    lookup = lookup_of(fam, ev.suite, t)
    top = max(t["split_sizes"]["search"].values())
    assert top > max(table["split_sizes"]["search"].values())
    settings = SearchSettings(method="evolution", n_trials=20, min_fidelity=2, seed=0)
    trials = Search(lookup, Budget(remove_layers=2), settings, references=lookup.references("search"),
                    space=lookup.space(0), heuristic_removals=t["heuristic_removals"]).run().trials
    assert max(tr.fidelity for tr in trials if tr.fidelity is not None) == top


def test_run_prints_a_row_per_fraction(with_members, tmp_path, capsys):
    from bench.search_regret import save_table

    from gptailor.builtin import demo

    fam, ev, table, _ = with_members
    make_tiny_family(tmp_path, n_layers=4)  # the fixture's family and suite, bit for bit, at a path of its own
    demo.write_tasks(tmp_path, n_test=6)
    path = tmp_path / "t.json.gz"
    save_table(table, path)
    assert main(["run", str(path), "--family", str(tmp_path / "family.yaml"), "--suite", str(tmp_path / "tasks/suite.yaml"), "--fractions", "0,0.5", "--partitions", "2",
                 "--seeds", "2", "--trials", "12", "--min-fidelity", "2", "--methods", "evolution,random",
                 "--draws", "20"]) == 0
    out = capsys.readouterr().out
    assert out.count("  fraction 0.00 partition") == 1 and out.count("  fraction 0.50 partition") == 2
    table_lines = out.split("per fraction:")[1].strip().splitlines()
    header = next(k for k, line in enumerate(table_lines) if line.split()[0] == "fraction")
    assert "evol keep z1.645" in table_lines[header] and "rand keep z1.96" in table_lines[header]
    assert [r.split()[0] for r in table_lines[header + 1:]] == ["0.00", "0.50"]


def test_a_noise_aware_report_keeps_the_seed_unless_beaten_beyond_the_threshold():
    from bench.search_split_size import Outcome, keep_seed_regret

    o = Outcome(0.5, 0, {}, 0.01, seed_regret=0.02, optimum_vs_seed=(0.0, 0.0),
                regret={"evolution": [0.0, 0.03, 0.01, 0.05]}, beats_seed={"evolution": 2},
                z={"evolution": [2.5, 1.2, 0.0, 1.7]})
    assert keep_seed_regret(o, "evolution", 1.0) == [0.0, 0.03, 0.02, 0.05]
    assert keep_seed_regret(o, "evolution", 1.96) == [0.0, 0.02, 0.02, 0.02]
    assert keep_seed_regret(o, "evolution", 3.0) == [0.02] * 4


def test_a_table_without_member_values_is_refused_with_the_fix(tiny):  # noqa: F811
    with pytest.raises(ValueError, match="run 'python -m bench.search_split_size members' on it first"):
        resplit(tiny[2].table, 0.5, 0)
