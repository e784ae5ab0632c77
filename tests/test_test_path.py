"""A task's ``test_path``: held-out-only examples that grow the test split and leave the search split alone."""
import json

import pytest

from gptailor.eval.evaluator import Evaluator
from gptailor.eval.suite import load_suite, make_suite
from gptailor.eval.tasks import TaskError
from gptailor.plan import Plan
from gptailor.search.precompute import suite_fingerprint
from gptailor.stitch import Stitcher
from test_evaluate import naive_loglik, write_jsonl

MAIN = [{"context": p, "choices": ["aa", "b", "zzz", p[-2:]], "answer": i % 4}
        for i, p in enumerate(["hello w", "ab", "the quick brown f", "x=1;y", "abcabcab", "lorem ipsum", "zz", "12+3"])]
EXTRA = [{"context": p, "choices": [p[:2], "q", "mnop", "xy"], "answer": (i + 1) % 4}
         for i, p in enumerate(["qwerty", "mnop", "jump over", "42+17=", "sky is", "red green b"])]


def write_suite(folder, test_path: bool, extra=EXTRA):
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "mc.jsonl", MAIN)
    write_jsonl(folder / "mc_test.jsonl", extra)
    entry = {"name": "mc", "kind": "multiple_choice", "path": "mc.jsonl"}
    if test_path:
        entry["test_path"] = "mc_test.jsonl"
    import yaml

    (folder / "suite.yaml").write_text(yaml.safe_dump({"name": "s", "tasks": [entry]}))
    return load_suite(folder / "suite.yaml")


def rows(task, split):
    return [json.dumps(e, sort_keys=True) for e in task.subset(None, split)]


def test_test_path_grows_the_test_split_only(tmp_path):
    plain = write_suite(tmp_path / "plain", False).tasks[0]
    grown = write_suite(tmp_path / "grown", True).tasks[0]
    assert rows(grown, "search") == rows(plain, "search")  # what searches tune on is unchanged, in order
    extra = [json.dumps(e, sort_keys=True) for e in EXTRA]
    assert sorted(rows(grown, "test")) == sorted(rows(plain, "test") + extra)
    assert rows(grown, "test")[: plain.split_size("test")] == rows(plain, "test")  # nested: old test first
    assert not set(rows(grown, "search")) & set(extra)
    assert grown.split_size("test") == plain.split_size("test") + len(EXTRA) and len(grown) == 14
    assert suite_fingerprint(load_suite(tmp_path / "grown")) != suite_fingerprint(load_suite(tmp_path / "plain"))


def naive_choice(model, tok, ctx, choices):
    """argmax over choices of the summed log-likelihood of the choice after the context, one at a time."""
    return max(range(len(choices)), key=lambda k: naive_loglik(model, tok, ctx, choices[k])[0])


def test_scoring_the_test_split_counts_the_test_only_examples(tiny_family, tmp_path):
    plain = write_suite(tmp_path / "plain", False)
    grown = write_suite(tmp_path / "grown", True)
    model = Stitcher(tiny_family).build(Plan.from_text("0:base 1:math 2:drop 3:base"))
    tok = tiny_family.tokenizer
    held_out = plain.tasks[0].subset(None, "test") + EXTRA  # the plain suite's test part + every extra
    hits = [naive_choice(model, tok, e["context"], e["choices"]) == e["answer"] for e in held_out]
    got = Evaluator(tiny_family, grown, split="test").score_model(model)["mc"]
    assert got == pytest.approx(sum(hits) / len(hits))
    search = Evaluator(tiny_family, plain, split="search").score_model(model)["mc"]
    assert Evaluator(tiny_family, grown, split="search").score_model(model)["mc"] == search


def test_bad_test_paths_say_what_to_fix(tmp_path):
    write_suite(tmp_path / "s", True)
    y = tmp_path / "s" / "suite.yaml"
    y.write_text(y.read_text().replace("mc_test.jsonl", "missing.jsonl"))
    with pytest.raises(TaskError, match="missing.jsonl does not exist"):
        load_suite(y)
    y.write_text(y.read_text().replace("missing.jsonl", "[1, 2]"))
    with pytest.raises(TaskError, match="'test_path' is the name of a JSONL file"):
        load_suite(y)
    with pytest.raises(TaskError, match=r"mc_test.jsonl:1: multiple_choice example needs a string 'context'"):
        write_suite(tmp_path / "t", True, extra=[{"prompt": "a", "target": "b"}])


def test_an_upload_needs_its_test_path_file(tmp_path):
    src = tmp_path / "src"
    write_suite(src, True)
    with pytest.raises(TaskError, match="names file 'mc_test.jsonl', which was not uploaded"):
        make_suite([src / "suite.yaml", src / "mc.jsonl"], tmp_path / "suites" / "a", "a")
    assert not (tmp_path / "suites" / "a").exists()
    suite = make_suite([src / "suite.yaml", src / "mc.jsonl", src / "mc_test.jsonl"], tmp_path / "suites" / "b", "b")
    assert suite.tasks[0].split_size("test") == 4 + len(EXTRA)
    from ui.picker import describe_tasks  # the note the app shows after an upload: 8 examples split 4 + 4

    assert describe_tasks(suite) == "mc (multiple_choice, 14 examples: 4 search, 10 held out, 6 of them from mc_test.jsonl)"


