"""The study database and background workers: real SQLite files, real worker processes."""
import os
import signal
import sqlite3
import threading
import time

import pytest

from db.compare import compare, compare_table
from db.runs import StudyError, create_study, run_study
from db.workers import cancel, launch, reconcile, resume, wait
from db.database import SCHEMA_REVISION
from db.store import Store, StoreError
from gptailor import Evaluator, load_suite
from gptailor.family.family import Family
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget, BudgetError

from conftest import HANG_GUARD_MS, make_tiny_family_with_suite, scored_trial


@pytest.fixture(scope="module")
def fam_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dbfam")
    make_tiny_family_with_suite(d, n_layers=6, n_test=16)
    return d


@pytest.fixture(scope="module")
def ev(fam_dir):
    return Evaluator(Family.from_spec(fam_dir / "family.yaml"), load_suite(fam_dir / "tasks/suite.yaml"))


def settings(**kw):
    base = dict(method="smac", n_trials=6, min_fidelity=2, max_fidelity=8, seed=0)
    base.update(kw)
    return SearchSettings(**base)


def test_store_round_trip_and_wal(tmp_path, fam_dir, ev):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    sid = create_study(store, str(fam_dir / "family.yaml"), "smac", Budget(remove_layers=2), settings(),
                       evaluator=ev)
    assert store.study(sid)["status"] == "created" and store.study(sid)["n_trials"] == 6
    assert run_study(store, sid, evaluator=ev) == "finished"
    s = store.study(sid)
    trials = store.trials(sid)
    assert s["status"] == "finished" and s["trials_done"] == 6 == len(trials)
    assert all(t.plan.to_text() and t.config for t in trials)
    assert s["best_retention"] == max(t.retention for t in trials if t.fidelity == 8)
    # what the prefix-state cache did, stored per trial and summed per study
    per_trial = [t.result.extra["prefix_cache"] for t in trials if not t.cached]
    assert all(p["lookups"] > 0 for p in per_trial)
    cache = s["prefix_cache"]
    assert cache["lookups"] == sum(p["lookups"] for p in per_trial) and cache["trials"] == len(per_trial)
    assert cache["hit_rate"] == pytest.approx(sum(p["hits"] for p in per_trial) / cache["lookups"])
    with sqlite3.connect(tmp_path / "g.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_REVISION


def _rh(rows):
    from collections import Counter

    return Counter(repr((sorted(c.items()), b, cost)) for c, b, cost in rows)


def test_resume_scores_no_plan_fidelity_pair_twice_and_continues_smacs_history(tmp_path, fam_dir, ev):
    """Trial identity is (plan, exact budget): SMAC's fractional budgets survive the database, resume re-tells
    exactly them, and a repeat is served from the stored result instead of being scored again."""
    from gptailor.search.optimizer import Search

    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    spec = str(fam_dir / "family.yaml")
    # engine level: SMAC's runhistory after resume = the one before + the new trials
    sid = create_study(store, spec, "smac", Budget(remove_layers=2), settings(n_trials=8), evaluator=ev)
    first = Search(ev, Budget(remove_layers=2), settings(n_trials=8)).run()
    for t in first.trials:
        store.record_trial(sid, t)
    stored = store.trials(sid)
    assert any(t.budget != round(t.budget) for t in stored)  # e.g. 8/3, kept exactly (not rounded to 3)
    assert [t.budget for t in stored] == [t.budget for t in first.trials]
    again = Search(ev, Budget(remove_layers=2), settings(n_trials=16), previous=stored,
                   references=first.references).run()
    before, after = _rh(first.runhistory), _rh(again.runhistory)
    assert not before - after and sum(after.values()) == sum(before.values()) + 8
    # database level: a study interrupted after 8 of 16 trials and resumed
    sid = create_study(store, spec, "smac", Budget(remove_layers=2), settings(n_trials=16), evaluator=ev)

    def stop_at_8(rec):
        if len(store.trials(sid)) >= 8:
            store.transition(sid, ("running",), "cancelling")

    assert run_study(store, sid, evaluator=ev, on_trial=stop_at_8) == "cancelled"
    assert len(store.trials(sid)) == 8
    assert run_study(store, sid, evaluator=ev) == "finished"
    trials = store.trials(sid)
    scored = [(t.plan.to_text(), t.fidelity) for t in trials if t.status == "complete" and not t.cached]
    assert len(trials) == 16 and len(scored) == len(set(scored))  # zero repeated evaluations
    for t in trials:
        if t.cached:  # a repeat carries the stored result of the same (plan, fidelity)
            orig = next(o for o in trials if not o.cached and (o.plan.to_text(), o.fidelity) ==
                        (t.plan.to_text(), t.fidelity))
            assert t.retention == orig.retention and t.result.scores == orig.result.scores
    s = store.study(sid)
    assert s["refs"]["split"] == "search" and s["refs"]["definition"] in ("family", "base")
    assert s["report"]["split"] == "test" and s["test_retention"] == s["report"]["retention"]
    assert all(t.result.split == "search" for t in trials if t.status == "complete")


def test_bad_inputs_leave_no_partial_study(tmp_path, fam_dir, ev):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    with pytest.raises(BudgetError, match="keeps none"):
        create_study(store, str(fam_dir / "family.yaml"), "smac", Budget(remove_layers=6), settings(), evaluator=ev)
    with pytest.raises(StudyError, match="unknown method 'magic'"):
        create_study(store, str(fam_dir / "family.yaml"), "magic", Budget(remove_layers=1), evaluator=ev)
    from gptailor.family.spec import FamilyError

    with pytest.raises(FamilyError, match="no family"):
        create_study(store, str(tmp_path / "nope.yaml"), "smac", Budget(remove_layers=1))
    assert store.studies() == []


def test_corrupt_and_unwritable_databases_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="bad.db.*move it aside"):
        Store(f"sqlite:///{bad}")
    assert bad.read_bytes().startswith(b"this is not")  # nothing overwritten
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file instead
            (tmp_path / "afile").write_text("x")
            url = f"sqlite:///{tmp_path / 'afile' / 'sub' / 'g.db'}"
        else:
            url = f"sqlite:///{ro / 'g.db'}"
        with pytest.raises(StoreError, match="writable"):
            Store(url)
    finally:
        os.chmod(ro, 0o700)