def reported_study(tmp_path):
    """A finished study on a tiny family, reported on its suite's test split as it was then."""
    from conftest import make_tiny_family_with_suite
    from db.runs import create_study, run_study
    from db.store import Store
    from gptailor.search.space import Budget

    spec = make_tiny_family_with_suite(tmp_path / "fam", n_layers=6, n_test=16)
    db = f"sqlite:///{tmp_path / 'g.db'}"
    store = Store(db)
    sid = create_study(store, str(spec), "last_n", Budget(remove_layers=2))
    assert run_study(store, sid) == "finished"
    return spec, db, store, sid


def grow_test_split(tasks) -> None:
    """Five new held-out examples for the suite's ``facts`` task, through a ``test_path`` added to suite.yaml."""
    import yaml

    facts = [json.loads(x) for x in (tasks / "facts.jsonl").read_text().splitlines()]
    extra = [{**f, "choices": f["choices"][1:] + f["choices"][:1], "answer": (f["answer"] - 1) % len(f["choices"])}
             for f in facts[:5]]  # the same facts, their choices rotated: new held-out examples
    write_jsonl(tasks / "facts_test.jsonl", extra)
    suite = yaml.safe_load((tasks / "suite.yaml").read_text())
    next(t for t in suite["tasks"] if t["name"] == "facts")["test_path"] = "facts_test.jsonl"
    (tasks / "suite.yaml").write_text(yaml.safe_dump(suite))


def fresh_report(spec, tasks, plan_text, definition):
    """The plan scored here, from scratch, on the suite's test split as its files are now."""
    from gptailor.family.family import Family

    return Evaluator(Family.from_spec(spec), load_suite(tasks / "suite.yaml")).evaluate(
        Plan.from_text(plan_text, "tiny"), split="test", definition=definition)


def test_compare_rescores_a_report_from_a_smaller_test_split_and_stores_it(tmp_path):
    """A study reported before its suite's test split grew is re-scored by compare on today's split (not
    shown beside fresh reports as if both were one split), and the fresh report is what the store keeps."""
    from db.compare import compare

    spec, _, store, sid = reported_study(tmp_path)
    tasks = tmp_path / "fam" / "tasks"
    old = store.study(sid)["report"]
    n_old = old["details"]["facts"]["n"]
    grow_test_split(tasks)

    row = compare(store)[0]
    fresh = fresh_report(spec, tasks, old["plan"], row.definition)
    assert fresh.details["facts"]["n"] == n_old + 5 and fresh.scores["facts"] != old["scores"]["facts"]
    assert row.scores == pytest.approx(fresh.scores) and row.retention == pytest.approx(fresh.retention)
    stored = store.study(sid)["report"]
    assert stored["details"]["facts"]["n"] == n_old + 5 and stored["scores"] == pytest.approx(fresh.scores)
    assert compare(store)[0].scores == pytest.approx(fresh.scores)  # now current: read, not re-scored


def test_the_views_mark_a_report_of_an_older_test_split_until_compare_rescores_it(tmp_path, capsys):
    """The Dashboard's summary and the CLI's studies list read the stored report: once the suite's test split
    grows they say it is stale (never show it as today's number), and after compare they show the report
    re-scored on today's split, which equals the plan scored here from scratch."""
    from db.cli import main
    from db.compare import compare, current_report
    from ui.dashboard_tab import STALE, SUMMARY_COLUMNS, View, best_summary, status_of

    spec, db, store, sid = reported_study(tmp_path)
    tasks = tmp_path / "fam" / "tasks"
    old = store.study(sid)["report"]

    def summary() -> dict:
        s = store.study(sid)
        row = best_summary(View([s], [s], {sid: store.trials(sid)}, {sid: s["name"]}, s))[0]
        return dict(zip(SUMMARY_COLUMNS, row))

    def listed() -> tuple[list[str], str]:
        assert main(["studies", "--db", db]) == 0
        out = capsys.readouterr().out
        return next(x for x in out.splitlines() if x.split()[:1] == [str(sid)]).split(), out

    assert current_report(store.study(sid)) == old and "older test split" not in status_of([store.study(sid)])
    assert summary()["family % test [95%]"].startswith(f"{100 * old['retentions']['family']:.1f} [")
    assert listed()[0][7] == f"{100 * old['retentions']['family']:.1f}%"

    grow_test_split(tasks)
    assert current_report(store.study(sid)) is None
    assert summary()["family % test [95%]"] == summary()["base % test [95%]"] == STALE
    assert "older test split" in status_of([store.study(sid)])
    cells, out = listed()
    assert cells[7:9] == ["stale", "stale"] and "older test split" in out

    compare(store)
    rep = current_report(store.study(sid))
    fresh = fresh_report(spec, tasks, old["plan"], rep["definition"])
    assert rep["details"]["facts"]["n"] == old["details"]["facts"]["n"] + 5
    for d, column in (("family", "family % test [95%]"), ("base", "base % test [95%]")):
        assert summary()[column].startswith(f"{100 * fresh.retentions[d]:.1f} [")
    cells, out = listed()
    assert cells[7] == f"{100 * fresh.retentions['family']:.1f}%" and "older test split" not in out
    assert "older test split" not in status_of([store.study(sid)])