def test_newer_schema_is_refused_untouched(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    Store(url)
    with sqlite3.connect(tmp_path / "g.db") as con:
        con.execute("UPDATE alembic_version SET version_num = '0099'")
    before = (tmp_path / "g.db").read_bytes()
    with pytest.raises(StoreError, match="revision 0099 is unknown.*created by a newer gptailor; upgrade to open it"):
        Store(url)
    assert (tmp_path / "g.db").read_bytes() == before


def test_baselines_are_studies_in_the_same_tables(tmp_path, fam_dir, ev):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    ids = {}
    for m in ("last_n", "shortgpt", "angular", "laco", "best_single"):
        ids[m] = create_study(store, str(fam_dir / "family.yaml"), m, Budget(remove_layers=2), evaluator=ev)
        assert run_study(store, ids[m], evaluator=ev) == "finished"
    assert store.trials(ids["last_n"])[0].plan.to_text() == "0:base 1:base 2:base 3:drop 4:drop 5:base"
    single = store.trials(ids["best_single"])
    assert len(single) == 9  # 3 heuristics x 3 members
    assert {t.plan.to_text().split()[0].split(":")[1] for t in single} >= {"base", "math", "code"}
    rows = compare(store, evaluators={f"{fam_dir / 'family.yaml'}|{ev.suite.path}": ev})
    assert [r.method for r in rows] == ["last_n", "shortgpt", "angular", "laco", "best_single"]
    laco = store.trials(ids["laco"])[0].plan.to_text()
    assert "merge[task_arithmetic](base@" in laco and laco.count("drop") == 2
    assert all(r.kept_layers == 4 for r in rows)
    table = compare_table(rows)
    assert "re-scored on the test split" in table and "family" in table and "base" in table


def test_best_seed_scores_every_seeded_plan_and_reports_the_best(tmp_path, fam_dir, ev):
    """The bar a search must clear: every removal crossed with the base, each finetune and both merges,
    each scored once on the whole search split, exactly as a fresh evaluation scores it."""
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    sid = create_study(store, str(fam_dir / "family.yaml"), "best_seed", Budget(remove_layers=2), evaluator=ev)
    assert run_study(store, sid, evaluator=ev) == "finished"
    trials = store.trials(sid)
    drop_sets = {tuple(i for i, op in enumerate(t.plan.ops) if op.kind == "drop") for t in trials}
    assert (3, 4) in drop_sets and all(len(d) == 2 for d in drop_sets)  # last_n's, among others
    kept_as = {}
    for t in trials:
        kept = {op.to_text() for op in t.plan.ops if op.kind != "drop"}
        assert len(kept) == 1  # a seed keeps one thing at every kept position
        kept_as.setdefault(next(iter(kept)), set()).add(tuple(i for i, op in enumerate(t.plan.ops)
                                                            if op.kind == "drop"))
    assert set(kept_as) == {"base", "math", "code", "merge(base=1,code=1,math=1)",
                            "merge[task_arithmetic](code=.5,math=.5)"}, set(kept_as)
    assert all(d == drop_sets for d in kept_as.values())  # every removal with every setting
    assert len(trials) == len({t.plan.key() for t in trials}) == 5 * len(drop_sets)
    fresh = {t.number: ev.evaluate(t.plan, None, split="search") for t in trials[:3]}
    for t in trials[:3]:
        assert t.result.scores == fresh[t.number].scores
    best = next(t for t in trials if t.number == store.study(sid)["best_trial"])
    assert best.retention == max(t.retention for t in trials)  # ties: the study's own rule (rank_key) decides


def test_two_concurrent_studies_and_a_reader(tmp_path, fam_dir):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    spec = str(fam_dir / "family.yaml")
    ids = [create_study(store, spec, m, Budget(remove_layers=2), settings(method=m, n_trials=8, seed=i))
           for i, m in enumerate(("smac", "random"))]
    for sid in ids:
        launch(store, sid, log_dir=tmp_path / "logs")
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                for sid in ids:
                    store.trials(sid)
                store.studies()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
            time.sleep(0.05)

    t = threading.Thread(target=reader)
    t.start()
    try:
        done = [wait(store, sid, timeout=300) for sid in ids]
    finally:
        stop.set()
        t.join()
    logs = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert [d["status"] for d in done] == ["finished", "finished"], logs
    assert [d["trials_done"] for d in done] == [8, 8]
    assert not errors and "locked" not in logs


def test_sigkill_loses_nothing_and_resume_finishes(tmp_path, fam_dir):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    sid = create_study(store, str(fam_dir / "family.yaml"), "smac", Budget(remove_layers=2),
                       settings(n_trials=10))
    proc = launch(store, sid, log_dir=tmp_path / "logs")
    deadline = time.time() + HANG_GUARD_MS / 1000  # against a hang only: the loop ends on the event
    while len(store.trials(sid)) < 4:
        assert time.time() < deadline and proc.poll() is None, (tmp_path / "logs" / f"study-{sid}.log").read_text()
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = store.trials(sid)
    assert len(kept) >= 4
    assert reconcile(store) == [sid]
    assert store.study(sid)["status"] == "interrupted"
    resume(store, sid, log_dir=tmp_path / "logs")
    s = wait(store, sid, timeout=300)
    trials = store.trials(sid)
    assert s["status"] == "finished", (tmp_path / "logs" / f"study-{sid}.log").read_text()
    # the trial the kill cut short is stored as cut, not counted: the study still ends with the 10 asked for
    cut = [t for t in trials if t.status == "cut"]
    assert all(t.error == "worker stopped responding during this trial" for t in cut) and len(cut) <= 1
    assert len(trials) == 10 + len(cut) and s["trials_done"] == 10
    assert [t.number for t in trials] == list(range(len(trials)))
    assert trials[: len(kept)] == kept  # nothing completed before the kill was lost or changed
    with pytest.raises(StudyError, match="finished"):
        resume(store, sid)


def test_cancel_a_running_worker(tmp_path, fam_dir):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    sid = create_study(store, str(fam_dir / "family.yaml"), "random", Budget(remove_layers=2),
                       settings(method="random", n_trials=200))
    launch(store, sid, log_dir=tmp_path / "logs")
    deadline = time.time() + HANG_GUARD_MS / 1000  # against a hang only: the loop ends on the event
    while len(store.trials(sid)) < 2:
        assert time.time() < deadline
        time.sleep(0.1)
    cancel(store, sid)
    s = wait(store, sid, timeout=120)
    assert s["status"] == "cancelled" and 2 <= s["trials_done"] < 200


def test_paper_space_study_stores_its_configurations(tmp_path, fam_dir, ev):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    sid = create_study(store, str(fam_dir / "family.yaml"), "smac", Budget(remove_layers=2),
                       settings(space="paper", n_trials=5), evaluator=ev)
    assert run_study(store, sid, evaluator=ev) == "finished"
    trials = store.trials(sid)
    assert len(trials) == 5 and all(isinstance(t.config["remove_000"], int) for t in trials)


@pytest.mark.parametrize("trials,best", [
    # a missing fidelity is the full suite: it outranks any number of examples (the old SQL took max(8))
    ([(0, 8, 0.9, "complete"), (1, None, 0.5, "complete"), (2, 8, 0.95, "complete")], 1),
    # a tie at the top fidelity: the earliest trial; failed trials and missing retentions never count
    ([(0, 8, 0.99, "failed"), (1, 40, 0.6, "complete"), (2, 40, 0.6, "complete"), (3, 40, None, "complete"),
      (4, 8, 0.99, "complete")], 1),
    ([(0, 8, None, "complete"), (1, 8, 0.2, "failed")], None),
])
def test_best_retention_follows_the_one_ranking_rule(tmp_path, trials, best):
    """The studies list's best trial is gptailor.search.trials.rank_key's best, on tie and missing-fidelity cases."""
    from gptailor.search.trials import incumbent

    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    sid = store.create_study(family_name="f", family_source="f", family_spec={}, family_info={}, method="random",
                             budget={}, settings={}, n_trials=len(trials), name="s")
    for number, fidelity, retention, status in trials:
        store.record_trial(sid, scored_trial(number, "base base", None if retention is None else
                                             {"family": retention, "base": 2 * retention}, fidelity, 10, status))
    s = store.study(sid)
    assert s["best_trial"] == best == (None if incumbent(store.trials(sid)) is None
                                       else incumbent(store.trials(sid)).number)
    if best is not None:
        assert s["best_retention"] == trials[best][2]
        assert s["best_retentions"] == {"family": trials[best][2], "base": 2 * trials[best][2]}


def _loglik(value: float) -> dict:
    return {"loglik": {"metrics": {}, "scores": {}, "retentions": {"family": value, "base": value / 2},
                       "task_retentions": {}}}


@pytest.mark.parametrize("trials,best", [
    # every plan scores 0 (a budget that breaks every skill): the continuous proxy picks, not the trial order
    ([(0, 40, 0.0, _loglik(0.2)), (1, 40, 0.0, _loglik(0.6)), (2, 40, 0.0, _loglik(0.4))], 1),
    # a tie in accuracy at the top fidelity: the higher proxy; one without a proxy (stored before) ranks after
    ([(0, 40, 0.5, None), (1, 40, 0.5, _loglik(0.1)), (2, 40, 0.5, _loglik(0.3)), (3, 8, 0.9, _loglik(0.9))], 2),
    # a KL study's result with no loglik values: exp(-KL) breaks the tie (KL 0.5 < 1.5)
    ([(0, 40, 0.5, {"kl": {"mean": 1.5}}), (1, 40, 0.5, {"kl": {"mean": 0.5}})], 1),
    # the proxy never outranks accuracy or fidelity
    ([(0, 40, 0.5, _loglik(0.1)), (1, 40, 0.4, _loglik(0.9)), (2, 8, 0.9, _loglik(0.9))], 0),
])
def test_ties_are_broken_by_the_proxy_never_by_trial_order(tmp_path, trials, best):
    """#21 item 6: a tie in retention at the top fidelity goes to the higher continuous proxy, the same in the
    engine (``incumbent``), the studies list (``Store._best_of`` on stored rows) and the dashboard's chart."""
    from gptailor.search.trials import incumbent
    from ui.figures import incumbents

    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    sid = store.create_study(family_name="f", family_source="f", family_spec={}, family_info={}, method="random",
                             budget={}, settings={}, n_trials=len(trials), name="s")
    for number, fidelity, retention, proxies in trials:
        store.record_trial(sid, scored_trial(number, "base base", {"family": retention, "base": 2 * retention},
                                             fidelity, 10, proxies=proxies))
    stored = store.trials(sid)
    assert incumbent(stored).number == best
    assert store.study(sid)["best_trial"] == best
    assert incumbents(stored)[-1][1].number == best


def test_a_trial_keeps_its_example_counts_for_its_interval(tmp_path):
    """#22: a stored trial keeps each task's example count (``retentions["sizes"]``), so a page can give its
    search-split retention an interval; one stored without them (before session 10) reads back with none."""
    from gptailor.eval.noise import sizes_of

    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    sid = store.create_study(family_name="f", family_source="f", family_spec={}, family_info={}, method="random",
                             budget={}, settings={}, n_trials=2, name="s")
    counted = scored_trial(0, "base base", {"family": 0.5, "base": 1.0}, 40, 10)
    counted.result.details = {"math": {"exact_match": 0.5, "n": 40.0, "stderr": 0.08}, "ppl": {"perplexity": 9.0,
                                                                                             "n": 25.0}}
    store.record_trial(sid, counted)
    store.record_trial(sid, scored_trial(1, "base base", {"family": 0.4, "base": 0.8}, 40, 10))
    first, second = store.trials(sid)
    assert sizes_of(first.result.details) == {"math": 40, "ppl": 25}
    assert sizes_of(second.result.details) == {}
    assert first.retention == 0.5 and store.study(sid)["best_retentions"] == {"family": 0.5, "base": 1.0}
